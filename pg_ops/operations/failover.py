"""Failover, switchover and rebuild: the topology changes, in the order of docs/architecture/safety.md.

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
from dataclasses import dataclass, field, replace

from pg_ops.errors import MemberError, PgOpsError, Refused
from pg_ops.operations import pooling, wal
from pg_ops.operations.activity import record_status
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha import act
from pg_ops.operations.ha.decide import plan_failover, plan_switchover, sync_names
from pg_ops.operations.ha.model import ClusterView, FailoverIntent, Policy, Refusal
from pg_ops.operations.ha.observe import read_view
from pg_ops.operations.members import lease_kept, lease_seconds, wait_until, write_through_primary_endpoint
from pg_ops.operations.steps import StepLog
from pg_ops.poll import poll
from pg_ops.postgres import admin
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.topology import MemberProbe
from pg_ops.state import HeldLock, topology_lock

LOCK_TTL_S = 60  # renewed every 20 s while the change runs (state.HeldLock)
REJOIN_TIMEOUT_S = 60
# A rebuild waits longer: when a rewind is impossible the member script re-clones by itself
# (keeping the diverged data aside), and pg_ops no longer starts a second re-clone after 60 s.
REBUILD_TIMEOUT_S = 180
RECENT_DETECTION_S = 60


@dataclass
class TopologyChange:
    """What a failover or switchover did: the result of its run (pg_ops/defs/metadata.py shows it
    as the run's metadata and reads it back for `pg-ops`)."""

    operation: str
    cluster: str
    old_primary: str
    new_primary: str
    epoch: int
    timeline: int | None = None
    lag_bytes_at_promotion: int | None = None
    reference_lsn: str | None = None
    detection_to_writable_s: float | None = None
    promoted_at: float | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # step name -> seconds, in order (StepLog.timings)
    notes: list[str] = field(default_factory=list)


@dataclass
class RebuildResult:
    """What a rebuild did."""

    member: str
    method: str  # "rewind" or "re-clone"
    seconds: float
    kept_aside: str | None = None  # where a re-cloned former primary's data dir was kept
    steps: dict[str, float] = field(default_factory=dict)


@dataclass
class RestartResult:
    """What a rolling restart did."""

    restarted: list[str]  # in the order they restarted (the old primary last)
    primary: str
    epoch: int
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)


# -- shared steps -------------------------------------------------------------------------------
# pg_promote's own wait: replay of what the candidate received must end first, which a query
# holding a lock on it can delay (up to max_standby_streaming_delay); past it, the next tick resumes.
PROMOTE_WAIT_S = 30


def promote(ctx: ClusterContext, member: str, epoch: int) -> int | None:
    ok = ctx.sql(member, lambda c: admin.promote(c, wait_seconds=PROMOTE_WAIT_S), timeout=PROMOTE_WAIT_S + 5)
    if not ok:
        raise MemberError(f"member {member}: pg_promote did not complete within {PROMOTE_WAIT_S} s")
    # At once: its lease names it at the new epoch, which its member script trusts over a
    # record file that has not caught up yet (a kubelet's ConfigMap sync takes up to a minute).
    act.renew_lease(ctx, member, epoch)
    return ctx.probe([member], timeout=3)[member].timeline


def took_over(lock: HeldLock, timeline: int | None) -> None:
    """The new primary is writable: the synchronous set of the old one is history (the new
    primary's is rebuilt by the tick from its own standbys; until then "no set" means every
    replica must answer a failover), and its timeline is the one candidates must be on."""
    lock.update(lambda s: s.model_copy(update={"sync_set": (), "timeline": timeline or s.timeline, "final_lsn": ""}))


def repoint_replicas(ctx: ClusterContext, new_primary: str, skip: set[str]) -> list[str]:
    """Point every other reachable replica at the new primary without a restart. One that
    cannot be reached now is repointed by the health tick when it answers again."""
    state = ctx.state()
    repointed = []
    for name in ctx.spec.member_names:
        if name == new_primary or name in skip:
            continue
        try:
            act.repoint_member(ctx, name, new_primary, state)
            repointed.append(name)
        except MemberError as exc:
            ctx.log.warning("could not repoint %s now (%s); the health tick repoints it when it answers", name, exc)
    return repointed


