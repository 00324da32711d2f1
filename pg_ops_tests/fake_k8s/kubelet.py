"""The fake cluster's controllers: a StatefulSet controller, a "kubelet" that binds the pods it
makes to REAL PostgreSQL members on this machine, and kube-proxy-like Service proxies.

- StatefulSet <sts> with N replicas -> pods <sts>-0..N-1 (and their PVCs from the claim
  templates). Each pod is bound to a member started through the same member script as the
  local platform (pg_ops/platforms/member.sh, via LocalPlatform's process machinery) on a free
  127.0.0.1 port, as the unprivileged server user. status.podIP is 127.0.0.1 and the
  container port named `postgresql` is that member's port, so pg_ops reaches it exactly as it
  reaches a real pod.
- The pod's ConfigMap/Secret volumes are files: the desired-state ConfigMap's STATE_KEY is the
  member's state file, the config ConfigMap's keys its config dir, the Secret's PASSFILE_KEY
  its passfile. They are refreshed when the objects change (after `sync_delay` seconds, like
  the kubelet's sync). A pod whose volumes name a missing ConfigMap/Secret stays Pending, as
  does a pod a test marks unschedulable.
- Deleting a pod stops its member (SIGTERM, then SIGKILL of its process group after the grace
  period; grace 0 removes the pod at once and kills in the background, as the real API does);
  the StatefulSet controller then recreates the pod and the member boots with the desired
  state of that moment. Deleting a PVC wipes the member's data dir once its pod is gone.
- Scratch pods (label names.LABEL_SCRATCH: restore-drill targets pg_ops creates itself) are
  bound to a throw-away local server (LocalScratchServer: initdb + start as the server user on
  a free port, through the member script) whose superuser password is the POSTGRES_PASSWORD
  the pod takes from its Secret; their container port becomes that server's port. The real pod
  runs the cluster's image (PostgreSQL 16); this one runs the wheel's PostgreSQL 18. Deleting
  the pod kills the server and removes its data dir before the DELETE returns.
- Network translation: the pod network is this machine's loopback. Members reach each other
  through the addresses pg_ops writes into the desired state; the test points pg_ops at
  127.0.0.1:<member port> for those and at a proxy port per Service (PG_OPS_K8S_ADDRESSES),
  because cluster DNS does not exist here.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pg_ops.platforms import kubernetes_names as names
from pg_ops.platforms.local import LocalPlatform, LocalScratchServer, _pid_alive
from pg_ops.platforms.server_user import server_user
from pg_ops.spec import ClusterSpec
from pg_ops_tests.fake_k8s.store import ApiError, Key, Store, labels_match, now
from pg_ops_tests.helpers import free_port_range

CONTROLLER = "kube-controller-manager"
LOOP_INTERVAL_S = 0.1
CRASH_BACKOFF_S = 2.0
# Exec runs on this machine, so only commands that read the pod's data volume are served.
EXEC_COMMANDS = {"df", "du", "cat"}
EXEC_TIMEOUT_S = 30


def _write(path: Path, text: str, mode: int, owner=None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    if owner is not None and owner.switch:
        os.chown(tmp, owner.uid, owner.gid)
    os.replace(tmp, path)


def _pod_port(pod: dict) -> int | None:
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == names.PORT_NAME:
                return port["containerPort"]
    return None


def _container_status(pod: dict, ready: bool, restarts: int, state: dict) -> dict:
    image = next((c.get("image", "") for c in pod.get("spec", {}).get("containers", [])
                  if c["name"] == names.CONTAINER), "")
    return {"name": names.CONTAINER, "image": image, "imageID": "", "ready": ready, "restartCount": restarts,
            "state": state}


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@dataclass
class Workload:
    """One StatefulSet's members on this machine."""

    namespace: str
    name: str
    base_port: int
    size: int
    platform: LocalPlatform
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    synced: dict[str, dict[str, str]] = field(default_factory=dict)  # pod -> volume -> resourceVersion
    seen: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)  # (pod, vol) -> (rv, first seen)
    crashed_at: dict[str, float] = field(default_factory=dict)

    def port(self, pod: str) -> int:
        return self.base_port + int(pod.rsplit("-", 1)[1])

    def lock(self, pod: str) -> threading.Lock:
        return self.locks.setdefault(pod, threading.Lock())


