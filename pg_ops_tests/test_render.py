"""The Git-owned manifests (issue 7): fresh in Git, safe for Git, valid for Kubernetes 1.31 and
checkov, and the parts that run inside the pods (probe script, exporter queries) exercised against
real PostgreSQL members."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml

from pg_ops import settings
from pg_ops.credentials import MONITORING_USER, PG_OPS_DATABASE, SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.activity import record_status
from pg_ops.postgres.status_table import STATUS_KEYS
from pg_ops.render import check_git_safe, default_output_dir, manifests, monitoring, scratch, write_manifests
from pg_ops.render import names as k
from pg_ops.render.access import admin_applied
from pg_ops.render.config import MEMBER_SCRIPT, PROBE_SCRIPT
from pg_ops.render.output import files_by_kind
from pg_ops.spec import ClusterSpec, load_spec
from pg_ops_tests.support.helpers import kill_member, wait_for
from pg_ops_tests.support.manifest_checks import (
    EXPORTER_DEFAULT_METRICS,
    PROMETHEUS_SYNTHETIC,
    checkov,
    failed_checks,
    kubernetes_validate,
    promql_metrics,
)

REPO = settings.REPO_ROOT
HOMELAB = REPO / "deploy" / "clusters" / "homelab.yaml"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Application", "IPAddressPool", "L2Advertisement"}


def yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.yaml") if p.name != "kustomization.yaml")


# -- specs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def homelab() -> ClusterSpec:
    return load_spec(HOMELAB)


def variant(spec: ClusterSpec, **changes) -> ClusterSpec:
    raw = spec.model_dump()
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return ClusterSpec.model_validate(raw)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# -- Git: fresh and safe -------------------------------------------------------------------------
def test_committed_manifests_are_fresh(homelab, tmp_path):
    committed = default_output_dir(homelab)
    write_manifests(homelab, manifests(homelab), tmp_path)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    in_git = {p.name: p.read_text() for p in committed.glob("*.yaml")}
    stale = sorted(name for name in fresh.keys() | in_git.keys() if fresh.get(name) != in_git.get(name))
    assert not stale, (f"{committed} is stale ({', '.join(stale)}): run "
                       f"`.venv/bin/pg-ops render --cluster {homelab.name}` and commit the result")


def test_kustomization_lists_every_file(homelab):
    folder = default_output_dir(homelab)
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in yaml_files(folder))


def test_nothing_pg_ops_owns_goes_to_git(homelab):
    objects = manifests(homelab)
    text = "".join(files_by_kind(homelab, objects).values())
    assert not by_kind(objects, "Secret")
    assert k.state_configmap(homelab) not in [o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")]
    sts = one(objects, "StatefulSet")
    assert k.LABEL_ROLE not in sts["spec"]["template"]["metadata"]["labels"]
    assert "subPath" not in text  # a subPath mount never refreshes
    assert not re.search(r"(?i)password\s*[:=]\s*\S", text.replace("password_encryption = ", ""))


@pytest.mark.parametrize("bad", ["secret", "state", "role-label"])
def test_check_git_safe_refuses_pg_ops_owned_objects(homelab, bad):
    objects = manifests(homelab)
    if bad == "secret":
        objects.append({"kind": "Secret", "metadata": {"name": k.credentials_secret(homelab)}})
    elif bad == "state":
        objects.append({"kind": "ConfigMap", "metadata": {"name": k.state_configmap(homelab)}})
    else:
        one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"][k.LABEL_ROLE] = "primary"
    with pytest.raises(PgOpsError, match=homelab.name):
        check_git_safe(homelab, objects)


# -- the workload ----------------------------------------------------------------------------------
def test_statefulset_runs_the_member_script_with_its_env_contract(homelab):
    sts = one(manifests(homelab), "StatefulSet")
    spec = sts["spec"]
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == k.headless_service(homelab)
    assert spec["replicas"] == homelab.postgres.members
    assert spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    pod = spec["template"]["spec"]
    postgres = next(c for c in pod["containers"] if c["name"] == k.CONTAINER)
    assert postgres["image"] == "registry.homelab.internal/platform/pg-ops-postgres:16-barman-3.19.1"
    assert postgres["command"] == ["/bin/bash", f"{k.SCRIPT_MOUNT}/member.sh"]
    assert postgres["resources"]["requests"] == postgres["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    # Every variable member.sh requires (`${PGOPS_X:?...}`) is set, and nothing it does not read.
    script = MEMBER_SCRIPT.read_text()
    required = set(re.findall(r"\$\{(PGOPS_\w+):\?", script))
    documented = set(re.findall(r"^#\s+(PGOPS_\w+)\s", script, re.M))
    env = {e["name"]: e for e in postgres["env"] if e["name"].startswith("PGOPS_")}
    assert required <= env.keys() <= documented
    # Besides the contract: only the archive command's S3 keys, from the backup Secret.
    others = {e["name"]: e for e in postgres["env"] if not e["name"].startswith("PGOPS_")}
    assert set(others) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert {o["valueFrom"]["secretKeyRef"]["name"] for o in others.values()} == {"pg-ops-backup-s3"}
    assert env["PGOPS_MEMBER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["PGOPS_STATE"]["value"] == f"{k.STATE_MOUNT}/{k.STATE_KEY}"
    assert env["PGOPS_PASSFILE"]["value"] == f"{k.SECRET_MOUNT}/{k.PASSFILE_KEY}"
    assert env["PGOPS_BIN"]["value"] == k.pg_bin(16) == "/usr/lib/postgresql/16/bin"
    assert env["PGOPS_BINS"]["value"] == "/usr/lib/postgresql/{major}/bin"  # an image may carry two majors
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["configMap"]["name"] == k.state_configmap(homelab)
    assert volumes["credentials"]["secret"]["optional"] is False
    mounts = {m["mountPath"]: m["name"] for m in postgres["volumeMounts"]}
    assert mounts[k.STATE_MOUNT] == "state" and mounts[k.SCRIPT_MOUNT] == "script"
    # `pg-ops recover`: the first member's recovery inputs, an optional Secret member.sh reads
    # only while the record names a recovery.
    assert volumes["recovery"]["secret"] == {"secretName": k.recovery_secret(homelab), "optional": True,
                                             "defaultMode": 0o440}
    assert mounts[k.RECOVERY_MOUNT] == "recovery" and env["PGOPS_RECOVERY_DIR"]["value"] == k.RECOVERY_MOUNT


def test_pods_are_non_root_spread_and_probed(homelab):
    pod = one(manifests(homelab), "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 999 and pod["securityContext"]["fsGroup"] == 999
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == k.member_service_account(homelab)
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["capabilities"]["drop"] == ["ALL"] and ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
    postgres = pod["containers"][0]
    assert postgres["startupProbe"]["exec"]["command"][2] == "startup"
    assert postgres["readinessProbe"]["exec"]["command"][2:] == ["ready", "60", "67108864"]
    assert postgres["livenessProbe"]["exec"]["command"][2] == "live"
    exporter = pod["containers"][1]
    assert exporter["ports"][0]["containerPort"] == k.METRICS_PORT


def test_startup_probe_has_no_fixed_limit_for_a_clone(homelab):
    """The probe passes while member.sh says it clones or rewinds (tested against real members
    below); its threshold bounds only the time a member neither answers nor does anything: far
    less than the hour a 50Gi clone may take."""
    postgres = one(manifests(homelab), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    startup = postgres["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 600
    assert "cloning" in PROBE_SCRIPT.read_text() and "member-status" in PROBE_SCRIPT.read_text()


def test_members_spread_softly_unless_the_spec_requires_it(homelab):
    """Default (and homelab): preferred anti-affinity, so one cordoned node of three leaves two
    members on one node rather than one Pending (the fake's scheduler shows both outcomes in
    test_kubernetes_nodes.py); `required` keeps the hard rule for whoever wants it."""
    affinity = one(manifests(homelab), "StatefulSet")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity
    [term] = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == k.selector_labels(homelab)
    hard = variant(homelab, kubernetes={"anti_affinity": "required"})
    affinity = one(manifests(hard), "StatefulSet")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(affinity) == ["requiredDuringSchedulingIgnoredDuringExecution"]


def test_storage_class_and_access_mode_come_from_the_spec(homelab):
    claim = one(manifests(homelab), "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "local-path"  # homelab names K3s's class instead of relying on a default
    assert claim["accessModes"] == ["ReadWriteOnce"]
    csi = variant(homelab, kubernetes={"storage_class": "longhorn", "access_mode": "ReadWriteOncePod"})
    claim = one(manifests(csi), "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "longhorn" and claim["accessModes"] == ["ReadWriteOncePod"]
    default = variant(homelab, kubernetes={"storage_class": None})
    assert "storageClassName" not in one(manifests(default), "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]


@pytest.mark.parametrize("field,value", [("anti_affinity", "soft"), ("access_mode", "ReadWriteMany")])
def test_a_wrong_scheduling_or_volume_choice_is_refused_at_load(tmp_path, field, value):
    raw = yaml.safe_load(HOMELAB.read_text())
    raw["kubernetes"][field] = value
    path = tmp_path / "homelab.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PgOpsError, match=rf"^{path}: field kubernetes\.{field}: Input should be ") as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_dev_shm_is_memory_backed_and_sized_to_the_memory_limit(homelab):
    """containerd gives a container 64 MiB of /dev/shm: parallel queries and hash joins fail
    with "could not resize shared memory segment". CloudNativePG and the Bitnami chart mount a
    memory-backed emptyDir there; its pages count against the memory limit, hence the size."""
    pod = one(manifests(homelab), "StatefulSet")["spec"]["template"]["spec"]
    postgres = pod["containers"][0]
    [mount] = [m for m in postgres["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": homelab.kubernetes.resources.memory}


def test_shutdown_budget_fits_in_the_grace_period(homelab):
    """member.sh checkpoints, then stops smart, then fast, within PGOPS_STOP_SECONDS; the kubelet
    SIGKILLs at terminationGracePeriodSeconds, which must come later (a SIGKILL there would end
    in crash recovery: what the old 60 s grace risked with shared_buffers=1GB on homelab disks)."""
    pod = one(manifests(homelab), "StatefulSet")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    stop, checkpoint, smart = (int(env[f"PGOPS_{n}_SECONDS"]) for n in ("STOP", "CHECKPOINT", "SMART_STOP"))
    assert checkpoint + smart < stop < pod["terminationGracePeriodSeconds"]
    assert checkpoint >= 60 and pod["terminationGracePeriodSeconds"] >= 120
    assert "lifecycle" not in pod["containers"][0]  # no preStop: member.sh handles TERM itself


def test_config_change_changes_the_pod_template(homelab):
    before = one(manifests(homelab), "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    changed = variant(homelab, postgres={"max_connections": 300})
    after = one(manifests(changed), "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert before != after


# -- routing and access ------------------------------------------------------------------------------
def test_services_route_by_role_label(homelab):
    objects = manifests(homelab)
    sel = k.selector_labels(homelab)
    headless = one(objects, "Service", k.headless_service(homelab))["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    primary = one(objects, "Service", "postgres-ha-postgresql")["spec"]
    assert primary["selector"] == {**sel, k.LABEL_ROLE: k.ROLE_PRIMARY}
    assert primary["ports"][0]["port"] == 5432 and primary["type"] == "ClusterIP"
    read = one(objects, "Service", k.replicas_service(homelab))["spec"]
    assert read["selector"] == {**sel, k.LABEL_ROLE: k.ROLE_REPLICA}
    external = one(objects, "Service", k.external_service(homelab))
    # metallb.io/ since MetalLB 0.14.9; the metallb.universe.tf/ prefix is deprecated.
    assert external["metadata"]["annotations"] == {"metallb.io/loadBalancerIPs": "192.168.10.100"}
    assert external["spec"]["type"] == "LoadBalancer"
    assert external["spec"]["loadBalancerSourceRanges"] == ["192.168.10.0/24"]
    assert external["spec"]["externalTrafficPolicy"] == "Local"
    assert external["spec"]["selector"][k.LABEL_ROLE] == k.ROLE_PRIMARY


def test_no_external_service_when_the_spec_says_none(homelab):
    spec = variant(homelab, kubernetes={**homelab.kubernetes.model_dump(),
                                        "services": {"primary": {}, "external": {"type": "none"}}})
    names = [o["metadata"]["name"] for o in by_kind(manifests(spec), "Service")]
    assert k.external_service(spec) not in names and k.primary_service(spec) in names


def test_pg_hba_plain_inside_tls_outside(homelab):
    plain = one(manifests(homelab), "ConfigMap", k.config_configmap(homelab))["data"]
    assert f"host all all {k.POD_NETWORK} scram-sha-256" in plain["pg_hba.conf"]
    assert "host all all 192.168.10.0/24 scram-sha-256" in plain["pg_hba.conf"]
    assert "trust" not in plain["pg_hba.conf"] and "ssl = on" not in plain["postgresql.conf"]
    tls = variant(homelab, kubernetes={"tls_secret": "homelab-server-tls"})
    objects = manifests(tls)
    conf = one(objects, "ConfigMap", k.config_configmap(tls))["data"]
    assert "hostssl all all 192.168.10.0/24 scram-sha-256" in conf["pg_hba.conf"]
    assert "host all all 192.168.10.0/24" not in conf["pg_hba.conf"]
    assert f"ssl_cert_file = '{k.TLS_MOUNT}/tls.crt'" in conf["postgresql.conf"]
    pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
    assert {"name": "tls", "mountPath": k.TLS_MOUNT, "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert any(v.get("secret", {}).get("secretName") == "homelab-server-tls" for v in pod["volumes"])


def test_network_policy(homelab):
    objects = manifests(homelab)
    policy = one(objects, "NetworkPolicy", homelab.name)["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    postgres_sources = policy["ingress"][0]["from"]
    assert {"ipBlock": {"cidr": "192.168.10.0/24"}} in postgres_sources
    assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 5432}]
    assert policy["egress"][0]["to"] == [{"podSelector": {"matchLabels": k.selector_labels(homelab)}}]


def test_the_drill_pods_are_reached_only_by_pg_ops_runs(homelab):
    """Drill pods hold a restored copy of the data (and a recovery pod the store's keys): in the
    drill namespace a NetworkPolicy selects exactly them (every scratch pod of this cluster, no
    member), lets only pg_ops's namespace reach their PostgreSQL, and lets them reach only DNS and
    the archive's S3 port. Applied by an admin with the drill Role, which may read it (drift)."""
    objects = manifests(homelab)
    drills = k.drill_namespace(homelab)
    policy = one(objects, "NetworkPolicy", f"{k.role_name(homelab)}-drills")
    assert policy["metadata"]["namespace"] == drills
    spec = policy["spec"]
    labels = k.scratch_labels(homelab, "pitr")
    selector = spec["podSelector"]
    assert all(labels.get(key) == value for key, value in selector["matchLabels"].items())
    assert selector["matchExpressions"] == [{"key": k.LABEL_SCRATCH, "operator": "Exists"}]
    assert not set(k.selector_labels(homelab).items()) <= set(selector["matchLabels"].items())  # no member
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": k.PG_OPS_NAMESPACE}}}], "ports": [{"protocol": "TCP", "port": 5432}]}]
    ports = [p for rule in spec["egress"] for p in rule["ports"]]
    assert {"protocol": "UDP", "port": 53} in ports
    assert {"protocol": "TCP", "port": 9000} in ports or {"protocol": "TCP", "port": 443} in ports  # the store
    role = one(objects, "Role", f"{k.role_name(homelab)}-drills")
    assert {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
            "resourceNames": [policy["metadata"]["name"]], "verbs": ["get"]} in role["rules"]


def test_drill_pods_are_confined_never_members_and_keep_their_secrets_out_of_the_pod_spec(homelab):
    """The scratch server and the recovery pod (render/scratch.py): the cluster's image, non-root,
    no API token, never restarted, nothing persistent; labelled so the drill NetworkPolicy selects
    them and no member Service does; a password or a store key only through their own Secret."""
    scratch_name = k.scratch_name(homelab, "drill", "abc123")
    server = scratch.scratch_server_pod_spec(homelab, scratch_name, {"fsync": False, "max_connections": 20})
    recovery = scratch.recovery_pod_spec(homelab, scratch_name)
    for pod_spec in (server, recovery):
        pod = scratch.scratch_pod(homelab, scratch_name, "drill", pod_spec)
        assert pod["metadata"]["namespace"] == k.drill_namespace(homelab)
        labels = pod["metadata"]["labels"]
        assert labels[k.LABEL_SCRATCH] == "drill"
        assert not set(k.selector_labels(homelab).items()) <= set(labels.items())  # no member
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsUser"] == 999 and spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert all("persistentVolumeClaim" not in v for v in spec["volumes"])
        container = spec["containers"][0]
        assert container["image"] == homelab.kubernetes.image
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["limits"] == {"cpu": homelab.kubernetes.resources.cpu,
                                                    "memory": homelab.kubernetes.resources.memory}
    container = server["containers"][0]
    assert container["args"] == ["postgres", "-c", "fsync=off", "-c", "max_connections=20"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"] == {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
        "name": scratch_name, "key": k.SCRATCH_PASSWORD_KEY}}}
    assert env["PGDATA"]["value"] == k.PGDATA
    container = recovery["containers"][0]
    assert container["command"] == ["bash", f"{k.RECOVERY_MOUNT}/{k.RECOVERY_SCRIPT}"]
    assert {"name": "recovery", "mountPath": k.RECOVERY_MOUNT, "readOnly": True} in container["volumeMounts"]
    assert {"name": "recovery", "secret": {"secretName": scratch_name, "defaultMode": 0o440}} in recovery["volumes"]
    secret = scratch.scratch_secret(homelab, scratch_name, "drill", {k.SCRATCH_PASSWORD_KEY: "s3cret"})
    assert secret["metadata"] == scratch.scratch_metadata(homelab, scratch_name, "drill")
    assert secret["data"] == {k.SCRATCH_PASSWORD_KEY: "czNjcmV0"}  # base64 of the value




