"""The desired-state record: one per cluster, written only by pg_ops, by compare-and-swap.

It is stored as `key=value` lines because the member script (bash, in the official postgres
image, no Python) reads it too. Backends (a local file, a Kubernetes ConfigMap) live in
`platforms/`; this module owns the record's meaning, its text form and the topology lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from pg_ops.errors import ConflictError, LockHeld, LockLost, PgOpsError

log = logging.getLogger("pg_ops")


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
    # `pg-ops recover` on Kubernetes: the designated primary's first boot restores a base backup
    # and replays to the target (member.sh's [recover] row) instead of initdb, with the inputs of
    # the recovery Secret that carries this token; cleared once it runs as the primary.
    recovery: str = ""
    # `pg-ops upgrade --to N` on Kubernetes: the designated primary's member script upgrades its
    # data in place (member.sh's [upgrade] row) to major `upgrade_to`, initdb of the new major with
    # `upgrade_initdb`; its work is reported under `upgrade_id`. Cleared when the upgrade is done
    # or called off (the member undoes it until the record names the upgraded system identifier).
    upgrade_id: str = ""
    upgrade_to: int = 0
    upgrade_initdb: str = ""
    fenced: tuple[str, ...] = ()  # must not be writable (ex-primaries until they stream again)
    members: dict[str, str] = {}  # name -> "host:port" the member script connects to
    # Sync modes: the members known to hold every acknowledged commit, between them
    # (synchronous_standby_names is ANY 1 over them). A sync failover promotes one of them.
    sync_set: tuple[str, ...] = ()
    # The designated primary's LSN and streaming standbys as pg_ops last saw them: the lag
    # guard's reference and the down check's memory for a run that has no sensor memory.
    observed_lsn: str = ""
    observed_at: float = 0.0
    observed_standbys: tuple[str, ...] = ()
    # The designated primary's timeline as pg_ops last saw it (0: not known yet): a member on an
    # older timeline holds WAL off the current history and is never a failover candidate.
    timeline: int = 0
    # A switchover between the old primary's clean shutdown and the promotion: the shutdown
    # checkpoint's LSN (pg_controldata), the old primary's final WAL. A resume promotes only a
    # member that received past it (Patroni's rule); cleared once the new primary took over.
    final_lsn: str = ""
    # Isolation fencing, read by the member script: the lease length in seconds, 0 = off.
    lease_seconds: float = 0.0
    # Maintenance mode (`pg-ops maintenance on --for 2h`): until this unix time no automatic
    # failover and no automatic rollout for the cluster; alerts go on. 0: off. Expires by itself.
    maintenance_until: float = 0.0
    maintenance_reason: str = ""
    lock: TopologyLock | None = None

    def in_maintenance(self, now: float) -> bool:
        return self.maintenance_until > now

    def to_text(self) -> str:
        lines = [
            "# pg_ops desired state: written only by pg_ops (compare-and-swap), read by the member script",
            f"cluster={self.cluster}",
            f"version={self.version}",
            f"epoch={self.epoch}",
            f"primary={self.primary}",
            f"system_identifier={self.system_identifier}",
            f"bootstrap={'true' if self.bootstrap else 'false'}",
            f"recovery={self.recovery}",
            f"upgrade.id={self.upgrade_id}",
            f"upgrade.to={self.upgrade_to or ''}",
            f"upgrade.initdb={self.upgrade_initdb}",
            f"fenced={' '.join(self.fenced)}",
            f"sync_set={' '.join(self.sync_set)}",
            f"observed.lsn={self.observed_lsn}",
            f"observed.at={self.observed_at:.3f}",
            f"observed.standbys={' '.join(self.observed_standbys)}",
            f"timeline={self.timeline}",
            f"final.lsn={self.final_lsn}",
            f"isolation.lease_seconds={self.lease_seconds:g}",
            f"maintenance.until={self.maintenance_until:.3f}",
            f"maintenance.reason={self.maintenance_reason}",
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
                recovery=raw.get("recovery", ""),
                upgrade_id=raw.get("upgrade.id", ""),
                upgrade_to=int(raw.get("upgrade.to") or 0),
                upgrade_initdb=raw.get("upgrade.initdb", ""),
                fenced=tuple(raw.get("fenced", "").split()),
                sync_set=tuple(raw.get("sync_set", "").split()),
                observed_lsn=raw.get("observed.lsn", ""),
                observed_at=float(raw.get("observed.at") or 0),
                observed_standbys=tuple(raw.get("observed.standbys", "").split()),
                timeline=int(raw.get("timeline") or 0),
                final_lsn=raw.get("final.lsn", ""),
                lease_seconds=float(raw.get("isolation.lease_seconds") or 0),
                maintenance_until=float(raw.get("maintenance.until") or 0),
                maintenance_reason=raw.get("maintenance.reason", ""),
                members={k.removeprefix("member."): v for k, v in raw.items() if k.startswith("member.")},
                lock=lock,
            )
        except (KeyError, ValueError) as exc:
            raise PgOpsError(f"{source}: unreadable desired-state record ({exc})") from exc


class StateStore(Protocol):
    """Compare-and-swap storage for one cluster's record (a file, a ConfigMap)."""

    def read(self) -> DesiredState | None: ...

    def write(self, new: DesiredState, expected_version: int | None) -> DesiredState:
        """Store `new` with version expected_version+1 if the stored version is still
        expected_version (None: the record must not exist yet). Raises ConflictError."""
        ...


