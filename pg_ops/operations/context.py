"""What every operation needs about a cluster: spec, platform, credentials, its backup store,
a logger, how its alerts leave, and the one way an operation runs SQL on it.

The session: one reading of the platform per tick or step
----------------------------------------------------------
On Kubernetes every `member_endpoints()` lists the pods and every `load_credentials()` reads
the Secret. Inside `with ctx.session():` the context asks the platform once and answers from
that reading: `endpoints()`, `credentials()` / `admin_password()` and `peer_addresses()`, so a
failover step that probes and runs SQL many times lists the pods and reads the Secret once.
Outside a session every call goes to the platform, as before sessions existed. Sessions nest:
an inner `with ctx.session()` re-uses the outer reading. A session is the thread's that opened
it: helper threads (the lease renewer of `members.lease_kept`, which must read the record's
primary afresh; a health pass's storage reader) read the platform as they always did.

Where a session is open: one per health pass (`operations/health.py`: reading the view,
deciding and acting on it; not the primary's watch that follows, which renews the lease for
most of the daemon loop, nor a take-over the tick starts) and one per named step
(`StepLog.step`). The record (`state()`) is never memoised: it is the compare-and-swap truth.

Where it is forgotten, and why a memoised answer never decides a promotion after it changed:
- At the end of every step (`StepLog.step` calls `session_forget()` when it re-used an outer
  session): a step that promotes, fences, restarts or deletes a pod leaves the NEXT step a
  fresh reading of the endpoints.
- Within a step, a member that does not answer a probe at its memoised endpoint has its
  endpoint read again, and is probed at the new one when it moved (a pod recreated by its
  StatefulSet has a new IP): "unreachable" is never a verdict on a stale address. `sql()`
  likewise retries once, at the new endpoint, when the member did not answer and its endpoint
  moved (the call a fresh reading would have made in the first place); it re-reads once per
  member per reading, so a poll against a member that stays down does not list pods each try.
- `session_forget()` by hand, for whatever changes the credentials within one (a rotation).
`sessions=False` (the benchmark's baseline) turns sessions off: every call reads the platform.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER, Credentials
from pg_ops.errors import PgOpsError
from pg_ops.operations.alerts import AlertDelivery
from pg_ops.platforms import platform_for
from pg_ops.platforms.base import Platform
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.session import MemberUnreachable, connect_dsn, with_connection
from pg_ops.postgres.topology import MemberProbe, probe_members
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState
from pg_ops.stores import BackupStore, copy_store_for, store_for

T = TypeVar("T")


class ClusterSession:
    """The platform's answers for one tick or step, each read on first use (thread-safe: a
    health pass reads storage and the pooler beside its probes)."""

    def __init__(self, platform: Platform):
        self.platform = platform
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] | None = None
        self._credentials: Credentials | None = None
        self._peers: dict[str, str] | None = None
        self._silent: set[str] = set()  # members sql() found silent (see first_silence)

    def endpoints(self) -> dict[str, Endpoint]:
        with self._lock:
            if self._endpoints is None:
                self._endpoints = self.platform.member_endpoints()
            return dict(self._endpoints)

    def reread_endpoints(self) -> dict[str, Endpoint]:
        """The platform's endpoints now (a member did not answer at the memoised one)."""
        fresh = self.platform.member_endpoints()
        with self._lock:
            self._endpoints = fresh
        return dict(fresh)

    def credentials(self) -> Credentials | None:
        with self._lock:
            if self._credentials is None:
                self._credentials = self.platform.load_credentials()
            return self._credentials

    def peer_addresses(self) -> dict[str, str]:
        with self._lock:
            if self._peers is None:
                self._peers = self.platform.peer_addresses()
            return dict(self._peers)

    def first_silence(self, member: str) -> bool:
        """True the first time `member` did not answer SQL in this reading: sql() re-reads the
        endpoints then, not on every retry of a poll (a member that stays down would cost a pod
        list per attempt). A probe re-reads on every silence: a probe decides."""
        with self._lock:
            first = member not in self._silent
            self._silent.add(member)
            return first

    def forget(self) -> None:
        with self._lock:
            self._endpoints = self._credentials = self._peers = None
            self._silent.clear()