def replication_mode_after_change(ctx: ClusterContext, primary: str) -> str:
    """synchronous_standby_names right after a change of primary: ANY 1 over the other members
    in sync modes, never relaxed here (the standbys reconnect within a second or two; the
    health tick relaxes sync mode only after no standby streamed for a while)."""
    policy = Policy.from_spec(ctx.spec)
    value = sync_names(policy, [m for m in ctx.spec.member_names if m != primary]) if policy.sync else ""
    act.set_sync_names(ctx, primary, value)
    return value


def verify_write(ctx: ClusterContext, expected: str, epoch: int, writer: str) -> str:
    """A write through the primary endpoint, once it lands on `expected` (bounded)."""
    return write_through_primary_endpoint(ctx, epoch, writer, expected)["lsn"]


# -- failover -----------------------------------------------------------------------------------
def check_failover_request(ctx: ClusterContext, *, to: str | None, force: bool) -> None:
    """The failover's own rules on the cluster as it is now, before any run exists: a request
    they refuse for good (the primary answers and is writable, `--to` the designated primary or
    a member that cannot be promoted) raises Refused here, so a mistake costs one line and pages
    nobody. A refusal that may clear by itself (the primary not yet confirmed down) is left to
    the run, which decides again under the lock."""
    view = read_view(ctx, Policy.from_spec(ctx.spec), confirm=False)
    plan = plan_failover(view, Policy.from_spec(ctx.spec), FailoverIntent(to=to, force=force))
    if isinstance(plan, Refusal) and plan.deterministic and view.primary.reachable:
        raise Refused(plan.reason)


def check_rebuild_request(ctx: ClusterContext, member: str) -> None:
    """A rebuild of the designated primary is refused before any run exists (the run refuses it
    too, under the lock)."""
    if member == ctx.state().primary:
        raise Refused(f"cluster {ctx.name}: {member} is the primary; switch over first "
                      f"(`pg-ops switchover --to <replica>`)")


@dataclass
class TakeOver:
    """What the recovery-time half of a failover did (`take_over`: confirm, fence, promote,
    route), for the half that finishes it (`finish`: the proof write, the pooler, the record).
    Both halves run in one failover run, or the health sensor takes over in its own tick (spec
    `failover.promote_in: sensor`) and hands this, as JSON in the run config (member names,
    LSNs, timings: no secret), to the failover run it requests, which finishes and records it."""

    old_primary: str
    candidate: str
    designated: str  # the record's primary when the failover began
    epoch: int
    timeline: int | None
    lag_bytes: int | None
    reference_lsn: str | None
    promoted_at: float
    detected_at: float | None
    resume: bool
    in_place: bool
    fence: list[str]
    repointed: list[str]
    notes: list[str]
    steps: dict[str, float]
    seconds: float
    by: str = "run"  # "sensor": the health sensor's tick did it

    def to_json(self) -> str:
        import json
        from dataclasses import asdict

        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TakeOver:
        import json

        return cls(**json.loads(text))


def failover(ctx: ClusterContext, *, to: str | None = None, force: bool = False,
             detected_at: float | None = None, last_primary_lsn: str | None = None) -> TopologyChange:
    """Promote the best replica (ha.plan_failover decides which, or refuses), or resume a change
    that stopped half-way (the designated primary is still a standby)."""
    steps = StepLog(ctx.log, "failover", ctx)
    policy = recheck_policy(Policy.from_spec(ctx.spec), detected_at)
    with topology_lock(ctx.platform.state_store(), "failover", ttl_seconds=LOCK_TTL_S) as lock:
        steps.guard = lock.check
        taken = take_over(ctx, steps, lock, policy, FailoverIntent(to=to, force=force, reference_lsn=last_primary_lsn),
                          detected_at)
        _prove(ctx, steps, taken)
    return _record(ctx, steps, taken)


