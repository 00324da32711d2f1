"""Failover, switchover and rebuild: the topology changes, in DESIGN.md's safety order.

Failover:   lock -> re-confirm the primary is down (pg_ops's probes AND the replicas' view)
            -> choose the candidate (highest received LSN; lag guard; sync rules) -> write the
            desired state (epoch+1, primary=candidate, old primary fenced) -> fence the old
            primary -> promote -> slots + sync standbys on the new primary -> repoint the
            other replicas (no restart) -> route the primary endpoint -> verify a write.
Switchover: planned and lossless: the old primary is shut down cleanly, the candidate waits
            until it has received the final LSN, then it is promoted; the old primary comes
            back through the member script as a replica (rewound if needed).
Rebuild:    restart a replica through the member script (which rewinds a diverged member),
            re-cloning when that is impossible or asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_ops.credentials import SUPERUSER
from pg_ops.errors import MemberError, PgOpsError
from pg_ops.operations.activity import record_status
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import wait_until, write_through_primary_endpoint
from pg_ops.operations.replication_mode import apply_mode
from pg_ops.operations.steps import StepLog
from pg_ops.postgres import admin
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.session import with_connection
from pg_ops.postgres.topology import MemberProbe, lsn_to_int
from pg_ops.state import DesiredState, topology_lock, update_state

LOCK_TTL_S = 180
REJOIN_TIMEOUT_S = 60
RECENT_DETECTION_S = 60


@dataclass
class TopologyChange:
    operation: str
    cluster: str
    old_primary: str
    new_primary: str
    epoch: int
    timeline: int | None = None
    lag_bytes_at_promotion: int | None = None
    detection_to_writable_s: float | None = None
    promoted_at: float | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def metadata(self) -> dict:
        out = {k: v for k, v in {
            "operation": self.operation, "old_primary": self.old_primary, "new_primary": self.new_primary,
            "epoch": self.epoch, "timeline": self.timeline, "lag_bytes_at_promotion": self.lag_bytes_at_promotion,
            "detection_to_writable_s": self.detection_to_writable_s, "seconds": round(self.seconds, 4),
        }.items() if v is not None}
        out.update(self.steps)
        if self.notes:
            out["notes"] = "; ".join(self.notes)
        return out


# -- candidate choice ---------------------------------------------------------------------------
def choose_candidate(ctx: ClusterContext, state: DesiredState, probes: dict[str, MemberProbe], *,
                     to: str | None = None, force: bool = False,
                     last_primary_lsn: str | None = None) -> tuple[str, int]:
    """The replica with the highest received LSN (promotion replays what was received), and its
    lag in bytes behind the best LSN known for the old primary."""
    old = state.primary
    replicas = {n: p for n, p in probes.items() if n != old and n not in state.fenced}
    usable = {n: p for n, p in replicas.items() if p.reachable and p.in_recovery}
    if to is not None:
        if to not in ctx.spec.member_names:
            raise PgOpsError(f"cluster {ctx.name}: member {to!r} does not exist")
        if to == old:
            raise PgOpsError(f"cluster {ctx.name}: {to} is already the designated primary")
        if to not in usable:
            why = probes[to].error if to in probes and not probes[to].reachable else "not a replica"
            raise PgOpsError(f"cluster {ctx.name}: cannot promote {to}: {why}")
    if not usable:
        raise PgOpsError(f"cluster {ctx.name}: no replica is reachable to promote "
                         f"({', '.join(sorted(replicas)) or 'the cluster has no replica'})")
    if ctx.spec.postgres.replication != "async" and not force:
        missing = sorted(set(replicas) - set(usable))
        if missing:
            # With ANY 1, the standby that acknowledged the last commit may be the missing one.
            raise PgOpsError(f"cluster {ctx.name}: {ctx.spec.postgres.replication} mode: {', '.join(missing)} "
                             f"unreachable, so no replica is known to hold every acknowledged commit; "
                             f"refusing (use --force to accept possible loss)")
    received = {n: lsn_to_int(p.receive_lsn or p.replay_lsn) or 0 for n, p in usable.items()}
    reference = max([*received.values(), lsn_to_int(last_primary_lsn) or 0])
    candidate = to or max(received, key=lambda n: (received[n], n != old, n))
    lag = reference - received[candidate]
    if lag > ctx.spec.failover.max_lag_bytes and not force:
        raise PgOpsError(f"cluster {ctx.name}: candidate {candidate} is {lag} bytes behind "
                         f"(failover.max_lag_bytes {ctx.spec.failover.max_lag_bytes}); refusing (use --force)")
    return candidate, lag


# -- shared steps -------------------------------------------------------------------------------
def _sql(ctx: ClusterContext, member: str, fn, timeout: float = 10.0, dbname: str = "postgres"):
    return with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), fn, timeout=timeout,
                           name=member, dbname=dbname, options="-c synchronous_commit=local")


def promote(ctx: ClusterContext, member: str) -> int | None:
    ok = _sql(ctx, member, lambda c: admin.promote(c, wait_seconds=30), timeout=35)
    if not ok:
        raise MemberError(f"member {member}: pg_promote did not complete within 30 s")
    return ctx.probe([member], timeout=3)[member].timeline


def repoint_replicas(ctx: ClusterContext, new_primary: str, skip: set[str]) -> list[str]:
    """Point every other reachable replica at the new primary without a restart: its current
    primary_conninfo is kept (passfile, application_name) with host and port swapped."""
    peer = Endpoint.parse(ctx.state().members[new_primary])
    repointed = []
    for name in ctx.spec.member_names:
        if name == new_primary or name in skip:
            continue

        def change(conn, name=name):
            current = admin.primary_conninfo(conn)
            params = conninfo_to_dict(current) if current else {"user": "replicator", "application_name": name}
            params.update(host=peer.host, port=str(peer.port))
            admin.repoint(conn, make_conninfo(**params), admin.slot_name(name))

        try:
            _sql(ctx, name, change, timeout=5)
            repointed.append(name)
        except MemberError as exc:
            ctx.log.warning("could not repoint %s now (%s); its member script repoints it at its next start", name, exc)
    return repointed


def configure_new_primary(ctx: ClusterContext, primary: str) -> None:
    others = [m for m in ctx.spec.member_names if m != primary]
    created = _sql(ctx, primary, lambda c: admin.ensure_slots(c, others))
    if created:
        ctx.log.info("created replication slots %s on %s", ", ".join(created), primary)


def verify_write(ctx: ClusterContext, expected: str, epoch: int, writer: str) -> str:
    """A write through the primary endpoint, which must land on `expected`."""
    result = write_through_primary_endpoint(ctx, epoch, writer)
    if result["member"] != expected:
        raise PgOpsError(f"cluster {ctx.name}: the primary endpoint reached {result['member']}, not {expected}")
    return result["lsn"]


# -- failover -----------------------------------------------------------------------------------
def failover(ctx: ClusterContext, *, to: str | None = None, force: bool = False,
             detected_at: float | None = None, last_primary_lsn: str | None = None) -> TopologyChange:
    from pg_ops.operations.health import confirm_primary_down

    steps = StepLog(ctx.log, "failover")
    store = ctx.platform.state_store()
    with topology_lock(store, "failover", ttl_seconds=LOCK_TTL_S):
        state = ctx.state()
        old = state.primary
        if not [m for m in ctx.spec.member_names if m != old]:
            raise PgOpsError(f"cluster {ctx.name} has no replica: there is nothing to fail over to")
        with steps.step("confirm the primary is down"):
            down, reason = confirm_primary_down(recheck_context(ctx, detected_at))
            if not down and not force:
                raise PgOpsError(f"cluster {ctx.name}: refusing failover: {reason} "
                                 f"(a planned change is `pg-ops switchover --to MEMBER`; --force overrides)")
            probes = ctx.probe()
        with steps.step("choose the candidate"):
            candidate, lag = choose_candidate(ctx, state, probes, to=to, force=force,
                                              last_primary_lsn=last_primary_lsn)
            ctx.log.info("failover: candidate %s, %d bytes behind", candidate, lag)
        with steps.step("write the desired state"):
            new_state = update_state(store, lambda s: s.model_copy(update={
                "epoch": s.epoch + 1, "primary": candidate, "fenced": tuple(sorted({*s.fenced, old} - {candidate}))}))
        with steps.step("fence the old primary"):
            fence(ctx, old, probes.get(old))
        with steps.step("promote"):
            timeline = promote(ctx, candidate)
            promoted_at = time.time()
        with steps.step("replication slots on the new primary"):
            configure_new_primary(ctx, candidate)
        with steps.step("repoint the other replicas"):
            repointed = repoint_replicas(ctx, candidate, skip={old})
        with steps.step("route the primary endpoint"):
            ctx.platform.route_primary(candidate)
        with steps.step("replication mode"):
            mode = apply_mode(ctx, candidate, ctx.probe())
        with steps.step("verify a write through the primary endpoint"):
            verify_write(ctx, candidate, new_state.epoch, "failover")
    record_status(ctx, "failover", new_state.epoch)
    change = TopologyChange(
        operation="failover", cluster=ctx.name, old_primary=old, new_primary=candidate, epoch=new_state.epoch,
        timeline=timeline, lag_bytes_at_promotion=lag, promoted_at=promoted_at, seconds=steps.elapsed,
        detection_to_writable_s=round(promoted_at - detected_at, 3) if detected_at else None,
        steps=steps.as_metadata(),
    )
    change.notes.append(f"repointed {', '.join(repointed) or 'none'}")
    if mode.relaxed:
        change.notes.append("sync mode relaxed to async: no standby streams from the new primary")
    if ctx.spec.postgres.replication == "async":
        change.notes.append(f"async mode: commits {old} accepted after {lag} bytes behind were not replicated "
                            "and are discarded when it rejoins (pg_rewind)")
    ctx.log.info("failover done: %s -> %s, epoch %d, timeline %s, %.3f s", old, candidate, new_state.epoch,
                 timeline, steps.elapsed)
    return change


def recheck_context(ctx: ClusterContext, detected_at: float | None) -> ClusterContext:
    """The run always re-checks. When the sensor confirmed the failure moments ago (it already
    spent `failover.probes` probes on it), one more probe plus the replicas' view is the
    re-check: repeating the whole series would only add downtime."""
    if detected_at is None or time.time() - detected_at > RECENT_DETECTION_S:
        return ctx
    spec = ctx.spec.model_copy(update={"failover": ctx.spec.failover.model_copy(update={"probes": 1})})
    return ClusterContext(spec=spec, platform=ctx.platform, log=ctx.log)


def fence(ctx: ClusterContext, member: str, probe: MemberProbe | None) -> None:
    """Cut the old primary off: terminate its clients where reachable, then stop it through the
    platform (local: SIGKILL of its process group; Kubernetes: label removed, pod deleted)."""
    if probe is not None and probe.reachable:
        try:
            _sql(ctx, member, admin.terminate_client_backends, timeout=2)
        except MemberError as exc:
            ctx.log.warning("could not terminate connections on %s: %s", member, exc)
    ctx.platform.fence_member(member)


# -- switchover ---------------------------------------------------------------------------------
def switchover(ctx: ClusterContext, *, to: str) -> TopologyChange:
    with topology_lock(ctx.platform.state_store(), "switchover", ttl_seconds=LOCK_TTL_S):
        return switchover_locked(ctx, to=to, steps=StepLog(ctx.log, "switchover"))


def switchover_locked(ctx: ClusterContext, *, to: str, steps: StepLog) -> TopologyChange:
    """The switchover itself; the caller holds the topology lock."""
    store = ctx.platform.state_store()
    state = ctx.state()
    old = state.primary
    with steps.step("check the cluster"):
        probes = ctx.probe()
        if not probes[old].writable:
            raise PgOpsError(f"cluster {ctx.name}: the primary {old} is not healthy ({probes[old].error or 'not writable'}); "
                             f"a switchover needs it: use `pg-ops failover`")
        if to not in ctx.spec.member_names:
            raise PgOpsError(f"cluster {ctx.name}: member {to!r} does not exist")
        if to == old:
            raise PgOpsError(f"cluster {ctx.name}: {to} is already the primary")
        if not probes[to].streaming:
            raise PgOpsError(f"cluster {ctx.name}: cannot switch over to {to}: it is not streaming "
                             f"({probes[to].error or probes[to].receiver_status or 'no WAL receiver'})")
    with steps.step("checkpoint the old primary"):
        final_lsn = _sql(ctx, old, admin.checkpoint, timeout=60)
    with steps.step("write the desired state"):
        new_state = update_state(store, lambda s: s.model_copy(update={"epoch": s.epoch + 1, "primary": to}))
    with steps.step("clean shutdown of the old primary"):
        ctx.platform.stop_member(old)
    with steps.step("wait for the final LSN on the candidate"):
        received = wait_final_lsn(ctx, to, final_lsn)
    with steps.step("promote"):
        timeline = promote(ctx, to)
    with steps.step("replication slots on the new primary"):
        configure_new_primary(ctx, to)
    with steps.step("repoint the other replicas"):
        repoint_replicas(ctx, to, skip={old})
    with steps.step("route the primary endpoint"):
        ctx.platform.route_primary(to)
    with steps.step("old primary rejoins as a replica"):
        ctx.platform.start_member(old)
        wait_until(ctx, old, lambda p: p.streaming, "streaming from the new primary", timeout=REJOIN_TIMEOUT_S)
    with steps.step("replication mode"):
        apply_mode(ctx, to, ctx.probe())
    with steps.step("verify a write through the primary endpoint"):
        verify_write(ctx, to, new_state.epoch, "switchover")
    record_status(ctx, "failover", new_state.epoch)
    change = TopologyChange(operation="switchover", cluster=ctx.name, old_primary=old, new_primary=to,
                            epoch=new_state.epoch, timeline=timeline, lag_bytes_at_promotion=0,
                            seconds=steps.elapsed, steps=steps.as_metadata())
    change.notes.append(f"final LSN {final_lsn}, received {received}")
    return change


def wait_final_lsn(ctx: ClusterContext, member: str, at_least: str, timeout: float = 30.0) -> str:
    """Wait until `member` has received everything up to the old primary's shutdown: its
    received LSN passes the last LSN seen before the shutdown and stops moving."""
    deadline = time.monotonic() + timeout
    last, stable_since = None, None
    while time.monotonic() < deadline:
        probe = ctx.probe([member], timeout=2)[member]
        lsn = probe.receive_lsn
        if lsn and lsn_to_int(lsn) >= lsn_to_int(at_least):
            if lsn == last and not probe.streaming:
                return lsn
            if lsn == last and stable_since and time.monotonic() - stable_since > 0.5:
                return lsn
            if lsn != last:
                last, stable_since = lsn, time.monotonic()
        time.sleep(0.05)
    raise PgOpsError(f"member {member} did not receive the old primary's final WAL ({at_least}) within {timeout:g} s; "
                     f"not promoting (the old primary stays stopped; run `pg-ops failover` to force a decision)")


# -- rebuild ------------------------------------------------------------------------------------
def rebuild(ctx: ClusterContext, member: str, *, reclone: bool = False) -> dict:
    steps = StepLog(ctx.log, "rebuild")
    store = ctx.platform.state_store()
    if member not in ctx.spec.member_names:
        raise PgOpsError(f"cluster {ctx.name}: member {member!r} does not exist")
    with topology_lock(store, "rebuild", ttl_seconds=LOCK_TTL_S):
        state = ctx.state()
        if member == state.primary:
            raise PgOpsError(f"cluster {ctx.name}: {member} is the primary; switch over first "
                             f"(`pg-ops switchover --to <replica>`)")
        if not ctx.probe([state.primary])[state.primary].writable:
            raise PgOpsError(f"cluster {ctx.name}: the primary {state.primary} is not writable; nothing to rebuild from")
        with steps.step("stop the member"):
            ctx.platform.stop_member(member)
        method = "re-clone" if reclone else "rewind"
        if reclone:
            with steps.step("wipe the data dir"):
                ctx.platform.wipe_member(member)
        with steps.step(f"start ({method} through the member script)"):
            ctx.platform.start_member(member)
            try:
                wait_until(ctx, member, lambda p: p.streaming, "streaming", timeout=REJOIN_TIMEOUT_S)
            except MemberError:
                if reclone:
                    raise
                ctx.log.warning("rebuild: %s did not rejoin after rewind; re-cloning", member)
                method = "re-clone (rewind impossible)"
                ctx.platform.stop_member(member)
                ctx.platform.wipe_member(member)
                ctx.platform.start_member(member)
                wait_until(ctx, member, lambda p: p.streaming, "streaming", timeout=REJOIN_TIMEOUT_S)
        if member in state.fenced:
            update_state(store, lambda s: s.model_copy(update={"fenced": tuple(m for m in s.fenced if m != member)}))
        with steps.step("replication mode"):
            apply_mode(ctx, state.primary, ctx.probe())
    return {"member": member, "method": method, "seconds": round(steps.elapsed, 3), **steps.as_metadata()}


# -- rolling restart ----------------------------------------------------------------------------
def rolling_restart(ctx: ClusterContext) -> dict:
    """Restart every member without an unplanned failover: replicas one at a time (each back
    and streaming before the next), then a switchover to a restarted replica, which restarts
    the old primary cleanly as a replica."""
    steps = StepLog(ctx.log, "rolling restart")
    with topology_lock(ctx.platform.state_store(), "rolling-restart", ttl_seconds=LOCK_TTL_S * 3):
        state = ctx.state()
        old = state.primary
        ctx.platform.prepare(state)  # configuration changes take effect through the restarts
        replicas = [m for m in ctx.spec.member_names if m != old]
        not_streaming = [m for m, p in ctx.probe(replicas).items() if not p.streaming]
        if not_streaming:
            raise PgOpsError(f"cluster {ctx.name}: {', '.join(not_streaming)} not streaming; repair it first "
                             f"(`pg-ops deploy` or `pg-ops rebuild`) so the restart never leaves no standby")
        for name in replicas:
            with steps.step(f"restart {name}"):
                ctx.platform.stop_member(name)
                ctx.platform.start_member(name)
                wait_until(ctx, name, lambda p: p.streaming, "streaming after its restart", timeout=REJOIN_TIMEOUT_S)
        change = switchover_locked(ctx, to=replicas[0], steps=steps) if replicas else None
        if change is None:
            with steps.step(f"restart {old} (single member: downtime)"):
                ctx.platform.stop_member(old)
                ctx.platform.start_member(old)
                wait_until(ctx, old, lambda p: p.writable, "writable after its restart")
    return {"restarted": ", ".join(replicas + [old]), "primary": change.new_primary if change else old,
            "epoch": change.epoch if change else state.epoch, "seconds": round(steps.elapsed, 3),
            **steps.as_metadata()}