class Cluster:
    """The controllers over one Store, in one background thread."""

    def __init__(self, store: Store, root: Path):
        self.store = store
        self.root = root
        self.user = server_user()
        self.workloads: dict[tuple[str, str], Workload] = {}
        self.service_ports: dict[tuple[str, str], int] = {}
        self.proxies: dict[tuple[str, str], ServiceProxy] = {}
        self.unschedulable: set[tuple[str, str]] = set()
        self.sync_delay = 0.0
        self.terminating: dict[tuple[str, str], threading.Thread] = {}
        self.errors: list[str] = []
        self.scratch: dict[tuple[str, str], LocalScratchServer] = {}
        self.scratch_unschedulable = False  # every scratch pod stays Pending
        self._scratch_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-k8s-controllers", daemon=True)

    # -- registration (ports known before pg_ops writes addresses into the desired state) --------
    def register(self, namespace: str, statefulset: str, members: int) -> Workload:
        key = (namespace, statefulset)
        members = max(members, 1)
        if key not in self.workloads or self.workloads[key].size < members:
            base = free_port_range(members)
            node_spec = ClusterSpec(name=statefulset, postgres={"members": members}, local={"base_port": base})
            home = self.root / namespace
            home.mkdir(parents=True, exist_ok=True)
            os.chmod(home, 0o755)
            platform = LocalPlatform(node_spec, home=home)
            platform.root.mkdir(parents=True, exist_ok=True)
            os.chmod(platform.root, 0o755)
            self.workloads[key] = Workload(namespace, statefulset, base, members, platform)
        return self.workloads[key]

    def register_service(self, namespace: str, service: str) -> int:
        return self.service_ports.setdefault((namespace, service), free_port_range(1))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proxy in list(self.proxies.values()):
            proxy.stop()
        for thread in list(self.terminating.values()):
            thread.join(timeout=40)
        for workload in self.workloads.values():
            for i in range(workload.size):
                with contextlib.suppress(Exception):
                    workload.platform.kill_member(f"{workload.name}-{i}")
        with self._scratch_lock:
            servers, self.scratch = list(self.scratch.values()), {}
        for server in servers:
            with contextlib.suppress(Exception):
                server.remove()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # noqa: BLE001 - a controller keeps going; tests can read errors
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(LOOP_INTERVAL_S)

    def reconcile(self) -> None:
        statefulsets = self.store.list("apps/v1", "statefulsets", None)["items"]
        owners = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in statefulsets}
        for sts in statefulsets:
            self._reconcile_statefulset(sts)
        for pod in self.store.list("v1", "pods", None)["items"]:
            self._reconcile_pod(pod, owners)
        self._reconcile_services()

    # -- StatefulSet controller ------------------------------------------------------------------
    def _reconcile_statefulset(self, sts: dict) -> None:
        ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
        replicas = sts["spec"].get("replicas", 1)
        workload = self.register(ns, name, replicas)
        ready = 0
        for i in range(replicas):
            pod_name = f"{name}-{i}"
            pod = self.store.find(("v1", "pods", ns, pod_name))
            if pod is None:
                if (ns, pod_name) in self.terminating or not self._ensure_claims(sts, pod_name):
                    continue
                self.store.create(("v1", "pods", ns, pod_name), self._new_pod(sts, pod_name, workload), CONTROLLER)
            elif any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])):
                ready += 1
        status = {"replicas": replicas, "readyReplicas": ready, "currentReplicas": replicas,
                  "observedGeneration": sts["metadata"].get("generation", 1)}
        if sts.get("status") != status:
            self.store.set_status(("apps/v1", "statefulsets", ns, name), status)

    def _claims(self, sts: dict) -> list[str]:
        return [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]

    def _ensure_claims(self, sts: dict, pod_name: str) -> bool:
        """PVCs of a pod exist (created from the claim templates); False while one of them is
        still being deleted (the real controller would make a pod stuck on it)."""
        ns = sts["metadata"]["namespace"]
        for template in sts["spec"].get("volumeClaimTemplates", []):
            claim = f"{template['metadata']['name']}-{pod_name}"
            existing = self.store.find(("v1", "persistentvolumeclaims", ns, claim))
            if existing is not None and existing["metadata"].get("deletionTimestamp"):
                return False
            if existing is None:
                labels = {**sts["spec"]["selector"].get("matchLabels", {})}
                self.store.create(("v1", "persistentvolumeclaims", ns, claim),
                                  {"metadata": {"name": claim, "labels": labels}, "spec": template.get("spec", {}),
                                   "status": {"phase": "Bound"}}, CONTROLLER)
        return True

    def _new_pod(self, sts: dict, pod_name: str, workload: Workload) -> dict:
        template = sts["spec"]["template"]
        spec = dict(template.get("spec", {}))
        containers = []
        for container in spec.get("containers", []):
            container = dict(container)
            container["ports"] = [({**p, "containerPort": workload.port(pod_name)} if p.get("name") == names.PORT_NAME
                                   else p) for p in container.get("ports", [])]
            containers.append(container)
        spec["containers"] = containers
        spec["hostname"] = pod_name
        spec["subdomain"] = sts["spec"].get("serviceName", "")
        spec["volumes"] = list(spec.get("volumes", [])) + [
            {"name": claim, "persistentVolumeClaim": {"claimName": f"{claim}-{pod_name}"}} for claim in self._claims(sts)]
        labels = {**template.get("metadata", {}).get("labels", {}),
                  "statefulset.kubernetes.io/pod-name": pod_name,
                  "apps.kubernetes.io/pod-index": pod_name.rsplit("-", 1)[1]}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": labels,
                             "annotations": template.get("metadata", {}).get("annotations", {}),
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                  "name": sts["metadata"]["name"], "uid": sts["metadata"]["uid"],
                                                  "controller": True, "blockOwnerDeletion": True}]},
                "spec": spec, "status": {"phase": "Pending", "conditions": []}}

    # -- kubelet ---------------------------------------------------------------------------------
    def _workload_of(self, pod: dict, owners: dict) -> Workload | None:
        refs = [r for r in pod["metadata"].get("ownerReferences", []) if r.get("kind") == "StatefulSet"]
        if not refs:
            return None
        return self.workloads.get((pod["metadata"]["namespace"], refs[0]["name"]))

    def _reconcile_pod(self, pod: dict, owners: dict) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if names.LABEL_SCRATCH in (pod["metadata"].get("labels") or {}):
            self._reconcile_scratch(pod)
            return
        workload = self._workload_of(pod, owners)
        if workload is None:
            return  # only StatefulSet pods (and scratch pods) are bound to servers
        owner = owners.get((ns, pod["metadata"]["ownerReferences"][0]["name"]))
        if owner is None or int(name.rsplit("-", 1)[1]) >= owner["spec"].get("replicas", 1):
            if not pod["metadata"].get("deletionTimestamp"):  # owner gone or scaled down
                self.delete_pod(("v1", "pods", ns, name), None)
            return
        if pod["metadata"].get("deletionTimestamp"):
            return
        lock = workload.lock(name)
        if not lock.acquire(blocking=False):
            return
        try:
            phase = pod.get("status", {}).get("phase")
            if phase == "Pending":
                self._try_start(pod, workload)
            elif phase == "Running":
                self._keep_running(pod, workload)
        finally:
            lock.release()

    def _volumes(self, pod: dict) -> dict[str, tuple[str, str]]:
        """mountPath role -> (resource, object name) of the pod's ConfigMap/Secret volumes."""
        by_volume = {}
        for volume in pod["spec"].get("volumes", []):
            if "configMap" in volume:
                by_volume[volume["name"]] = ("configmaps", volume["configMap"]["name"],
                                             volume["configMap"].get("optional", False))
            elif "secret" in volume:
                by_volume[volume["name"]] = ("secrets", volume["secret"]["secretName"],
                                             volume["secret"].get("optional", False))
        out = {}
        for container in pod["spec"].get("containers", []):
            for mount in container.get("volumeMounts", []):
                if mount["name"] in by_volume:
                    out[mount["mountPath"]] = by_volume[mount["name"]]
        return out

    def _mounted(self, pod: dict, workload: Workload) -> dict[str, tuple[str, str, bool]]:
        """The state / config / secret volumes the pod mounts: (resource, name, optional). Every
        ConfigMap/Secret volume must exist for the pod to start; these three become files."""
        mounts = self._volumes(pod)
        roles = {names.STATE_MOUNT: "state", names.CONFIG_MOUNT: "config", names.SECRET_MOUNT: "secret"}
        out = {roles.get(path, path): volume for path, volume in mounts.items()}
        return out

    def _set_status(self, pod: dict, status: dict) -> None:
        if pod.get("status") != status:
            self.store.set_status(("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"]), status)

    def _waiting(self, pod: dict, reason: str, message: str, scheduled: bool = True) -> None:
        conditions = [{"type": "PodScheduled", "status": "True" if scheduled else "False",
                       **({} if scheduled else {"reason": reason, "message": message})}]
        statuses = [_container_status(pod, False, 0, {"waiting": {"reason": reason, "message": message}})] \
            if scheduled else []
        self._set_status(pod, {"phase": "Pending", "conditions": conditions, "containerStatuses": statuses})

    def _try_start(self, pod: dict, workload: Workload) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if (ns, name) in self.unschedulable:
            self._waiting(pod, "Unschedulable", "0/1 nodes are available: 1 Insufficient memory.", scheduled=False)
            return
        if (ns, name) in self.terminating:
            return  # the previous pod of this name is still being killed
        objects = {}
        for role, (resource, obj_name, optional) in self._mounted(pod, workload).items():
            obj = self.store.find(("v1", resource, ns, obj_name))
            if obj is None and optional:
                continue  # mounted empty: the member script waits for its file
            if obj is None:
                kind = "configmap" if resource == "configmaps" else "secret"
                self._waiting(pod, "ContainerCreating",
                              f'MountVolume.SetUp failed for volume "{role}" : {kind} "{obj_name}" not found')
                return
            objects[role] = obj
        self._member_dirs(workload, name)
        self._sync_files(workload, name, objects, force=True)
        try:
            workload.platform.start_member(name)
        except Exception as exc:  # noqa: BLE001 - reported in the pod status, retried next loop
            self._waiting(pod, "CreateContainerError", str(exc))
            return
        self._set_status(pod, self._running_status(pod, workload, ready=False, restarts=0))

    def _running_status(self, pod: dict, workload: Workload, ready: bool, restarts: int,
                        waiting: str | None = None) -> dict:
        state = {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": now()}}
        old = pod.get("status", {}).get("containerStatuses", [{}])
        if not waiting and old and "running" in old[0].get("state", {}):
            state = old[0]["state"]
        return {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}], "hostIP": "127.0.0.1",
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [_container_status(pod, ready, restarts, state)]}

    def _keep_running(self, pod: dict, workload: Workload) -> None:
        name = pod["metadata"]["name"]
        restarts = pod["status"].get("containerStatuses", [{}])[0].get("restartCount", 0)
        if not workload.platform.member_running(name):
            crashed = workload.crashed_at.setdefault(name, time.monotonic())
            if time.monotonic() - crashed < CRASH_BACKOFF_S:
                self._set_status(pod, self._running_status(pod, workload, False, restarts, "CrashLoopBackOff"))
                return
            workload.crashed_at.pop(name, None)
            with contextlib.suppress(Exception):
                workload.platform.kill_member(name)
            workload.platform.start_member(name)
            restarts += 1
            self._set_status(pod, self._running_status({**pod, "status": {}}, workload, False, restarts))
            return
        objects = {role: self.store.find(("v1", resource, pod["metadata"]["namespace"], obj_name))
                   for role, (resource, obj_name, _) in self._mounted(pod, workload).items()}
        self._sync_files(workload, name, {k: v for k, v in objects.items() if v is not None})
        ready = _port_open(workload.port(name))
        self._set_status(pod, self._running_status(pod, workload, ready, restarts))

    def _member_dirs(self, workload: Workload, pod: str) -> None:
        """The pod's volumes on this machine: data (the PVC) and run (an emptyDir)."""
        mdir = workload.platform.member_dir(pod)
        for path in (mdir, mdir / "data", mdir / "run"):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o700)
            if self.user.switch:
                os.chown(path, self.user.uid, self.user.gid)

    def _sync_files(self, workload: Workload, pod: str, objects: dict[str, dict], force: bool = False) -> None:
        """Mirror the mounted objects into the member's files (what the kubelet does for a
        ConfigMap/Secret volume), after sync_delay unless the pod is starting."""
        platform = workload.platform
        synced = workload.synced.setdefault(pod, {})
        for role, obj in objects.items():
            version = obj["metadata"]["resourceVersion"]
            if synced.get(role) == version:
                continue
            if not force:
                rv, first = workload.seen.get((pod, role), (None, 0.0))
                if rv != version:
                    workload.seen[(pod, role)] = (version, time.monotonic())
                    first = time.monotonic()
                if time.monotonic() - first < self.sync_delay:
                    continue
            data = obj.get("data") or {}
            if role == "state":
                _write(platform.state_store().path, data.get(names.STATE_KEY, ""), 0o644)
            elif role == "config":
                config = platform.root / "config"
                config.mkdir(exist_ok=True)
                os.chmod(config, 0o755)
                for key, text in data.items():
                    if key == "postgresql.conf":
                        # A dev machine, not a node: members SIGKILLed by tests must not leave
                        # their dynamic shared memory in /dev/shm (mmap keeps it in the data dir).
                        text += "\ndynamic_shared_memory_type = mmap\n"
                    _write(config / key, text, 0o644)
            elif role == "secret":
                mdir = platform.member_dir(pod)
                passfile = base64.b64decode(data.get(names.PASSFILE_KEY, "")).decode()
                _write(mdir / "pgpass", passfile, 0o600, self.user)
            synced[role] = version

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
                if self.scratch_unschedulable or (ns, name) in self.unschedulable:
                    self._waiting(pod, "Unschedulable", "0/1 nodes are available: 1 Insufficient memory.",
                                  scheduled=False)
                    return
                password, problem = self._scratch_password(pod)
                if password is None:
                    self._waiting(pod, "CreateContainerConfigError", problem)
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
                    self._waiting(pod, "CreateContainerError", str(exc))
                    return
                self.scratch[(ns, name)] = server
                port = server.endpoint.port
                pod = self.store.mutate(key, lambda o: [p.update(containerPort=port) for c in o["spec"]["containers"]
                                                        for p in c.get("ports", []) if p.get("name") == names.PORT_NAME])
            if not server.running():
                state = {"terminated": {"exitCode": 1, "reason": "Error"}}
                self._set_status(pod, {"phase": "Failed", "containerStatuses": [_container_status(pod, False, 0, state)]})
                return
            self._set_status(pod, self._running_status(pod, None, _port_open(server.endpoint.port), 0))

    def _delete_scratch(self, key: Key) -> dict:
        """The pod goes at once; its server is killed and its data dir removed before returning."""
        with self._scratch_lock:
            removed = self.store.remove(key)
            server = self.scratch.pop((key[2], key[3]), None)
        if server is not None:
            server.remove()
        return removed

    # -- deletion --------------------------------------------------------------------------------
    def delete_pod(self, key: Key, grace: int | None) -> dict:
        """DELETE of a pod: graceful (deletionTimestamp, stop, then gone) or grace 0 (gone at
        once, killed in the background)."""
        pod = self.store.get(key)
        ns, name = key[2], key[3]
        if names.LABEL_SCRATCH in (pod["metadata"].get("labels") or {}):
            return self._delete_scratch(key)
        workload = self._workload_of(pod, {})
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if workload is None:
            return self.store.remove(key)
        if grace == 0:
            removed = self.store.remove(key)
        else:
            removed = self.store.mutate(key, lambda o: o["metadata"].update(
                deletionTimestamp=now(), deletionGracePeriodSeconds=grace))
        if (ns, name) not in self.terminating:
            thread = threading.Thread(target=self._terminate, args=(key, workload, grace), daemon=True,
                                      name=f"terminate-{name}")
            self.terminating[(ns, name)] = thread
            thread.start()
        return removed

    def _terminate(self, key: Key, workload: Workload, grace: int) -> None:
        ns, name = key[2], key[3]
        try:
            with workload.lock(name):
                platform = workload.platform
                pid = platform._supervisor_pid(name)
                if pid is not None and grace > 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)  # the member script: fast shutdown
                    deadline = time.monotonic() + grace
                    while _pid_alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                platform.kill_member(name)  # SIGKILL of the process group, and any orphan
                workload.synced.pop(name, None)
                self._release_claims(ns, name, workload)
                with contextlib.suppress(Exception):
                    self.store.remove(key)
        finally:
            self.terminating.pop((ns, name), None)

    def _release_claims(self, ns: str, pod: str, workload: Workload) -> None:
        """PVCs of a gone pod that were deleted meanwhile (pvc-protection) go now, data too."""
        for claim in self.store.list("v1", "persistentvolumeclaims", ns)["items"]:
            if claim["metadata"]["name"].endswith(f"-{pod}") and claim["metadata"].get("deletionTimestamp"):
                workload.platform.wipe_member(pod)
                self.store.remove(("v1", "persistentvolumeclaims", ns, claim["metadata"]["name"]))

    def delete_claim(self, key: Key) -> dict:
        """DELETE of a PVC: at once when no pod uses it (its data wiped), else it waits for the
        pod to go (the pvc-protection finalizer)."""
        ns, claim = key[2], key[3]
        pods = self.store.list("v1", "pods", ns)["items"]
        in_use = [p for p in pods if any(v.get("persistentVolumeClaim", {}).get("claimName") == claim
                                         for v in p["spec"].get("volumes", []))]
        if in_use or any(n == ns and claim.endswith(f"-{p}") for n, p in self.terminating):
            return self.store.mutate(key, lambda o: o["metadata"].update(
                deletionTimestamp=now(), finalizers=["kubernetes.io/pvc-protection"]))
        removed = self.store.remove(key)
        for workload in self.workloads.values():
            pod = claim.split("-", 1)[1] if "-" in claim else claim
            if workload.namespace == ns and pod.startswith(f"{workload.name}-"):
                workload.platform.wipe_member(pod)
        return removed

    # -- Services ----------------------------------------------------------------------------------
    def _reconcile_services(self) -> None:
        for (ns, svc), port in self.service_ports.items():
            if (ns, svc) not in self.proxies and self.store.find(("v1", "services", ns, svc)) is not None:
                self.proxies[(ns, svc)] = ServiceProxy(self.store, ns, svc, port)

    # -- exec --------------------------------------------------------------------------------------
    def exec_in_pod(self, ns: str, pod_name: str, container: str | None, command: list[str]):
        """Exec in a bound pod: the command runs on this machine, with container paths on the
        data volume (names.PGDATA_MOUNT, names.PGDATA) turned into the member's data dir. Only
        EXEC_COMMANDS; refusals happen before the upgrade, as the real API server's do."""
        pod = self.store.find(("v1", "pods", ns, pod_name))
        workload = self._workload_of(pod, {}) if pod is not None else None
        if workload is None:
            raise ApiError(404, "NotFound", f'pods "{pod_name}" not found')
        if container not in (None, names.CONTAINER):
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod_name}")
        if pod.get("status", {}).get("phase") != "Running" or not workload.platform.member_running(pod_name):
            raise ApiError(400, "BadRequest", f"container {names.CONTAINER} is not running in pod {pod_name}")
        if command[0] not in EXEC_COMMANDS:
            raise ApiError(400, "BadRequest", f"the fake serves exec of {sorted(EXEC_COMMANDS)} only, not {command[0]}")
        data = workload.platform.data_dir(pod_name)
        # The data volume is mounted at PGDATA_MOUNT and PGDATA is a folder in it, as in the
        # rendered StatefulSet: locally the member's folder and its data/ folder.
        mapping = ((names.PGDATA, str(data)), (names.PGDATA_MOUNT, str(data.parent)))

        def local(arg: str) -> str:
            for prefix, target in mapping:
                if arg == prefix or arg.startswith(prefix + "/"):
                    return target + arg[len(prefix):]
            return arg

        def run() -> tuple[int, bytes, bytes]:
            proc = subprocess.run([local(a) for a in command], capture_output=True, timeout=EXEC_TIMEOUT_S,
                                  check=False)
            return proc.returncode, proc.stdout, proc.stderr

        return run

    # -- logs ----------------------------------------------------------------------------------------
    def read_log(self, ns: str, pod: str, container: str | None, tail: int | None) -> str:
        for workload in self.workloads.values():
            if workload.namespace == ns and pod.startswith(f"{workload.name}-"):
                try:
                    lines = workload.platform.log_path(pod).read_text(errors="replace").splitlines()
                except FileNotFoundError:
                    return ""
                return "\n".join(lines[-tail:] if tail else lines) + "\n"
        return ""


