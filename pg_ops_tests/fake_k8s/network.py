"""The fake cluster's network: the pod network is this machine's loopback, every pod incarnation
listens on a port of its own (its "pod IP"), and two kinds of TCP proxies stand in for what
routes to pods:

- ServiceProxy (kube-proxy): each new connection to a Service's port goes to a Ready pod the
  Service's selector matches; existing connections stay where they are (like conntrack); no
  matching pod closes the connection. `sync_period` (0 by default: at once) is how long a change
  takes to reach the proxy's rules: kube-proxy reprograms at most about once a second, after the
  EndpointSlice controller and the watch, so right after a label moves a new connection still
  reaches the pod it left (a watcher notes each change; a connection uses what was true
  `sync_period` ago).
- PodNameProxy (cluster DNS of a StatefulSet pod, `<pod>.<headless>.<ns>.svc`): a fixed port per
  member that reaches whichever pod of that name exists now (Ready or not: the headless
  Service publishes not-ready addresses). Member scripts reach their peers through it, so a pod
  recreated with a new "IP" is reachable at its stable name, as through DNS.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from pg_ops.platforms import kubernetes_names as names
from pg_ops_tests.fake_k8s.store import Store, labels_match


def pod_port(pod: dict | None) -> int | None:
    """The container port named `postgresql`: where this pod incarnation listens."""
    for container in (pod or {}).get("spec", {}).get("containers", []):
        for port in container.get("ports", []):
            if port.get("name") == names.PORT_NAME:
                return port["containerPort"]
    return None


def pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


class _Proxy:
    def __init__(self, port: int, name: str):
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", port))
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, name=name, daemon=True)
        self.thread.start()

    def backend(self) -> int | None:
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        port = self.backend()
        if port is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=3)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        # As kube-proxy's iptables rules add no hop of their own: no Nagle delay on top of the
        # peers' (PostgreSQL sets TCP_NODELAY on its sockets; a proxy without it adds a delayed
        # ACK's 40 ms to every synchronous commit's round trip).
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


class ServiceProxy(_Proxy):
    def __init__(self, store: Store, namespace: str, name: str, port: int, sync_period: float = 0.0):
        self.store, self.namespace, self.name = store, namespace, name
        self.turn = 0
        self.sync_period = 0.0
        self.changes: list[tuple[float, list[int]]] = []  # (when seen, backends), oldest first
        self._watching = threading.Event()
        self._stopped = threading.Event()
        super().__init__(port, f"svc-{name}")
        self.set_sync_period(sync_period)

    def set_sync_period(self, seconds: float) -> None:
        self.sync_period = seconds
        if seconds > 0 and not self._watching.is_set():
            self._watching.set()
            self.changes = [(time.monotonic(), self.backends())]
            threading.Thread(target=self._watch, name=f"svc-watch-{self.name}", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopped.wait(0.05):
            current = self.backends()
            if current != self.changes[-1][1]:
                self.changes = [*self.changes[-20:], (time.monotonic(), current)]

    def stop(self) -> None:
        self._stopped.set()
        super().stop()

    def backends(self) -> list[int]:
        svc = self.store.find(("v1", "services", self.namespace, self.name))
        if svc is None or not svc["spec"].get("selector"):
            return []
        target = (svc["spec"].get("ports") or [{}])[0].get("targetPort")
        not_ready_too = svc["spec"].get("publishNotReadyAddresses", False)
        out = []
        for pod in self.store.list("v1", "pods", self.namespace)["items"]:
            if (not_ready_too or pod_ready(pod)) and not pod["metadata"].get("deletionTimestamp") and \
                    labels_match(svc["spec"]["selector"], pod["metadata"].get("labels") or {}):
                out.append(pod_port(pod) if isinstance(target, str) or target is None else int(target))
        return [p for p in out if p]

    def backend(self) -> int | None:
        if self.sync_period > 0:
            cutoff = time.monotonic() - self.sync_period
            backends = [b for at, b in self.changes if at <= cutoff][-1:] or [self.changes[0][1]]
            backends = backends[0]
        else:
            backends = self.backends()
        if not backends:
            return None
        self.turn += 1
        return backends[self.turn % len(backends)]


class PodNameProxy(_Proxy):
    def __init__(self, store: Store, namespace: str, pod: str, port: int):
        self.store, self.namespace, self.pod = store, namespace, pod
        super().__init__(port, f"dns-{pod}")

    def backend(self) -> int | None:
        return pod_port(self.store.find(("v1", "pods", self.namespace, self.pod)))