def update_state(store: StateStore, change: Callable[[DesiredState], DesiredState], attempts: int = 5) -> DesiredState:
    """Read-modify-write with retries on conflict; `change` returning the state unchanged writes nothing."""
    for _ in range(attempts):
        current = store.read()
        if current is None:
            raise PgOpsError("the desired-state record does not exist (deploy the cluster first)")
        new = change(current)
        if new is current or new == current:
            return current  # nothing to change: no write (a ConfigMap write wakes every watcher)
        try:
            return store.write(new, current.version)
        except ConflictError:
            time.sleep(0.05)
    raise ConflictError("the desired-state record kept changing under us; try again")


def lock_holder_id(operation: str) -> str:
    return f"{operation}@{socket.gethostname()}:{os.getpid()}:{threading.get_native_id()}"


class HeldLock:
    """The topology lock while it is held: renewed in the background (a long switchover or
    re-clone outlives any fixed TTL), and every record write made through `update` first checks
    that this holder still holds it, so a run whose lock expired and was taken over cannot
    undo the newer change."""

    def __init__(self, store: StateStore, holder: str, operation: str, ttl_seconds: float):
        self.store, self.holder, self.operation, self.ttl = store, holder, operation, ttl_seconds
        self.lost: str | None = None
        # Until this moment nobody else can have taken the lock (a take needs it expired), so a
        # check before then needs no read; set by the take and by every renewal.
        self.expires_at = time.time() + ttl_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lock-{operation}", daemon=True)

    def _check(self, state: DesiredState) -> None:
        if state.lock is None or state.lock.holder != self.holder:
            now = state.lock.holder if state.lock else "nobody"
            self.lost = self.lost or f"the topology lock of {state.cluster} is now held by {now}"
            raise LockLost(f"cluster {state.cluster}: {self.operation} lost the topology lock "
                           f"({self.lost}); stopping before it writes anything")

    def update(self, change: Callable[[DesiredState], DesiredState]) -> DesiredState:
        """update_state, refused unless the record still names this holder."""
        def guarded(state: DesiredState) -> DesiredState:
            self._check(state)
            return change(state)
        return update_state(self.store, guarded)

    def check(self) -> None:
        """Raise LockLost if another holder has taken the lock over (the renewals stalled past
        the TTL, and another run took it): called before every step of a topology change, so a
        run that lost it stops before it fences, promotes, repoints or routes anything."""
        if self.lost:
            raise LockLost(f"{self.operation}: {self.lost}")
        if time.time() < self.expires_at - CHECK_MARGIN_S:
            return
        state = self.store.read()
        if state is not None:
            self._check(state)

    def _renew(self, state: DesiredState) -> DesiredState:
        self._check(state)
        return state.model_copy(update={"lock": TopologyLock(holder=self.holder, operation=self.operation,
                                                             expires_at=time.time() + self.ttl)})

    def _renew_once(self) -> None:
        renewed = update_state(self.store, self._renew)
        if renewed.lock is not None:
            self.expires_at = renewed.lock.expires_at

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(0.2, self.ttl / 3)):
            try:
                self._renew_once()
            except LockLost:
                log.error("%s: %s", self.operation, self.lost)
                return
            except PgOpsError as exc:  # the store is unreachable now: try again next time
                log.warning("%s: could not renew the topology lock: %s", self.operation, exc)

    def start(self) -> HeldLock:
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

        def release(state: DesiredState) -> DesiredState:
            if state.lock and state.lock.holder == self.holder:
                return state.model_copy(update={"lock": None})
            return state
        try:
            if self.store.read() is None:  # the record went with its cluster (teardown): so did the lock
                return
            update_state(self.store, release)
        except PgOpsError as exc:
            # It expires by itself; say so, since the next change waits for that.
            log.warning("%s: could not release the topology lock (it expires in at most %.0f s): %s",
                        self.operation, self.ttl, exc)


CHECK_MARGIN_S = 2.0  # clocks of two pg_ops processes, and the record write's own latency


@contextlib.contextmanager
def topology_lock(store: StateStore, operation: str, ttl_seconds: float = 120) -> Iterator[HeldLock]:
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
    lock = HeldLock(store, holder, operation, ttl_seconds).start()
    try:
        yield lock
    finally:
        lock.release()