def test_the_primary_has_its_own_disruption_budget(homelab):
    """A drain may not evict the primary (switch over first); the other members go one at a
    time. No pod is selected by both (the eviction API refuses such a pod). The replica budget is
    an integer minAvailable (members - 2, as CloudNativePG): `maxUnavailable: 1` got
    disruptionsAllowed 0 from the real disruption controller, which counts the StatefulSet's
    replicas for it (issue 21). test_control_plane.py runs both budgets on the real controller;
    the real eviction API enforces them in test_kubernetes_nodes.py."""
    budgets = {b["metadata"]["name"]: b["spec"] for b in by_kind(manifests(homelab), "PodDisruptionBudget")}
    primary, others = budgets[f"{homelab.name}-primary"], budgets[homelab.name]
    assert primary["minAvailable"] == 1
    assert primary["selector"] == {"matchLabels": {**k.selector_labels(homelab), k.LABEL_ROLE: k.ROLE_PRIMARY}}
    assert others["minAvailable"] == len(homelab.member_names) - 2 == 1 and "maxUnavailable" not in others
    assert others["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert others["selector"]["matchExpressions"] == [
        {"key": k.LABEL_ROLE, "operator": "NotIn", "values": [k.ROLE_PRIMARY]}]


def rules_by_resource(rules: list[dict]) -> dict[tuple[str, str], list[tuple[frozenset, frozenset]]]:
    out: dict = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), []).append(
                    (frozenset(rule["verbs"]), frozenset(rule.get("resourceNames") or [])))
    return out


