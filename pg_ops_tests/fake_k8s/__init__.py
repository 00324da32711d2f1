"""A fake Kubernetes API server for tests: TEST INFRASTRUCTURE ONLY, never part of pg_ops.

No API server can run on these machines (DESIGN.md, "Real components"), so the Kubernetes
platform is tested against this: an HTTP server on 127.0.0.1 that the official `kubernetes`
client talks to through an ordinary kubeconfig, with the semantics pg_ops relies on (store.py:
label selectors, resourceVersion conflicts, 404/409, merge patches, server-side apply with
field managers), and controllers (kubelet.py) that bind StatefulSet pods to real PostgreSQL
members on this machine, run through the same member script as everywhere else.

What it does NOT model (check these on a real cluster): scheduling, nodes and their failure,
readiness/startup/liveness probes (Ready = the member's port accepts connections), watches,
strategic-merge list semantics (lists are replaced), admission and validation, RBAC beyond
the denials a test switches on, DNS (PG_OPS_K8S_ADDRESSES stands in), the kubelet's real
ConfigMap sync delay (`sync_delay`, 0 by default), NetworkPolicy, PDB enforcement. Pod exec
(WebSocket, v4.channel.k8s.io) serves only `df`/`du`, run on this machine against the bound
member's data dir.

    with FakeKubernetes() as fake:          # sets KUBECONFIG and PG_OPS_K8S_ADDRESSES
        fake.register_cluster(spec)         # member and Service ports, before pg_ops runs
        ...                                 # KubernetesPlatform(spec) talks to it
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from pg_ops.platforms import kubernetes_names as names
from pg_ops.platforms.kubernetes import ADDRESSES_ENV
from pg_ops.spec import ClusterSpec
from pg_ops_tests.fake_k8s.kubelet import Cluster
from pg_ops_tests.fake_k8s.server import FakeApiServer
from pg_ops_tests.fake_k8s.store import Store

__all__ = ["FakeKubernetes"]


class FakeKubernetes:
    def __init__(self, root: Path | None = None):
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="fake-k8s-"))
        os.chmod(self.root, 0o755)  # the server user traverses it to its members' folders
        self.store = Store()
        self.api = FakeApiServer(self.store)
        self.cluster = Cluster(self.store, self.root / "node")
        (self.root / "node").mkdir(exist_ok=True)
        os.chmod(self.root / "node", 0o755)
        self.api.delete_hooks["pods"] = lambda req, key: self.cluster.delete_pod(key, _grace(req))
        self.api.delete_hooks["persistentvolumeclaims"] = lambda req, key: self.cluster.delete_claim(key)
        self.api.log_reader = self.cluster.read_log
        self.api.exec_runner = self.cluster.exec_in_pod
        self.kubeconfig = self.root / "kubeconfig"
        self.addresses = self.root / "addresses.json"
        self._saved_env: dict[str, str | None] = {}

    @property
    def url(self) -> str:
        return self.api.url

    def start(self) -> FakeKubernetes:
        self.api.start()
        self.cluster.start()
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
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

    # -- the cluster a test deploys ----------------------------------------------------------
    def register_cluster(self, spec: ClusterSpec) -> None:
        """Ports for the spec's members and Services, published in PG_OPS_K8S_ADDRESSES (the
        stand-in for cluster DNS) before pg_ops writes them into the desired state."""
        ns = spec.kubernetes.namespace
        self.cluster.register(ns, names.statefulset_name(spec), spec.postgres.members)
        for service in (names.primary_service(spec), names.replicas_service(spec)):
            self.cluster.register_service(ns, service)
        self._write_addresses()

    def _write_addresses(self) -> None:
        peers = {}
        for workload in self.cluster.workloads.values():
            for i in range(workload.size):
                pod = f"{workload.name}-{i}"
                peers[f"{workload.namespace}/{pod}"] = f"127.0.0.1:{workload.port(pod)}"
        services = {f"{ns}/{svc}": f"127.0.0.1:{port}" for (ns, svc), port in self.cluster.service_ports.items()}
        tmp = self.addresses.with_name("addresses.tmp")
        tmp.write_text(json.dumps({"peers": peers, "services": services}, indent=1))
        os.replace(tmp, self.addresses)

    # -- switches and views for tests --------------------------------------------------------
    def forbid(self, verb: str, resource: str, name: str | None = None) -> None:
        self.api.forbid(verb, resource, name)

    def allow_all(self) -> None:
        self.api.allow_all()

    def hold_pending(self, namespace: str, pod: str) -> None:
        """Make a pod unschedulable (it stays Pending)."""
        self.cluster.unschedulable.add((namespace, pod))

    def hold_scratch_pending(self, held: bool = True) -> None:
        """Make every scratch (drill-target) pod unschedulable (it stays Pending)."""
        self.cluster.scratch_unschedulable = held

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

    def service_port(self, namespace: str, service: str) -> int:
        return self.cluster.service_ports[(namespace, service)]


def _grace(req) -> int | None:
    raw = req.query.get("gracePeriodSeconds")
    if raw is None and req.body:
        with contextlib.suppress(ValueError):
            raw = json.loads(req.body).get("gracePeriodSeconds")
    return None if raw is None else int(raw)
