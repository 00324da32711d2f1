"""A fake Kubernetes API server for tests: TEST INFRASTRUCTURE ONLY, never part of pg_ops.

Most of the Kubernetes platform's tests still run against this (a real control plane now builds
from Go modules, pg_ops_tests/controlplane.py, and the fake's kubelet is to become its client:
issue 21): an HTTP server on 127.0.0.1 that the official `kubernetes`
client talks to through an ordinary kubeconfig, behaving like the real one where pg_ops
depends on it:

- the API (store.py, server.py): label selectors, resourceVersion conflicts, 404/409, merge
  patches, server-side apply with field managers (an apply that creates is also a create),
  real Status bodies, pod exec over WebSocket, pod logs, the eviction API with
  PodDisruptionBudgets (desiredHealthy as the real disruption controller computes it: for
  maxUnavailable and percentages the expected count is the StatefulSet's replicas; computed at
  each eviction, where the real status is written asynchronously);
- authentication and RBAC (rbac.py): the kubeconfig carries pg_ops's ServiceAccount token, so
  every request the Kubernetes platform makes is authorized against the Role and RoleBinding
  pg_ops renders (verbs, resources, resourceNames) and refused with the real 403 body.
  `register_cluster` applies that Role and RoleBinding with the admin token (`admin_api()`), as
  a cluster admin would once; tests that plant objects or play `kubectl` use the admin too;
- nodes and the scheduler (scheduler.py): three nodes, cordon, node-local (`local-path`)
  volumes pinned to their node, ReadWriteOncePod, required/preferred pod anti-affinity;
- the StatefulSet controller (cluster.py): pods recreated from the template (never with a
  label pg_ops set at runtime), OnDelete honoured (RollingUpdate replaces outdated pods),
  claims from the claim templates, pvc-protection;
- a kubelet per node (kubelet.py) running each member pod as a REAL member script on this
  machine (the one from the member-script ConfigMap, as the server user, the pod's env
  translated), ConfigMap/Secret volumes written like the kubelet's atomic writer and refreshed
  after `sync_delay`, the rendered startup/liveness/readiness probes run for real (probe.sh
  against the real member; Ready follows readiness, a failing liveness probe restarts the
  container), crash restarts with back-off, graceful and forced termination (a force-deleted
  pod's container keeps running until its kubelet kills it, while its replacement may already
  run on the same ReadWriteOnce volume);
- a node partition mode (`partition_node`): that node's kubelet loses the API (deletions do not
  take effect, volumes do not refresh, exec and log requests hang until the client's timeout)
  while its pods keep serving their clients; after 40 s (scaled) the node controller marks it
  NotReady and its pods not Ready;
- Services and cluster DNS (network.py): kube-proxy-like proxies following the selector and
  readiness, and a stable port per StatefulSet pod name (PG_OPS_K8S_ADDRESSES stands in for DNS;
  each pod incarnation gets a port of its own, like a new pod IP).

What it does NOT model (check these on a real cluster): a real container runtime (no image, no
cgroups, no PID/IPC/mount namespaces: the postgres of the image is 16, here it is the wheel's
18; /dev/shm is this machine's and members use mmap dynamic shared memory instead), the
exporter sidecar (not run; counts as ready) and httpGet probes, resource requests and limits,
admission and validation (the store keeps exactly what was sent, apart from the default storage
class), strategic-merge list semantics (lists are replaced), watches, ClusterRole aggregation,
RBAC escalation checks, taints other than unreachable, taint-based eviction of a lost node's pods
(they stay as they are until the node returns), topology keys other than the hostname, PV
objects (a claim's volume is a folder per claim), NetworkPolicy, TLS to the API server, and
timing: `time_scale` (0.2 by default) shortens the kubelet's and controllers' clocks (probe
periods, grace periods, back-off, the node monitor grace), `sync_delay` is 0 by default
(a real kubelet refreshes a mounted ConfigMap within about a minute; one test class runs with
that), `force_kill_delay` is 0 (how late a kubelet notices a force-deleted pod). Pod exec serves
only `df`/`du`/`cat`, `sh` and the image's `pg_ctl`, run on this machine against the pod's
volumes (container paths passed as arguments are translated; paths inside a script are not).

    with FakeKubernetes() as fake:          # sets KUBECONFIG and PG_OPS_K8S_ADDRESSES
        fake.register_cluster(spec)         # member and Service ports, RBAC; before pg_ops runs
        ...                                 # KubernetesPlatform(spec) talks to it
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import yaml

from pg_ops.platforms import kubernetes_names as names
from pg_ops.platforms.kubernetes import ADDRESSES_ENV
from pg_ops.spec import ClusterSpec
from pg_ops_tests.fake_k8s.cluster import DEFAULT_NODES, Cluster
from pg_ops_tests.fake_k8s.rbac import ADMIN_TOKEN, PG_OPS_TOKEN
from pg_ops_tests.fake_k8s.server import FakeApiServer
from pg_ops_tests.fake_k8s.store import Store

__all__ = ["FakeKubernetes", "TIME_SCALE"]

TIME_SCALE = 0.2  # the suite's kubelet clock: a 10 s probe period runs every 2 s


class FakeKubernetes:
    def __init__(self, root: Path | None = None, *, nodes: tuple[str, ...] = DEFAULT_NODES,
                 time_scale: float = TIME_SCALE, sync_delay: float = 0.0):
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="fake-k8s-"))
        os.chmod(self.root, 0o755)  # the server user traverses it to its members' folders
        self.store = Store()
        self.api = FakeApiServer(self.store)
        (self.root / "node").mkdir(exist_ok=True)
        os.chmod(self.root / "node", 0o755)
        self.cluster = Cluster(self.store, self.root / "node", nodes, time_scale)
        self.cluster.sync_delay = sync_delay
        self.api.delete_hooks["pods"] = lambda req, key: self.cluster.delete_pod(key, _grace(req))
        self.api.delete_hooks["persistentvolumeclaims"] = lambda req, key: self.cluster.delete_claim(key)
        self.api.log_reader = self.cluster.read_log
        self.api.exec_runner = self.cluster.exec_in_pod
        self.api.partitioned = self.cluster.pod_partitioned
        self.api.evict = self.cluster.delete_pod
        self.kubeconfig = self.root / "kubeconfig"
        self.addresses = self.root / "addresses.json"
        self._saved_env: dict[str, str | None] = {}
        self._admin = None

    @property
    def url(self) -> str:
        return self.api.url

    def start(self) -> FakeKubernetes:
        self.api.start()
        self.cluster.start()
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "pg-ops", "user": {"token": PG_OPS_TOKEN}}],  # pg_ops's ServiceAccount
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "pg-ops"}}],
        }))
        self._write_addresses()
        for key, value in (("KUBECONFIG", str(self.kubeconfig)), (ADDRESSES_ENV, str(self.addresses))):
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        return self

    def stop(self) -> None:
        """Stops every process the fake started (members by process group), then the server."""
        try:
            self.cluster.stop()
        finally:
            with contextlib.suppress(Exception):
                if self._admin is not None:
                    self._admin.close()
            with contextlib.suppress(Exception):
                self.api.stop()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- an admin (kubectl as a cluster admin) -----------------------------------------------
    def admin_api(self):
        """A KubernetesApi with the cluster-admin token: for setup a person with kubectl does."""
        if self._admin is None:
            from kubernetes.client import Configuration

            from pg_ops.platforms.kubernetes_api import KubernetesApi

            cfg = Configuration(host=self.url, api_key={"authorization": ADMIN_TOKEN},
                                api_key_prefix={"authorization": "Bearer"})
            self._admin = KubernetesApi(cfg)
        return self._admin

    def bootstrap_rbac(self, spec: ClusterSpec) -> None:
        """What a cluster admin applies once, before pg_ops can do anything: the rendered Role
        and RoleBinding (pg_ops cannot grant itself access)."""
        from pg_ops.platforms.kubernetes_objects import ObjectClient
        from pg_ops.render import manifests
        from pg_ops.render.access import ADMIN_APPLIED_KINDS

        client = ObjectClient(self.admin_api())
        for obj in manifests(spec):
            if obj["kind"] in ADMIN_APPLIED_KINDS:
                client.apply(obj)

    # -- the cluster a test deploys ----------------------------------------------------------
    def register_cluster(self, spec: ClusterSpec) -> None:
        """Ports for the spec's members and Services, published in PG_OPS_K8S_ADDRESSES (the
        stand-in for cluster DNS) before pg_ops writes them into the desired state; and the
        cluster's RBAC, as an admin applies it."""
        ns = spec.kubernetes.namespace
        self.cluster.register(ns, names.statefulset_name(spec), spec.postgres.members)
        for service in (names.primary_service(spec), names.replicas_service(spec)):
            self.cluster.register_service(ns, service)
        self._write_addresses()
        self.bootstrap_rbac(spec)

    def _write_addresses(self) -> None:
        peers = {f"{ns}/{pod}": f"127.0.0.1:{port}" for (ns, pod), port in self.cluster.peer_ports.items()}
        services = {f"{ns}/{svc}": f"127.0.0.1:{port}" for (ns, svc), port in self.cluster.service_ports.items()}
        tmp = self.addresses.with_name("addresses.tmp")
        tmp.write_text(json.dumps({"peers": peers, "services": services}, indent=1))
        os.replace(tmp, self.addresses)

    # -- switches ----------------------------------------------------------------------------
    def forbid(self, verb: str, resource: str, name: str | None = None) -> None:
        """Deny one verb to pg_ops on top of its Role (what a Role without it would answer)."""
        self.api.forbid(verb, resource, name)

    def clear_denials(self) -> None:
        self.api.clear_denials()

    def hold_pending(self, namespace: str, pod: str) -> None:
        """Make a pod unschedulable (its next incarnation stays Pending)."""
        self.cluster.unschedulable.add((namespace, pod))

    def hold_scratch_pending(self, held: bool = True) -> None:
        """Make every scratch (drill-target) pod unschedulable (it stays Pending)."""
        self.cluster.scratch_unschedulable = held

    def cordon(self, node: str, unschedulable: bool = True) -> None:
        """`kubectl cordon` (or uncordon with False)."""
        self.store.mutate(("v1", "nodes", "", node), lambda o: o["spec"].update(unschedulable=unschedulable))

    def partition_node(self, node: str) -> None:
        """The node's kubelet loses the API server; its pods keep running and serving."""
        self.cluster.partition(node)

    def heal_node(self, node: str) -> None:
        self.cluster.heal(node)

    def crash_pod(self, namespace: str, pod: str) -> None:
        """SIGKILL everything the pod's container runs, now (its machine lost power)."""
        container = self.cluster.container(namespace, pod)
        if container is not None and container.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(container.proc.pid, signal.SIGKILL)

    # -- views for tests ---------------------------------------------------------------------
    def scratch_objects(self, namespace: str) -> list[str]:
        """Pods and Secrets labelled as scratch targets, and the servers bound to scratch pods."""
        found = [f"{resource} {obj['metadata']['name']}" for resource in ("pods", "secrets")
                 for obj in self.store.list("v1", resource, namespace, names.LABEL_SCRATCH)["items"]]
        return found + [f"server {name}" for ns, name in self.cluster.scratch if ns == namespace]

    def object(self, resource: str, namespace: str, name: str, api_version: str = "v1") -> dict | None:
        return self.store.find((api_version, resource, namespace, name))

    def pod_labels(self, namespace: str, pod: str) -> dict[str, str]:
        obj = self.object("pods", namespace, pod)
        return (obj or {}).get("metadata", {}).get("labels", {})

    def node_of(self, namespace: str, pod: str) -> str | None:
        return self.cluster.node_of(namespace, pod)

    def events(self, namespace: str, pod: str, reason: str | None = None) -> list[dict]:
        return [e for e in self.cluster.kubelet.events
                if e["involvedObject"]["namespace"] == namespace and e["involvedObject"]["name"] == pod
                and reason in (None, e["reason"])]

    def data_dir(self, namespace: str, pod: str) -> Path | None:
        """The member's PGDATA on this machine: `pgdata` in its data claim's volume folder."""
        claim = self.cluster.claim_dir(namespace, names.data_claim(pod))
        return None if claim is None else claim / Path(names.PGDATA).relative_to(names.PGDATA_MOUNT)

    def service_port(self, namespace: str, service: str) -> int:
        return self.cluster.service_ports[(namespace, service)]


def _grace(req) -> int | None:
    raw = req.query.get("gracePeriodSeconds")
    if raw is None and req.body:
        with contextlib.suppress(ValueError):
            raw = json.loads(req.body).get("gracePeriodSeconds")
    return None if raw is None else int(raw)
