"""pg_ops's manifests on a REAL Kubernetes control plane (issue 21): etcd, kube-apiserver,
kube-controller-manager and kube-scheduler built from pg_ops_tests/kube/ (`make control-plane`),
started by pg_ops_tests/controlplane.py. Admission, validation, defaulting, RBAC, server-side
apply, the StatefulSet and disruption controllers and the eviction API are the real ones; the
nodes are stand-in kubelets that run no container here (standin/kubelet.py with
run_containers=False: pods are reported Running and Ready); the tests with members behind the
pods are test_kubernetes_*.py (pg_ops_tests/kube_cluster.py)."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from pg_ops.operations.drift import compare_fields
from pg_ops.platforms.kubernetes_api import KubernetesApi, KubernetesError
from pg_ops.platforms.kubernetes_objects import ObjectClient
from pg_ops.render import manifests
from pg_ops.render import names as k
from pg_ops.render.access import admin_applied
from pg_ops.spec import ClusterSpec, load_spec
from pg_ops_tests import controlplane
from pg_ops_tests.support.helpers import wait_for

HOMELAB = Path(__file__).resolve().parents[1] / "deploy" / "clusters" / "homelab.yaml"
NODES = ("node-a", "node-b", "node-c")
# The replica budget as pg_ops rendered it before issue 21 (e34109a): maxUnavailable on a budget that
# selects every member but the primary.
OLD_REPLICA_BUDGET = {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"}


@pytest.fixture(scope="module")
def cp():
    try:
        plane = controlplane.ControlPlane()
    except controlplane.ControlPlaneUnavailable as exc:
        pytest.skip(str(exc))
    with plane:
        api = plane.admin_api()
        try:
            controlplane.install_operator_crds(plane)
            api.custom.create_cluster_custom_object("storage.k8s.io", "v1", "storageclasses", {
                "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "local-path"},
                "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete"})
            for name in NODES:
                plane.stand_in_node(name)
        finally:
            api.close()
        yield plane
        errors = [e for node in plane.nodes for e in node.errors]
        assert not errors, errors


@pytest.fixture
def admin(cp):
    api = cp.admin_api()
    yield api
    api.close()


def homelab(**kubernetes) -> ClusterSpec:
    spec = load_spec(HOMELAB)
    if kubernetes:
        raw = spec.model_dump()
        raw["kubernetes"] = {**raw["kubernetes"], **kubernetes}
        spec = ClusterSpec.model_validate(raw)
    return spec


def in_namespace(objects: list[dict], namespace: str) -> list[dict]:
    """The rendered objects moved to `namespace` (each test has its own)."""
    moved = copy.deepcopy(objects)
    for obj in moved:
        obj["metadata"]["namespace"] = namespace
    return moved


def create_namespace(api: KubernetesApi, name: str) -> None:
    api.core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def live(api: KubernetesApi, obj: dict) -> dict:
    found = ObjectClient(api).read(obj)
    assert found is not None, obj["metadata"]
    return found


# -- the control plane itself ----------------------------------------------------------------------
def test_not_built_and_no_go_is_one_line(monkeypatch, tmp_path):
    """What the `cp` fixture skips with on a machine without the binaries and without Go."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(controlplane, "GO_FALLBACK", str(tmp_path / "no-go"))
    with pytest.raises(controlplane.ControlPlaneUnavailable) as unavailable:
        controlplane.ControlPlane()
    message = str(unavailable.value)
    assert "\n" not in message and message.startswith("real control plane not built (")
    assert message.endswith("and no Go toolchain: run `make control-plane`")


