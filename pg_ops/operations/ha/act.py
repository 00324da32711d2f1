"""Executing the tick's upkeep actions (model.Action), and the building blocks the failover
and switchover runs share with it: repointing a replica, setting the synchronous standbys.

Actions that change topology-related state (repoint, unfence, the synchronous set) run under
the topology lock, taken as `upkeep` for the few milliseconds they need: a failover that
starts meanwhile is refused the lock, and one already running makes the tick skip them (the
next tick decides again on a fresh view). Routing and the observed LSN are idempotent and
guarded instead: they happen only while the record still names the primary the view saw.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_ops.credentials import PG_OPS_DATABASE, REPLICATION_USER
from pg_ops.errors import LockHeld, PgOpsError
from pg_ops.operations.alert_model import Alert
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha.model import (
    LOCKED_ACTIONS,
    Action,
    ClusterView,
    EnsureSlots,
    RecordObserved,
    RecordSyncSet,
    RenewLease,
    Repoint,
    RoutePrimary,
    SetSyncNames,
    StartMember,
    Unfence,
)
from pg_ops.postgres import admin
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.state import DesiredState, HeldLock, topology_lock, update_state

UPKEEP_LOCK_TTL_S = 30


def repoint_member(ctx: ClusterContext, name: str, primary: str, state: DesiredState) -> None:
    """Point a running replica at `primary` without a restart: its current primary_conninfo is
    kept (passfile, application_name) with host and port swapped. A member with none (one that
    fenced itself as an isolated primary drops its upstream) gets the one its member script
    writes, with the passfile its platform gives it."""
    peer = Endpoint.parse(state.members[primary])

    def change(conn):
        current = admin.primary_conninfo(conn)
        params = conninfo_to_dict(current) if current else {
            "user": REPLICATION_USER, "passfile": ctx.platform.member_passfile(name), "application_name": name,
            "connect_timeout": "3"}
        params.update(host=peer.host, port=str(peer.port))
        admin.repoint(conn, make_conninfo(**params), admin.slot_name(name))

    ctx.sql(name, change, timeout=5)


def ensure_slots(ctx: ClusterContext, primary: str) -> list[str]:
    """A replication slot on `primary` for every other member (inactive stale pg_ops slots of
    non-members dropped); returns the slots created."""
    others = [m for m in ctx.spec.member_names if m != primary]
    created = ctx.sql(primary, lambda c: admin.ensure_slots(c, others))
    if created:
        ctx.log.info("created replication slots %s on %s", ", ".join(created), primary)
    return created


def renew_lease(ctx: ClusterContext, member: str, epoch: int, timeout: float = 3.0) -> None:
    ctx.sql(member, lambda c: admin.renew_lease(c, member, epoch), timeout=timeout, dbname=PG_OPS_DATABASE)


def set_sync_names(ctx: ClusterContext, primary: str, value: str) -> bool:
    changed = ctx.sql(primary, lambda c: admin.set_synchronous_standbys(c, value), timeout=5)
    if changed:
        ctx.log.info("synchronous_standby_names on %s = %r", primary, value)
    return changed


def _still_current(view: ClusterView, state: DesiredState | None) -> bool:
    """The record still names the primary the view saw, at the same epoch, and no change runs."""
    return (state is not None and state.epoch == view.record.epoch and state.primary == view.designated
            and (state.lock is None or state.lock.expired()))


def _observe(view: ClusterView, action: RecordObserved):
    def change(state: DesiredState) -> DesiredState:
        if not _still_current(view, state):
            return state
        return state.model_copy(update={"observed_lsn": action.lsn, "observed_at": view.now,
                                        "observed_standbys": action.standbys,
                                        "timeline": action.timeline or state.timeline})
    return change


def _locked(ctx: ClusterContext, view: ClusterView, action: Action, lock: HeldLock) -> None:
    primary = view.designated
    if isinstance(action, Repoint):
        repoint_member(ctx, action.member, primary, view.record)
        ctx.log.info("%s: repointed %s at the primary %s", ctx.name, action.member, primary)
    elif isinstance(action, Unfence):
        lock.update(lambda s: s.model_copy(update={"fenced": tuple(m for m in s.fenced if m != action.member)}))
        ctx.log.info("%s: %s streams from %s again: no longer fenced", ctx.name, action.member, primary)
    elif isinstance(action, SetSyncNames):
        set_sync_names(ctx, primary, action.value)
    elif isinstance(action, RecordSyncSet):
        lock.update(lambda s: s.model_copy(update={"sync_set": action.members}))
        ctx.log.info("%s: synchronous set %s", ctx.name, ", ".join(action.members) or "(none)")
    elif isinstance(action, StartMember):
        ctx.platform.start_member(action.member)
        ctx.log.warning("%s: started fenced former primary %s again: it rejoins as a replica of %s once it reaches "
                        "it, and reports the writes its rewind discards", ctx.name, action.member, primary)


def _failure(ctx: ClusterContext, view: ClusterView, action: Action, exc: Exception) -> Alert:
    kind = {SetSyncNames: "replication_mode", RoutePrimary: "primary_routing",
            RenewLease: "lease_renewal", EnsureSlots: "replication_slots",
            StartMember: "member_start"}.get(type(action), "upkeep_failed")
    member = view.designated if isinstance(action, RoutePrimary | SetSyncNames | RenewLease | EnsureSlots) else \
        getattr(action, "member", None)
    return Alert(cluster=ctx.name, severity="critical" if kind == "primary_routing" else "warning", kind=kind,
                 summary=f"{ctx.name}: {type(action).__name__} {member or ''} failed: {exc}".replace("  ", " "),
                 details={"member": member, "action": type(action).__name__})


def execute(ctx: ClusterContext, view: ClusterView, actions: tuple[Action, ...]) -> list[Alert]:
    """Run a decision's actions in order; returns an alert per action that failed (the others
    still run; the next tick decides again)."""
    failures: list[Alert] = []
    store = ctx.platform.state_store()
    action: Action
    for action in [a for a in actions if not isinstance(a, LOCKED_ACTIONS)]:
        try:
            if isinstance(action, RoutePrimary):
                if _still_current(view, store.read()):
                    ctx.platform.route_primary(action.member)
            elif isinstance(action, RecordObserved):
                update_state(store, _observe(view, action))
            elif isinstance(action, RenewLease):
                renew_lease(ctx, action.member, action.epoch)
            elif isinstance(action, EnsureSlots):
                if _still_current(view, store.read()):
                    ensure_slots(ctx, action.member)
        except PgOpsError as exc:
            failures.append(_failure(ctx, view, action, exc))
    locked = [a for a in actions if isinstance(a, LOCKED_ACTIONS)]
    if not locked:
        return failures
    try:
        with topology_lock(store, "upkeep", ttl_seconds=UPKEEP_LOCK_TTL_S) as lock:
            current = store.read()
            if not _still_current(view, current and current.model_copy(update={"lock": None})):
                return failures
            for action in locked:
                try:
                    _locked(ctx, view, action, lock)
                except PgOpsError as exc:
                    failures.append(_failure(ctx, view, action, exc))
                    if isinstance(action, SetSyncNames | RecordSyncSet):
                        break  # the order of these two is what keeps the record safe
    except LockHeld as exc:
        ctx.log.info("%s: upkeep skipped this tick: %s", ctx.name, exc)
    return failures