class ServiceProxy:
    """kube-proxy for one Service: each new connection goes to a Ready pod the Service's
    selector matches at that moment (existing connections stay where they are, like
    conntrack); no matching pod closes the connection."""

    def __init__(self, store: Store, namespace: str, name: str, port: int):
        self.store, self.namespace, self.name, self.port = store, namespace, name, port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.connections: list[socket.socket] = []
        self.turn = 0
        self.thread = threading.Thread(target=self._accept, name=f"svc-{name}", daemon=True)
        self.thread.start()

    def backends(self) -> list[int]:
        svc = self.store.find(("v1", "services", self.namespace, self.name))
        if svc is None or not svc["spec"].get("selector"):
            return []
        target = (svc["spec"].get("ports") or [{}])[0].get("targetPort")
        out = []
        for pod in self.store.list("v1", "pods", self.namespace)["items"]:
            ready = any(c["type"] == "Ready" and c["status"] == "True"
                        for c in pod.get("status", {}).get("conditions", []))
            if ready and not pod["metadata"].get("deletionTimestamp") and \
                    labels_match(svc["spec"]["selector"], pod["metadata"].get("labels") or {}):
                out.append(_pod_port(pod) if isinstance(target, str) or target is None else int(target))
        return [p for p in out if p]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        backends = self.backends()
        if not backends:
            client.close()
            return
        self.turn += 1
        try:
            upstream = socket.create_connection(("127.0.0.1", backends[self.turn % len(backends)]), timeout=3)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self.connections += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in its thread
        with contextlib.suppress(OSError):
            self.listener.close()
        for sock in self.connections:
            with contextlib.suppress(OSError):
                sock.close()
