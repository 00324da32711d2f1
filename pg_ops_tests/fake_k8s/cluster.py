"""The fake cluster's control loop: nodes, the StatefulSet controller, the scheduler, each node's
kubelet, the node controller, Service and pod-name proxies, and restore-drill scratch pods.

- Nodes: `node-0` … (three by default), Node objects in the store. `cordon` marks one
  unschedulable; `partition` cuts a node's kubelet off the API: nothing on that node changes any
  more (no starts, no kills, no status, no volume refresh) while its processes keep running and
  serving; exec and log requests for its pods hang until the client gives up; after the node
  monitor grace period (40 s, scaled) the node controller marks the node NotReady and tainted
  unreachable and its pods not Ready (they leave the Services). `heal` reconnects it: its kubelet
  kills what the API no longer has and starts what it has.
- StatefulSet controller: pods `<sts>-<i>` from the template (a fresh port as the pod's
  "IP" each time, labels `controller-revision-hash`, `statefulset.kubernetes.io/pod-name`), their
  PVCs from the claim templates (storageClassName defaulted to `local-path`, K3s's default
  class), OrderedReady or Parallel. A pod is recreated as soon as its object is gone; a claim
  being deleted holds its pod back. Template changes: `RollingUpdate` replaces outdated pods
  (highest ordinal first, one at a time, when all are Ready); `OnDelete` never does, the pods
  show the old revision until something deletes them. Nothing the template lacks (a role label
  pg_ops set) survives a recreation.
- Claims: deleting a PVC waits while a pod object uses it (pvc-protection); then its volume
  folder is deleted (reclaim policy Delete), even under a container of a force-deleted pod that
  is still stopping, as local-path's helper would.
- Evictions (`pods/<name>/eviction`, what `kubectl drain` calls) are answered by the API server
  from the PodDisruptionBudgets (server.py).

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

from pg_ops.platforms import kubernetes_names as names
from pg_ops.platforms.local import LocalScratchServer
from pg_ops.platforms.server_user import server_user
from pg_ops_tests.fake_k8s.kubelet import MIN_KILL_GRACE_S, Container, Kubelet
from pg_ops_tests.fake_k8s.network import PodNameProxy, ServiceProxy, pod_ready
from pg_ops_tests.fake_k8s.scheduler import SELECTED_NODE, UNREACHABLE_TAINT, Scheduler, claim_names
from pg_ops_tests.fake_k8s.store import ApiError, Key, Store, now
from pg_ops_tests.helpers import free_port, free_port_range

CONTROLLER = "kube-controller-manager"
LOOP_INTERVAL_S = 0.1
NODE_MONITOR_GRACE_S = 40.0  # kube-controller-manager's --node-monitor-grace-period
DEFAULT_NODES = ("node-0", "node-1", "node-2")
NODE_LOCAL_CLASSES = {"local-path"}
DEFAULT_STORAGE_CLASS = "local-path"
REVISION_LABEL = "controller-revision-hash"


class Clock:
    """The kubelet's and controllers' sense of time: `scale` shortens their periods."""

    def __init__(self, scale: float):
        self.scale = scale
        self._stop = threading.Event()

    def sleep(self, seconds: float) -> bool:
        """Sleep; True if the fake is stopping."""
        return self._stop.wait(max(seconds, 0))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()


def _revision(template: dict) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _owner(pod: dict) -> str | None:
    refs = [r for r in pod["metadata"].get("ownerReferences", []) if r.get("kind") == "StatefulSet"]
    return refs[0]["name"] if refs else None


class Cluster:
    def __init__(self, store: Store, root: Path, nodes: tuple[str, ...] = DEFAULT_NODES, time_scale: float = 1.0):
        self.store = store
        self.root = root
        self.user = server_user()
        self.clock = Clock(time_scale)
        self.kubelet = Kubelet(store, root, self.user, self.clock)
        self.scheduler = Scheduler(store, NODE_LOCAL_CLASSES, DEFAULT_STORAGE_CLASS)
        self.node_names = nodes
        self.partitioned: dict[str, float] = {}  # node -> since (monotonic)
        self.node_monitor_grace = NODE_MONITOR_GRACE_S
        self.peer_ports: dict[tuple[str, str], int] = {}  # (ns, pod) -> its stable "DNS" port
        self.peer_proxies: dict[tuple[str, str], PodNameProxy] = {}
        self.service_ports: dict[tuple[str, str], int] = {}
        self.proxies: dict[tuple[str, str], ServiceProxy] = {}
        self.unschedulable: set[tuple[str, str]] = set()  # pods a test holds Pending
        self.virtual: set[str] = set()  # uids of pods that run no member script (nothing to run here)
        self.errors: list[str] = []
        self.scratch: dict[tuple[str, str], LocalScratchServer] = {}
        self.scratch_unschedulable = False  # every scratch pod stays Pending
        self._scratch_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fake-k8s-controllers", daemon=True)

    # -- switches ----------------------------------------------------------------------------
    proxy_sync_period = 0.0  # ServiceProxy.sync_period of every Service proxy (kube-proxy's reprogramming)

    def set_proxy_sync_period(self, seconds: float) -> None:
        self.proxy_sync_period = seconds
        for proxy in self.proxies.values():
            proxy.set_sync_period(seconds)

    @property
    def sync_delay(self) -> float:
        return self.kubelet.sync_delay

    @sync_delay.setter
    def sync_delay(self, seconds: float) -> None:
        self.kubelet.sync_delay = seconds

    @property
    def force_kill_delay(self) -> float:
        return self.kubelet.force_kill_delay

    @force_kill_delay.setter
    def force_kill_delay(self, seconds: float) -> None:
        self.kubelet.force_kill_delay = seconds

    def partition(self, node: str) -> None:
        self.partitioned.setdefault(node, time.monotonic())

    def heal(self, node: str) -> None:
        self.partitioned.pop(node, None)

    def pod_partitioned(self, namespace: str, pod: str) -> bool:
        obj = self.store.find(("v1", "pods", namespace, pod))
        return obj is not None and obj["spec"].get("nodeName") in self.partitioned

    def node_of(self, namespace: str, pod: str) -> str | None:
        obj = self.store.find(("v1", "pods", namespace, pod))
        return None if obj is None else obj["spec"].get("nodeName")

    # -- registration (ports known before pg_ops writes addresses into the desired state) ---
    def register(self, namespace: str, statefulset: str, members: int) -> None:
        for i in range(max(members, 1)):
            key = (namespace, f"{statefulset}-{i}")
            if key not in self.peer_ports:
                self.peer_ports[key] = free_port_range(1)
                self.peer_proxies[key] = PodNameProxy(self.store, namespace, key[1], self.peer_ports[key])

    def register_service(self, namespace: str, service: str) -> int:
        return self.service_ports.setdefault((namespace, service), free_port_range(1))

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for name in self.node_names:
            if self.store.find(("v1", "nodes", "", name)) is None:
                self.store.create(("v1", "nodes", "", name), {
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}}, CONTROLLER)
        self._thread.start()

    def stop(self) -> None:
        self.clock.stop()
        self._thread.join(timeout=10)
        for proxy in [*self.proxies.values(), *self.peer_proxies.values()]:
            proxy.stop()
        self.kubelet.kill_all()
        with self._scratch_lock:
            servers, self.scratch = list(self.scratch.values()), {}
        for server in servers:
            with contextlib.suppress(Exception):
                server.remove()

    def _loop(self) -> None:
        while not self.clock.stopped:
            try:
                self.reconcile()
            except Exception as exc:  # noqa: BLE001 - a controller keeps going; tests can read errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.clock.sleep(LOOP_INTERVAL_S)

    def reconcile(self) -> None:
        self._node_controller()
        statefulsets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s
                        for s in self.store.list("apps/v1", "statefulsets", None)["items"]}
        for sts in statefulsets.values():
            self._statefulset(sts)
        pods = self.store.list("v1", "pods", None)["items"]
        for pod in pods:
            self._controllers_on_pod(pod, statefulsets)
        pods = self.store.list("v1", "pods", None)["items"]
        for node in self.node_names:
            if node not in self.partitioned:
                self._kubelet(node, [p for p in pods if p["spec"].get("nodeName") == node])
        self._release_claims()
        for (ns, svc), port in self.service_ports.items():
            if (ns, svc) not in self.proxies and self.store.find(("v1", "services", ns, svc)) is not None:
                self.proxies[(ns, svc)] = ServiceProxy(self.store, ns, svc, port, self.proxy_sync_period)

    # -- node controller ---------------------------------------------------------------------
    def _node_controller(self) -> None:
        for name in self.node_names:
            key = ("v1", "nodes", "", name)
            node = self.store.find(key)
            if node is None:
                continue
            since = self.partitioned.get(name)
            lost = since is not None and time.monotonic() - since > self.node_monitor_grace * self.clock.scale
            taints = [t for t in node["spec"].get("taints") or [] if t["key"] != UNREACHABLE_TAINT]
            if lost:
                taints.append({"key": UNREACHABLE_TAINT, "effect": "NoSchedule"})
            want_ready = "Unknown" if lost else "True"
            if (node["spec"].get("taints") or []) != taints or node["status"]["conditions"][0]["status"] != want_ready:
                self.store.mutate(key, lambda o, taints=taints, ready=want_ready: (
                    o["spec"].update(taints=taints), o["status"].update(conditions=[{"type": "Ready", "status": ready}])))
            if lost:  # MarkPodsNotReady: the node's pods leave the Services
                for pod in self.store.list("v1", "pods", None)["items"]:
                    if pod["spec"].get("nodeName") == name and pod_ready(pod):
                        status = dict(pod.get("status") or {})
                        status["conditions"] = [{**c, "status": "False"} if c["type"] in ("Ready", "ContainersReady")
                                                else c for c in status.get("conditions", [])]
                        self.store.set_status(("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"]),
                                              status)

    # -- StatefulSet controller --------------------------------------------------------------
    def _statefulset(self, sts: dict) -> None:
        ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        spec = sts["spec"]
        replicas = spec.get("replicas", 1)
        revision = _revision(spec["template"])
        parallel = spec.get("podManagementPolicy") == "Parallel"
        pods = {}
        for i in range(replicas):
            pod_name = f"{name}-{i}"
            pod = self.store.find(("v1", "pods", ns, pod_name))
            if pod is None:
                if not parallel and not all(pod_ready(p) for p in pods.values()):
                    break
                if not self._ensure_claims(sts, pod_name):
                    continue
                pod = self.store.create(("v1", "pods", ns, pod_name), self._new_pod(sts, pod_name, revision),
                                        CONTROLLER)
            pods[pod_name] = pod
        ready = sum(1 for p in pods.values() if pod_ready(p))
        current = [p for p in pods.values() if p["metadata"]["labels"].get(REVISION_LABEL) == revision]
        strategy = (spec.get("updateStrategy") or {}).get("type", "RollingUpdate")
        if strategy == "RollingUpdate" and len(pods) == replicas and ready == replicas:
            outdated = [p for p in pods.values() if p["metadata"]["labels"].get(REVISION_LABEL) != revision
                        and not p["metadata"].get("deletionTimestamp")]
            if outdated:
                victim = max(outdated, key=lambda p: int(p["metadata"]["name"].rsplit("-", 1)[1]))
                self.delete_pod(("v1", "pods", ns, victim["metadata"]["name"]), None)
        old_revisions = {p["metadata"]["labels"].get(REVISION_LABEL) for p in pods.values()} - {revision}
        status = {"replicas": len(pods), "readyReplicas": ready, "currentReplicas": len(pods) - len(current)
                  if old_revisions else len(pods), "updatedReplicas": len(current),
                  "currentRevision": f"{name}-{sorted(old_revisions)[0]}" if old_revisions else f"{name}-{revision}",
                  "updateRevision": f"{name}-{revision}", "observedGeneration": sts["metadata"].get("generation", 1)}
        if sts.get("status") != status:
            self.store.set_status(("apps/v1", "statefulsets", ns, name), status)

    def _ensure_claims(self, sts: dict, pod_name: str) -> bool:
        """The pod's PVCs exist (made from the claim templates); False while one of them is still
        being deleted (the real controller would make a pod stuck on it)."""
        ns = sts["metadata"]["namespace"]
        for template in sts["spec"].get("volumeClaimTemplates", []):
            claim = f"{template['metadata']['name']}-{pod_name}"
            existing = self.store.find(("v1", "persistentvolumeclaims", ns, claim))
            if existing is not None and existing["metadata"].get("deletionTimestamp"):
                return False
            if existing is None:
                spec = dict(template.get("spec", {}))
                spec.setdefault("storageClassName", DEFAULT_STORAGE_CLASS)  # the DefaultStorageClass admission
                labels = {**(template["metadata"].get("labels") or {}),
                          **sts["spec"]["selector"].get("matchLabels", {})}
                local = spec["storageClassName"] in NODE_LOCAL_CLASSES
                self.store.create(("v1", "persistentvolumeclaims", ns, claim),
                                  {"metadata": {"name": claim, "labels": labels}, "spec": spec,
                                   "status": {"phase": "Pending" if local else "Bound"}}, CONTROLLER)
        return True

    def _new_pod(self, sts: dict, pod_name: str, revision: str) -> dict:
        template = sts["spec"]["template"]
        spec = json.loads(json.dumps(template.get("spec", {})))
        port = free_port()  # this incarnation's "pod IP"
        for container in spec.get("containers", []):
            for p in container.get("ports", []):
                if p.get("name") == names.PORT_NAME:
                    p["containerPort"] = port
        spec["hostname"] = pod_name
        spec["subdomain"] = sts["spec"].get("serviceName", "")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec["volumes"] = list(spec.get("volumes", [])) + [
            {"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{pod_name}"}}
            for t in sts["spec"].get("volumeClaimTemplates", [])]
        labels = {**template.get("metadata", {}).get("labels", {}), REVISION_LABEL: revision,
                  "statefulset.kubernetes.io/pod-name": pod_name,
                  "apps.kubernetes.io/pod-index": pod_name.rsplit("-", 1)[1]}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": labels,
                             "annotations": template.get("metadata", {}).get("annotations", {}),
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                  "name": sts["metadata"]["name"], "uid": sts["metadata"]["uid"],
                                                  "controller": True, "blockOwnerDeletion": True}]},
                "spec": spec, "status": {"phase": "Pending", "conditions": []}}

    # -- pods: garbage collection and scheduling ---------------------------------------------
    def _controllers_on_pod(self, pod: dict, statefulsets: dict) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if names.LABEL_SCRATCH in (pod["metadata"].get("labels") or {}):
            self._reconcile_scratch(pod)
            return
        owner = _owner(pod)
        if owner is not None and not pod["metadata"].get("deletionTimestamp"):
            sts = statefulsets.get((ns, owner))
            if sts is None or int(name.rsplit("-", 1)[1]) >= sts["spec"].get("replicas", 1):
                self.delete_pod(("v1", "pods", ns, name), None)  # owner gone or scaled down
                return
        if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            return
        node, why = self.scheduler.choose(pod, (ns, name) in self.unschedulable)
        key = ("v1", "pods", ns, name)
        if node is None:
            self._set_status(pod, {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}]})
            return
        for claim_name in claim_names(pod):
            claim_key = ("v1", "persistentvolumeclaims", ns, claim_name)
            claim = self.store.find(claim_key)
            if claim is not None and self.scheduler.node_local(claim) and \
                    not (claim["metadata"].get("annotations") or {}).get(SELECTED_NODE):
                self.store.mutate(claim_key, lambda o, node=node: (
                    o["metadata"].setdefault("annotations", {}).update({SELECTED_NODE: node}),
                    o.setdefault("status", {}).update(phase="Bound")))
        self.store.mutate(key, lambda o: (o["spec"].update(nodeName=node), o.setdefault("status", {}).update(
            conditions=[{"type": "PodScheduled", "status": "True"}])))

    def _set_status(self, pod: dict, status: dict) -> None:
        if pod.get("status") != status:
            self.store.set_status(("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"]), status)

    # -- the kubelet of one node -------------------------------------------------------------
    def _kubelet(self, node: str, pods: list[dict]) -> None:
        kubelet = self.kubelet
        uids = {p["metadata"]["uid"] for p in pods}
        for container in list(kubelet.containers.values()):
            if container.node == node and container.uid not in uids and not container.terminating:
                # Its pod object is gone (force-deleted): stop it once this kubelet notices.
                kubelet.terminate(container, MIN_KILL_GRACE_S * self.clock.scale, kubelet.force_kill_delay)
        for pod in pods:
            if names.LABEL_SCRATCH in (pod["metadata"].get("labels") or {}):
                continue
            uid = pod["metadata"]["uid"]
            container = kubelet.containers.get(uid)
            if pod["metadata"].get("deletionTimestamp"):
                grace = pod["metadata"].get("deletionGracePeriodSeconds", 30) * self.clock.scale
                if container is not None and not container.terminating:
                    kubelet.terminate(container, grace, on_done=self._container_gone)
                elif container is None:
                    self._remove_pod(pod)
                continue
            if container is None:
                if uid not in self.virtual:
                    self._start(node, pod)
                else:
                    self._set_status(pod, _virtual_status(pod))
                continue
            kubelet.supervise(pod, container)
            if not container.terminating:
                self._set_status(pod, kubelet.status(pod, container))

    def _attach_problem(self, node: str, pod: dict, claim: dict) -> str:
        """Why the claim cannot be mounted here yet: another container still holds it."""
        uid = claim["metadata"]["uid"]
        for other in self.kubelet.containers.values():
            if uid not in other.claims or other.gone or other.uid == pod["metadata"]["uid"]:
                continue
            if other.node != node:
                return (f'Multi-Attach error for volume "pvc-{uid}" Volume is already used by pod(s) '
                        f"{other.pod}")
            if "ReadWriteOncePod" in (claim["spec"].get("accessModes") or []) and not self.scheduler.node_local(claim):
                return (f'MountVolume.SetUp failed for volume "pvc-{uid}" : volume uses the ReadWriteOncePod '
                        f"access mode and is already in use by another pod")
        return ""

    def _start(self, node: str, pod: dict) -> None:
        _, problem = self.kubelet.volume_objects(pod)
        claim_dirs, claim_uids = {}, []
        ns = pod["metadata"]["namespace"]
        for claim_name in claim_names(pod) if not problem else []:
            claim = self.store.find(("v1", "persistentvolumeclaims", ns, claim_name))
            if claim is None or claim["metadata"].get("deletionTimestamp"):
                problem = f'persistentvolumeclaim "{claim_name}" not found'
                break
            problem = self._attach_problem(node, pod, claim)
            if problem:
                break
            claim_dirs[claim_name] = self.kubelet.make_claim_dir(claim)
            claim_uids.append(claim["metadata"]["uid"])
        if problem:
            self._set_status(pod, _waiting(pod, "ContainerCreating", problem))
            return
        try:
            container = self.kubelet.start(pod, node, claim_dirs, claim_uids)
        except Exception as exc:  # noqa: BLE001 - reported in the pod status, retried next loop
            self._set_status(pod, _waiting(pod, "CreateContainerError", str(exc)))
            return
        if container is None:
            self.virtual.add(pod["metadata"]["uid"])
            self._set_status(pod, _virtual_status(pod))
        else:
            self._set_status(pod, self.kubelet.status(pod, container))

    def _container_gone(self, container: Container) -> None:
        """A deleted pod's container stopped: the kubelet confirms the deletion."""
        pod = self.store.find(("v1", "pods", container.namespace, container.pod))
        if pod is not None and pod["metadata"]["uid"] == container.uid:
            self._remove_pod(pod)

    def _remove_pod(self, pod: dict) -> None:
        self.virtual.discard(pod["metadata"]["uid"])
        with contextlib.suppress(ApiError):
            current = self.store.get(("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"]))
            if current["metadata"]["uid"] == pod["metadata"]["uid"]:
                self.store.remove(("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"]))
        shutil.rmtree(self.kubelet.pod_dir(pod["metadata"]["uid"]), ignore_errors=True)

    # -- deletion (API hooks) ----------------------------------------------------------------
    def delete_pod(self, key: Key, grace: int | None) -> dict:
        """DELETE of a pod: graceful (deletionTimestamp; the node's kubelet stops it, then the
        object goes) or grace 0 (gone at once; the kubelet kills what it runs when it notices).
        A pod no node took goes at once."""
        pod = self.store.get(key)
        if names.LABEL_SCRATCH in (pod["metadata"].get("labels") or {}):
            return self._delete_scratch(key)
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if grace == 0 or not pod["spec"].get("nodeName"):
            return self.store.remove(key)
        if pod["metadata"].get("deletionTimestamp"):
            return pod
        return self.store.mutate(key, lambda o: o["metadata"].update(deletionTimestamp=now(),
                                                                     deletionGracePeriodSeconds=grace))

    def delete_claim(self, key: Key) -> dict:
        """DELETE of a PVC: it waits while a pod object uses it (the pvc-protection finalizer)."""
        return self.store.mutate(key, lambda o: o["metadata"].update(
            deletionTimestamp=now(), finalizers=["kubernetes.io/pvc-protection"]))

    def _release_claims(self) -> None:
        """PVCs being deleted that no pod object uses any more go, and their volume folder too."""
        pods = self.store.list("v1", "pods", None)["items"]
        for claim in self.store.list("v1", "persistentvolumeclaims", None)["items"]:
            meta = claim["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            if any(p["metadata"]["namespace"] == meta["namespace"] and meta["name"] in claim_names(p) for p in pods):
                continue
            with contextlib.suppress(ApiError):
                self.store.remove(("v1", "persistentvolumeclaims", meta["namespace"], meta["name"]))
            shutil.rmtree(self.kubelet.claim_dir(claim), ignore_errors=True)

    # -- views for tests ---------------------------------------------------------------------
    def container(self, namespace: str, pod: str) -> Container | None:
        return self.kubelet.container_of(namespace, pod)

    def claim_dir(self, namespace: str, claim: str) -> Path | None:
        obj = self.store.find(("v1", "persistentvolumeclaims", namespace, claim))
        return None if obj is None else self.kubelet.claim_dir(obj)

    # -- exec and logs (API server hooks) ------------------------------------------------------
    def exec_in_pod(self, ns: str, pod_name: str, container: str | None, command: list[str]):
        pod = self.store.find(("v1", "pods", ns, pod_name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{pod_name}" not found', {"name": pod_name, "kind": "pods"})
        if container not in (None, names.CONTAINER):
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod_name}")
        running = self.kubelet.containers.get(pod["metadata"]["uid"])
        if running is None or not running.alive() or running.killing:
            raise ApiError(400, "BadRequest", f"container {names.CONTAINER} is not running in pod {pod_name}")
        return self.kubelet.exec_runner(running, command)

    def read_log(self, ns: str, pod: str, container: str | None, tail: int | None) -> str:
        running = self.kubelet.container_of(ns, pod)
        if running is None:
            raise ApiError(400, "BadRequest", f'container "{names.CONTAINER}" in pod "{pod}" is waiting to start: '
                                              f"ContainerCreating")
        return self.kubelet.read_log(running, tail)

    # -- scratch pods (restore-drill targets) ---------------------------------------------------
    def _scratch_password(self, pod: dict) -> tuple[str | None, str]:
        """POSTGRES_PASSWORD from the Secret the pod's env names: (password, problem)."""
        ns = pod["metadata"]["namespace"]
        for container in pod["spec"].get("containers", []):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef") if env.get("name") == "POSTGRES_PASSWORD" else None
                if ref is None:
                    continue
                secret = self.store.find(("v1", "secrets", ns, ref["name"]))
                if secret is None or ref["key"] not in (secret.get("data") or {}):
                    return None, f'secret "{ref["name"]}" not found or has no key {ref["key"]}'
                return base64.b64decode(secret["data"][ref["key"]]).decode(), ""
        return None, "no POSTGRES_PASSWORD from a Secret (the image refuses to initdb without one)"

    def _reconcile_scratch(self, pod: dict) -> None:
        """A scratch pod is bound to a throw-away local server (LocalScratchServer: initdb and
        start as the server user on a free port, through the member script) whose superuser
        password is the POSTGRES_PASSWORD the pod takes from its Secret; its container port
        becomes that server's port. Deleting the pod kills the server and removes its data."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        key = ("v1", "pods", ns, name)
        with self._scratch_lock:
            pod = self.store.find(key)
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                return
            server = self.scratch.get((ns, name))
            if server is None:
                if (pod.get("status") or {}).get("phase") not in (None, "Pending"):
                    return
                nodes = len(self.node_names)
                if self.scratch_unschedulable or (ns, name) in self.unschedulable:
                    self._set_status(pod, {"phase": "Pending", "conditions": [{
                        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                        "message": f"0/{nodes} nodes are available: {nodes} Insufficient memory."}]})
                    return
                password, problem = self._scratch_password(pod)
                if password is None:
                    self._set_status(pod, _waiting(pod, "CreateContainerConfigError", problem))
                    return
                home = self.root / ns / "scratch"
                home.mkdir(parents=True, exist_ok=True)
                for path in (home.parent, home):
                    os.chmod(path, 0o755)
                server = LocalScratchServer(name, password, home=home)
                try:
                    server.start()
                except Exception as exc:  # noqa: BLE001 - reported in the pod status, retried next loop
                    with contextlib.suppress(Exception):
                        server.remove()
                    self._set_status(pod, _waiting(pod, "CreateContainerError", str(exc)))
                    return
                self.scratch[(ns, name)] = server
                port = server.endpoint.port
                node = next((n for n in self.node_names if n not in self.partitioned), self.node_names[0])
                pod = self.store.mutate(key, lambda o: (o["spec"].update(nodeName=node), [
                    p.update(containerPort=port) for c in o["spec"]["containers"]
                    for p in c.get("ports", []) if p.get("name") == names.PORT_NAME]))
            if not server.running():
                self._set_status(pod, {"phase": "Failed", "containerStatuses": [
                    container_status(pod, False, {"terminated": {"exitCode": 1, "reason": "Error"}})]})
                return
            self._set_status(pod, _virtual_status(pod, ready=_port_open(server.endpoint.port)))

    def _delete_scratch(self, key: Key) -> dict:
        """The pod goes at once; its server is killed and its data dir removed before returning."""
        with self._scratch_lock:
            removed = self.store.remove(key)
            server = self.scratch.pop((key[2], key[3]), None)
        if server is not None:
            server.remove()
        return removed


def container_status(pod: dict, ready: bool, state: dict, restarts: int = 0) -> dict:
    image = next((c.get("image", "") for c in pod.get("spec", {}).get("containers", [])
                  if c["name"] == names.CONTAINER), "")
    return {"name": names.CONTAINER, "image": image, "imageID": "", "ready": ready, "restartCount": restarts,
            "state": state}


def _waiting(pod: dict, reason: str, message: str) -> dict:
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [container_status(pod, False, {"waiting": {"reason": reason, "message": message}})]}


def _virtual_status(pod: dict, ready: bool = True) -> dict:
    """A pod whose containers are not run here (no member script), or a scratch pod."""
    started = (pod.get("status") or {}).get("containerStatuses") or [{}]
    state = started[0].get("state") if "running" in (started[0].get("state") or {}) else {"running": {"startedAt": now()}}
    return {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": str(ready)}],
            "containerStatuses": [container_status(pod, ready, state)]}


def _port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False

