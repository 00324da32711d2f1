"""The stand-in pod network, kube-proxy and cluster DNS of the real control plane's nodes
(TEST INFRASTRUCTURE ONLY).

There is no pod network on this machine: the tests may only reach loopback (or addresses inside
network namespaces they create). So a pod IP is a NAME: each pod incarnation gets an address of
198.18.0.0/15 (RFC 2544's benchmarking range: routed nowhere, and accepted by the real
EndpointSlice validation, which refuses loopback), and its container listens on a loopback port
of its own. Nothing ever connects to a pod IP; `PodNetwork` publishes, in PG_OPS_K8S_ADDRESSES
(pg_ops's own stand-in for cluster DNS, read at every use), where each pod IP, StatefulSet pod
name and Service is reached here:

- `pod_ips`: pod IP -> 127.0.0.1:<its port> (pg_ops connects to a member's pod IP, as it does on a
  real cluster, through this translation);
- `peers`: `<ns>/<pod>` -> a PodNameProxy, the stable DNS name of a StatefulSet pod: whichever
  incarnation of that pod exists now (headless Services publish not-ready addresses too);
- `services`: `<ns>/<svc>` -> an EndpointSliceProxy, kube-proxy: it reads the Service's REAL
  EndpointSlices (written by the real EndpointSlice controller from the pods' readiness and
  labels) and reprograms its backends at most once per `sync_period` (1 s: kube-proxy's
  minSyncPeriod), so right after a label moves a new connection may still reach the pod it left,
  as on a real node. Ready endpoints first; with none, serving terminating ones (kube-proxy's
  terminating-endpoint fallback). Established connections stay where they are (conntrack).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import threading
import time
from pathlib import Path

from pg_ops_tests.standin.api import RawApi
from pg_ops_tests.support.helpers import free_port_range

POD_CIDR = "198.18.0.0/15"
KUBE_PROXY_SYNC_S = 1.0
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class _Proxy:
    """A TCP proxy on 127.0.0.1:`port`: each new connection goes to `backend()`'s loopback port
    (none: the connection is closed); established ones stay where they are, as with conntrack."""

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
        try:
            port = self.backend()
        except Exception:  # noqa: BLE001 - the API server going away: as no endpoint
            port = None
        if port is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=3)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        # As kube-proxy's rules add no hop of their own: no Nagle delay on top of the peers'
        # (PostgreSQL sets TCP_NODELAY on its sockets; a proxy without it adds a delayed ACK's
        # 40 ms to every synchronous commit's round trip).
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


class PodNetwork:
    """Pod IPs and the addresses file. Shared by every stand-in node of a control plane."""

    def __init__(self, path: Path):
        self.path = path
        self._hosts = ipaddress.ip_network(POD_CIDR).hosts()
        next(self._hosts)  # .0.1 stays unused, as a gateway would be
        self.pod_ips: dict[str, str] = {}  # pod IP -> 127.0.0.1:port
        self.peers: dict[str, str] = {}
        self.services: dict[str, str] = {}
        self._lock = threading.Lock()
        self.write()

    def assign(self, port: int) -> str:
        """A fresh pod IP for a pod incarnation whose container listens on 127.0.0.1:`port`;
        published before the kubelet reports it in the pod's status."""
        with self._lock:
            ip = str(next(self._hosts))
            self.pod_ips[ip] = f"127.0.0.1:{port}"
            self._write()
        return ip

    def local(self, ip: str | None) -> int | None:
        """The loopback port behind a pod IP."""
        target = self.pod_ips.get(ip or "")
        return int(target.rsplit(":", 1)[1]) if target else None

    def release(self, ip: str) -> None:
        with self._lock:
            if self.pod_ips.pop(ip, None) is not None:
                self._write()

    def publish(self, section: str, key: str, address: str) -> None:
        with self._lock:
            getattr(self, section)[key] = address
            self._write()

    def write(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"peers": self.peers, "services": self.services, "pod_ips": self.pod_ips},
                                  indent=1))
        os.replace(tmp, self.path)


class PodNameProxy(_Proxy):
    """`<pod>.<headless>.<ns>.svc`: a fixed port that reaches the pod of that name now."""

    def __init__(self, api: RawApi, network: PodNetwork, namespace: str, pod: str):
        self.api, self.network, self.namespace, self.pod = api, network, namespace, pod
        super().__init__(free_port_range(1), f"dns-{pod}")

    def backend(self) -> int | None:
        obj = self.api.find(("v1", "pods", self.namespace, self.pod))
        return self.network.local(((obj or {}).get("status") or {}).get("podIP"))


class EndpointSliceWatch:
    """What kube-proxy watches: every EndpointSlice of the cluster, read in one list every
    `poll` seconds and grouped by Service, for all the Service proxies of a cluster."""

    def __init__(self, api: RawApi, poll: float = 0.2):
        self.api, self.poll = api, poll
        self.by_service: dict[tuple[str, str], list[dict]] = {}
        self.errors: list[str] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="endpointslice-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self.poll):
            try:
                grouped: dict[tuple[str, str], list[dict]] = {}
                for piece in self.api.list("discovery.k8s.io/v1", "endpointslices"):
                    meta = piece["metadata"]
                    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
                    if service:
                        grouped.setdefault((meta["namespace"], service), []).append(piece)
                self.by_service = grouped
            except Exception as exc:  # noqa: BLE001 - the API server may be going away; keep the old view
                self.errors.append(str(exc)[:200])

    def slices(self, namespace: str, service: str) -> list[dict]:
        return self.by_service.get((namespace, service), [])

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)


class EndpointSliceProxy(_Proxy):
    """kube-proxy for one Service port, from the Service's real EndpointSlices."""

    def __init__(self, watch: EndpointSliceWatch, network: PodNetwork, namespace: str, service: str,
                 sync_period: float = KUBE_PROXY_SYNC_S, poll: float = 0.1):
        self.watch, self.network, self.namespace, self.service = watch, network, namespace, service
        self.sync_period, self.poll = sync_period, poll
        self.programmed: list[str] = []  # pod IPs the rules send new connections to
        self.turn = 0
        self.errors: list[str] = []
        self._stopped = threading.Event()
        super().__init__(free_port_range(1), f"svc-{service}")
        self._watcher = threading.Thread(target=self._watch, name=f"kube-proxy-{service}", daemon=True)
        self._watcher.start()

    def endpoints(self) -> list[str]:
        ready: list[str] = []
        serving: list[str] = []
        for piece in self.watch.slices(self.namespace, self.service):
            for endpoint in piece.get("endpoints") or []:
                cond = endpoint.get("conditions") or {}
                target = ready if cond.get("ready", True) else serving if cond.get("serving") else None
                if target is not None:
                    target.extend(endpoint.get("addresses") or [])
        return sorted(ready or serving)

    def _watch(self) -> None:
        last_sync = 0.0
        while not self._stopped.wait(self.poll):
            try:
                current = self.endpoints()
            except Exception as exc:  # noqa: BLE001 - the API server may be going away; keep the old rules
                self.errors.append(str(exc)[:200])
                continue
            if current != self.programmed and time.monotonic() - last_sync >= self.sync_period:
                self.programmed, last_sync = current, time.monotonic()

    def backend(self) -> int | None:
        ips = list(self.programmed)
        ports = [p for p in (self.network.local(ip) for ip in ips) if p]
        if not ports:
            return None
        self.turn += 1
        return ports[self.turn % len(ports)]

    def stop(self) -> None:
        self._stopped.set()
        super().stop()
