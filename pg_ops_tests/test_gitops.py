"""GitOps and Dagster-on-Kubernetes files (issue 8): ArgoCD Applications, MetalLB, the Dagster
Helm values and production dagster.yaml, the user-code Dockerfile. All checked offline."""

from __future__ import annotations

import re
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from pg_ops import settings
from pg_ops.defs.partitions import TOPOLOGY_TAG
from pg_ops.render import names as k
from pg_ops.spec import load_spec
from pg_ops_tests.support.manifest_checks import checkov, documents, failed_checks, kubernetes_validate

REPO = settings.REPO_ROOT
DEPLOY = REPO / "deploy"
HOMELAB = load_spec(DEPLOY / "clusters" / "homelab.yaml")
HAND_WRITTEN = sorted([*(DEPLOY / "argocd").glob("*.yaml"), *(DEPLOY / "metallb").glob("*.yaml"),
                       DEPLOY / "dagster" / "pg-ops-config.yaml"])
CHART_VERSION = "1.13.27"

# Keys of the official chart's values (chart 1.13.27, from helm/dagster/schema in the Dagster
# repository) for the parts deploy/dagster/values.yaml sets. None: a Kubernetes object or free
# mapping below that key. A key outside this tree is a typo the chart would reject or ignore.
ANY = None
CHART_KEYS = {
    "global": {"postgresqlSecretName": ANY, "serviceAccountName": ANY, "dagsterHome": ANY,
               "celeryConfigSecretName": ANY},
    "serviceAccount": {"create": ANY, "name": ANY, "annotations": ANY},
    "postgresql": {"enabled": ANY, "image": ANY, "postgresqlHost": ANY, "postgresqlUsername": ANY,
                   "postgresqlPassword": ANY, "postgresqlDatabase": ANY, "postgresqlParams": ANY,
                   "postgresqlScheme": ANY, "service": {"port": ANY}},
    "generatePostgresqlPasswordSecret": ANY,
    "dagster-user-deployments": {
        "enabled": ANY, "enableSubchart": ANY, "imagePullSecrets": ANY,
        "deployments": [{k_: ANY for k_ in (
            "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port",
            "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
            "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
            "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName")}],
    },
    "runLauncher": {"type": ANY, "config": {"k8sRunLauncher": {k_: ANY for k_ in (
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig")}}},
    "dagsterDaemon": {
        "enabled": ANY, "image": ANY, "heartbeatTolerance": ANY, "env": ANY, "envConfigMaps": ANY,
        "envSecrets": ANY, "resources": ANY, "podSecurityContext": ANY, "securityContext": ANY,
        "runCoordinator": {"enabled": ANY, "type": ANY, "config": {"queuedRunCoordinator": {
            "maxConcurrentRuns": ANY, "tagConcurrencyLimits": ANY, "dequeueIntervalSeconds": ANY,
            "dequeueNumWorkers": ANY, "dequeueUseThreads": ANY}}},
        "runMonitoring": {"enabled": ANY, "startTimeoutSeconds": ANY, "cancelTimeoutSeconds": ANY,
                          "maxResumeRunAttempts": ANY, "pollIntervalSeconds": ANY,
                          "freeSlotsAfterRunEndSeconds": ANY},
        "runRetries": {"enabled": ANY, "maxRetries": ANY},
        "sensors": {"useThreads": ANY, "numWorkers": ANY, "numSubmitWorkers": ANY},
    },
    "retention": {"enabled": ANY, "schedule": {"purgeAfterDays": ANY},
                  "sensor": {"purgeAfterDays": {"failure": ANY, "skipped": ANY, "started": ANY, "success": ANY}}},
    "telemetry": {"enabled": ANY},
}


def unknown_keys(values, allowed, path="") -> list[str]:
    if allowed is ANY:
        return []
    if isinstance(allowed, list):
        return [bad for i, item in enumerate(values) for bad in unknown_keys(item, allowed[0], f"{path}[{i}]")]
    bad = []
    for key, value in values.items():
        if key not in allowed:
            bad.append(f"{path}.{key}".lstrip("."))
        else:
            bad += unknown_keys(value, allowed[key], f"{path}.{key}")
    return bad


# -- Kubernetes YAML written by hand -----------------------------------------------------------------
def test_hand_written_yaml_passes_kubernetes_validate_strict():
    done = kubernetes_validate(HAND_WRITTEN)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hand_written_built_in_kinds_pass_checkov(tmp_path):
    for path in HAND_WRITTEN:
        shutil.copy(path, tmp_path / path.name)
    report = checkov(tmp_path)
    assert report["summary"]["resource_count"] >= 2  # the ConfigMaps were really scanned
    assert failed_checks(report) == []


def test_argocd_application_for_the_cluster():
    app = documents(DEPLOY / "argocd" / "postgresql-homelab.yaml")[0]
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    spec = app["spec"]
    assert spec["project"] and spec["destination"]["server"]
    assert spec["destination"]["namespace"] == HOMELAB.kubernetes.namespace == "postgresql"
    source = spec["source"]
    assert source["repoURL"] and source["targetRevision"]
    assert (REPO / source["path"] / "kustomization.yaml").exists()
    assert source["path"] == f"deploy/kubernetes/{HOMELAB.name}"
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    # Named unlike the cluster: with label tracking an Application named `homelab` would claim
    # (and prune) pg_ops's own objects, which carry app.kubernetes.io/instance=homelab.
    assert app["metadata"]["name"] != k.selector_labels(HOMELAB)[k.LABEL_INSTANCE]


def test_argocd_application_for_pg_ops():
    app = documents(DEPLOY / "argocd" / "pg-ops.yaml")[0]
    spec = app["spec"]
    assert spec["destination"]["namespace"] == k.PG_OPS_NAMESPACE
    chart = next(s for s in spec["sources"] if "chart" in s)
    assert chart["chart"] == "dagster" and chart["targetRevision"] == CHART_VERSION
    values_ref = next(s for s in spec["sources"] if s.get("ref"))
    for value_file in chart["helm"]["valueFiles"]:
        assert value_file.startswith(f"${values_ref['ref']}/")
        assert (REPO / value_file.split("/", 1)[1]).exists()
    plain = next(s for s in spec["sources"] if "path" in s)
    assert (REPO / plain["path"] / plain["directory"]["include"]).exists()
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}


def test_metallb_pool_holds_the_external_address():
    pool, l2 = documents(DEPLOY / "metallb" / "homelab-pool.yaml")
    assert pool["apiVersion"] == l2["apiVersion"] == "metallb.io/v1beta1"
    assert (pool["kind"], l2["kind"]) == ("IPAddressPool", "L2Advertisement")
    start, end = pool["spec"]["addresses"][0].split("-")
    last = int(HOMELAB.kubernetes.services.external.ip.rsplit(".", 1)[1])
    assert start.rsplit(".", 1)[0] == HOMELAB.kubernetes.services.external.ip.rsplit(".", 1)[0]
    assert int(start.rsplit(".", 1)[1]) <= last <= int(end.rsplit(".", 1)[1])
    assert l2["spec"]["ipAddressPools"] == [pool["metadata"]["name"]]
    text = (DEPLOY / "metallb" / "homelab-pool.yaml").read_text()
    assert "exclude-range" in text and "5432" in text  # the FortiGate DHCP and firewall notes


def test_quickstart_says_how_k3s_must_run_for_metallb():
    """MetalLB's K3s page: K3s's own ServiceLB must be disabled; the metallb.io/ annotation the
    rendered Service uses needs MetalLB 0.14.9 or later."""
    text = (REPO / "docs" / "quickstart.md").read_text()
    assert "--disable servicelb" in text and "0.14.9" in text
    external = next(d for d in documents(DEPLOY / "kubernetes" / "homelab" / "service.yaml")
                    if d["metadata"]["name"] == k.external_service(HOMELAB))
    assert list(external["metadata"]["annotations"]) == ["metallb.io/loadBalancerIPs"]


# -- Dagster ----------------------------------------------------------------------------------------
def test_production_dagster_yaml_loads_through_dagsters_schema(tmp_path):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher

    shutil.copy(DEPLOY / "dagster" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    for cls, key in ((K8sRunLauncher, "run_launcher"), (QueuedRunCoordinator, "run_coordinator")):
        result = process_config(cls.config_type(), config[key]["config"])
        assert result.success, [e.message for e in result.errors]
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_launcher"]["config"]["service_account_name"] == k.service_account(HOMELAB)
    coordinator = config["run_coordinator"]["config"]
    assert coordinator["dequeue_interval_seconds"] == 1
    assert coordinator["tag_concurrency_limits"] == [
        {"key": TOPOLOGY_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["run_retries"]["enabled"] is False
    assert "postgres" in config["storage"]
    assert "password" not in yaml.safe_dump(config["storage"]).replace("password:\n      env:", "")


def test_helm_values_target_one_chart_version_and_use_its_keys():
    text = (DEPLOY / "dagster" / "values.yaml").read_text()
    assert f"chart version {CHART_VERSION}" in text
    assert version("dagster") == CHART_VERSION  # the chart release of the pinned dagster
    values = yaml.safe_load(text)
    assert unknown_keys(values, CHART_KEYS) == []
    assert unknown_keys({"dagsterDaemon": {"runCoordinater": {}}}, CHART_KEYS) == ["dagsterDaemon.runCoordinater"]


def test_helm_values_match_the_production_instance_config():
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster" / "dagster.yaml").read_text())
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["dequeueIntervalSeconds"] == instance["run_coordinator"]["config"]["dequeue_interval_seconds"]
    assert queued["tagConcurrencyLimits"] == instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert monitoring["maxResumeRunAttempts"] == instance["run_monitoring"]["max_resume_run_attempts"] == 0
    assert values["dagsterDaemon"]["runRetries"]["enabled"] is False
    assert values["postgresql"]["enabled"] is False  # Dagster's storage is not a pg_ops cluster
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["codeServerArgs"][:2] == ["-m", "pg_ops.definitions"]
    # Every cluster's health sensor holds a code-server thread and a daemon worker per loop.
    workers = int(deployment["codeServerArgs"][deployment["codeServerArgs"].index("--max-workers") + 1])
    sensors = values["dagsterDaemon"]["sensors"]
    assert workers > sensors["numWorkers"] >= 16 and sensors["useThreads"]
    assert instance["sensors"] == {"use_threads": True, "num_workers": sensors["numWorkers"]}
    assert values["serviceAccount"]["name"] == k.service_account(HOMELAB)


def test_run_pods_get_the_code_locations_volumes_and_env_once():
    """includeConfigInLaunchedRuns hands the deployment's env, envConfigMaps, envSecrets, volumes
    and volumeMounts to every run pod; the run launcher repeating them gave run pods two volumes
    of one name the day the copies diverged."""
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert not {"envConfigMaps", "envSecrets", "envVars", "volumes", "volumeMounts"} & set(launcher)
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    assert {"/etc/pg-ops/clusters", "/tmp", "/opt/dagster/dagster_home/storage"} <= mounts  # read-only root
    instance = yaml.safe_load((DEPLOY / "dagster" / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert not {"env_config_maps", "env_secrets", "env_vars", "volumes", "volume_mounts"} & set(instance)


def test_run_pods_are_hardened():
    values = yaml.safe_load((DEPLOY / "dagster" / "values.yaml").read_text())
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    container = launcher["securityContext"]
    assert container["allowPrivilegeEscalation"] is False and container["readOnlyRootFilesystem"] is True
    assert container["runAsNonRoot"] is True and container["capabilities"] == {"drop": ["ALL"]}
    pod = launcher["runK8sConfig"]["podSpecConfig"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    user = re.findall(r"^USER (\d+)", (DEPLOY / "dagster" / "Dockerfile").read_text(), re.M)[-1]
    assert container["runAsUser"] == pod["runAsUser"] == int(user)
    instance = yaml.safe_load((DEPLOY / "dagster" / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert instance["security_context"] == container
    assert instance["run_k8s_config"]["pod_spec_config"]["securityContext"] == pod


def test_one_backup_credentials_story():
    """homelab's backup keys: the Secret its spec names, read by pg_ops through the API in the
    cluster's namespace (the rendered Role allows exactly that, test_render.py); the Dagster
    release carries no other copy of them as environment variables pg_ops would not read."""
    store = HOMELAB.backups.store
    assert store.credentials_secret == "pg-ops-backup-s3" and store.credentials_env is None
    values = (DEPLOY / "dagster" / "values.yaml").read_text()
    instance = (DEPLOY / "dagster" / "dagster.yaml").read_text()
    assert store.credentials_secret not in values and store.credentials_secret not in instance
    assert "AWS_ACCESS_KEY_ID" not in values
    role = next(d for d in documents(DEPLOY / "kubernetes" / "homelab" / "role.yaml") if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == HOMELAB.kubernetes.namespace
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [store.credentials_secret],
            "verbs": ["get"]} in role["rules"]
    runbook = (REPO / "docs" / "runbooks" / "postgresql-backup-restore.md").read_text()
    assert f"kubectl -n {HOMELAB.kubernetes.namespace} create secret generic {store.credentials_secret}" in runbook


def test_dagster_yaml_says_what_it_is():
    head = "".join(line for line in (DEPLOY / "dagster" / "dagster.yaml").read_text().splitlines(True)
                   if line.startswith("#"))
    assert "NOT deployed and NOT what the chart generates" in head and "dagster-instance" in head


def test_cluster_specs_configmap_matches_deploy_clusters():
    docs = {d["metadata"]["name"]: d for d in documents(DEPLOY / "dagster" / "pg-ops-config.yaml")}
    specs = docs["pg-ops-cluster-specs"]["data"]
    assert specs == {"homelab.yaml": (DEPLOY / "clusters" / "homelab.yaml").read_text()}, \
        "deploy/dagster/pg-ops-config.yaml is stale: copy deploy/clusters/homelab.yaml into it"
    assert docs["pg-ops-env"]["data"]["PG_OPS_CLUSTERS"] == "/etc/pg-ops/clusters"


def test_dockerfile_uses_pgdg_client_16_and_a_non_root_user():
    text = (DEPLOY / "dagster" / "Dockerfile").read_text()
    assert "apt.postgresql.org" in text and "postgresql-client-${PG_MAJOR}" in text
    assert re.search(r"^ARG PG_MAJOR=16$", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert "requirements.lock" in text and "dagster-postgres==0.29.27" in text


@pytest.mark.parametrize("path", [p.relative_to(REPO) for p in HAND_WRITTEN])
def test_no_secret_values_in_hand_written_files(path: Path):
    for doc in documents(REPO / path):
        assert doc["kind"] != "Secret", f"{path}: Secrets are created out of band, never committed"


# -- the network diagram (docs/architecture/network.dot -> network.svg) ----------------------------
DIAGRAM_SOURCE = REPO / "docs" / "architecture" / "network.dot"
DIAGRAM_SVG = DIAGRAM_SOURCE.with_suffix(".svg")
RENDER_DIAGRAM = REPO / "scripts" / "render-network-diagram.sh"


def test_network_svg_was_rendered_from_the_current_source():
    """Without Graphviz: the generator stamps the source's sha256 into the SVG."""
    import hashlib

    stamp = re.search(r"<!-- source: docs/architecture/network.dot sha256 (\w+) -->", DIAGRAM_SVG.read_text())
    assert stamp, f"{DIAGRAM_SVG.name} was not written by {RENDER_DIAGRAM.name}"
    assert stamp.group(1) == hashlib.sha256(DIAGRAM_SOURCE.read_bytes()).hexdigest(), \
        f"{DIAGRAM_SVG.name} is stale: run scripts/render-network-diagram.sh and commit it"


def test_network_svg_matches_a_fresh_render():
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is not installed (apt-get install graphviz); the sha256 stamp test still ran")
    import html
    import subprocess

    done = subprocess.run(["bash", str(RENDER_DIAGRAM), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = html.unescape(DIAGRAM_SVG.read_text())  # Graphviz writes '-' as &#45;
    for shown in ("192.168.10.100", "postgres-ha-postgresql.postgresql.svc.cluster.local:5432", "FortiGate",
                  "postgres-ha-postgresql-read", "loadBalancerSourceRanges"):
        assert shown in text, f"the diagram no longer shows {shown}"