def take_over_now(ctx: ClusterContext, *, detected_at: float, last_primary_lsn: str | None) -> TakeOver:
    """The recovery-time half of an automatic failover, in the process that decided it (the
    health sensor's tick, in the long-lived code server): under the topology lock, with the
    run's own re-check and rules. The failover run it then requests finishes it (`finish`)."""
    steps = StepLog(ctx.log, "failover", ctx)
    policy = recheck_policy(Policy.from_spec(ctx.spec), detected_at)
    with topology_lock(ctx.platform.state_store(), "failover", ttl_seconds=LOCK_TTL_S) as lock:
        steps.guard = lock.check
        taken = take_over(ctx, steps, lock, policy, FailoverIntent(reference_lsn=last_primary_lsn), detected_at)
    return replace(taken, by="sensor")


def take_over(ctx: ClusterContext, steps: StepLog, lock: HeldLock, policy: Policy, intent: FailoverIntent,
              detected_at: float | None) -> TakeOver:
    """Confirm, choose, write the desired state, fence, promote, slots, repoint, replication
    mode, route: everything until clients reach a writable new primary. Under `lock`."""
    with steps.step("confirm the primary is down"):
        view = read_view(ctx, policy, confirm=True)
    with steps.step("choose the candidate"):
        plan = plan_failover(view, policy, intent)
        if isinstance(plan, Refusal):
            raise Refused(plan.reason)
        candidate = plan.candidate
        ctx.log.info("failover: candidate %s, %s bytes behind%s", candidate, plan.lag_bytes,
                     " (resuming a change that stopped half-way)" if plan.resume else "")
    old = plan.old_primary or view.designated
    # Resuming in place keeps the epoch (nothing changes hands); any other promotion is a new
    # epoch, so a member still acting on the old one (an isolated primary's marker) knows.
    in_place = plan.resume and candidate == view.designated
    with steps.step("write the desired state"):
        # The synchronous set stays as it is until the candidate has taken over: a run that
        # stops before that (promotion stalled, fencing raised) is resumed by the next tick
        # under the same rule (only the last known primary and the set may promote).
        new_state = lock.update(lambda s: s.model_copy(update={
            "epoch": s.epoch + (0 if in_place else 1), "primary": candidate,
            "fenced": tuple(sorted({*s.fenced, *plan.fence} - {candidate}))}))
    with steps.step("fence the old primary"):
        unconfirmed = [m for m in plan.fence if not fence(ctx, m, view.members.get(m))]
    fence_notes: list[str] = []
    if unconfirmed:
        with steps.step("wait until the old primary is confirmed stopped or its lease ran out"):
            fence_notes.append(wait_until_stopped(ctx, unconfirmed, detected_at))
    with steps.step("promote"):
        timeline = promote(ctx, candidate, new_state.epoch)
        promoted_at = time.time()
        took_over(lock, timeline)
    with steps.step("replication slots on the new primary"):
        act.ensure_slots(ctx, candidate)
    with steps.step("repoint the other replicas"):
        repointed = repoint_replicas(ctx, candidate, skip=set(plan.fence))
    with steps.step("replication mode"):  # before clients reach it: a sync mode waits from its first write
        replication_mode_after_change(ctx, candidate)
    with steps.step("route the primary endpoint"):
        ctx.platform.route_primary(candidate)
    return TakeOver(old_primary=old, candidate=candidate, designated=view.designated, epoch=new_state.epoch,
                    timeline=timeline, lag_bytes=plan.lag_bytes, reference_lsn=plan.reference_lsn,
                    promoted_at=promoted_at, detected_at=detected_at, resume=plan.resume, in_place=in_place,
                    fence=list(plan.fence), repointed=repointed, notes=[*plan.notes, *fence_notes],
                    steps=steps.timings(), seconds=steps.elapsed)


def finish(ctx: ClusterContext, taken: TakeOver) -> TopologyChange:
    """The failover run's half after the health sensor took over: under the lock, only if the
    record still names what the sensor made (another change since: refused, nothing done)."""
    steps = StepLog(ctx.log, "failover", ctx)
    with topology_lock(ctx.platform.state_store(), "failover", ttl_seconds=LOCK_TTL_S) as lock:
        steps.guard = lock.check
        state = ctx.state()
        if (state.primary, state.epoch) != (taken.candidate, taken.epoch):
            raise Refused(f"cluster {ctx.name}: the health sensor's failover "
                          f"({taken.old_primary} -> {taken.candidate}, "
                          f"epoch {taken.epoch}) is no longer the cluster's state (primary {state.primary}, epoch "
                          f"{state.epoch}): nothing to finish")
        _prove(ctx, steps, taken)
    return _record(ctx, steps, taken)


