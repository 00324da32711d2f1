"""Test helpers: free ports, throw-away PG_OPS_HOME folders, specs, and clusters that are
always stopped by the test that started them."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.platforms.base import Platform
from pg_ops.platforms.local import LocalPlatform
from pg_ops.spec import ClusterSpec, load_spec


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(count: int) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        # Below the ephemeral range (32768+), so outgoing client sockets cannot take them meanwhile.
        base = random.randrange(15000, 32000 - count)
        if all(port_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range found")


def free_port() -> int:
    return free_port_range(1)


@contextlib.contextmanager
def temp_home() -> Iterator[Path]:
    """A PG_OPS_HOME the unprivileged server user can traverse (pytest's tmp_path is 0700
    under /tmp/pytest-of-root, which it cannot)."""
    path = Path(tempfile.mkdtemp(prefix="pg-ops-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_spec(folder: Path, name: str, **overrides) -> Path:
    """A local spec with free ports; overrides are merged one level deep."""
    members = overrides.get("postgres", {}).get("members", 3)
    raw: dict = {
        "name": name,
        "platform": "local",
        "postgres": {"members": 3, "replication": "async"},
        "databases": [{"name": "app", "owner": "app"}],
        "local": {"base_port": free_port_range(members)},
        "backups": {"store": {"type": "file", "path": "backups"}},
        "failover": {"mode": "automatic"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@contextlib.contextmanager
def pg_bin_set(path: Path | None) -> Iterator[None]:
    """PG_OPS_PG_BIN set to another major's binaries (as a user sets it), as it was after."""
    saved = os.environ.get("PG_OPS_PG_BIN")
    os.environ["PG_OPS_PG_BIN"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PG_OPS_PG_BIN", None)
        else:
            os.environ["PG_OPS_PG_BIN"] = saved


def server_majors(ctx: ClusterContext) -> dict[str, int | None]:
    """The major each member answers with (None: it does not answer)."""
    return {name: (p.server_version_num // 10000 if p.server_version_num else None)
            for name, p in ctx.probe().items()}


def one_primary_all_streaming(ctx: ClusterContext) -> bool:
    """The designated primary is the only writable member and every other member streams."""
    primary = ctx.state().primary
    probes = ctx.probe()
    return [n for n, p in probes.items() if p.writable] == [primary] and \
        all(p.streaming for n, p in probes.items() if n != primary)


def kill_member(platform: Platform, name: str) -> None:
    """Kill a member as when its node dies (a power of the tests, not of pg_ops): local, SIGKILL
    of its supervisor and postgres together (the process group, as fencing does); Kubernetes, its
    pod force-deleted (grace 0: the API object goes at once, the kubelet kills the container at
    its next sync, and the StatefulSet makes a new pod)."""
    if isinstance(platform, LocalPlatform):
        platform.kill_member(name)
    else:
        platform.force_delete_pod(name)  # type: ignore[attr-defined]  # KubernetesPlatform


def stop_cluster(ctx: ClusterContext) -> None:
    """Stop every member of a local cluster (and its pooler) by process group, whatever state it is in."""
    with contextlib.suppress(Exception):
        ctx.platform.stop_pooler()
    for name in ctx.spec.member_names:
        with contextlib.suppress(Exception):
            kill_member(ctx.platform, name)


@contextlib.contextmanager
def running_cluster(spec: ClusterSpec) -> Iterator[ClusterContext]:
    ctx = ClusterContext.for_spec(spec)
    try:
        deploy(ctx)
        yield ctx
    finally:
        stop_cluster(ctx)


def spec_from(path: Path) -> ClusterSpec:
    return load_spec(path)


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.2):
    """Poll until predicate() is truthy; fail naming `what` (exceptions count as not yet)."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


# -- either platform: the same cluster on local processes or behind the fake Kubernetes API ------
PLATFORMS = ("local", "kubernetes")
_FAKES: dict[str, object] = {}  # cluster name -> the (Real)Kubernetes serving it
_NAMESPACES = itertools.count(1)


def write_platform_spec(folder: Path, name: str, platform: str, **overrides) -> Path:
    """write_spec for either platform. On Kubernetes: a namespace per cluster (the primary
    Service has the same name in every cluster), the Git-owned objects applied by pg_ops (no
    ArgoCD here), and small shared_buffers (the rendered config sizes memory for a 4Gi pod)."""
    if platform == "kubernetes":
        postgres = overrides.pop("postgres", {})
        overrides["postgres"] = {**postgres, "parameters": {"shared_buffers": "128MB",
                                                            **postgres.get("parameters", {})}}
        # A namespace of its own per cluster: a deleted namespace takes the real namespace
        # controller seconds to empty, and the next test need not wait for it.
        overrides["kubernetes"] = {"namespace": f"ns-{name}-{next(_NAMESPACES)}", "gitops": False,
                                   **overrides.get("kubernetes", {})}
    return write_spec(folder, name, platform=platform, **overrides)


@contextlib.contextmanager
def real_kubernetes():
    """This test's view of the process's real control plane with stand-in nodes
    (kube_cluster.RealKubernetes), undone afterwards; the test is skipped when the control plane
    is not built and cannot be (no Go toolchain)."""
    from pg_ops_tests import kube_cluster  # it imports this module

    kube = kube_cluster.RealKubernetes()
    try:
        kube.start()
    except kube_cluster.ControlPlaneUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield kube
    finally:
        kube.stop()


@contextlib.contextmanager
def cluster_on(spec: ClusterSpec) -> Iterator[ClusterContext]:
    """A deployed cluster on the spec's platform. Kubernetes: in a namespace of its own on the real
    control plane (real members behind its pods), every process of it stopped afterwards, even
    when the deploy or the test fails."""
    if spec.platform != "kubernetes":
        with running_cluster(spec) as ctx:
            yield ctx
        return
    with real_kubernetes() as kube:
        kube.register_cluster(spec)
        _FAKES[spec.name] = kube
        try:
            ctx = ClusterContext.for_spec(spec)
            deploy(ctx)
            yield ctx
        finally:
            _FAKES.pop(spec.name, None)


def fake_of(ctx: ClusterContext):
    """The RealKubernetes behind a cluster deployed by cluster_on (None on the local platform)."""
    return _FAKES.get(ctx.name)


def lose_member(ctx: ClusterContext, name: str) -> None:
    """The member's machine dies: local, its processes are SIGKILLed; Kubernetes, its node is
    gone, so the pod is force-deleted and its replacement cannot be scheduled (stays Pending)."""
    fake = fake_of(ctx)
    if fake is not None:
        fake.hold_pending(ctx.spec.kubernetes.namespace, name)
    kill_member(ctx.platform, name)


def recover_member(ctx: ClusterContext, name: str) -> None:
    """The lost machine is back: Kubernetes schedules the member's pod again (local: nothing to
    do, `deploy` starts the member)."""
    fake = fake_of(ctx)
    if fake is not None:
        fake.release_pending(ctx.spec.kubernetes.namespace, name)


def member_generation(ctx: ClusterContext, name: str) -> str | None:
    """What changes when a member is restarted: the supervisor's pid (local) or the pod's uid."""
    fake = fake_of(ctx)
    if fake is None:
        pid = ctx.platform.supervisor_pid(name)
        return None if pid is None else str(pid)
    pod = fake.object("pods", ctx.spec.kubernetes.namespace, name)
    return None if pod is None else pod["metadata"]["uid"]


@contextlib.contextmanager
def home_environment() -> Iterator[Path]:
    """A throw-away PG_OPS_HOME (with specs/ and dagster/) set in os.environ and restored
    afterwards: for module-scoped fixtures, which cannot use monkeypatch."""
    keys = ("PG_OPS_HOME", "PG_OPS_CLUSTERS", "DAGSTER_HOME")
    saved = {k: os.environ.get(k) for k in keys}
    with temp_home() as home:
        (home / "specs").mkdir()
        (home / "dagster").mkdir()
        os.environ.update(PG_OPS_HOME=str(home), PG_OPS_CLUSTERS=str(home / "specs"),
                          DAGSTER_HOME=str(home / "dagster"))
        try:
            yield home
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def requested_run(ctx: ClusterContext, request):
    """What the failover run a health tick requested does (`request`: the tick's FailoverRequest
    or the sensor's RunRequest): finish the take-over the tick already made (failover.promote_in:
    sensor, the default: docs/architecture/adr-004-failover-in-the-sensor.md), or, when the tick
    only requested (promote_in: run, or its take-over did not happen), the whole failover."""
    from pg_ops.operations.failover import TakeOver, failover, finish

    taken = getattr(request, "taken_over", None)
    if taken is None and getattr(request, "run_config", None):
        taken = request.run_config["ops"]["run_failover"]["config"].get("taken_over")
    return finish(ctx, TakeOver.from_json(taken)) if taken else failover(ctx)


@contextlib.contextmanager
def kubernetes_s3_cluster(pg_home: Path, name: str, images: dict[str, tuple[int, ...]] | None = None,
                          **overrides) -> Iterator[tuple[ClusterContext, object]]:
    """A deployed 2-member Kubernetes cluster on the real control plane, archiving to a fresh
    SeaweedFS bucket with the keys in the backup Secret (as an admin creates it): (ctx, kube).
    `overrides` merge into the spec one level deep; `images`: member images and the PostgreSQL
    majors they carry (RealKubernetes.image_carries)."""
    from pg_ops_tests.s3server import S3_PORT, shared_server

    server = shared_server()
    raw: dict = {"postgres": {"members": 2},
                 "backups": {"wal": {"archive_timeout_seconds": 5}, "store": {
                     "type": "s3", "bucket": server.new_bucket(), "prefix": "k8s",
                     "endpoint_url": f"http://127.0.0.1:{S3_PORT}", "credentials_secret": BACKUP_SECRET}}}
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    spec = spec_from(write_platform_spec(pg_home / "specs", name, "kubernetes", **raw))
    with real_kubernetes() as kube:
        for image, majors in (images or {}).items():
            kube.image_carries(image, *majors)
        kube.register_cluster(spec)
        create_backup_secret(kube, spec, server)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        yield ctx, kube


BACKUP_SECRET = "pg-ops-backup-s3"


def create_backup_secret(kube, spec: ClusterSpec, server) -> None:
    """The backup store's keys in the Secret the spec names (`backups.store.credentials_secret`),
    in the cluster's namespace, as an admin creates it."""
    import base64

    kube.admin_api().core.create_namespaced_secret(spec.kubernetes.namespace, {
        "metadata": {"name": spec.backups.store.credentials_secret}, "data": {
            "access_key": base64.b64encode(server.access_key.encode()).decode(),
            "secret_key": base64.b64encode(server.secret_key.encode()).decode()}})
