"""A REAL Kubernetes control plane for the tests (issue 21): TEST INFRASTRUCTURE ONLY.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from the wrapper Go module
in pg_ops_tests/kube/ (`make control-plane`: once per machine, into a cache outside the clone),
started here on free ports of 127.0.0.1, each process in its own process group, its data and
logs in one temporary folder:

- etcd (the version Kubernetes pins in its go.mod), plain HTTP on 127.0.0.1 only, no fsync;
- kube-apiserver: TLS with a CA generated per run (python `cryptography`), client certificates for
  an admin (system:masters) and for each component, ServiceAccount tokens signed by a key of its
  own (the real TokenRequest API: `service_account_token`), authorization Node,RBAC, the default
  admission plugins plus NodeRestriction, Service ClusterIPs from a loopback range;
- kube-controller-manager with its default controllers (statefulset, endpointslice, disruption,
  garbage collector, namespace, node lifecycle, job, persistent-volume binder, serviceaccount
  and its tokens, ...), leader-elected like in a cluster;
- kube-scheduler.

No kubelet and no kube-proxy here: the node side is pg_ops_tests/standin/ (kubelets, a
local-path provisioner, kube-proxy and DNS stand-ins), put together with this control plane by
pg_ops_tests/kube_cluster.py. `stand_in_node` adds a kubelet that runs no container.

    with ControlPlane() as cp:            # raises ControlPlaneUnavailable when not built
        api = cp.admin_api()              # pg_ops's KubernetesApi as a cluster admin
        cp.kubeconfig                     # admin kubeconfig (client certificate)

Whatever is started is stopped by process group in `stop()` (also when a test fails), and
the folder removed; if the test process is killed outright, the components die with it
(PR_SET_PDEATHSIG) and the next start removes the folder it left.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pg_ops.platforms.shared_memory import release_data_dir_segment
from pg_ops_tests.support.helpers import free_port_range

REPO = Path(__file__).resolve().parents[1]
GO_MODULE = Path(__file__).resolve().parent / "kube"
BUILD_SCRIPT = GO_MODULE / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# ClusterIPs: nothing routes them (no kube-proxy); a loopback range keeps even a stray connection
# on this machine. The first address is the `kubernetes` Service's.
SERVICE_CIDR = "127.216.0.0/16"
START_TIMEOUT_S = 120.0
# The node lifecycle controller's grace before a silent node turns Unknown (K3s and upstream: 50 s
# in 1.34, 40 s before), shortened so a test of a lost node takes seconds, not a minute.
NODE_MONITOR_GRACE = "20s"
GO_FALLBACK = "/usr/local/go/bin/go"  # where the polyglot machines have Go when it is not on PATH


class ControlPlaneUnavailable(Exception):
    """The binaries are not built and cannot be built here (one line: why)."""


def kubernetes_version() -> str:
    for line in (GO_MODULE / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes" and parts[1].startswith("v"):
            return parts[1]
        if len(parts) >= 3 and parts[0] == "require" and parts[1] == "k8s.io/kubernetes":
            return parts[2]
    raise ControlPlaneUnavailable(f"no k8s.io/kubernetes requirement in {GO_MODULE / 'go.mod'}")


def binaries_dir() -> Path:
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def built() -> Path | None:
    folder = binaries_dir()
    return folder if all(os.access(folder / b, os.X_OK) for b in BINARIES) else None


def ensure_built(build: bool = True) -> Path:
    """The folder of the binaries; builds them (build.sh, tens of minutes cold) when missing and a
    Go toolchain is there and `build`; else ControlPlaneUnavailable with one line."""
    folder = built()
    if folder is not None:
        return folder
    go = shutil.which("go") or (GO_FALLBACK if os.access(GO_FALLBACK, os.X_OK) else None)
    if not build or go is None:
        raise ControlPlaneUnavailable(
            f"real control plane not built ({binaries_dir()}) and {'no Go toolchain' if go is None else 'not building'}"
            f": run `make control-plane`")
    done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env={**os.environ, "GO": go})
    if done.returncode != 0 or built() is None:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ControlPlaneUnavailable(f"real control plane cannot be built (make control-plane): {last[:200]}")
    return binaries_dir()


ROOT_PREFIX = "pg-ops-controlplane-"


def sweep() -> None:
    """Folders of control planes whose test process died without stopping them (SIGKILL: the
    components died with it, PR_SET_PDEATHSIG, but the folder stayed), and what their stand-in
    nodes ran: the members' scripts and servers are in sessions of their own (as a container
    outlives a crashed kubelet), so they outlive the test process; killed here by process group,
    then the shared memory their postmasters left is released."""
    for folder in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            pid = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _kill_processes_in(folder)
            for pid_file in folder.glob("**/postmaster.pid"):
                release_data_dir_segment(pid_file.parent)
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def processes_in(folder: Path) -> list[int]:
    """Process ids of every process working in `folder` or below (its current directory)."""
    root = folder.resolve()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            found.append(int(proc.name))
    return found


def _kill_processes_in(folder: Path) -> None:
    """SIGKILL the process group of every process working in `folder` (a container's pod folder,
    a server's data dir), until none is left."""
    for _ in range(10):
        groups = set()
        for pid in processes_in(folder):
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        if not groups:
            return
        for group in groups - {os.getpgrp()}:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        time.sleep(0.2)


# -- PKI -----------------------------------------------------------------------------------------
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None, server: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                                        critical=True)
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


