"""A stand-in kubelet for the real control plane (TEST INFRASTRUCTURE ONLY): a client of the real
API server, as the node's `system:node:<name>` (so the real Node authorizer and NodeRestriction
admission decide what it may read and write, as for a real kubelet).

- Registers its Node (Ready, capacity, InternalIP 127.0.0.1, the port of its kubelet API) and
  renews its Lease in kube-node-lease; `paused` (a partition of the node) stops both, so the real
  node lifecycle controller turns it Unknown and marks its pods not Ready.
- Runs the pods the real scheduler bound to it: the member container as a REAL member script on
  this machine (standin/containers.py: the pod's env, ConfigMap/Secret volumes
  as the kubelet's atomic writer with refreshes after `sync_delay` plus a per-pod jitter, probes,
  crash back-off, graceful and forced termination), its claims mounted from the volumes the
  stand-in local-path provisioner made (standin/provisioner.py), a pod IP of the stand-in pod
  network (standin/network.py), and `pods/status` written from what runs. A pod that runs no
  member script (another image) is reported Running and Ready without running anything; a
  restore-drill scratch pod is bound to a throw-away local server (LocalScratchServer), and a
  point-in-time drill's recovery pod runs its script (recover_pod.sh) like a member's.
- Confirms deletions: a deleted pod's container is stopped (TERM, KILL after its grace period),
  then the pod object is removed (a grace-0 delete with the uid as precondition); a pod whose
  object is gone (force-deleted) has its container killed once the kubelet notices.
- Serves the kubelet API over TLS on its port, which the API server's own exec and log proxy
  reaches (it verifies this node's serving certificate; the node requires the API server's client
  certificate): `/exec/<ns>/<pod>/<container>` as a WebSocket (v4.channel.k8s.io, the protocol
  pg_ops asks for and the API server passes through), `/containerLogs/<ns>/<pod>/<container>`.
  An exec into a container that is not running (crashed, waiting to restart) is refused, as a
  real kubelet refuses it.
  While the node is partitioned both hang until the caller gives up, as a cut-off node does.

What it does NOT model: container images and isolation (no cgroups, no namespaces, the wheel's
PostgreSQL 18 where the image has 16; an image it runs is a local folder of programs: the
user-code venv, the PgBouncer stand-in image; a pod whose securityContext sets a runAsUser runs
as this machine's one unprivileged user, whatever the uid), resource requests and limits, httpGet
probes (exec and tcpSocket only), the exporter sidecar (not run, reported ready), init containers, SPDY exec
(only WebSocket), port-forward and attach, image pulls, eviction by node pressure.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import random
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pg_ops.platforms.local import LocalScratchServer
from pg_ops.platforms.server_user import server_user
from pg_ops.render import names as names
from pg_ops_tests.standin import websocket
from pg_ops_tests.standin.api import ApiError, RawApi, now
from pg_ops_tests.standin.containers import (
    MIN_KILL_GRACE_S,
    Clock,
    Container,
    Kubelet,
    container_status,
    pod_port,
    port_open,
    running_status,
    waiting_status,
)
from pg_ops_tests.standin.network import PodNetwork
from pg_ops_tests.support.helpers import free_port

HEARTBEAT_S = 5.0
LEASE_SECONDS = 40
HANG_LIMIT_S = 120.0  # how long a partitioned node's kubelet API keeps a request waiting
SYNC_JITTER_S = 0.5  # a ConfigMap/Secret refresh comes at a different moment for every pod


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StandInKubelet:
    def __init__(self, cp, name: str, network: PodNetwork | None, root: Path, *, run_containers: bool = True,
                 period: float = 0.3, stop_seconds: float = 2.0, time_scale: float = 0.2, cpu: str = "64",
                 memory: str = "256Gi"):
        self.cp, self.name, self.network = cp, name, network
        self.run_containers, self.period, self.stop_seconds = run_containers, period, stop_seconds
        self.cpu, self.memory = cpu, memory
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the server user traverses it to its pods' folders
        self.api = RawApi(cp.server, cp.pki.ca, cp.pki.client(f"node-{name}", f"system:node:{name}", "system:nodes"))
        self.clock = Clock(time_scale)
        self.kubelet = Kubelet(self.api, self.root, server_user(), self.clock)  # type: ignore[arg-type]
        self.kubelet.addresses = network.path if network is not None else None
        self.pod_ips: dict[str, str] = {}  # pod uid -> its pod IP
        self.patched: dict[str, dict] = {}  # pod uid -> the status last written
        self.terminating: dict[str, float] = {}  # uid of a pod that runs nothing -> first seen deleted
        self.virtual: set[str] = set()
        self.scratch: dict[str, LocalScratchServer] = {}  # pod uid -> its server
        self.scratch_namespace: dict[str, str] = {}  # pod uid -> its namespace
        self.not_ready: set[tuple[str, str]] = set()  # (ns, pod) left not Ready
        self.paused = threading.Event()  # set: the node is cut off (no heartbeat, no sync, API hangs)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = _KubeletServer(self, cp.pki.kubelet_serving(f"kubelet-{name}", name), cp.pki.ca)

    # -- switches -------------------------------------------------------------------------
    @property
    def sync_delay(self) -> float:
        return self.kubelet.sync_delay

    @sync_delay.setter
    def sync_delay(self, seconds: float) -> None:
        self.kubelet.sync_delay = seconds

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._server.start()
        with contextlib.suppress(ApiError):  # a restarted stand-in finds its Node
            self.api.create(("v1", "nodes", "", self.name), {"metadata": {"name": self.name, "labels": {
                "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}}})
        self._heartbeat()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Every process it started is killed (by process group), its server stopped."""
        self._stop.set()
        self.clock.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.kubelet.kill_all()
        for server in list(self.scratch.values()):
            with contextlib.suppress(Exception):
                server.remove()
        self.scratch.clear()
        self._server.stop()

    def _heartbeat(self) -> None:
        now_ = now()
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "ephemeral-storage": "100Gi"}
        self.api.patch("v1", "nodes", None, self.name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "stand-in kubelet (pg_ops_tests/standin/kubelet.py)",
                            "lastHeartbeatTime": now_, "lastTransitionTime": now_}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self._server.port}},
            "nodeInfo": {"kubeletVersion": self.cp.version, "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "stand-in://0", "kernelVersion": "", "osImage": "",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}}, sub="status")
        self.api.apply("coordination.k8s.io/v1", "leases", "kube-node-lease", self.name, {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": _now_micro()}}, manager="kubelet")

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.period):
            if self.paused.is_set():
                continue
            try:
                if time.monotonic() - last_beat > HEARTBEAT_S:
                    self._heartbeat()
                    last_beat = time.monotonic()
                self.sync()
            except Exception as exc:  # noqa: BLE001 - keep going; a test reads .errors
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")

    # -- the pod sync -----------------------------------------------------------------------
    def pods(self) -> list[dict]:
        return self.api.list("v1", "pods", None, fieldSelector=f"spec.nodeName={self.name}")

    def sync(self) -> None:
        kubelet = self.kubelet
        pods = self.pods()
        uids = {p["metadata"]["uid"] for p in pods}
        for container in list(kubelet.containers.values()):
            if container.uid not in uids and not container.terminating:
                # Its pod object is gone (force-deleted): stop it now that this kubelet notices.
                kubelet.terminate(container, MIN_KILL_GRACE_S * self.clock.scale, kubelet.force_kill_delay,
                                  on_done=self._forget)
        for uid in [u for u in self.scratch if u not in uids]:
            self.scratch.pop(uid).remove()
            self._forget_uid(uid)
        for uid in [u for u in self.virtual if u not in uids]:
            self._forget_uid(uid)
        for pod in pods:
            try:
                self._sync_pod(pod)
            except ApiError as exc:
                if exc.code not in (404, 409):
                    raise

    def _sync_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if names.LABEL_SCRATCH in (meta.get("labels") or {}) and self.kubelet.member_container(pod) is None:
            self._sync_scratch(pod)
            return
        container = self.kubelet.containers.get(uid)
        if meta.get("deletionTimestamp"):
            if container is not None:
                if not container.terminating:
                    grace = meta.get("deletionGracePeriodSeconds", 30) * self.clock.scale
                    self.kubelet.terminate(container, grace, on_done=self._container_gone)
                return
            seen = self.terminating.setdefault(uid, time.monotonic())
            if time.monotonic() - seen >= self.stop_seconds:
                self._remove(pod)
            return
        if container is None:
            if self.run_containers and uid not in self.virtual and self.kubelet.runnable_container(pod) is not None:
                self._start(pod)
            else:
                self.virtual.add(uid)
                ready = (meta["namespace"], meta["name"]) not in self.not_ready
                self._set_status(pod, self._virtual(pod, ready))
            return
        self.kubelet.supervise(pod, container)
        if not container.terminating and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self._set_status(pod, self._with_ip(uid, self.kubelet.status(pod, container)))

    def _virtual(self, pod: dict, ready: bool) -> dict:
        uid = pod["metadata"]["uid"]
        if uid not in self.pod_ips and self.network is not None:
            self.pod_ips[uid] = self.network.assign(0)
        return self._with_ip(uid, running_status(pod, ready))

    def _with_ip(self, uid: str, status: dict) -> dict:
        ip = self.pod_ips.get(uid)
        status = {**status, "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}]}
        if ip:
            status.update(podIP=ip, podIPs=[{"ip": ip}])
        else:
            for key in ("podIP", "podIPs"):
                status.pop(key, None)
        status.setdefault("startTime", (self.patched.get(uid) or {}).get("startTime") or now())
        return status

    def _claim_dirs(self, pod: dict) -> tuple[dict[str, Path], list[str], str]:
        """claim name -> its volume's folder, the claims' uids, or why the pod must wait."""
        ns = pod["metadata"]["namespace"]
        dirs, uids = {}, []
        for volume in pod["spec"].get("volumes", []):
            source = volume.get("persistentVolumeClaim")
            if not source:
                continue
            claim = self.api.find(("v1", "persistentvolumeclaims", ns, source["claimName"]))
            if claim is None or claim["metadata"].get("deletionTimestamp"):
                return {}, [], f'persistentvolumeclaim "{source["claimName"]}" not found'
            volume_name = claim["spec"].get("volumeName")
            pv = self.api.find(("v1", "persistentvolumes", "", volume_name)) if volume_name else None
            path = ((pv or {}).get("spec", {}).get("hostPath") or {}).get("path")
            if not path:
                return {}, [], f'persistentvolumeclaim "{source["claimName"]}" is not bound yet'
            dirs[source["claimName"]] = Path(path)
            uids.append(claim["metadata"]["uid"])
        return dirs, uids, ""

    def _start(self, pod: dict) -> None:
        try:
            _, problem = self.kubelet.volume_objects(pod)
            claim_dirs, claim_uids, problem = (self._claim_dirs(pod) if not problem else ({}, [], problem))
            if problem:
                self._set_status(pod, waiting_status(pod, "ContainerCreating", problem))
                return
            port = free_port()
            local = _with_port(pod, port) if pod_port(pod) is not None else pod
            container = self.kubelet.start(local, self.name, claim_dirs, claim_uids)
        except ApiError as exc:  # the Node authorizer may not know the pod's Secrets yet: retried
            self._set_status(pod, waiting_status(pod, "CreateContainerConfigError", exc.message))
            return
        except Exception as exc:  # noqa: BLE001 - reported in the pod status, retried next loop
            self._set_status(pod, waiting_status(pod, "CreateContainerError", str(exc)))
            return
        assert container is not None
        if self.network is not None:
            self.pod_ips[pod["metadata"]["uid"]] = self.network.assign(port)
        # ConfigMap/Secret refreshes come at a different moment for every pod, as on a real node.
        container.sync_jitter = random.uniform(0, SYNC_JITTER_S)
        self._set_status(pod, self._with_ip(pod["metadata"]["uid"], self.kubelet.status(pod, container)))

    def _set_status(self, pod: dict, status: dict) -> None:
        uid = pod["metadata"]["uid"]
        live = pod.get("status") or {}
        if self.patched.get(uid) == status and _summary(live) == _summary(status):
            return  # unchanged, and nobody else (the node lifecycle controller) changed it either
        self.api.patch("v1", "pods", pod["metadata"]["namespace"], pod["metadata"]["name"], {"status": status},
                       sub="status")
        self.patched[uid] = copy.deepcopy(status)

    def _container_gone(self, container: Container) -> None:
        """A deleted pod's container stopped: the kubelet confirms the deletion."""
        with contextlib.suppress(ApiError):
            self.api.delete("v1", "pods", container.namespace, container.pod,
                            {"gracePeriodSeconds": 0, "preconditions": {"uid": container.uid}})
        self._forget(container)

    def _forget(self, container: Container) -> None:
        # The pod's folder (its container's log) stays until the node stops, as a kubelet keeps a
        # dead container's log for a while: tests read what the old container said.
        self._forget_uid(container.uid)

    def _forget_uid(self, uid: str) -> None:
        ip = self.pod_ips.pop(uid, None)
        if ip and self.network is not None:
            self.network.release(ip)
        self.patched.pop(uid, None)
        self.terminating.pop(uid, None)
        self.virtual.discard(uid)

    def _remove(self, pod: dict) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            # In the body: with a body the API server ignores the query's gracePeriodSeconds.
            self.api.delete("v1", "pods", meta["namespace"], meta["name"],
                            {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})
        self._forget_uid(meta["uid"])

    # -- scratch pods (restore-drill targets) ---------------------------------------------
    def _sync_scratch(self, pod: dict) -> None:
        """A scratch pod runs a throw-away local server (LocalScratchServer) whose superuser
        password is the POSTGRES_PASSWORD the pod takes from its Secret; its pod IP leads to that
        server's port. It is removed when the pod object goes (pg_ops deletes it with grace 0)."""
        meta = pod["metadata"]
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            server = self.scratch.pop(uid, None)
            if server is not None:
                server.remove()
            self._remove(pod)
            return
        server = self.scratch.get(uid)
        if server is None:
            password, problem = self._scratch_password(pod)
            if password is None:
                self._set_status(pod, waiting_status(pod, "CreateContainerConfigError", problem))
                return
            home = self.root / "scratch" / uid
            home.mkdir(parents=True, exist_ok=True)
            for path in (home.parent, home):
                path.chmod(0o755)
            server = LocalScratchServer(meta["name"], password, home=home)
            try:
                server.start()
            except Exception as exc:  # noqa: BLE001 - reported in the pod status, retried next loop
                with contextlib.suppress(Exception):
                    server.remove()
                self._set_status(pod, waiting_status(pod, "CreateContainerError", str(exc)))
                return
            self.scratch[uid] = server
            self.scratch_namespace[uid] = meta["namespace"]
            if self.network is not None:
                self.pod_ips[uid] = self.network.assign(server.endpoint.port)
        if not server.running():
            self._set_status(pod, self._with_ip(uid, {"phase": "Failed", "containerStatuses": [
                container_status(pod, False, {"terminated": {"exitCode": 1, "reason": "Error"}})]}))
            return
        self._set_status(pod, self._with_ip(uid, running_status(pod, ready=port_open(server.endpoint.port))))

    def _scratch_password(self, pod: dict) -> tuple[str | None, str]:
        import base64

        ns = pod["metadata"]["namespace"]
        for container in pod["spec"].get("containers", []):
            for env in container.get("env", []):
                ref = ((env.get("valueFrom") or {}).get("secretKeyRef") if env.get("name") == "POSTGRES_PASSWORD"
                       else None)
                if ref is None:
                    continue
                secret = self.api.find(("v1", "secrets", ns, ref["name"]))
                if secret is None or ref["key"] not in (secret.get("data") or {}):
                    return None, f'secret "{ref["name"]}" not found or has no key {ref["key"]}'
                return base64.b64decode(secret["data"][ref["key"]]).decode(), ""
        return None, "no POSTGRES_PASSWORD from a Secret (the image refuses to initdb without one)"

    # -- the kubelet API ------------------------------------------------------------------
    def container_named(self, namespace: str, pod: str) -> Container | None:
        return next((c for c in self.kubelet.containers.values()
                     if c.namespace == namespace and c.pod == pod and not c.terminating), None)

    def hang_while_paused(self) -> bool:
        """A request to a cut-off node's kubelet waits; True if it is still cut off after the limit."""
        deadline = time.monotonic() + HANG_LIMIT_S
        while self.paused.is_set() and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.2)
        return self.paused.is_set()


def _summary(status: dict) -> tuple:
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return status.get("phase"), status.get("podIP"), conditions.get("Ready"), conditions.get("ContainersReady")


def _with_port(pod: dict, port: int) -> dict:
    """The pod as this node runs it: its `postgresql` container port is the loopback port this
    incarnation listens on (the runner reads the port from there)."""
    local = copy.deepcopy(pod)
    for container in local["spec"].get("containers", []):
        for p in container.get("ports", []):
            if p.get("name") == names.PORT_NAME:
                p["containerPort"] = port
    assert pod_port(local) == port
    return local


class _KubeletServer:
    """The kubelet API (HTTPS) of one stand-in node."""

    def __init__(self, node: StandInKubelet, serving: tuple[Path, Path], ca: Path):
        self.node = node
        self.port = free_port()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(serving[0]), str(serving[1]))
        self.context.verify_mode = ssl.CERT_REQUIRED  # only the API server (its kubelet client certificate)
        self.context.load_verify_locations(str(ca))
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        node = self.node

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read assertions, not access logs
                pass

            def _fail(self, code: int, message: str) -> None:
                body = message.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self):  # noqa: N802 - http.server's name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] not in ("exec", "containerLogs"):
                    self._fail(404, f"stand-in kubelet serves /exec and /containerLogs only, not {url.path}")
                    return
                if node.paused.is_set() and node.hang_while_paused():
                    self.close_connection = True
                    return
                _, ns, pod, container_name = parts
                container = node.container_named(ns, pod)
                if container is None or container_name != container.name:
                    self._fail(404, f'container "{container_name}" in pod "{pod}" is not running')
                    return
                if parts[0] == "exec" and not container.alive():
                    # A crashed container waiting to restart: a real kubelet has nothing to exec into.
                    self._fail(404, f'container not found ("{container_name}")')
                    return
                if parts[0] == "containerLogs":
                    tail = int(query["tailLines"][0]) if "tailLines" in query else None
                    body = node.kubelet.read_log(container, tail).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.headers.get("Upgrade", "").lower() != "websocket":
                    self._fail(400, "stand-in kubelet: exec over WebSocket only (v4.channel.k8s.io)")
                    return
                try:
                    run = node.kubelet.exec_runner(container, query.get("command", []))
                except ApiError as exc:
                    self._fail(exc.code, exc.message)
                    return
                websocket.serve_exec(self, run)

            do_POST = do_GET  # noqa: N815

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(server_self):  # noqa: N805
                sock, address = server_self.socket.accept()
                return self.context.wrap_socket(sock, server_side=True), address

        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=f"kubelet-api-{node.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def node_ready(api: RawApi, name: str) -> bool:
    node = api.find(("v1", "nodes", "", name)) or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions", []))