def test_the_sweep_kills_what_a_dead_test_process_left_running():
    """A test process killed with SIGKILL cannot stop its stand-in nodes' containers (sessions of
    their own): the next control plane's sweep kills them by process group, then deletes the folder."""
    import os
    import subprocess
    import sys
    import tempfile

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = Path(tempfile.mkdtemp(prefix=controlplane.ROOT_PREFIX))
    (folder / "owner.pid").write_text(str(dead.pid))
    pod = folder / "nodes" / "node-1" / "pods" / "uid-1"
    pod.mkdir(parents=True)
    # A container: a script and its child, in a session of their own, working in the pod's folder.
    container = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], cwd=pod, start_new_session=True)
    try:
        wait_for(lambda: len(controlplane.processes_in(folder)) == 2, "the container and its child", timeout=10)
        controlplane.sweep()
        assert container.wait(timeout=10) == -9
        assert not folder.exists()
        assert controlplane.processes_in(folder) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(container.pid, 9)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_control_plane_comes_up(cp, admin):
    assert json.loads(cp._get("/version"))["gitVersion"] == cp.version == controlplane.kubernetes_version()
    assert all(c.alive() for c in cp.components), cp.logs()
    assert {c.name for c in cp.components} == set(controlplane.BINARIES)
    nodes = {n.metadata.name: n for n in admin.core.list_node().items if n.metadata.name in NODES}
    assert set(nodes) == set(NODES)
    for node in nodes.values():
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    kubernetes_service = admin.core.read_namespaced_service("kubernetes", "default")
    assert kubernetes_service.spec.cluster_ip == "127.216.0.1"  # ClusterIPs stay on loopback
    # Only 127.0.0.1: every component's listening sockets.
    for component in cp.components:
        for address in listening_addresses(component.proc.pid):
            assert address.startswith("127.0.0.1:"), (component.name, address)


def listening_addresses(pid: int) -> list[str]:
    """host:port of the TCP sockets a process listens on (from /proc: its inodes, then tcp/tcp6)."""
    import os

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                host, port = fields[1].split(":")
                if width == 8:
                    host = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
                found.append(f"{host}:{int(port, 16)}")
    return found


def test_a_silent_node_turns_unknown_and_its_pods_not_ready(cp, admin):
    """The real node lifecycle controller: a stand-in node that stops renewing its Lease is
    marked Unknown after the grace period and tainted unreachable, and its pods lose Ready (what
    the fake's partition mode imitates); back, it is Ready again."""
    node = cp.stand_in_node("node-silent")
    admin.core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "on-silent"},
                                                 "spec": {"nodeName": "node-silent",
                                                          "containers": [{"name": "c", "image": "busybox"}]}})
    wait_for(lambda: ready(admin.core.read_namespaced_pod("on-silent", "default")), "on-silent Ready")
    node.paused.set()
    try:
        def lost():
            found = admin.core.read_node("node-silent")
            status = {c.type: c.status for c in found.status.conditions}["Ready"]
            taints = {t.key for t in found.spec.taints or []}
            return status == "Unknown" and "node.kubernetes.io/unreachable" in taints
        wait_for(lost, "node-silent Unknown and tainted unreachable", timeout=90)
        wait_for(lambda: not ready(admin.core.read_namespaced_pod("on-silent", "default")), "on-silent not Ready")
    finally:
        node.paused.clear()
    wait_for(lambda: {c.type: c.status for c in admin.core.read_node("node-silent").status.conditions}["Ready"]
             == "True", "node-silent Ready again", timeout=30)
    wait_for(lambda: ready(admin.core.read_namespaced_pod("on-silent", "default")), "on-silent Ready again")
    admin.core.delete_namespaced_pod("on-silent", "default")