def _prove(ctx: ClusterContext, steps: StepLog, taken: TakeOver) -> None:
    """Under the lock: the proof write through the primary endpoint, and the pooler."""
    with steps.step("verify a write through the primary endpoint"):
        verify_write(ctx, taken.candidate, taken.epoch, "failover")
    if ctx.spec.pooler is not None:  # also resumes a pooler a switchover that died left paused
        with steps.step("the pooler follows the new primary"):
            pooling.follow(ctx)


def _record(ctx: ClusterContext, steps: StepLog, taken: TakeOver) -> TopologyChange:
    """The status row and the record of the change (the take-over's steps first)."""
    candidate, old = taken.candidate, taken.old_primary
    record_status(ctx, "failover", taken.epoch)
    finished = steps.timings()
    seconds = round(steps.elapsed if taken.by == "run" else taken.seconds + steps.elapsed, 4)
    change = TopologyChange(
        operation="failover", cluster=ctx.name, old_primary=old, new_primary=candidate, epoch=taken.epoch,
        timeline=taken.timeline, lag_bytes_at_promotion=taken.lag_bytes, reference_lsn=taken.reference_lsn,
        promoted_at=taken.promoted_at, seconds=seconds,
        detection_to_writable_s=round(taken.promoted_at - taken.detected_at, 3) if taken.detected_at else None,
        steps=finished if taken.by == "run" else {**taken.steps, **finished},
    )
    if taken.by == "sensor":
        change.notes.append(f"the health sensor took over in {taken.seconds:.3f} s (confirm to route, in its own "
                            f"tick); this run finished it")
    change.notes += list(taken.notes)
    change.notes.append(f"repointed {', '.join(taken.repointed) or 'none'}")
    if taken.in_place:
        change.notes.append(f"resumed a change that stopped half-way in place: {candidate} was designated but a "
                            f"standby (not promoted yet, or it fenced itself while isolated)")
    elif taken.resume:
        change.notes.append(f"resumed a change that stopped half-way: {candidate} promoted instead of "
                            f"{taken.designated}, at a new epoch")
    change.notes += wal.after_promotion(ctx)  # the archive's continuity: ship from pg_wal, or the gap alert
    if ctx.spec.postgres.replication == "async" and not taken.resume:
        change.notes.append(f"async mode: commits {old} accepted after {taken.lag_bytes} bytes behind were not "
                            "replicated and are discarded when it rejoins (pg_rewind)")
    ctx.log.info("failover done: %s -> %s, epoch %d, timeline %s, %.3f s", old, candidate, taken.epoch,
                 taken.timeline, seconds)
    return change


def recheck_policy(policy: Policy, detected_at: float | None) -> Policy:
    """The run always re-checks. When the sensor confirmed the failure moments ago (it already
    spent `failover.probes` probes on it), one more probe plus the replicas' view is the
    re-check: repeating the whole series would only add downtime."""
    if detected_at is None or time.time() - detected_at > RECENT_DETECTION_S:
        return policy
    return replace(policy, probes=1)


def fence(ctx: ClusterContext, member: str, probe: MemberProbe | None) -> bool:
    """Cut a member that must not be writable off: terminate its clients where reachable, then
    stop it through the platform (local: SIGKILL of its process group; Kubernetes: label
    removed, pod deleted). True when the platform knows it stopped."""
    if probe is not None and probe.reachable:
        try:
            ctx.sql(member, admin.terminate_client_backends, timeout=2)
        except MemberError as exc:
            ctx.log.warning("could not terminate connections on %s: %s", member, exc)
    return ctx.platform.fence_member(member)


LEASE_MARGIN_S = 2.0  # the member script checks every second; its fast shutdown takes about one more
FENCE_POLL_S = 0.2  # how often a failover asks whether the platform confirmed a fence meanwhile


