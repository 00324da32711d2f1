"""A Kubernetes cluster for the tests: the REAL control plane (pg_ops_tests/controlplane.py:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler) with stand-in nodes
(pg_ops_tests/standin/: kubelets that run member pods as real member scripts, a local-path
provisioner, kube-proxy and DNS stand-ins). TEST INFRASTRUCTURE ONLY.

One `KubeCluster` per test process (`shared()`: started on first use, about 10 s, stopped when
the process ends: `shutdown()`, from the session's end and atexit), and a `RealKubernetes` per
test: the namespaces it registers, pg_ops's ServiceAccount credentials in KUBECONFIG, the address
overrides in PG_OPS_K8S_ADDRESSES, and the switches a test flips (a node partitioned or cordoned,
a pod held Pending), all undone when it stops: its namespaces are deleted and waited for, every
container of theirs stopped.

    with RealKubernetes() as kube:        # skips nothing itself: ControlPlaneUnavailable when not built
        kube.register_cluster(spec)       # namespace, DNS and Service stand-ins, the admin's RBAC
        ...                               # KubernetesPlatform(spec) talks to the real API server
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from pg_ops.platforms.kubernetes import ADDRESSES_ENV
from pg_ops.render import names as names
from pg_ops.spec import ClusterSpec, PoolerSpec
from pg_ops_tests.controlplane import ControlPlane, ControlPlaneUnavailable, install_operator_crds
from pg_ops_tests.standin.api import ApiError, RawApi
from pg_ops_tests.standin.kubelet import StandInKubelet, node_ready
from pg_ops_tests.standin.network import EndpointSliceProxy, EndpointSliceWatch, PodNameProxy, PodNetwork
from pg_ops_tests.standin.provisioner import LocalPathProvisioner, storage_class

__all__ = ["ControlPlaneUnavailable", "KubeCluster", "RealKubernetes", "shared", "shutdown"]

NODES = ("node-0", "node-1", "node-2")
TIME_SCALE = 0.2  # the stand-in kubelets' clock: a 10 s probe period runs every 2 s
TOKEN_SECONDS = 24 * 3600
NAMESPACE_GONE_TIMEOUT_S = 90.0
HOLD_TAINT = "pg-ops-test/hold"
# The Dagster user-code image: on the stand-in nodes, the project's venv (its `dagster` runs a
# K8sRunLauncher run pod's `dagster api execute_run`).
USER_CODE_IMAGE = "pg-ops-user-code:stand-in"
# The spec's default pooler image, run as this machine's PgBouncer (standin/pgbouncer_image/).
POOLER_IMAGE = PoolerSpec().image
POOLER_IMAGE_DIR = Path(__file__).parent / "standin" / "pgbouncer_image"


class KubeCluster:
    def __init__(self, nodes: tuple[str, ...] = NODES, time_scale: float = TIME_SCALE):
        self.node_names, self.time_scale = nodes, time_scale
        self.cp: ControlPlane | None = None
        self.kubelets: dict[str, StandInKubelet] = {}
        self.provisioner: LocalPathProvisioner | None = None

    def start(self) -> KubeCluster:
        self.cp = cp = ControlPlane()
        try:
            cp.start()
            assert cp.root is not None
            cp.root.chmod(0o711)  # the server user traverses it to its pods' folders (keys stay 0600)
            self.admin = RawApi(cp.server, cp.pki.ca, cp.admin_cert)
            self.admin.create(("storage.k8s.io/v1", "storageclasses", "", "local-path"), storage_class())
            install_operator_crds(cp)
            volumes = cp.root / "volumes"
            volumes.mkdir()
            volumes.chmod(0o755)
            self.provisioner = LocalPathProvisioner(self.admin, volumes)
            self.provisioner.start()
            self.network = PodNetwork(cp.root / "addresses.json")
            self.endpoint_slices = EndpointSliceWatch(self.admin)
            nodes = cp.root / "nodes"
            nodes.mkdir()
            nodes.chmod(0o755)
            for name in self.node_names:
                kubelet = StandInKubelet(cp, name, self.network, nodes, time_scale=self.time_scale)
                kubelet.kubelet.local_images[USER_CODE_IMAGE] = Path(sys.executable).parent
                kubelet.kubelet.local_images[POOLER_IMAGE] = POOLER_IMAGE_DIR
                self.kubelets[name] = kubelet
                kubelet.start()
            self.admin.create(("v1", "namespaces", "", ""), {"metadata": {"name": names.PG_OPS_NAMESPACE}})
            self.admin.create(("v1", "serviceaccounts", names.PG_OPS_NAMESPACE, ""),
                              {"metadata": {"name": "pg-ops"}})
            self.kubeconfig = cp.service_account_kubeconfig(names.PG_OPS_NAMESPACE, "pg-ops")
            deadline = time.monotonic() + 30
            while not all(node_ready(self.admin, n) for n in self.node_names):
                if time.monotonic() > deadline:
                    raise TimeoutError("stand-in nodes not Ready after 30 s")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for kubelet in self.kubelets.values():
            with contextlib.suppress(Exception):
                kubelet.stop()
        self.kubelets.clear()
        if self.provisioner is not None:
            self.provisioner.stop()
        if getattr(self, "endpoint_slices", None) is not None:
            self.endpoint_slices.stop()
        if self.cp is not None:
            self.cp.stop()
            self.cp = None

    def errors(self) -> list[str]:
        found = [f"{n}: {e}" for n, k in self.kubelets.items() for e in k.errors]
        return found + [f"provisioner: {e}" for e in (self.provisioner.errors if self.provisioner else [])]


_SHARED: KubeCluster | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> KubeCluster:
    """The test process's cluster, started on first use."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = KubeCluster().start()
            atexit.register(shutdown)
        return _SHARED