# -- pg_ops's manifests through real admission and validation ----------------------------------------
def test_the_rendered_homelab_manifests_apply_as_they_are(cp, admin):
    """Every object `pg-ops render` writes for the homelab spec, server-side applied with pg_ops's
    field manager (pg_ops's own ObjectClient): admission, defaulting and validation are real.
    Applied again, nothing changes, and the drift check's comparison sees no drift."""
    objects = in_namespace(manifests(homelab()), "apply")
    create_namespace(admin, "apply")
    client = ObjectClient(admin)
    for obj in objects:
        client.apply(obj)
    versions = {(o["kind"], o["metadata"]["name"]): applied(live(admin, o)) for o in objects}
    for obj in objects:
        client.apply(obj)
    assert {(o["kind"], o["metadata"]["name"]): applied(live(admin, o)) for o in objects} == versions
    # The drift check's comparison (pg_ops/operations/drift.py) finds nothing on what the real
    # server returns: defaulting and canonicalisation (quantities, ports) read as no drift.
    for obj in objects:
        body = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
        assert compare_fields(body, live(admin, obj)) == [], obj["metadata"]["name"]
    sts = live(admin, next(o for o in objects if o["kind"] == "StatefulSet"))
    # Defaulted by the server, never rendered: a drift check must not read these as drift.
    template = sts["spec"]["template"]["spec"]
    assert template["restartPolicy"] == "Always" and template["dnsPolicy"] == "ClusterFirst"
    assert sts["spec"]["revisionHistoryLimit"] == 10


def applied(obj: dict) -> tuple:
    """What an apply that changes something moves: the generation (kinds with a spec) and pg_ops's
    managedFields entry (its time). The resourceVersion also moves when a controller writes the
    status (the disruption controller's PDB status), so it is not compared."""
    mine = [(f["operation"], f.get("time"), json.dumps(f.get("fieldsV1"), sort_keys=True))
            for f in obj["metadata"].get("managedFields", []) if f["manager"] == k.FIELD_MANAGER]
    assert mine, obj["metadata"]
    return obj["metadata"].get("generation"), mine