def allowed(rules, group: str, resource: str, verb: str, name: str | None = None) -> bool:
    return any(verb in verbs and (not names or name in names)
               for verbs, names in rules_by_resource(rules).get((group, resource), []))


def test_rbac_grants_only_what_the_platform_uses(homelab):
    objects = manifests(homelab)
    rules = one(objects, "Role", k.role_name(homelab))["rules"]
    assert not any("*" in str(part) for rule in rules for part in rule.values())
    # No `create pods` where the cluster's Secrets are (it would read them all by mounting them):
    # the drills' pods are created in their own namespace, which holds nothing else.
    assert not allowed(rules, "", "pods", "create")
    drills = one(objects, "Role", f"{k.role_name(homelab)}-drills")
    assert drills["metadata"]["namespace"] == k.drill_namespace(homelab) == "postgresql-drills"
    assert allowed(drills["rules"], "", "pods", "create") and allowed(drills["rules"], "", "secrets", "create")
    assert not allowed(drills["rules"], "", "secrets", "get")
    members = homelab.member_names
    # Exec over WebSocket is a GET: `get` (Kubernetes <= 1.34) and `create` (1.35+), members only.
    assert all(allowed(rules, "", "pods/exec", v, m) for v in ("get", "create") for m in members)
    assert not allowed(rules, "", "pods/exec", "get", "other-pod")
    assert allowed(rules, "", "pods", "patch", members[0]) and not allowed(rules, "", "pods", "patch", "other-pod")
    assert not allowed(rules, "", "pods", "watch")  # nothing watches
    # The Git-owned ConfigMaps are read-only for pg_ops (ArgoCD applies them); the desired
    # state is pg_ops's own, updated by compare-and-swap.
    for name in (k.config_configmap(homelab), k.script_configmap(homelab), f"{homelab.name}-exporter-queries"):
        assert allowed(rules, "", "configmaps", "get", name)
        assert (not allowed(rules, "", "configmaps", "patch", name)
                and not allowed(rules, "", "configmaps", "update", name))
    assert allowed(rules, "", "configmaps", "update", k.state_configmap(homelab))
    # delete: only its own record (a recovered cluster whose recovery failed is removed)
    assert allowed(rules, "", "configmaps", "delete", k.state_configmap(homelab))
    assert not allowed(rules, "", "configmaps", "delete", k.config_configmap(homelab))
    # Secrets: its own credentials (update adds a role), the backup store's keys, and the
    # application credentials it delivers into this namespace (database owner app), by name.
    assert allowed(rules, "", "secrets", "update", k.credentials_secret(homelab))
    assert allowed(rules, "", "secrets", "get", "pg-ops-backup-s3")  # backups.store.credentials_secret
    readable = {name for verbs, names in rules_by_resource(rules)[("", "secrets")] if "get" in verbs for name in names}
    assert readable == {k.credentials_secret(homelab), "pg-ops-backup-s3", "homelab-app", "homelab-app-read"}
    assert not allowed(rules, "", "secrets", "list")
    # Every Git-owned object can be read by name (prepare's existence check, the drift check);
    # none can be written with gitops: true.
    for obj in objects:
        group, resource = obj["apiVersion"].rpartition("/")[0], k.plural(obj["kind"])
        here = rules if obj["metadata"]["namespace"] == homelab.kubernetes.namespace else drills["rules"]
        assert allowed(here, group, resource, "get", obj["metadata"]["name"]), obj["metadata"]["name"]
        if obj["kind"] != "ConfigMap":
            assert not allowed(here, group, resource, "patch", obj["metadata"]["name"]), obj["kind"]
    binding = one(objects, "RoleBinding", k.role_name(homelab))
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pg-ops", "namespace": k.PG_OPS_NAMESPACE}]


