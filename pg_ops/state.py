"""The desired-state record: one per cluster, written only by pg_ops, by compare-and-swap.

It is stored as `key=value` lines because the member script (bash, in the official postgres
image, no Python) reads it too. Backends (a local file, a Kubernetes ConfigMap) live in
`platforms/`; this module owns the record's meaning, its text form and the topology lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from pg_ops.errors import ConflictError, LockHeld, PgOpsError


class TopologyLock(BaseModel):
    model_config = ConfigDict(frozen=True)
    holder: str
    operation: str
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) >= self.expires_at


class DesiredState(BaseModel):
    """What pg_ops wants the cluster to be. `version` is the CAS counter of the record itself;
    `epoch` counts topology changes (not the PostgreSQL timeline)."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    version: int = 0
    epoch: int = 1
    primary: str
    system_identifier: str = ""
    bootstrap: bool = True
    fenced: tuple[str, ...] = ()
    members: dict[str, str] = {}  # name -> "host:port" the member script connects to
    lock: TopologyLock | None = None

    def to_text(self) -> str:
        lines = [
            "# pg_ops desired state: written only by pg_ops (compare-and-swap), read by the member script",
            f"cluster={self.cluster}",
            f"version={self.version}",
            f"epoch={self.epoch}",
            f"primary={self.primary}",
            f"system_identifier={self.system_identifier}",
            f"bootstrap={'true' if self.bootstrap else 'false'}",
            f"fenced={' '.join(self.fenced)}",
        ]
        lines += [f"member.{name}={addr}" for name, addr in sorted(self.members.items())]
        if self.lock:
            lines += [f"lock.holder={self.lock.holder}", f"lock.operation={self.lock.operation}",
                      f"lock.expires_at={self.lock.expires_at:.3f}"]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str = "desired state") -> DesiredState:
        raw: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise PgOpsError(f"{source}: malformed line {line!r}")
            raw[key.strip()] = value.strip()
        try:
            lock = None
            if raw.get("lock.holder"):
                lock = TopologyLock(holder=raw["lock.holder"], operation=raw.get("lock.operation", ""),
                                    expires_at=float(raw.get("lock.expires_at", "0")))
            return cls(
                cluster=raw["cluster"], version=int(raw["version"]), epoch=int(raw["epoch"]),
                primary=raw["primary"], system_identifier=raw.get("system_identifier", ""),
                bootstrap=raw.get("bootstrap") == "true",
                fenced=tuple(raw.get("fenced", "").split()),
                members={k.removeprefix("member."): v for k, v in raw.items() if k.startswith("member.")},
                lock=lock,
            )
        except (KeyError, ValueError) as exc:
            raise PgOpsError(f"{source}: unreadable desired-state record ({exc})") from None


class StateStore(Protocol):
    """Compare-and-swap storage for one cluster's record (a file, a ConfigMap)."""

    def read(self) -> DesiredState | None: ...

    def write(self, new: DesiredState, expected_version: int | None) -> DesiredState:
        """Store `new` with version expected_version+1 if the stored version is still
        expected_version (None: the record must not exist yet). Raises ConflictError."""
        ...


def update_state(store: StateStore, change: Callable[[DesiredState], DesiredState], attempts: int = 5) -> DesiredState:
    """Read-modify-write with retries on conflict."""
    for _ in range(attempts):
        current = store.read()
        if current is None:
            raise PgOpsError("the desired-state record does not exist (deploy the cluster first)")
        try:
            return store.write(change(current), current.version)
        except ConflictError:
            time.sleep(0.05)
    raise ConflictError("the desired-state record kept changing under us; try again")


def lock_holder_id(operation: str) -> str:
    return f"{operation}@{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def topology_lock(store: StateStore, operation: str, ttl_seconds: float = 600) -> Iterator[str]:
    """Single flight for topology changes: held in the record itself, so it also holds
    against the CLI in another process and against another Dagster run."""
    holder = lock_holder_id(operation)

    def take(state: DesiredState) -> DesiredState:
        if state.lock and not state.lock.expired() and state.lock.holder != holder:
            left = int(state.lock.expires_at - time.time())
            raise LockHeld(
                f"cluster {state.cluster}: a topology change is already running "
                f"({state.lock.operation} held by {state.lock.holder}, expires in {left} s); refusing {operation}"
            )
        return state.model_copy(update={"lock": TopologyLock(holder=holder, operation=operation,
                                                             expires_at=time.time() + ttl_seconds)})

    update_state(store, take)
    try:
        yield holder
    finally:
        def release(state: DesiredState) -> DesiredState:
            if state.lock and state.lock.holder == holder:
                return state.model_copy(update={"lock": None})
            return state
        with contextlib.suppress(PgOpsError):
            update_state(store, release)