def test_an_immutable_statefulset_field_is_refused_with_422(cp, admin):
    """The fake accepts any change; a real server refuses a change of the claim templates (the
    reason a storage change needs the StatefulSet recreated)."""
    objects = in_namespace(manifests(homelab()), "immutable")
    create_namespace(admin, "immutable")
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    client = ObjectClient(admin)
    client.apply(sts)
    changed = copy.deepcopy(sts)
    changed["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "60Gi"
    with pytest.raises(KubernetesError) as refused:
        client.apply(changed)
    assert (refused.value.status == 422
            and "Forbidden: updates to statefulset spec for fields other than" in str(refused.value))


def test_pg_ops_service_account_applies_everything_its_role_allows(cp, admin):
    """`kubernetes.gitops: false`: an admin applies the Roles and RoleBindings and the drill
    namespace's NetworkPolicy once, then pg_ops, as its own ServiceAccount (a real bound token),
    applies every other object; the real RBAC authorizer answers each request. What the Roles do
    not grant is refused with 403."""
    spec = homelab(gitops=False)
    namespace = spec.kubernetes.namespace
    objects = manifests(spec)
    for ns in sorted({o["metadata"]["namespace"] for o in objects} | {k.PG_OPS_NAMESPACE}):
        create_namespace(admin, ns)  # the cluster's, its drills' and pg_ops's own: an admin's step
    admin.core.create_namespaced_service_account(k.PG_OPS_NAMESPACE, {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": k.service_account(spec)}})
    for obj in objects:
        if admin_applied(spec, obj):  # the RBAC objects, and the drill namespace's
            ObjectClient(admin).apply(obj)
    pg_ops = KubernetesApi(controlplane.configuration(
        cp.service_account_kubeconfig(k.PG_OPS_NAMESPACE, k.service_account(spec))))
    try:
        client = ObjectClient(pg_ops)
        for obj in objects:
            if not admin_applied(spec, obj):
                client.apply(obj)
        assert client.exists(next(o for o in objects if o["kind"] == "StatefulSet"))
        with pytest.raises(KubernetesError) as refused:  # pg_ops may not grant itself more
            client.apply(next(o for o in objects if o["kind"] == "Role"))
        assert refused.value.status == 403
        # The drill pods' NetworkPolicy: pg_ops reads it (drift), and may not loosen it.
        drill_policy = next(o for o in objects if o["kind"] == "NetworkPolicy"
                            and o["metadata"]["namespace"] == k.drill_namespace(spec))
        assert client.exists(drill_policy)
        with pytest.raises(KubernetesError) as refused:
            client.apply(drill_policy)
        assert refused.value.status == 403
        with pytest.raises(ApiException) as denied:  # secrets: only its own, by name
            pg_ops.core.read_namespaced_secret("someone-elses", namespace)
        assert denied.value.status == 403
        assert "cannot get resource \"secrets\"" in json.loads(denied.value.body)["message"]
    finally:
        pg_ops.close()


# -- the replica PodDisruptionBudget and the real disruption controller ---------------------------
def deploy_members(admin: KubernetesApi, namespace: str, objects: list[dict],
                   storage_class: str = "local-path") -> ClusterSpec:
    """The rendered StatefulSet and what it needs, in `namespace`, with a local PersistentVolume
    per member pre-bound to its claim on its own stand-in node; waits for the three pods to be
    scheduled and (stand-in) Ready, then labels member 0 primary and the others replica, as
    pg_ops does."""
    spec = homelab()
    create_namespace(admin, namespace)
    client = ObjectClient(admin)
    wanted = {"ServiceAccount", "ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    for obj in in_namespace(objects, namespace):
        if obj["kind"] in wanted:
            client.apply(obj)
    for i, (member, node) in enumerate(zip(spec.member_names, NODES, strict=True)):
        admin.core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-data-{i}"},
            "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": storage_class, "persistentVolumeReclaimPolicy": "Retain",
                     "local": {"path": f"/var/lib/stand-in/{namespace}/{member}"},
                     "claimRef": {"namespace": namespace, "name": k.data_claim(member)},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})

    def all_ready():
        pods = admin.core.list_namespaced_pod(namespace).items
        return len(pods) == 3 and all(ready(p) for p in pods)
    try:
        wait_for(all_ready, f"three Ready member pods in {namespace}", timeout=90)
    except AssertionError as exc:
        pods = [(p.metadata.name, p.spec.node_name, p.status.phase,
                 [(c.type, c.status, c.message) for c in p.status.conditions or []])
                for p in admin.core.list_namespaced_pod(namespace).items]
        events = [f"{e.involved_object.name}: {e.reason}: {e.message}"
                  for e in admin.core.list_namespaced_event(namespace).items][-8:]
        raise AssertionError(f"{exc}\npods: {pods}\nevents: {events}") from None
    for member in spec.member_names:
        role = k.ROLE_PRIMARY if member.endswith("-0") else "replica"
        admin.core.patch_namespaced_pod(member, namespace, {"metadata": {"labels": {k.LABEL_ROLE: role}}})
    return spec


def ready(pod) -> bool:
    return pod.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def budget_status(admin: KubernetesApi, namespace: str, name: str, **expect) -> dict:
    """The budget's status once the disruption controller has computed it for its current
    generation and the expected figures (wait: the controller writes it asynchronously)."""
    def current():
        budget = admin.custom.get_namespaced_custom_object("policy", "v1", namespace, "poddisruptionbudgets", name)
        status = budget.get("status", {})
        if status.get("observedGeneration") != budget["metadata"]["generation"]:
            return None
        figures = {key: status.get(key) for key in ("expectedPods", "currentHealthy", "desiredHealthy",
                                                    "disruptionsAllowed")}
        return figures if all(figures[key] == value for key, value in expect.items()) else None
    return wait_for(current, f"budget {namespace}/{name} with {expect}", timeout=60)


def evict(admin: KubernetesApi, namespace: str, pod: str) -> None:
    """What `kubectl drain` does for each pod."""
    admin.core.create_namespaced_pod_eviction(pod, namespace, {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace}})


def refused_eviction(admin: KubernetesApi, namespace: str, pod: str) -> str:
    with pytest.raises(ApiException) as refused:
        evict(admin, namespace, pod)
    assert refused.value.status == 429, refused.value.body
    body = json.loads(refused.value.body)
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    return body["details"]["causes"][0]["message"]


def test_the_old_replica_budget_allowed_no_eviction_at_all(cp, admin):
    """The HIGH finding of issue 21, on the real disruption controller: with `maxUnavailable: 1`
    the expected count is the StatefulSet's 3 replicas, not the 2 pods the budget selects, so
    2 healthy replicas of 2 desired allow no disruption and every drain hangs."""
    objects = manifests(homelab())
    replica_budget = next(o for o in objects if o["kind"] == "PodDisruptionBudget"
                          and o["metadata"]["name"] == "homelab")
    replica_budget["spec"] = {**OLD_REPLICA_BUDGET, "selector": replica_budget["spec"]["selector"]}
    deploy_members(admin, "pdb-old", objects)
    figures = budget_status(admin, "pdb-old", "homelab", currentHealthy=2)
    assert figures == {"expectedPods": 3, "currentHealthy": 2, "desiredHealthy": 2, "disruptionsAllowed": 0}
    assert refused_eviction(admin, "pdb-old", "homelab-1") == \
        "The disruption budget homelab needs 2 healthy pods and has 2 currently"


def test_the_rendered_replica_budget_lets_replicas_go_one_at_a_time(cp, admin):
    """The fixed render (integer minAvailable = members - 2, as CloudNativePG): the real
    controller allows exactly one replica eviction; the second replica and the primary are
    refused with 429 until the evicted member is back and Ready."""
    spec = homelab()
    ns = "pdb"
    deploy_members(admin, ns, manifests(spec))
    assert budget_status(admin, ns, "homelab", currentHealthy=2) == {
        "expectedPods": 2, "currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1}
    assert budget_status(admin, ns, "homelab-primary", currentHealthy=1) == {
        "expectedPods": 1, "currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0}
    assert refused_eviction(admin, ns, "homelab-0") == \
        "The disruption budget homelab-primary needs 1 healthy pods and has 1 currently"
    first = admin.core.read_namespaced_pod("homelab-1", ns).metadata.uid
    evict(admin, ns, "homelab-1")  # 201: allowed
    # The eviction itself spent the budget (status.disruptionsAllowed 0, homelab-1 among its
    # disruptedPods): the second replica is refused at once, whether or not the controller has
    # recounted the healthy pods yet.
    assert re.fullmatch(r"The disruption budget homelab needs 1 healthy pods and has [12] currently",
                        refused_eviction(admin, ns, "homelab-2"))
    # The StatefulSet recreates the evicted member (same claim, same node); once it is Ready the
    # budget allows one again, and the other replica may go.
    wait_for(lambda: (p := admin.core.list_namespaced_pod(ns, field_selector="metadata.name=homelab-1").items)
             and p[0].metadata.uid != first and ready(p[0]), "homelab-1 recreated and Ready", timeout=60)
    budget_status(admin, ns, "homelab", currentHealthy=2, disruptionsAllowed=1)
    evict(admin, ns, "homelab-2")


def test_a_replica_that_is_not_ready_may_always_go(cp, admin):
    """`unhealthyPodEvictionPolicy: AlwaysAllow` on the real eviction API: with one replica not
    Ready the budget allows no disruption (the healthy replica is refused), but the unhealthy one
    may still be evicted, so a crash-looping replica never blocks a drain."""
    ns = "pdb-unhealthy"
    deploy_members(admin, ns, manifests(homelab()))
    budget_status(admin, ns, "homelab", currentHealthy=2, disruptionsAllowed=1)
    for node in cp.nodes:
        node.not_ready.add((ns, "homelab-1"))
    try:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        admin.core.patch_namespaced_pod_status("homelab-1", ns, {"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "ReadinessProbeFailed", "lastTransitionTime": now}]}})
        assert budget_status(admin, ns, "homelab", currentHealthy=1) == {
            "expectedPods": 2, "currentHealthy": 1, "desiredHealthy": 1, "disruptionsAllowed": 0}
        assert refused_eviction(admin, ns, "homelab-2") == \
            "The disruption budget homelab needs 1 healthy pods and has 1 currently"
        evict(admin, ns, "homelab-1")  # not Ready: allowed all the same
    finally:
        for node in cp.nodes:
            node.not_ready.discard((ns, "homelab-1"))


BUDGET_VARIANTS = [{"maxUnavailable": 1}, {"minAvailable": 1}, {"maxUnavailable": "50%"}, {"minAvailable": "50%"},
                   {"minAvailable": "100%"}, {"maxUnavailable": 0}]


# -- growing the data volumes (issue 23) ------------------------------------------------------------
def test_storage_grows_where_its_class_expands_and_is_refused_where_it_cannot(cp, admin):
    """A larger kubernetes.storage on the real API server: with a class that allows expansion the
    claims are patched and the StatefulSet (whose claim template is immutable) is replaced with
    its pods orphaned, not one pod replaced; with local-path, which cannot expand, the real
    admission refuses the first patch and pg_ops says so in one line, nothing changed."""
    from kubernetes import client as k8s

    from pg_ops.errors import Unsupported
    from pg_ops.platforms.kubernetes import KubernetesPlatform

    k8s.StorageV1Api(admin.client).create_storage_class({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "expandable"},
        "provisioner": "example.com/none", "allowVolumeExpansion": True})
    for ns, storage_class in (("grow", "expandable"), ("nogrow", "local-path")):
        spec = homelab(namespace=ns, storage_class=storage_class, gitops=False)
        deploy_members(admin, ns, manifests(spec), storage_class=storage_class)
        wait_for(lambda ns=ns: all(c.status.phase == "Bound"
                                   for c in admin.core.list_namespaced_persistent_volume_claim(ns).items),
                 f"the claims in {ns} bound", timeout=60)
    pods = {p.metadata.name: p.metadata.uid for p in admin.core.list_namespaced_pod("grow").items}
    sts_uid = admin.apps.read_namespaced_stateful_set("homelab", "grow").metadata.uid

    larger = homelab(namespace="grow", storage_class="expandable", gitops=False, storage="60Gi")
    grown = KubernetesPlatform(larger, api=admin).grow_storage()
    assert grown == [k.data_claim(m) for m in larger.member_names]
    assert {c.spec.resources.requests["storage"] for c in admin.core.list_namespaced_persistent_volume_claim(
        "grow").items} == {"60Gi"}
    wait_for(lambda: not admin.apps.list_namespaced_stateful_set("grow").items, "the StatefulSet deleted", timeout=30)
    ObjectClient(admin).apply(next(o for o in manifests(larger) if o["kind"] == "StatefulSet"))  # prepare's apply
    sts = admin.apps.read_namespaced_stateful_set("homelab", "grow")
    assert (sts.metadata.uid != sts_uid
            and sts.spec.volume_claim_templates[0].spec.resources.requests["storage"] == "60Gi")
    assert {p.metadata.name: p.metadata.uid for p in admin.core.list_namespaced_pod("grow").items} == pods  # kept

    refused = homelab(namespace="nogrow", storage_class="local-path", gitops=False, storage="60Gi")
    before = admin.apps.read_namespaced_stateful_set("homelab", "nogrow").metadata.uid
    with pytest.raises(Unsupported) as err:
        KubernetesPlatform(refused, api=admin).grow_storage()
    message = str(err.value)
    assert "claim data-homelab-0 (storage class local-path) cannot grow from 50Gi to 60Gi" in message
    assert "nothing was changed" in message and "\n" not in message
    assert {c.spec.resources.requests["storage"] for c in admin.core.list_namespaced_persistent_volume_claim(
        "nogrow").items} == {"50Gi"}
    assert admin.apps.read_namespaced_stateful_set("homelab", "nogrow").metadata.uid == before