def test_rbac_without_gitops_lets_pg_ops_apply_all_but_its_own_access(homelab):
    applying = variant(homelab, kubernetes={"gitops": False})
    objects = manifests(applying)
    rules = one(objects, "Role", k.role_name(applying))["rules"]
    # The drill namespace's objects are an admin's too (pg_ops may only run drill pods there).
    assert all(admin_applied(applying, o) for o in objects
               if o["metadata"]["namespace"] != applying.kubernetes.namespace)
    for obj in (o for o in objects if o["metadata"]["namespace"] == applying.kubernetes.namespace):
        group, resource, name = obj["apiVersion"].rpartition("/")[0], k.plural(obj["kind"]), obj["metadata"]["name"]
        admin_only = obj["kind"] in ("Role", "RoleBinding")
        assert allowed(rules, group, resource, "patch", name) is not admin_only, obj["kind"]
        assert allowed(rules, group, resource, "create") is not admin_only or obj["kind"] == "ConfigMap", obj["kind"]


def test_no_backup_secret_is_readable_without_one_in_the_spec(homelab):
    filestore = variant(homelab, backups={"store": {"type": "file", "path": "backups"}})
    rules = one(manifests(filestore), "Role", k.role_name(filestore))["rules"]
    readable = {name for verbs, names in rules_by_resource(rules)[("", "secrets")] if "get" in verbs for name in names}
    assert readable == {k.credentials_secret(filestore), "homelab-app", "homelab-app-read"}  # + the owner's delivered