def wait_until_stopped(ctx: ClusterContext, members: list[str], detected_at: float | None) -> str:
    """Members the platform could not confirm stopped at the fence may still run cut off from
    everyone: with isolation fencing, each stops acknowledging writes at most lease_seconds after
    pg_ops last renewed its lease (at the latest when the failure was detected; now, when that is
    unknown). Promoting before that could leave two primaries acknowledging writes at once,
    unless the platform confirms the stop first (a Kubernetes pod's kubelet completing its
    deletion: a crashed container's node is up). Returns how the wait ended, for the record."""
    lease = lease_seconds(ctx)
    who = ", ".join(members)
    if lease <= 0:
        ctx.log.warning("%s: %s may still run and accept writes (isolation fencing is off) until its platform "
                        "stops it", ctx.name, who)
        for member in members:
            ctx.platform.fence_abandon(member)
        return f"{who} not confirmed stopped, and isolation fencing is off: not waited for"
    started = time.time()
    until = (detected_at or started) + lease + LEASE_MARGIN_S
    ctx.log.info("%s: waiting up to %.1f s for %s to be confirmed stopped or its isolation lease to run out",
                 ctx.name, max(until - started, 0.0), who)
    pending = list(members)
    while True:
        pending = [m for m in pending if not ctx.platform.fence_confirmed(m)]
        if not pending:
            return f"{who} confirmed stopped by the platform after {time.time() - started:.1f} s (no lease wait)"
        left = until - time.time()
        if left <= 0:
            break
        time.sleep(min(FENCE_POLL_S, left))
    for member in pending:
        ctx.platform.fence_abandon(member)
    return f"waited for the isolation lease of {', '.join(pending)} to run out ({time.time() - started:.1f} s)"


# -- switchover ---------------------------------------------------------------------------------
def switchover(ctx: ClusterContext, *, to: str) -> TopologyChange:
    with topology_lock(ctx.platform.state_store(), "switchover", ttl_seconds=LOCK_TTL_S) as lock, lease_kept(ctx):
        steps = StepLog(ctx.log, "switchover", ctx)
        steps.guard = lock.check
        return switchover_locked(ctx, to=to, steps=steps, lock=lock)


def switchover_locked(ctx: ClusterContext, *, to: str, steps: StepLog, lock: HeldLock) -> TopologyChange:
    """The switchover itself; the caller holds the topology lock."""
    state = ctx.state()
    old = state.primary
    with steps.step("check the cluster"):
        probes = ctx.probe()
        # The rules read only the record and the probes (no addresses: nothing is repointed here).
        refusal = plan_switchover(ClusterView(record=state, members=probes, addresses={}, now=time.time()), to)
        if refusal is not None:
            raise PgOpsError(refusal.reason)
    with steps.step("drain the old primary's WAL archiver"):  # before the record names another primary
        drained = wal.drain_archiver(ctx, old)
    with steps.step("checkpoint the old primary"):
        final_lsn = ctx.sql(old, admin.checkpoint, timeout=60)
    with steps.step("write the desired state"):
        # The final LSN is the reference a resumed failover checks the candidate against.
        new_state = lock.update(lambda s: s.model_copy(update={
            "epoch": s.epoch + 1, "primary": to, "observed_lsn": final_lsn, "observed_at": time.time()}))
    pause = None
    if ctx.spec.pooler is not None:  # clients wait in the pooler instead of failing
        with steps.step("pause the pooler"):
            pause = pooling.pause(ctx)
    try:
        received, shutdown_lsn, timeline = _hand_over(ctx, steps, lock, old, to, final_lsn, new_state.epoch)
        if pause is not None:
            with steps.step("resume the pooler on the new primary"):
                # Only once the primary endpoint reaches it: RECONNECTed server connections go
                # where the endpoint leads (a Service, until kube-proxy synced: the old pod).
                verify_write(ctx, to, new_state.epoch, "switchover")
                pooling.follow(ctx)
    finally:
        if pause is not None:  # also when the switchover stopped half-way: never leave clients waiting
            pooling.resume(ctx)
    with steps.step("old primary rejoins as a replica"):
        ctx.platform.start_member(old)
        wait_until(ctx, old, lambda p: p.streaming, "streaming from the new primary", timeout=REJOIN_TIMEOUT_S)
    with steps.step("replication mode"):
        replication_mode_after_change(ctx, to)
    with steps.step("verify a write through the primary endpoint"):
        verify_write(ctx, to, new_state.epoch, "switchover")
    record_status(ctx, "failover", new_state.epoch)
    change = TopologyChange(operation="switchover", cluster=ctx.name, old_primary=old, new_primary=to,
                            epoch=new_state.epoch, timeline=timeline, lag_bytes_at_promotion=0,
                            seconds=round(steps.elapsed, 4), steps=steps.timings())
    change.notes.append(f"shutdown checkpoint {shutdown_lsn}, received {received}" if shutdown_lsn else
                        f"final LSN {final_lsn} (read before the shutdown: the shutdown checkpoint is not readable "
                        f"on {ctx.spec.platform}), received {received}")
    if pause is not None and pause.note:
        change.notes.append(pause.note)
    change.notes += [drained, *wal.after_promotion(ctx)]
    return change