class Pki:
    """A CA of this run, the API server's serving certificate, client certificates and the
    ServiceAccount signing key, as files in `folder`."""

    def __init__(self, folder: Path, service_ip: str):
        self.folder = folder
        folder.mkdir(parents=True)
        self.ca_key = _key()
        ca_name = _name("pg-ops-test-ca")
        self.ca_cert = _cert(ca_name, self.ca_key, ca_name, self.ca_key, ca=True)
        self.ca = self._write("ca", self.ca_cert, self.ca_key)[0]
        sans = [x509.DNSName(n) for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                           "kubernetes.default.svc.cluster.local")]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", service_ip)]
        key = _key()
        self.serving = self._write("apiserver", _cert(_name("kube-apiserver"), key, ca_name, self.ca_key,
                                                      sans=sans, server=True), key)
        sa = _key()
        self.sa_key = folder / "sa.key"
        self.sa_key.write_bytes(_pem_key(sa))
        self.sa_pub = folder / "sa.pub"
        self.sa_pub.write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))

    def _write(self, stem: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
        crt, pem = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(_pem_key(key))
        pem.chmod(0o600)
        return crt, pem

    def kubelet_serving(self, stem: str, name: str) -> tuple[Path, Path]:
        """A kubelet's serving certificate (127.0.0.1), which the API server verifies."""
        key = _key()
        return self._write(stem, _cert(_name(name), key, self.ca_cert.subject, self.ca_key, server=True,
                                       sans=[x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           key)

    def client(self, stem: str, user: str, group: str | None = None) -> tuple[Path, Path]:
        key = _key()
        return self._write(stem, _cert(_name(user, group), key, self.ca_cert.subject, self.ca_key), key)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, *, cert: tuple[Path, Path] | None = None,
                     token: str | None = None, user: str = "admin") -> Path:
    credentials: dict = {"token": token} if token else {
        "client-certificate-data": _b64(cert[0]), "client-key-data": _b64(cert[1])}  # type: ignore[index]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "pg-ops-test",
        "clusters": [{"name": "pg-ops-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "pg-ops-test", "context": {"cluster": "pg-ops-test", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# -- processes -----------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The child gets SIGKILL if the test process dies without stopping it (kill -9 of pytest)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Component:
    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.pgid = self.proc.pid  # its own session, so its own process group

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 10.0) -> None:
        """TERM to the whole process group, KILL after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
                break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)  # anything the leader left in its group


class ControlPlane:
    def __init__(self, binaries: Path | None = None, *, build: bool = True):
        self.bin = binaries or ensure_built(build)
        self.version = kubernetes_version()
        self.components: list[Component] = []
        self.root: Path | None = None
        self.nodes: list = []  # stand-in kubelets (standin/kubelet.py)

    # -- lifecycle
    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        # The ports are chosen free, then bound by another process a moment later; whatever took
        # one meanwhile (another test's server) makes that component exit with EADDRINUSE. That
        # is the test machine's race, not the control plane's: start again on other ports.
        for attempt in range(3):
            try:
                return self._start_once()
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                self.stop()

    def _start_once(self) -> None:
        sweep()
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        (self.root / "owner.pid").write_text(str(os.getpid()))
        net = ipaddress.ip_network(SERVICE_CIDR)
        self.pki = Pki(self.root / "pki", str(net[1]))
        # Below the ephemeral range, so no outgoing connection's local port takes one meanwhile.
        base = free_port_range(3)
        etcd_port, peer_port, self.port = base, base + 1, base + 2
        self.server = f"https://127.0.0.1:{self.port}"
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._run("etcd", [
            "--name", "controlplane", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"controlplane={peer_url}", "--initial-cluster-state", "new",
            "--unsafe-no-fsync", "--log-level", "warn"])
        self._wait("etcd", lambda: json.loads(urllib.request.urlopen(f"{etcd_url}/health", timeout=2).read())
                   .get("health") == "true")
        pki = self.pki
        self.admin_cert = pki.client("admin", "pg-ops-test-admin", "system:masters")
        kubelet_client = pki.client("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        self._run("kube-apiserver", [
            "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(self.port),
            "--tls-cert-file", str(pki.serving[0]), "--tls-private-key-file", str(pki.serving[1]),
            "--client-ca-file", str(pki.ca),
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(pki.sa_pub), "--service-account-signing-key-file", str(pki.sa_key),
            "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
            "--service-cluster-ip-range", SERVICE_CIDR, "--cert-dir", str(self.root / "apiserver"),
            # The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints validation
            # refuses (loopback); nothing here reaches the API server through that Service.
            "--endpoint-reconciler-type", "none",
            # The API server reaches kubelets (exec, logs) at their Node's InternalIP and port, with a
            # client certificate of its own, and verifies their serving certificates.
            "--kubelet-preferred-address-types", "InternalIP",
            "--kubelet-certificate-authority", str(pki.ca),
            "--kubelet-client-certificate", str(kubelet_client[0]), "--kubelet-client-key", str(kubelet_client[1]),
            "--profiling=false", "--v", "1"])
        self._wait("kube-apiserver", lambda: self._get("/readyz") == "ok")
        self.kubeconfig = write_kubeconfig(self.root / "admin.kubeconfig", self.server, pki.ca, cert=self.admin_cert)
        kcm = write_kubeconfig(self.root / "kcm.kubeconfig", self.server, pki.ca,
                               cert=pki.client("kcm", "system:kube-controller-manager"))
        self._run("kube-controller-manager", [
            "--kubeconfig", str(kcm), "--bind-address", "127.0.0.1", "--secure-port", "0",
            "--leader-elect=true", "--controllers", "*", "--node-monitor-grace-period", NODE_MONITOR_GRACE,
            "--service-account-private-key-file", str(pki.sa_key), "--root-ca-file", str(pki.ca),
            "--cluster-signing-cert-file", str(pki.ca), "--cluster-signing-key-file", str(pki.folder / "ca.key"),
            # Each controller as its own ServiceAccount with its system:controller:* role, as
            # kubeadm and K3s run it (the manager's own identity may do little more than that).
            "--use-service-account-credentials=true", "--profiling=false", "--v", "1"])
        scheduler = write_kubeconfig(self.root / "scheduler.kubeconfig", self.server, pki.ca,
                                     cert=pki.client("scheduler", "system:kube-scheduler"))
        self._run("kube-scheduler", ["--kubeconfig", str(scheduler), "--bind-address", "127.0.0.1",
                                     "--secure-port", "0", "--leader-elect=true", "--profiling=false", "--v", "1"])
        # Each controller loop is up once it leads (its Lease) and the serviceaccount controller
        # has given `default` its account (pods cannot be created before that).
        for lease in ("kube-controller-manager", "kube-scheduler"):
            self._wait(lease, lambda name=lease: (self.get_json(
                f"/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/{name}") or {})
                .get("spec", {}).get("holderIdentity"))
        self._wait("kube-controller-manager",
                   lambda: self.get_json("/api/v1/namespaces/default/serviceaccounts/default"))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes.clear()
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _run(self, name: str, args: list[str]) -> Component:
        assert self.root is not None
        component = Component(name, [str(self.bin / name), *args], self.root / f"{name}.log")
        self.components.append(component)
        return component

    def _wait(self, name: str, ready, timeout: float = START_TIMEOUT_S) -> None:
        deadline, last = time.monotonic() + timeout, None
        component = next(c for c in self.components if name.startswith(c.name) or c.name == name)
        while time.monotonic() < deadline:
            if not component.alive():
                raise RuntimeError(f"{component.name} exited ({component.proc.returncode}):\n{component.tail()}")
            try:
                if ready():
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet, any way
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"{name} not ready after {timeout:.0f} s ({last}):\n{component.tail()}")

    # -- plain HTTPS as the admin (no client library: used while starting)
    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        context.load_cert_chain(str(self.admin_cert[0]), str(self.admin_cert[1]))
        return context

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(f"{self.server}{path}", context=self._ssl(), timeout=5) as reply:
            return reply.read().decode()

    def get_json(self, path: str) -> dict | None:
        try:
            return json.loads(self._get(path))
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    # -- clients
    def admin_api(self):
        """pg_ops's KubernetesApi bound to this API server as a cluster admin."""
        from pg_ops.platforms.kubernetes_api import KubernetesApi
        return KubernetesApi(configuration(self.kubeconfig))

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A bound token of a ServiceAccount from the real TokenRequest API (what a pod's
        projected token is)."""
        api = self.admin_api()
        try:
            reply = api.core.create_namespaced_service_account_token(
                name, namespace, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                  "spec": {"expirationSeconds": seconds}})
            return reply.status.token
        finally:
            api.close()

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        assert self.root is not None
        return write_kubeconfig(self.root / f"sa-{namespace}-{name}.kubeconfig", self.server, self.pki.ca,
                                token=self.service_account_token(namespace, name), user=f"{namespace}-{name}")

    def logs(self) -> dict[str, str]:
        return {c.name: c.tail(40) for c in self.components}

    def stand_in_node(self, name: str, **kwargs):
        """A stand-in kubelet that runs no container (its pods are reported Running and Ready):
        enough for the controllers, the scheduler and the eviction API to act for real."""
        from pg_ops_tests.standin.kubelet import StandInKubelet

        assert self.root is not None
        folder = self.root / "nodes"
        folder.mkdir(exist_ok=True)
        node = StandInKubelet(self, name, None, folder, run_containers=False, **kwargs)
        self.nodes.append(node)
        node.start()
        return node


# Prometheus Operator kinds pg_ops renders; the real CRDs are not at hand here, so they are served
# with an open schema (what K3s with kube-prometheus-stack validates is NOT checked here).
OPERATOR_KINDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


def open_crd(kind: str, plural: str) -> dict:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


def install_operator_crds(cp: ControlPlane, timeout: float = 30.0) -> None:
    """The Prometheus Operator CRDs (open schema), created and waited for until Established."""
    api = cp.admin_api()
    try:
        for kind, plural in OPERATOR_KINDS.items():
            api.custom.create_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                                                    open_crd(kind, plural))
        deadline = time.monotonic() + timeout
        for plural in OPERATOR_KINDS.values():
            while not _crd_established(api, plural):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {plural} CRD not Established after {timeout:g} s")
                time.sleep(0.2)
    finally:
        api.close()


def _crd_established(api, plural: str) -> bool:
    crd = api.custom.get_cluster_custom_object("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                                               f"{plural}.monitoring.coreos.com")
    # A CRD just created may have a status without conditions yet (null).
    return any(c["type"] == "Established" and c["status"] == "True"
               for c in (crd.get("status") or {}).get("conditions") or [])


def configuration(kubeconfig: Path):
    import kubernetes.client as k8s
    from kubernetes import config

    cfg = k8s.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg, persist_config=False)
    return cfg
