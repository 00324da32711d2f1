"""Cluster status, typed: what `pg-ops status --json` prints (docs/architecture/interfaces.md) as
`ClusterStatus.to_dict()`. Built from one ClusterView (the same snapshot the HA decision
used) plus the storage figures the platform reports; it computes no alerts
(operations/health.py's `assess` does, from a status).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.platforms.base import DiscardedWrites, MemberReport
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.topology import MemberProbe, StandbyRow

STORAGE_TIMEOUT_S = 5.0  # a pod exec to a lost node must not hold up a health tick


@dataclass(frozen=True)
class Storage:
    used_bytes: int | None = None
    total_bytes: int | None = None

    @property
    def ratio(self) -> float | None:
        if not self.used_bytes or not self.total_bytes:
            return None
        return round(self.used_bytes / self.total_bytes, 4)


@dataclass(frozen=True)
class MemberStatus:
    name: str
    role: str  # primary | replica | down | fenced
    designated_primary: bool
    host: str
    port: int
    timeline: int | None
    lsn: Lsn | None
    replay_lsn: Lsn | None
    lag_bytes: int | None
    lag_seconds: float | None
    sync_state: str | None
    streaming: bool | None
    sender: str | None
    connections: int | None
    max_connections: int | None
    error: str | None
    receiver_status: str | None
    replication_state: str | None  # on the primary: pg_stat_replication.state for this member
    silence_seconds: float | None
    data_dir_used_bytes: int | None
    data_dir_total_bytes: int | None
    storage_ratio: float | None
    # From the member script's report: the writes its last rewind or re-clone discarded, and
    # when it last fenced itself as an isolated primary (None: nothing reported).
    discarded: DiscardedWrites | None = None
    isolated_at: float | None = None

    @property
    def up(self) -> bool:
        return self.role in ("primary", "replica")


@dataclass(frozen=True)
class ClusterStatus:
    cluster: str
    platform: str
    epoch: int
    designated_primary: str
    system_identifier: str
    replication: str
    primary_dsn: str
    writable_members: list[str]
    fenced: list[str]
    sync_set: list[str]
    lock: dict | None
    members: list[MemberStatus]
    passfile: str | None = None
    maintenance: dict | None = None  # {"until": unix time, "reason": …} while maintenance mode is on
    pooler: dict | None = None  # spec `pooler`: operations/pooling.pooler_status, read by the health pass
    extra: dict = field(default_factory=dict)  # figures other areas add (alerts, run ids…)

    def member(self, name: str) -> MemberStatus:
        return next(m for m in self.members if m.name == name)

    def to_dict(self) -> dict:
        out = asdict(self, dict_factory=_printed)
        out.pop("extra")
        if out["passfile"] is None:
            out.pop("passfile")
        return {**out, **self.extra}


def _printed(items: list[tuple[str, object]]) -> dict:
    """asdict's dict factory: LSNs printed as PostgreSQL does (`X/Y`), the status's JSON form."""
    return {k: str(v) if isinstance(v, Lsn) else v for k, v in items}


def member_role(name: str, probe: MemberProbe, fenced: tuple[str, ...]) -> str:
    if not probe.reachable:
        return "fenced" if name in fenced else "down"
    return "primary" if probe.writable else "replica"


def _member_status(name: str, probe: MemberProbe, designated: str, fenced: tuple[str, ...],
                   row: StandbyRow | None, storage: Storage, report: MemberReport) -> MemberStatus:
    role = member_role(name, probe, fenced)
    lag_bytes = row.lag_bytes if row else None
    lag_seconds = row.replay_lag_seconds if row else None
    if role == "replica" and row is not None and lag_seconds is None:
        lag_seconds = 0.0  # connected and nothing to replay (replay_lag is NULL when idle)
    if role == "primary":
        lag_bytes, lag_seconds = 0, 0.0
    elif role != "replica":
        lag_bytes = lag_seconds = None  # not connected to the primary: unknown, never "0"
    return MemberStatus(
        name=name, role=role, designated_primary=name == designated, host=probe.host, port=probe.port,
        timeline=probe.timeline, lsn=probe.lsn, replay_lsn=probe.replay_lsn, lag_bytes=lag_bytes,
        lag_seconds=lag_seconds, sync_state=row.sync_state if row else None,
        streaming=probe.streaming if role == "replica" else None, sender=probe.sender,
        connections=probe.connections, max_connections=probe.max_connections, error=probe.error,
        receiver_status=probe.receiver_status, replication_state=row.state if row else None,
        silence_seconds=probe.silence_seconds, data_dir_used_bytes=storage.used_bytes,
        data_dir_total_bytes=storage.total_bytes, storage_ratio=storage.ratio, discarded=report.discarded,
        isolated_at=report.isolated_at)


def build_status(ctx: ClusterContext, view, storage: dict[str, Storage] | None = None,
                 reports: dict[str, MemberReport] | None = None) -> ClusterStatus:
    """The status of one ClusterView (operations/ha/model.py)."""
    state, probes = view.record, view.members
    writable = [n for n, p in probes.items() if p.writable]
    primary_probe = probes.get(state.primary) if state.primary in writable else (
        probes[writable[0]] if len(writable) == 1 else None)
    storage = storage or {}
    members = [_member_status(name, probe, state.primary, state.fenced,
                              primary_probe.standby(name) if primary_probe is not None else None,
                              storage.get(name, Storage()), (reports or {}).get(name, MemberReport()))
               for name, probe in probes.items()]
    passfile = ctx.platform.passfile()
    return ClusterStatus(
        cluster=ctx.name, platform=ctx.platform.kind, epoch=state.epoch, designated_primary=state.primary,
        system_identifier=state.system_identifier, replication=ctx.spec.postgres.replication,
        primary_dsn=ctx.platform.primary_dsn("postgres", "postgres"), writable_members=writable,
        fenced=list(state.fenced), sync_set=list(state.sync_set),
        lock=state.lock.model_dump() if state.lock and not state.lock.expired() else None,
        members=members, passfile=str(passfile) if passfile is not None else None,
        maintenance={"until": state.maintenance_until, "reason": state.maintenance_reason}
        if state.in_maintenance(view.now) else None)


def cluster_status(ctx: ClusterContext) -> ClusterStatus:
    from pg_ops.operations.ha.model import Policy
    from pg_ops.operations.ha.observe import read_view

    if ctx.platform.state_store().read() is None:
        raise PgOpsError(f"cluster {ctx.name} is not deployed (no desired-state record); run `pg-ops deploy`")
    view = read_view(ctx, Policy.from_spec(ctx.spec), confirm=False)
    return build_status(ctx, view, storage_of(ctx), per_member(ctx, ctx.platform.member_report, MemberReport()))


def per_member(ctx: ClusterContext, fetch, unknown, names: list[str] | None = None,
               timeout: float = STORAGE_TIMEOUT_S) -> dict:
    """fetch(member) for every member at once under one deadline: a member whose answer does
    not come in time (a pod exec to a lost node) or fails is `unknown`, never an error."""
    names = names or ctx.spec.member_names

    def one(name: str):
        try:
            return fetch(name)
        except Exception:  # noqa: BLE001 - reported as unknown, never breaks status or a tick
            return unknown

    pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="per-member")
    futures = {name: pool.submit(one, name) for name in names}
    wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    return {name: fut.result() if fut.done() else unknown for name, fut in futures.items()}


def storage_of(ctx: ClusterContext, timeout: float = STORAGE_TIMEOUT_S) -> dict[str, Storage]:
    """Disk use of the filesystem holding each member's data, as the platform sees it (known
    even when the member is down)."""
    def fetch(name: str) -> Storage:
        usage = ctx.platform.data_dir_usage(name)
        return Storage(*usage) if usage else Storage()
    return per_member(ctx, fetch, Storage(), timeout=timeout)