def _hand_over(ctx: ClusterContext, steps: StepLog, lock: HeldLock, old: str, to: str, final_lsn: str,
               epoch: int) -> tuple[str, str | None, int | None]:
    """From the old primary's clean shutdown to the new one routed: the window in which writes
    wait. Returns (received LSN, shutdown checkpoint, new timeline)."""
    with steps.step("clean shutdown of the old primary"):
        ctx.platform.stop_member(old)
    with steps.step("the old primary's shutdown checkpoint"):
        # Commits can land after the LSN read above (clients keep writing through the member
        # script's own checkpoint on TERM): the shutdown checkpoint is the old primary's last WAL.
        shutdown_lsn = ctx.platform.shutdown_checkpoint(old)
        if shutdown_lsn:
            lock.update(lambda s: s.model_copy(update={"final_lsn": shutdown_lsn}))
    missed: PgOpsError | None = None
    with steps.step("wait for the final WAL on the candidate"):
        try:
            received = wait_final_lsn(ctx, to, final_lsn, shutdown_lsn)
        except PgOpsError as exc:
            missed = exc
    if missed is not None:
        # Promoting it would lose what it missed; the old primary, stopped cleanly, has all of it.
        with steps.step(f"roll back: {old} the primary again"):
            back = undo_switchover(ctx, lock, old)
        raise PgOpsError(f"cluster {ctx.name}: switchover to {to} refused: {missed}; {old} is the primary again "
                         f"(epoch {back}), nothing lost")
    with steps.step("promote"):
        timeline = promote(ctx, to, epoch)
        took_over(lock, timeline)
    with steps.step("replication slots on the new primary"):
        act.ensure_slots(ctx, to)
    with steps.step("repoint the other replicas"):
        repoint_replicas(ctx, to, skip={old})
    with steps.step("route the primary endpoint"):
        ctx.platform.route_primary(to)
    return received, shutdown_lsn, timeline


def undo_switchover(ctx: ClusterContext, lock: HeldLock, old: str) -> int:
    """The switchover's target missed the old primary's final WAL: designate the old primary
    again (a new epoch: the record named the target for a moment), start it (its member script
    boots a cleanly stopped designated primary as the primary), and point everyone back at it."""
    state = lock.update(lambda s: s.model_copy(update={"epoch": s.epoch + 1, "primary": old, "final_lsn": ""}))
    ctx.platform.start_member(old)
    wait_until(ctx, old, lambda p: p.writable, "writable again", timeout=REJOIN_TIMEOUT_S)
    act.renew_lease(ctx, old, state.epoch)
    repoint_replicas(ctx, old, skip={old})
    ctx.platform.route_primary(old)
    return state.epoch


FINAL_WAL_TIMEOUT_S = 30.0


def wait_final_lsn(ctx: ClusterContext, member: str, at_least: str, shutdown_lsn: str | None) -> str:
    """Wait until `member` has received everything up to the old primary's shutdown. Known
    shutdown checkpoint (Patroni's rule): its received LSN is past that record. Not known: the
    received LSN passes the last LSN seen before the shutdown and stops moving."""
    last: Lsn | None = None
    stable_since: float | None = None

    def attempt() -> str | None:
        nonlocal last, stable_since
        probe = ctx.probe([member], timeout=2)[member]
        lsn = probe.receive_lsn
        if shutdown_lsn:
            return str(lsn) if lsn and lsn > (Lsn.parse(shutdown_lsn) or 0) else None
        if lsn and lsn >= (Lsn.parse(at_least) or 0):
            if lsn == last and not probe.streaming:
                return str(lsn)
            if lsn == last and stable_since and time.monotonic() - stable_since > 0.5:
                return str(lsn)
            if lsn != last:
                last, stable_since = lsn, time.monotonic()
        return None

    def expired() -> PgOpsError:
        return PgOpsError(f"member {member} did not receive the old primary's final WAL "
                          f"({f'shutdown checkpoint {shutdown_lsn}' if shutdown_lsn else at_least}) within "
                          f"{FINAL_WAL_TIMEOUT_S:g} s (not promoted)")

    return poll(attempt, timeout=FINAL_WAL_TIMEOUT_S, interval=0.05, expired=expired)