@dataclass
class ClusterContext:
    spec: ClusterSpec
    platform: Platform
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pg_ops"))
    alerts: AlertDelivery = field(default_factory=AlertDelivery)  # Dagster's AlertsResource sets it
    sessions: bool = True  # False: every call reads the platform (the benchmark's baseline)
    # The open session is the opening thread's: a helper thread (the lease renewer of
    # members.lease_kept, a health pass's storage reader) reads the platform as it always did.
    _local: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    @classmethod
    def for_spec(cls, spec: ClusterSpec, log: logging.Logger | None = None,
                 alerts: AlertDelivery | None = None) -> ClusterContext:
        return cls(spec, platform_for(spec), log or logging.getLogger("pg_ops"), alerts or AlertDelivery())

    @property
    def name(self) -> str:
        return self.spec.name

    # -- the session (see the module doc) ------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[ClusterSession | None]:
        """One reading of the platform for what runs inside (in this thread); nested, the
        outer one's. Yields it (None when `sessions` is off)."""
        local = self._local
        outer: ClusterSession | None = getattr(local, "session", None)
        depth: int = getattr(local, "depth", 0)
        if depth:
            local.depth += 1
            try:
                yield outer
            finally:
                local.depth -= 1
            return
        local.session, local.depth = (ClusterSession(self.platform) if self.sessions else None), 1
        try:
            yield local.session
        finally:
            local.session, local.depth = None, 0

    @property
    def _session(self) -> ClusterSession | None:
        return getattr(self._local, "session", None)

    def session_forget(self) -> None:
        """The open session (if any) reads the platform again on its next call."""
        session = self._session
        if session is not None:
            session.forget()

    # -- the platform's answers ----------------------------------------------------------------
    def credentials(self) -> Credentials:
        session = self._session
        creds = session.credentials() if session is not None else self.platform.load_credentials()
        if creds is None:
            raise PgOpsError(f"cluster {self.name}: no credentials yet (run `pg-ops deploy --cluster {self.name}`)")
        return creds

    def admin_password(self) -> str:
        return self.credentials().password(SUPERUSER)

    def endpoints(self) -> dict[str, Endpoint]:
        session = self._session
        return session.endpoints() if session is not None else self.platform.member_endpoints()

    def peer_addresses(self) -> dict[str, str]:
        session = self._session
        return session.peer_addresses() if session is not None else self.platform.peer_addresses()

    def _moved(self, members: list[str], seen: dict[str, Endpoint]) -> dict[str, Endpoint]:
        """In a session: the members of `members` whose endpoint is not the memoised one any
        more, at their new endpoint (outside one, every call already read the platform)."""
        session = self._session
        if session is None or not members:
            return {}
        fresh = session.reread_endpoints()
        return {m: fresh[m] for m in members if m in fresh and fresh[m] != seen.get(m)}

    def probe(self, names: list[str] | None = None, timeout: float | None = None,
              deadlines: dict[str, float] | None = None) -> dict[str, MemberProbe]:
        endpoints = self.endpoints()
        wanted = {n: endpoints[n] for n in (names or endpoints)}
        password = self.admin_password()
        timeout = timeout or self.spec.monitoring.probe_timeout_seconds
        probes = probe_members(wanted, SUPERUSER, password, timeout, deadlines)
        moved = self._moved([n for n, p in probes.items() if not p.reachable], wanted)
        if moved:
            probes.update(probe_members(moved, SUPERUSER, password, timeout, deadlines))
        return probes

    # -- SQL: the one toolkit of operations/ ---------------------------------------------------
    def sql(self, member: str, fn: Callable, *, timeout: float = 10.0, dbname: str = "postgres",
            local_commit: bool = True, name: str | None = None):
        """fn(conn) on one member as the superuser, within `timeout`. `local_commit`: pg_ops's
        own writes commit locally (they must not wait for a standby in sync-strict mode); False
        for writes that must replicate as a client's would (an SLO marker, an extension update).
        `name`: how errors name the connection (the member)."""
        endpoint = self.endpoints()[member]
        local = {"options": "-c synchronous_commit=local"} if local_commit else {}

        def run(at: Endpoint):
            return with_connection(at, SUPERUSER, self.admin_password(), fn, timeout=timeout, name=name or member,
                                   dbname=dbname, **local)
        try:
            return run(endpoint)
        except MemberUnreachable:
            session = self._session
            if session is None or not session.first_silence(member):
                raise
            moved = self._moved([member], {member: endpoint})
            if not moved:
                raise
        return run(moved[member])

    def on_primary_endpoint(self, fn: Callable, *, timeout: float | None = 3.0, dbname: str = PG_OPS_DATABASE,
                            **extra):
        """fn(conn) through the platform's primary endpoint (`primary_dsn`) as the superuser:
        where clients write. `timeout`: libpq's connect_timeout (None: the DSN's own); bound
        the statements with `options="-c statement_timeout=…"`."""
        with connect_dsn(self.platform.primary_dsn(SUPERUSER, dbname), self.admin_password(), timeout=timeout,
                         **extra) as conn:
            return fn(conn)

    # -- the record and the stores -------------------------------------------------------------
    def state(self) -> DesiredState:
        state = self.platform.state_store().read()
        if state is None:
            raise PgOpsError(f"cluster {self.name} is not deployed (no desired-state record)")
        return state

    def store(self) -> BackupStore:
        """The cluster's backup store; S3 keys come from the env vars the spec names, the
        platform's secret (`credentials_secret`), or boto3's default chain."""
        return store_for(self.spec, secret_provider=self.platform.s3_credentials)

    def copy_store(self) -> BackupStore:
        """The second store of `backups.copy_to` (StoreError when there is none)."""
        return copy_store_for(self.spec, secret_provider=self.platform.s3_credentials)

    def store_from(self, where: str) -> BackupStore:
        """"primary" (backups.store) or "copy" (backups.copy_to): where a drill or a listing reads."""
        if where not in ("primary", "copy"):
            raise PgOpsError(f"backup store {where!r}: primary or copy")
        return self.copy_store() if where == "copy" else self.store()