def test_rbac_for_exactly_the_credentials_secrets_in_application_namespaces(homelab):
    """A role's credentials go to the namespaces it names: there, a Role for exactly its two
    Secrets (create cannot be limited by name) bound to pg_ops's ServiceAccount; the cluster's
    Role gains nothing for them."""
    spec = variant(homelab, roles=[{"name": "shop_rw", "secret_namespaces": ["shop", "shop-jobs"]},
                                   {"name": "nopass", "password": "none"}],
                   databases=[{"name": "app", "owner": "app", "default_privileges": {"writers": ["shop_rw"]}}])
    objects = manifests(spec)
    cluster_role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == "postgresql")
    assert not allowed(cluster_role["rules"], "", "secrets", "get", "homelab-shop-rw")
    for namespace in ("shop", "shop-jobs"):
        role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == namespace)
        binding = next(o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] == namespace)
        for verb in ("get", "update", "delete"):
            assert allowed(role["rules"], "", "secrets", verb, "homelab-shop-rw")
            assert allowed(role["rules"], "", "secrets", verb, "homelab-shop-rw-read")
            assert not allowed(role["rules"], "", "secrets", verb, "homelab-credentials")
        assert not allowed(role["rules"], "", "secrets", "list")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pg-ops", "namespace": k.PG_OPS_NAMESPACE}]
    assert {o["metadata"]["namespace"] for o in objects} == {"postgresql", "postgresql-drills", "shop", "shop-jobs"}