def shutdown() -> None:
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is not None:
            _SHARED.stop()
            _SHARED = None


class RealKubernetes:
    """One test's view of the shared cluster: what a test asks of Kubernetes, and what it flips."""

    def __init__(self, cluster: KubeCluster | None = None):
        self._cluster = cluster
        self.namespaces: list[str] = []
        self.proxies: list = []
        self.service_ports: dict[tuple[str, str], int] = {}
        self.cordoned: set[str] = set()
        self._saved_env: dict[str, str | None] = {}
        self._admin = None
        self._denied: dict[str, dict] = {}  # Role name -> the Role before a denial
        self.holding = False
        self.config_maps: list[tuple[str, str]] = []  # (ns, name) made outside its namespaces

    @property
    def cluster(self) -> KubeCluster:
        assert self._cluster is not None
        return self._cluster

    def __enter__(self) -> RealKubernetes:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> RealKubernetes:
        if self._cluster is None:
            self._cluster = shared()
        for key, value in (("KUBECONFIG", str(self.cluster.kubeconfig)),
                           (ADDRESSES_ENV, str(self.cluster.network.path))):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        return self

    def stop(self) -> None:
        """Undo everything the test did: nodes healed and uncordoned, switches cleared, its
        namespaces deleted and waited for (their pods' containers stopped by their kubelets)."""
        cluster = self.cluster
        try:
            for kubelet in cluster.kubelets.values():
                kubelet.paused.clear()
                kubelet.not_ready.clear()
                kubelet.sync_delay = 0.0
                kubelet.kubelet.force_kill_delay = 0.0
                kubelet.kubelet.image_majors.clear()
            for node in list(self.cordoned):
                self.cordon(node, False)
            if self.holding:
                self.hold_scratch_pending(False)
            self.clear_denials()
            for ns, name in self.config_maps:
                with contextlib.suppress(ApiError):
                    cluster.admin.delete("v1", "configmaps", ns, name)
            for ns in self.namespaces:
                with contextlib.suppress(ApiError):
                    cluster.admin.delete("v1", "namespaces", None, ns)
                for pod in cluster.admin.list("v1", "pods", ns):
                    with contextlib.suppress(ApiError):
                        cluster.admin.delete("v1", "pods", ns, pod["metadata"]["name"], {"gracePeriodSeconds": 0})
            # The namespace controller empties the namespaces in the background (tests use a
            # namespace of their own); what runs on this machine stops now.
            deadline = time.monotonic() + 30
            while any(c.namespace in self.namespaces for k in cluster.kubelets.values()
                      for c in k.kubelet.containers.values()):
                if time.monotonic() > deadline:
                    raise TimeoutError("containers of deleted namespaces still running after 30 s")
                time.sleep(0.1)
        finally:
            for proxy in self.proxies:
                proxy.stop()
            for section, key in [("peers", k) for k in list(cluster.network.peers)] + \
                                [("services", k) for k in list(cluster.network.services)]:
                if key.split("/", 1)[0] in self.namespaces:
                    getattr(cluster.network, section).pop(key, None)
            cluster.network.write()
            if self._admin is not None:
                self._admin.close()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # -- an admin (kubectl as a cluster admin) ----------------------------------------------
    def admin_api(self):
        if self._admin is None:
            self._admin = self.cluster.cp.admin_api()  # type: ignore[union-attr]
        return self._admin

    def bootstrap_rbac(self, spec: ClusterSpec) -> None:
        """What a cluster admin applies once, before pg_ops can do anything: the rendered Roles
        and RoleBindings (pg_ops cannot grant itself access) and the drill namespace's objects."""
        from pg_ops.platforms.kubernetes_objects import ObjectClient
        from pg_ops.render import manifests
        from pg_ops.render.access import admin_applied

        client = ObjectClient(self.admin_api())
        for obj in manifests(spec):
            if admin_applied(spec, obj):
                client.apply(obj)
        self._wait_until_authorized(spec)

    def _wait_until_authorized(self, spec: ClusterSpec) -> None:
        """The API server's RBAC authorizer reads Roles from its informer cache: for a moment
        after an admin applied them, pg_ops may still be refused ("role … not found"; seen once
        in CI, failing a whole module's fixture). Until a SubjectAccessReview of pg_ops reading
        its credentials Secret is allowed, as a careful admin would check before handing over."""
        from pg_ops_tests.standin.api import path_of

        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
            "user": f"system:serviceaccount:{names.PG_OPS_NAMESPACE}:pg-ops",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{names.PG_OPS_NAMESPACE}",
                       "system:authenticated"],
            "resourceAttributes": {"namespace": spec.kubernetes.namespace, "verb": "get", "resource": "secrets",
                                   "name": names.credentials_secret(spec)}}}
        deadline = time.monotonic() + 30
        while not self.cluster.admin.request(
                "POST", path_of("authorization.k8s.io/v1", "subjectaccessreviews", None), review).get(
                "status", {}).get("allowed"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pg_ops is still not allowed to read {names.credentials_secret(spec)} in "
                                   f"{spec.kubernetes.namespace} 30 s after its Role was applied")
            time.sleep(0.1)

    def register_cluster(self, spec: ClusterSpec) -> None:
        """The spec's namespace (an admin creates it), the stable DNS names of its members and its
        Services' kube-proxy stand-ins, published in PG_OPS_K8S_ADDRESSES before pg_ops writes
        addresses into the desired state; and the cluster's RBAC, as an admin applies it."""
        cluster = self.cluster
        ns = spec.kubernetes.namespace
        if ns not in self.namespaces:
            self._fresh_namespace(ns)
            self.namespaces.append(ns)
        from pg_ops.render import manifests

        for obj in manifests(spec):  # where the spec delivers Secrets too (roles.secret_namespaces)
            other = obj["metadata"].get("namespace")
            if other and other not in self.namespaces and other != names.PG_OPS_NAMESPACE:
                self._fresh_namespace(other)
                self.namespaces.append(other)
        for member in spec.member_names:
            proxy = PodNameProxy(cluster.admin, cluster.network, ns, member)
            self.proxies.append(proxy)
            cluster.network.publish("peers", f"{ns}/{member}", f"127.0.0.1:{proxy.port}")
        services = [names.primary_service(spec), names.replicas_service(spec)]
        if spec.pooler is not None:
            services.append(names.pooler_service(spec))
        for service in services:
            proxy = EndpointSliceProxy(cluster.endpoint_slices, cluster.network, ns, service)
            self.proxies.append(proxy)
            self.service_ports[(ns, service)] = proxy.port
            cluster.network.publish("services", f"{ns}/{service}", f"127.0.0.1:{proxy.port}")
        self.bootstrap_rbac(spec)

    def _fresh_namespace(self, ns: str) -> None:
        """Created; one of that name an earlier test deleted is waited for first."""
        admin = self.cluster.admin
        deadline = time.monotonic() + NAMESPACE_GONE_TIMEOUT_S
        while True:
            try:
                admin.create(("v1", "namespaces", "", ""), {"metadata": {"name": ns}})
                return
            except ApiError as exc:
                if exc.code != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

    # -- switches ---------------------------------------------------------------------------
    def forbid(self, verb: str, resource: str, name: str | None = None) -> None:
        """Deny one verb to pg_ops: the Roles of the registered namespaces lose it (for `name`
        only where a rule names it), as a Role written without it would."""
        admin = self.cluster.admin
        for ns in self.namespaces:
            for role in admin.list("rbac.authorization.k8s.io/v1", "roles", ns):
                key = f"{ns}/{role['metadata']['name']}"
                self._denied.setdefault(key, role)
                rules = []
                for rule in role.get("rules") or []:
                    if resource in rule.get("resources", []) and verb in rule.get("verbs", []) \
                            and (name is None or name in (rule.get("resourceNames") or [name])):
                        verbs = [v for v in rule["verbs"] if v != verb]
                        if verbs:
                            rules.append({**rule, "verbs": verbs})
                        continue
                    rules.append(rule)
                admin.patch("rbac.authorization.k8s.io/v1", "roles", ns, role["metadata"]["name"],
                            {"rules": rules}, strategic=False)

    def clear_denials(self) -> None:
        admin = self.cluster.admin
        for key, role in self._denied.items():
            ns, name = key.split("/", 1)
            with contextlib.suppress(ApiError):
                admin.patch("rbac.authorization.k8s.io/v1", "roles", ns, name, {"rules": role.get("rules") or []},
                            strategic=False)
        self._denied.clear()

    def hold_pending(self, namespace: str, pod: str) -> None:
        """The pod's node is lost for scheduling: cordoned, so the pod's next incarnation (its
        local volume pins it there) stays Pending."""
        node = self.node_of(namespace, pod)
        if node is not None:
            self.cordon(node)

    def release_pending(self, namespace: str, pod: str) -> None:
        for node in list(self.cordoned):
            self.cordon(node, False)

    def hold_scratch_pending(self, held: bool = True) -> None:
        """New pods (a drill's scratch pod) stay Pending, Unschedulable: every node gets a
        NoSchedule taint nothing tolerates (running pods stay where they are)."""
        admin = self.cluster.admin
        for node in self.cluster.node_names:
            obj = admin.find(("v1", "nodes", "", node)) or {}
            taints = [t for t in (obj.get("spec") or {}).get("taints") or [] if t["key"] != HOLD_TAINT]
            if held:
                taints.append({"key": HOLD_TAINT, "value": "true", "effect": "NoSchedule"})
            admin.patch("v1", "nodes", None, node, {"spec": {"taints": taints}}, strategic=False)
        self.holding = held

    def cordon(self, node: str, unschedulable: bool = True) -> None:
        self.cluster.admin.patch("v1", "nodes", None, node, {"spec": {"unschedulable": unschedulable}})
        (self.cordoned.add if unschedulable else self.cordoned.discard)(node)

    def partition_node(self, node: str) -> None:
        """The node's kubelet loses the API server; its pods keep running and serving."""
        self.cluster.kubelets[node].paused.set()

    def heal_node(self, node: str) -> None:
        self.cluster.kubelets[node].paused.clear()

    def set_proxy_sync_period(self, seconds: float) -> None:
        """How long a change of a Service's EndpointSlices takes to reach its kube-proxy's rules
        (1 s by default, kube-proxy's minSyncPeriod)."""
        for proxy in self.proxies:
            if isinstance(proxy, EndpointSliceProxy):
                proxy.sync_period = seconds

    def set_force_kill_delay(self, seconds: float) -> None:
        """How late the kubelets notice a force-deleted pod and kill its container."""
        for kubelet in self.cluster.kubelets.values():
            kubelet.kubelet.force_kill_delay = seconds

    def proxy(self, namespace: str, service: str) -> EndpointSliceProxy:
        port = self.service_ports[(namespace, service)]
        return next(p for p in self.proxies if isinstance(p, EndpointSliceProxy) and p.port == port)

    def image_carries(self, image: str, *majors: int) -> None:
        """Member containers of `image` run these PostgreSQL majors (this machine's binaries of
        each, settings.pg_bin_for), not the wheel's 18 (standin/containers.py)."""
        for kubelet in self.cluster.kubelets.values():
            kubelet.kubelet.image_majors[image] = majors

    def set_sync_delay(self, seconds: float) -> None:
        for kubelet in self.cluster.kubelets.values():
            kubelet.sync_delay = seconds

    def crash_pod(self, namespace: str, pod: str, restart_after_s: float | None = None) -> None:
        """SIGKILL everything the pod's container runs, now (its machine lost power, or the
        container crashed). `restart_after_s`: when its kubelet restarts it, unscaled (a real
        kubelet's first back-off is 10 s; the stand-in's scaled clock would restart it sooner)."""
        for kubelet in self.cluster.kubelets.values():
            container = kubelet.container_named(namespace, pod)
            if container is not None and container.proc is not None:
                container.next_backoff_s = restart_after_s
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(container.proc.pid, signal.SIGKILL)

    # -- views for tests --------------------------------------------------------------------
    def container(self, namespace: str, pod: str):
        """The running container of the pod (on whichever node runs it), or None."""
        for kubelet in self.cluster.kubelets.values():
            found = kubelet.container_named(namespace, pod)
            if found is not None:
                return found
        return None

    def object(self, resource: str, namespace: str, name: str, api_version: str = "v1") -> dict | None:
        return self.cluster.admin.find((api_version, resource, namespace, name))

    def pod_labels(self, namespace: str, pod: str) -> dict[str, str]:
        obj = self.object("pods", namespace, pod)
        return (obj or {}).get("metadata", {}).get("labels", {})

    def node_of(self, namespace: str, pod: str) -> str | None:
        obj = self.object("pods", namespace, pod)
        return None if obj is None else obj["spec"].get("nodeName")

    def events(self, namespace: str, pod: str, reason: str | None = None) -> list[dict]:
        return [e for k in self.cluster.kubelets.values() for e in k.kubelet.events
                if e["involvedObject"]["namespace"] == namespace and e["involvedObject"]["name"] == pod
                and reason in (None, e["reason"])]

    def data_dir(self, namespace: str, pod: str) -> Path | None:
        """The member's PGDATA on this machine: `pgdata` in its data claim's volume folder."""
        claim = self.object("persistentvolumeclaims", namespace, names.data_claim(pod))
        volume = (claim or {}).get("spec", {}).get("volumeName")
        pv = self.object("persistentvolumes", "", volume) if volume else None
        path = ((pv or {}).get("spec", {}).get("hostPath") or {}).get("path")
        return None if not path else Path(path) / Path(names.PGDATA).relative_to(names.PGDATA_MOUNT)

    def service_port(self, namespace: str, service: str) -> int:
        return self.service_ports[(namespace, service)]

    def scratch_objects(self, namespace: str) -> list[str]:
        """Pods and Secrets labelled as scratch targets, and the servers bound to scratch pods."""
        admin = self.cluster.admin
        found = [f"{resource} {obj['metadata']['name']}" for resource in ("pods", "secrets")
                 for obj in admin.list("v1", resource, namespace, labelSelector=names.LABEL_SCRATCH)]
        return found + [f"server {server.name}" for k in self.cluster.kubelets.values()
                        for uid, server in list(k.scratch.items()) if k.scratch_namespace.get(uid) == namespace]