# -- rebuild ------------------------------------------------------------------------------------
def rebuild(ctx: ClusterContext, member: str, *, reclone: bool = False) -> RebuildResult:
    steps = StepLog(ctx.log, "rebuild", ctx)
    store = ctx.platform.state_store()
    if member not in ctx.spec.member_names:
        raise PgOpsError(f"cluster {ctx.name}: member {member!r} does not exist")
    with topology_lock(store, "rebuild", ttl_seconds=LOCK_TTL_S) as lock, lease_kept(ctx):
        steps.guard = lock.check
        check_rebuild_request(ctx, member)
        state = ctx.state()
        if not ctx.probe([state.primary])[state.primary].writable:
            raise PgOpsError(f"cluster {ctx.name}: the primary {state.primary} is not writable; "
                             f"nothing to rebuild from")
        # A fenced member is a former primary: its data may hold writes nobody counted yet. A
        # re-clone keeps that data aside (refused where the platform cannot); a rewind counts
        # them itself, and the member script re-clones (keeping the diverged dir aside) when a
        # rewind is impossible, so pg_ops never wipes data it did not ask to.
        keep_aside = member in state.fenced
        if reclone:
            ctx.platform.check_wipe(member, keep_aside)
        with steps.step("stop the member"):
            ctx.platform.stop_member(member)
        method = "re-clone" if reclone else "rewind"
        kept = None
        if reclone:
            with steps.step("wipe the data dir"):
                kept = ctx.platform.wipe_member(member, keep_aside=keep_aside)
            if kept:
                ctx.log.warning("rebuild: the data dir of former primary %s was kept aside at %s", member, kept)
        with steps.step(f"start ({method} through the member script)"):
            ctx.platform.start_member(member)
            try:
                wait_until(ctx, member, lambda p: p.streaming, "streaming", timeout=REBUILD_TIMEOUT_S)
            except MemberError as exc:
                hint = "" if reclone else f"; `pg-ops rebuild {member} --reclone` re-clones it"
                raise MemberError(f"{exc}{hint}") from exc
        if member in state.fenced:
            lock.update(lambda s: s.model_copy(update={"fenced": tuple(m for m in s.fenced if m != member)}))
    return RebuildResult(member, method, round(steps.elapsed, 3), kept_aside=kept or None, steps=steps.timings())


# -- rolling restart ----------------------------------------------------------------------------
def rolling_restart(ctx: ClusterContext, steps: StepLog | None = None) -> RestartResult:
    """Restart every member without an unplanned failover: replicas one at a time (each back
    and streaming before the next), then a switchover to a restarted replica, which restarts
    the old primary cleanly as a replica. `steps`: a caller's log to add the steps to (a rollout)."""
    steps = steps or StepLog(ctx.log, "rolling restart", ctx)
    with topology_lock(ctx.platform.state_store(), "rolling-restart", ttl_seconds=LOCK_TTL_S) as lock, lease_kept(ctx):
        steps.guard = lock.check
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
        change = switchover_locked(ctx, to=replicas[0], steps=steps, lock=lock) if replicas else None
        if change is None:
            with steps.step(f"restart {old} (single member: downtime)"), pooling.paused(ctx):
                ctx.platform.stop_member(old)
                ctx.platform.start_member(old)
                wait_until(ctx, old, lambda p: p.writable, "writable after its restart")
    return RestartResult(replicas + [old], change.new_primary if change else old,
                         change.epoch if change else state.epoch, round(steps.elapsed, 3), steps.timings())