# -- offline validators ------------------------------------------------------------------------------
def test_rendered_manifests_pass_kubernetes_validate_strict(homelab, tmp_path):
    write_manifests(homelab, manifests(homelab), tmp_path)
    done = kubernetes_validate(yaml_files(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    # It only warns on custom resources; every built-in kind must really have been checked.
    builtin = {o["kind"] for o in manifests(homelab)} - CUSTOM_KINDS
    assert builtin <= {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "StatefulSet",
                       "PodDisruptionBudget", "NetworkPolicy", "Deployment"}


def test_kubernetes_validate_catches_a_broken_manifest(homelab, tmp_path):
    """The validator really runs strict: an unknown field fails."""
    objects = manifests(homelab)
    one(objects, "StatefulSet")["spec"]["updateStrategy"]["typo"] = "x"
    (tmp_path / "statefulset.yaml").write_text(yaml.safe_dump(one(objects, "StatefulSet")))
    assert kubernetes_validate([tmp_path / "statefulset.yaml"]).returncode != 0


@pytest.mark.parametrize("tls", [False, True])
def test_rendered_manifests_pass_checkov(homelab, tmp_path, tls):
    spec = variant(homelab, kubernetes={"tls_secret": "homelab-server-tls"}) if tls else homelab
    write_manifests(spec, manifests(spec), tmp_path)
    report = checkov(tmp_path)
    assert report["summary"]["passed"] > 50, report["summary"]
    assert failed_checks(report) == []
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]


def test_checkov_would_fail_without_the_skips(homelab, tmp_path):
    """The skips are needed (each hides a real finding), not decoration."""
    objects = manifests(homelab)
    one(objects, "StatefulSet")["metadata"].pop("annotations")
    write_manifests(homelab, objects, tmp_path)
    failed = {f.split()[0] for f in failed_checks(checkov(tmp_path))}
    assert failed == {"CKV_K8S_40", "CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_35"}


def test_custom_resources_have_their_required_fields(homelab):
    objects = manifests(homelab)
    monitor = one(objects, "ServiceMonitor")
    headless = one(objects, "Service", k.headless_service(homelab))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints and all(e["port"] in {p["name"] for p in headless["spec"]["ports"]} for e in endpoints)
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= headless["metadata"]["labels"].items()
    others = [s for s in by_kind(objects, "Service") if s is not headless]
    assert not any(wanted.items() <= s["metadata"]["labels"].items() for s in others)  # scraped once
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert r["alert"] and r["expr"] and re.fullmatch(r"\d+[smh]", r["for"])
            assert r["labels"]["severity"] in {"warning", "critical"}


# -- alerts reference produced metrics -----------------------------------------------------------
def test_promql_metric_extraction():
    expr = 'time() - max by (member) (foo_seconds{a="b"}) > 3 or absent(bar{key="x y"}) and on(pod) baz'
    assert promql_metrics(expr) == {"foo_seconds", "bar", "baz"}


def test_every_alert_uses_only_produced_metrics(homelab):
    produced = EXPORTER_DEFAULT_METRICS | PROMETHEUS_SYNTHETIC | monitoring.produced_metrics()
    alerts = one(manifests(homelab), "PrometheusRule")["spec"]["groups"][0]["rules"]
    names = {r["alert"] for r in alerts}
    assert {"PgOpsReplicationLag", "PgOpsStorageNearlyFull", "PgOpsConnectionsNearLimit", "PgOpsInstanceDown",
            "PgOpsMoreThanOnePrimary", "PgOpsBackupTooOld", "PgOpsDrillTooOld", "PgOpsHealthSensorSilent"} <= names
    for rule in alerts:
        used = promql_metrics(rule["expr"])
        assert used and used <= produced, f"{rule['alert']} uses unknown metrics {used - produced}"
    # Status keys the alerts read are ones pg_ops writes.
    keys = set(re.findall(r'key="([^"]+)"', " ".join(r["expr"] for r in alerts)))
    assert keys <= set(STATUS_KEYS)


# -- the in-pod parts against real PostgreSQL ------------------------------------------------------
def probe(ctx, member: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PGOPS_PORT": str(ctx.endpoints()[member].port),
           "PGOPS_RUN_DIR": str(ctx.platform.member_dir(member) / "run"), "PGOPS_BIN": str(settings.pg_bin())}
    return subprocess.run(["bash", str(PROBE_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def member_sql(ctx, member: str, sql: str, dbname: str = "postgres"):
    ep = ctx.endpoints()[member]
    with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, dbname=dbname,
                         password=ctx.admin_password(), autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def test_probe_script_against_real_members(cluster):
    state = cluster.state()
    primary = state.primary
    replica = next(m for m in cluster.spec.member_names if m != primary)
    for member in (primary, replica):
        for mode in (["startup"], ["live"], ["ready", "60", "67108864"]):
            done = probe(cluster, member, *mode)
            assert done.returncode == 0, f"{member} {mode}: {done.stdout}{done.stderr}"
    # A replica cut off from the primary is running but not ready: it leaves the read Service.
    member_sql(cluster, replica, "alter system set primary_conninfo = ''")
    member_sql(cluster, replica, "select pg_reload_conf()")
    wait_for(lambda: probe(cluster, replica, "ready", "60", "67108864").returncode != 0,
             "the disconnected replica to turn not ready")
    assert "not streaming" in probe(cluster, replica, "ready", "60", "67108864").stdout
    assert probe(cluster, replica, "live").returncode == 0
    # A member whose postgres is gone fails liveness (nothing is cloning or rewinding).
    kill_member(cluster.platform, replica)
    wait_for(lambda: probe(cluster, replica, "live").returncode != 0, "liveness to fail on a dead member")


def member_status(ctx, member: str) -> dict[str, str]:
    path = ctx.platform.member_dir(member) / "run" / "member-status"
    with contextlib.suppress(FileNotFoundError):
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {}


def test_probes_know_what_the_member_script_is_doing(cluster):
    """The startup and liveness probes pass while member.sh is busy (here: a wiped replica
    waiting to clone from a primary that is gone), so no fixed limit kills a long clone; a
    member that refused to start (data of another cluster) fails them, with the reason."""
    from pg_ops.state import update_state

    state = cluster.state()
    primary = state.primary
    replica = next(m for m in cluster.spec.member_names if m != primary)
    platform = cluster.platform
    kill_member(platform, replica)
    platform.wipe_member(replica)
    kill_member(platform, primary)  # nothing to clone from
    platform.start_member(replica)
    wait_for(lambda: member_status(cluster, replica).get("phase") == "waiting", "the replica waiting to clone")
    for mode in ("startup", "live"):
        done = probe(cluster, replica, mode)
        assert done.returncode == 0, done.stdout
        assert "member waiting since" in done.stdout and f"primary {primary} unreachable" in done.stdout
    assert probe(cluster, replica, "ready", "60", "67108864").returncode != 0  # busy is not ready
    kill_member(platform, replica)
    # The record now names another cluster's system identifier: the primary refuses its own data.
    update_state(platform.state_store(), lambda s: s.model_copy(update={"system_identifier": "42"}))
    platform.start_member(primary)
    wait_for(lambda: member_status(cluster, primary).get("phase") == "refused", "the primary to refuse")
    done = probe(cluster, primary, "startup")
    assert done.returncode == 1 and "member refused since" in done.stdout
    assert "belongs to another cluster" in done.stdout and "expected 42" in done.stdout


def test_exporter_queries_run_on_real_members(shared_cluster):
    """As the exporter runs them: logged in as its pg_monitor role, not as the superuser."""
    ctx = shared_cluster
    primary = ctx.state().primary
    replica = next(m for m in ctx.spec.member_names if m != primary)
    # deploy created the table; an operation records a row the way pg_ops does.
    record_status(ctx, "health_tick", 3)
    wait_for(lambda: member_sql(ctx, replica, "select count(*) from pg_stat_wal_receiver")[0][0] == 1,
             "the replica to stream")
    queries = monitoring.exporter_queries()
    for member in (primary, replica):
        ep = ctx.endpoints()[member]
        with psycopg.connect(host=ep.host, port=ep.port, user=MONITORING_USER, dbname=PG_OPS_DATABASE,
                             password=ctx.credentials().password(MONITORING_USER), autocommit=True,
                             connect_timeout=5) as conn:
            assert not conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]
            wait_for(lambda conn=conn: conn.execute(f"select 1 from {monitoring.STATUS_TABLE}").fetchall(),
                     f"the status row on {member}")
            for name, query in queries.items():
                cur = conn.execute(query["query"])
                columns = [d.name for d in cur.description]
                declared = [next(iter(m)) for m in query["metrics"]]
                assert columns == declared, f"{name} on {member}: {columns} != {declared}"
                rows = cur.fetchall()
                if name == "pg_ops_replication":
                    assert (len(rows) == len(ctx.spec.member_names) - 1) if member == primary else rows == []
                if name == "pg_ops_wal_receiver":
                    assert rows == [(1,)], f"{member} should count as streaming"
                if name == "pg_ops_member":
                    assert rows == [(0 if member == primary else 1,)]
                if name == "pg_ops_storage":
                    assert rows[0][0] > 0  # pg_ls_waldir() is allowed to pg_monitor
                if name == "pg_ops_status":
                    assert ("health_tick", ) == rows[0][:1]


def test_exporter_queries_configmap_is_the_same_queries(homelab):
    cm = one(manifests(homelab), "ConfigMap", f"{homelab.name}-exporter-queries")
    assert yaml.safe_load(cm["data"]["queries.yaml"]) == monitoring.exporter_queries()


# -- the CLI -----------------------------------------------------------------------------------------
def test_cli_render_works_offline(tmp_path):
    env = {k_: v for k_, v in os.environ.items() if k_ not in ("PG_OPS_CLUSTERS", "KUBECONFIG")}
    cli = str(REPO / ".venv" / "bin" / "pg-ops")
    done = subprocess.run([cli, "render", "--cluster", "homelab", "--out", str(tmp_path), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "statefulset.yaml" in json.loads(done.stdout)["files"]
    assert (tmp_path / "statefulset.yaml").exists()
    refused = subprocess.run([cli, "render", "--cluster", "local", "--out", str(tmp_path / "x")],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "not kubernetes" in refused.stderr


# -- the pooler (spec `pooler`: render/pooler.py) ------------------------------------------------------
def test_the_pooler_forwards_to_the_primary_service_and_no_member_selector_reaches_its_pods(homelab):
    objects = manifests(homelab)
    deployment = one(objects, "Deployment", k.pooler_name(homelab))
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    # No Service, budget or NetworkPolicy of the members selects a pooler pod, and the pooler's own
    # Service, budget and NetworkPolicy select only pooler pods.
    for obj in objects:
        selector = (obj.get("spec") or {}).get("selector") or (obj.get("spec") or {}).get("podSelector") or {}
        wanted = selector.get("matchLabels", selector) if obj["kind"] != "StatefulSet" else selector["matchLabels"]
        if not wanted or obj["metadata"]["name"] in (k.pooler_name(homelab), k.pooler_service(homelab)):
            continue
        assert not wanted.items() <= pod_labels.items(), f"{obj['kind']} {obj['metadata']['name']} selects the pooler"
    service = one(objects, "Service", k.pooler_service(homelab))
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["port"] == homelab.kubernetes.services.primary.port  # apps change the host only
    budget = one(objects, "PodDisruptionBudget", k.pooler_name(homelab))
    assert (budget["spec"]["minAvailable"] == 1
            and budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items())
    ini = one(objects, "ConfigMap", f"{k.pooler_name(homelab)}-config")["data"]["pgbouncer.ini"]
    assert f"* = host={k.primary_service(homelab)}.postgresql.svc.cluster.local port=5432" in ini
    assert "auth_query = SELECT usename, passwd FROM pgops_pooler.lookup($1)" in ini
    # Only PgBouncer's own login line of the credentials Secret is mounted, never the rest of it.
    secret_volumes = [v["secret"] for v in pod["spec"]["volumes"] if "secret" in v]
    assert secret_volumes == [{"secretName": k.credentials_secret(homelab), "defaultMode": 0o440,
                               "items": [{"key": k.POOLER_USERLIST_KEY, "path": "userlist.txt"}]}]
    # A changed pgbouncer.ini rolls the pods (PgBouncer reads it at start).
    changed = manifests(variant(homelab, pooler={"pool_size": 50}))
    assert (one(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"]
            != pod["metadata"]["annotations"])
    assert not [o for o in manifests(variant(homelab, pooler=None))
                if o["metadata"]["name"].endswith(("-pooler", "-pooler-config"))]