def k8s_launcher_instance(home: Path, kube: RealKubernetes):
    """The Dagster instance of `home` (DAGSTER_HOME = home/dagster): make run's config with
    production's run launcher (deploy/dagster/dagster.yaml: K8sRunLauncher, run pods in
    `dagster` as the pg-ops ServiceAccount) bound to this cluster, its run pods' image the
    user-code stand-in; and the instance ConfigMap its run pods mount. The run pods get
    PG_OPS_HOME, PG_OPS_CLUSTERS, KUBECONFIG and PG_OPS_K8S_ADDRESSES from here (a real pod
    would use its ServiceAccount token and cluster DNS)."""
    import dagster as dg

    from pg_ops import settings
    from pg_ops_tests.support.dagster import prepared_instance

    config = yaml.safe_load(settings.LOCAL_INSTANCE_CONFIG.read_text())
    production = yaml.safe_load((settings.REPO_ROOT / "deploy" / "dagster" / "dagster.yaml").read_text())
    launcher = production["run_launcher"]
    cp = kube.cluster.cp
    assert cp is not None
    passed_on = ("PG_OPS_HOME", "PG_OPS_CLUSTERS", "KUBECONFIG", "PG_OPS_K8S_ADDRESSES")
    launcher["config"].update(
        load_incluster_config=False,
        kubeconfig_file=str(cp.kubeconfig),  # the Dagster deployment's own identity (its chart's Role)
        job_image=USER_CODE_IMAGE, security_context={}, run_k8s_config={},
        env_vars=[f"{key}={os.environ[key]}" for key in passed_on])
    launcher["config"].pop("postgres_password_secret", None)  # the instance here is SQLite
    config["run_launcher"] = launcher
    (home / "dagster").mkdir(exist_ok=True)
    text = yaml.safe_dump(config)
    kube.admin_api().core.create_namespaced_config_map(names.PG_OPS_NAMESPACE, {
        "metadata": {"name": launcher["config"]["instance_config_map"]}, "data": {"dagster.yaml": text}})
    kube.config_maps.append((names.PG_OPS_NAMESPACE, launcher["config"]["instance_config_map"]))
    instance = prepared_instance(home)
    (home / "dagster" / "dagster.yaml").write_text(text)
    instance.dispose()
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def main(argv: list[str] | None = None) -> int:
    """`python -m pg_ops_tests.kube_cluster [--spec FILE ...]` (`make kube`): the real control
    plane with three stand-in nodes in the foreground until Ctrl-C (or TERM), each spec
    registered (its namespaces, its members' and Services' stand-ins, the Role and RoleBinding an
    admin applies); prints what to export so pg-ops works on it as on K3s."""
    import argparse

    from pg_ops.errors import PgOpsError
    from pg_ops.spec import load_spec

    parser = argparse.ArgumentParser(prog="python -m pg_ops_tests.kube_cluster", description=main.__doc__)
    parser.add_argument("--spec", type=Path, action="append", default=[],
                        help="a platform: kubernetes spec file to register (repeatable)")
    args = parser.parse_args(argv)
    try:
        specs = [load_spec(path) for path in args.spec]
    except PgOpsError as exc:
        print(f"make kube: {exc}")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with RealKubernetes() as kube:
            for spec in specs:
                kube.register_cluster(spec)
            cp = kube.cluster.cp
            assert cp is not None
            print(f"Kubernetes {cp.version} at {cp.server}: {len(kube.cluster.node_names)} stand-in nodes "
                  f"({', '.join(kube.cluster.node_names)}); registered: "
                  f"{', '.join(f'{s.name} (namespace {s.kubernetes.namespace})' for s in specs) or 'nothing'}\n"
                  f"export KUBECONFIG={kube.cluster.kubeconfig}    # pg_ops's ServiceAccount\n"
                  f"export {ADDRESSES_ENV}={kube.cluster.network.path}    # pod IPs, DNS names and Services here\n"
                  f"admin kubeconfig: {cp.kubeconfig}\nCtrl-C stops it and removes everything", flush=True)
            stop.wait()
    except ControlPlaneUnavailable as exc:
        print(exc)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
