"""Test helpers: free ports, throw-away PG_OPS_HOME folders, specs, and clusters that are
always stopped by the test that started them."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
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


def stop_cluster(ctx: ClusterContext) -> None:
    """Stop every member of a local cluster by process group, whatever state it is in."""
    for name in ctx.spec.member_names:
        with contextlib.suppress(Exception):
            ctx.platform.kill_member(name)


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
