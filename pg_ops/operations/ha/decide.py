"""Every HA decision pg_ops makes, as pure functions over a `ClusterView` (no I/O):

- `primary_verdict`: is the designated primary down, alive but unreachable, or unknown?
- `plan_failover`: which member to promote and what to fence, or why not (a `Refusal`);
  the same function serves the sensor (before it requests a run) and the run (inside it).
- `sync_upkeep`: the synchronous set and synchronous_standby_names, narrowed when a
  standby leaves (once the rest caught up), widened when one is back, relaxed (sync mode
  only) when no standby has streamed for a while.
- `decide`: the sensor's one decision per cluster and tick (model.DECISIONS).

The executors are operations/health.py (the tick) and operations/failover.py (the runs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from pg_ops.operations.alert_model import Alert, Severity, condition_key
from pg_ops.operations.ha.model import (
    Action,
    ClusterView,
    Decision,
    DecisionName,
    EnsureSlots,
    FailoverIntent,
    FailoverPlan,
    FailoverRequest,
    HaMemory,
    Incident,
    Policy,
    RecordObserved,
    RecordSyncSet,
    Refusal,
    RenewLease,
    Repoint,
    RoutePrimary,
    SetSyncNames,
    StartMember,
    Unfence,
)
from pg_ops.postgres.admin import slot_name, synchronous_standby_names
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.topology import MemberProbe

OBSERVE_AT_LEAST_EVERY_S = 60.0
PRIMARY_KINDS = ("primary_unreachable", "primary_down", "manual_failover_needed", "failover_refused",
                 "failover_failed", "primary_not_writable")


# -- is the primary down? -----------------------------------------------------------------------------
VerdictKind = Literal["up", "unconfirmed", "alive", "no_witness", "unknown_witness", "down"]


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    reason: str
    witnesses: tuple[str, ...] = ()

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: another probe or a longer silence cannot change it."""
        return self.kind in ("up", "down", "no_witness")


def _possibly_streaming(view: ClusterView, name: str) -> bool:
    """An unreachable replica may still stream from the primary, unless the primary itself
    reported it disconnected the last time pg_ops saw it (the record's observed standbys)."""
    return name in view.record.observed_standbys or not view.record.observed_at


def primary_verdict(view: ClusterView, policy: Policy) -> Verdict:
    primary = view.designated
    if view.primary.reachable:
        return Verdict("up", f"primary {primary} answers")
    if view.primary_misses < policy.probes:
        return Verdict("unconfirmed", f"primary {primary} missed {view.primary_misses} of {policy.probes} probes")
    error = view.primary.error or "no answer"
    answering = [n for n in view.replicas if view.members[n].reachable]
    if not answering:
        return Verdict("no_witness", f"primary {primary} unreachable and no replica answers either: pg_ops may "
                                     f"be cut off itself; no failover ({error})")
    alive = tuple(n for n in answering if view.streams_from(n, primary)
                  and (view.members[n].silence_seconds or 0.0) < policy.silence_s)
    if alive:
        return Verdict("alive", f"primary {primary} unreachable from pg_ops but alive: {', '.join(alive)} still "
                                f"stream from it; no failover", alive)
    unknown = tuple(n for n in view.replicas if not view.members[n].reachable and _possibly_streaming(view, n))
    if unknown:
        return Verdict("unknown_witness", f"primary {primary} unreachable, but {', '.join(unknown)} cannot be "
                                          f"reached and may still stream from it; no failover ({error})", unknown)
    silent = [n for n in answering if view.streams_from(n, primary)]
    how = f"; {', '.join(silent)} heard nothing from it for {policy.silence_s:g} s" if silent else ""
    return Verdict("down", f"primary {primary} missed {view.primary_misses} probes ({error}) and no replica "
                           f"streams from it{how}")


# -- which member to promote ---------------------------------------------------------------------------
def _received(probe: MemberProbe) -> Lsn:
    return probe.receive_lsn or probe.replay_lsn or Lsn(0)


def _position(probe: MemberProbe) -> tuple[int, Lsn]:
    """Where a member's WAL ends, comparable across members: (timeline, received LSN). An LSN on
    an older timeline may lie beyond the newer timeline's fork point: more bytes, but not the
    cluster's history."""
    return probe.timeline or 0, _received(probe)


def cluster_timeline(view: ClusterView) -> int:
    """The cluster's current timeline: the record's (the designated primary's as pg_ops last saw
    it, written at each promotion), else the newest any reachable member is on (0: unknown)."""
    if view.record.timeline:
        return view.record.timeline
    return max((p.timeline or 0 for p in view.members.values() if p.reachable), default=0)


def behind_timeline(view: ClusterView) -> dict[str, int]:
    """Reachable standbys on a timeline older than the cluster's: their WAL is not on the current
    history (a diverged ex-primary that booted as a standby, a replica that never followed the
    last promotion). Never failover candidates; they must be rewound or re-cloned first."""
    current = cluster_timeline(view)
    return {n: p.timeline or 0 for n, p in view.members.items()
            if p.reachable and p.in_recovery and (p.timeline or 0) < current}


def reference_lsn(view: ClusterView, intent: FailoverIntent, candidates: list[str]) -> tuple[Lsn | None, str]:
    """The best LSN known for the old primary: what the sensor saw last, what the record kept,
    and the WAL end the primary last reported to each replica; None when none is known."""
    known: list[tuple[Lsn, str]] = []
    if sensor_saw := Lsn.parse(intent.reference_lsn):
        known.append((sensor_saw, "the sensor's last view of the primary"))
    if observed := Lsn.parse(view.record.observed_lsn):
        known.append((observed, "the record's observed LSN"))
    for name in candidates:
        end = view.members[name].latest_end_lsn
        if end:
            known.append((end, f"the primary's WAL end as reported to {name}"))
    if not known:
        return None, "unknown"
    return max(known)


def _behind_note(view: ClusterView, behind: dict[str, int]) -> str:
    if not behind:
        return ""
    which = ", ".join(f"{n} (timeline {t})" for n, t in sorted(behind.items()))
    return (f"; {which} behind the cluster's timeline {cluster_timeline(view)}: not a candidate until rewound or "
            f"re-cloned (`pg-ops rebuild MEMBER`)")


def plan_failover(view: ClusterView, policy: Policy, intent: FailoverIntent = FailoverIntent()
                  ) -> FailoverPlan | Refusal:
    """The failover rules (docs/architecture/safety.md), as one function over one view."""
    c, designated, force = view.cluster, view.designated, intent.force
    primary = view.primary
    strays = tuple(n for n in view.writable if n != designated)
    if not view.replicas:
        return Refusal(f"cluster {c} has no replica: there is nothing to fail over to")
    if primary.writable:
        if not force:
            return Refusal(f"cluster {c}: refusing failover: primary {designated} answers and is writable "
                           f"(a planned change is `pg-ops switchover --to MEMBER`; --force overrides)")
        old: str | None = designated
    elif primary.reachable:
        old = None  # the designated primary is a standby: a change stopped half-way, or it fenced itself
    else:
        verdict = primary_verdict(view, policy)
        if verdict.kind != "down" and not force:
            return Refusal(f"cluster {c}: refusing failover: {verdict.reason} "
                           f"(a planned change is `pg-ops switchover --to MEMBER`; --force overrides)",
                           deterministic=verdict.kind != "unconfirmed")
        old = designated
    fence = tuple(sorted({*strays, *([old] if old else [])}))
    standbys = [n for n, p in view.members.items() if p.reachable and p.in_recovery and n != old]
    # (timeline, LSN): a member on an older timeline is never a candidate (Patroni's check_timeline).
    behind = {n: t for n, t in behind_timeline(view).items() if n in standbys}
    candidates = [n for n in standbys if n not in behind]
    if intent.to is not None:
        if intent.to not in view.members:
            return Refusal(f"cluster {c}: member {intent.to!r} does not exist")
        if intent.to == old:
            return Refusal(f"cluster {c}: {intent.to} is already the designated primary")
        if intent.to not in standbys:
            probe = view.members[intent.to]
            why = probe.error if not probe.reachable else "it is not a standby"
            return Refusal(f"cluster {c}: cannot promote {intent.to}: {why}")
        if intent.to in behind and not force:
            return Refusal(f"cluster {c}: cannot promote {intent.to}: it is on timeline {behind[intent.to]}, behind "
                           f"the cluster's timeline {cluster_timeline(view)}, so its WAL is off the current history "
                           f"(promoting it loses every commit since and reuses a timeline); rebuild it "
                           f"(`pg-ops rebuild {intent.to}`), or --force to accept that")
        if intent.to in behind:
            candidates.append(intent.to)
    if not candidates:
        down = ", ".join(n for n in view.replicas if n != old and n not in behind) or "none"
        return Refusal(f"cluster {c}: no replica is reachable to promote ({down}){_behind_note(view, behind)}",
                       deterministic=False)
    notes: list[str] = []
    if behind:
        notes.append(_behind_note(view, behind).removeprefix("; "))
    position = {n: _position(view.members[n]) for n in candidates}
    in_place = (old is None and intent.to in (None, designated) and designated in candidates
                and designated in view.fenced_itself
                and all(position[designated] >= position[n] for n in candidates))
    eligible, lossless = candidates, False
    if in_place:
        # The last known primary fenced itself while isolated (a standby now, its marker at the
        # record's epoch): nobody was promoted since, and it is at least as far as every answering
        # member on the cluster's timeline, so it holds every commit it acknowledged. Promoted in
        # place, in every mode, whoever else is missing (Patroni: the last known primary may
        # always take the lock again).
        eligible, lossless = [designated], True
        notes.append(f"{designated} fenced itself as an isolated primary and is the most advanced member: "
                     f"promoted in place")
    elif policy.sync and not force:
        sync_set = [n for n in view.record.sync_set if n != old]
        # No set recorded (relaxed before the failure): every replica must answer, except, when
        # resuming a change that stopped half-way, an old primary it fenced that is gone (the run
        # that designated the candidate already chose over it, under the lag guard, which applies).
        group = sync_set or [n for n in view.members if n != old and (n != designated or old is None)
                             and not (old is None and n in view.record.fenced and not view.members[n].reachable)]
        missing = sorted(set(group) - set(candidates))
        if missing:
            # ANY 1 over the group: the newest acknowledged commit may be on the one that is missing.
            what = "of the synchronous set" if sync_set else "(no synchronous set recorded)"
            late = [n for n in missing if n in behind]
            return Refusal(f"cluster {c}: {policy.replication} mode: {', '.join(missing)} {what} does not answer"
                           + (f" or is off the current timeline ({', '.join(late)})" if late else "")
                           + ", so no reachable member is known to hold every acknowledged commit; refusing "
                             "(use --force to accept possible loss)", deterministic=False)
        eligible, lossless = group, bool(sync_set)
        if not sync_set:
            notes.append("no synchronous set recorded (relaxed or just changed): promoting the most advanced replica")
        if intent.to is not None and intent.to not in eligible:
            return Refusal(f"cluster {c}: cannot promote {intent.to}: it is not in the synchronous set "
                           f"({', '.join(sync_set)}); use --force to accept possible loss")
    received = {n: position[n][1] for n in eligible}
    reference, source = reference_lsn(view, intent, standbys)
    candidate = intent.to or max(eligible, key=lambda n: (position[n], n == designated, n))
    if old is None and candidate != designated and designated in position \
            and position[designated] > position[candidate] and not force:
        # A resume never promotes a member behind the designated one: that would drop its WAL tail.
        return Refusal(f"cluster {c}: {candidate} would be promoted but the designated primary {designated} holds "
                       f"more WAL ({position[designated][1]} on timeline {position[designated][0]}); "
                       f"refusing (use --force to accept the loss)")
    final = Lsn.parse(view.record.final_lsn)
    if final and old is None and not force:
        # A switchover stopped between the old primary's clean shutdown and the promotion: only a
        # member that received its shutdown checkpoint has every commit it acknowledged.
        if position[candidate][1] <= final:
            return Refusal(f"cluster {c}: {candidate} has not received the old primary's final WAL (its shutdown "
                           f"checkpoint {view.record.final_lsn}; it has {position[candidate][1]}); "
                           f"refusing (start the old primary again with `pg-ops deploy`, or --force to accept "
                           f"the loss)", deterministic=False)
        lossless = True
        notes.append(f"has the old primary's final WAL (shutdown checkpoint {view.record.final_lsn})")
    if reference is None:
        if not force and not lossless:
            return Refusal(f"cluster {c}: no reference LSN for the old primary (pg_ops never saw it and no replica "
                           f"reports its WAL end), so the lag guard cannot tell what a promotion loses; refusing "
                           f"(use --force)")
        lag = None
    else:
        lag = max(0, max(reference, *received.values()) - received[candidate])
        if lag > policy.max_lag_bytes and not force and not lossless:
            return Refusal(f"cluster {c}: candidate {candidate} is {lag} bytes behind {source} "
                           f"(failover.max_lag_bytes {policy.max_lag_bytes}); refusing (use --force)")
        notes.append(f"reference: {source}")
    return FailoverPlan(candidate=candidate, old_primary=old, fence=tuple(n for n in fence if n != candidate),
                        lag_bytes=lag, reference_lsn=_text(reference), notes=tuple(notes))


def _text(value: Lsn | None) -> str | None:
    """An LSN as the run config and the record spell it (they keep text)."""
    return None if value is None else str(value)


# -- may a switchover begin? ---------------------------------------------------------------------------
def plan_switchover(view: ClusterView, to: str) -> Refusal | None:
    """The switchover rules over one view (the record and the members' probes): the designated
    primary writable (a switchover hands over from it; without it, `pg-ops failover`), `to`
    another member, streaming from it. None: the switchover may begin. Its candidate needs no
    lag guard: the old primary's final WAL reaches it before it is promoted."""
    c, old, primary = view.cluster, view.designated, view.primary
    if not primary.writable:
        return Refusal(f"cluster {c}: the primary {old} is not healthy ({primary.error or 'not writable'}); "
                       f"a switchover needs it: use `pg-ops failover`")
    if to not in view.members:
        return Refusal(f"cluster {c}: member {to!r} does not exist")
    if to == old:
        return Refusal(f"cluster {c}: {to} is already the primary")
    target = view.members[to]
    if not target.streaming:
        return Refusal(f"cluster {c}: cannot switch over to {to}: it is not streaming "
                       f"({target.error or target.receiver_status or 'no WAL receiver'})")
    return None


# -- the synchronous set ------------------------------------------------------------------------------------
def sync_names(policy: Policy, members: list[str] | tuple[str, ...]) -> str:
    return synchronous_standby_names(policy.replication, list(members))


def initial_sync_set(policy: Policy, view: ClusterView) -> tuple[str, ...]:
    """After deploy, once every replica streams: all of them."""
    if not policy.sync:
        return ()
    return tuple(sorted(n for n in view.replicas if _standby_streaming(view, n)))


def _standby_streaming(view: ClusterView, name: str) -> bool:
    row = view.primary.standby(name)
    return row is not None and row.streaming


def sync_upkeep(view: ClusterView, memory: HaMemory, policy: Policy) -> tuple[list[Action], list[Alert], HaMemory]:
    """Keep the synchronous set and synchronous_standby_names right, from the primary's own
    pg_stat_replication. Order matters for safety: narrowing changes the server setting before
    the record, widening the record before the server setting, so the record is always a
    superset of the members that may hold a commit nobody else has."""
    primary, c = view.primary, view.cluster
    actions: list[Action] = []
    alerts: list[Alert] = []
    current = primary.synchronous_standby_names or ""
    if not policy.sync:
        if current != "":
            actions.append(SetSyncNames(""))
        if view.record.sync_set:
            actions.append(RecordSyncSet(()))
        return actions, alerts, replace(memory, departed={}, no_standby_since=None)
    streaming = {n for n in view.replicas if _standby_streaming(view, n)}
    # The record keeps the set through a change of primary until the new one has taken over
    # (failover.py); a promotion that completed after its run gave up leaves the new primary in
    # it: the primary is never its own synchronous standby.
    members = sorted(n for n in view.record.sync_set if n in view.members and n != view.designated)
    departed = {n: v for n, v in memory.departed.items() if n in members and n not in streaming}
    primary_lsn = primary.lsn or Lsn(0)
    for name in members:
        if name not in streaming:
            departed.setdefault(name, primary_lsn)
    staying = [n for n in members if n in streaming]
    flushed = {n: row.flush_lsn or Lsn(0) for n in staying if (row := primary.standby(n))}
    narrowed = [n for n in members if n in departed and staying
                and all(flushed.get(k, 0) >= departed[n] for k in staying)]
    no_standby_since = memory.no_standby_since
    if streaming:
        no_standby_since = None
    elif no_standby_since is None:
        no_standby_since = view.now
    relax = (policy.replication == "sync" and not streaming and no_standby_since is not None
             and view.now - no_standby_since >= policy.relax_after_s)
    after_narrow = [n for n in members if n not in narrowed]
    if relax:
        after_narrow = []
    widened = sorted(set(after_narrow) | streaming)
    if narrowed or (relax and members):
        actions += [SetSyncNames(sync_names(policy, after_narrow) if after_narrow else ""),
                    RecordSyncSet(tuple(after_narrow))]
    if widened != after_narrow:
        actions += [RecordSyncSet(tuple(widened)), SetSyncNames(sync_names(policy, widened))]
    final = widened
    if final:
        wanted = sync_names(policy, final)
    elif relax:
        wanted = ""
    elif policy.replication == "sync-strict":
        wanted = sync_names(policy, members or view.replicas)  # never relaxed: writes wait
    else:
        wanted = current or sync_names(policy, view.replicas)  # not relaxed yet: writes wait a little
    last_names = next((a.value for a in reversed(actions) if isinstance(a, SetSyncNames)), current)
    if last_names != wanted:
        actions.append(SetSyncNames(wanted))
    if (relax or (not final and wanted == "")) and policy.replication == "sync":
        alerts.append(Alert(cluster=c, severity="warning", kind="sync_relaxed",
                            summary=f"no standby streams from {view.designated}: sync replication relaxed to async "
                                    f"until one does (acknowledged commits can be lost meanwhile)",
                            details={"member": view.designated}))
    if view.designated in view.record.sync_set and not any(isinstance(a, RecordSyncSet) for a in actions):
        # Last, once the server setting is right: the record without the primary (or () while no
        # standby streams: "no set" means every replica must answer a failover).
        actions.append(RecordSyncSet(tuple(final)))
    kept = {n: v for n, v in departed.items() if n not in narrowed}
    return actions, alerts, replace(memory, departed=kept, no_standby_since=no_standby_since)


# -- the tick's decision -------------------------------------------------------------------------------------
def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _alert(view: ClusterView, severity: Severity, kind: str, summary: str, **details) -> Alert:
    return Alert(cluster=view.cluster, severity=severity, kind=kind, summary=summary,
                 details={"member": view.designated, **details})


def _unknown_primary_keys(view: ClusterView) -> frozenset[str]:
    """Primary-level alerts stay as they are while a tick cannot tell (a change runs, a blip)."""
    return frozenset(condition_key(view.cluster, k, view.designated) for k in PRIMARY_KINDS)


def _signature(view: ClusterView) -> str:
    """The facts a failover decision rests on; a refusal or a failed run is only retried once they change."""
    facts = [str(view.record.epoch), view.designated, ",".join(view.record.sync_set)]
    for name in sorted(view.members):
        p = view.members[name]
        facts.append(f"{name}:{p.reachable}:{p.in_recovery}:{p.receive_lsn or p.replay_lsn}:{p.timeline}")
    return hashlib.sha256("|".join(facts).encode()).hexdigest()[:16]


def observe_action(view: ClusterView, policy: Policy) -> RecordObserved | None:
    """Refresh the record's observed LSN and standbys when they moved enough to matter."""
    primary, record = view.primary, view.record
    standbys = tuple(sorted(n for n in view.replicas if _standby_streaming(view, n)))
    now_lsn, kept = primary.lsn, Lsn.parse(record.observed_lsn) or 0
    if not now_lsn:
        return None
    stale = now_lsn != kept and view.now - record.observed_at >= OBSERVE_AT_LEAST_EVERY_S
    timeline = primary.timeline or record.timeline
    if standbys != record.observed_standbys or now_lsn - kept >= policy.observe_every_bytes or stale \
            or timeline != record.timeline:
        return RecordObserved(str(now_lsn), standbys, timeline)
    return None


def missing_slots(view: ClusterView) -> tuple[str, ...]:
    """Other members whose replication slot the (writable) designated primary lacks."""
    have = {s.get("slot_name") for s in view.primary.slots}
    return tuple(n for n in view.replicas if slot_name(n) not in have)


def healthy_upkeep(view: ClusterView, memory: HaMemory, policy: Policy) -> tuple[list[Action], list[Alert], HaMemory]:
    """What a cluster with a writable designated primary needs this tick."""
    primary = view.designated
    actions: list[Action] = [RenewLease(primary, view.record.epoch), RoutePrimary(primary)]
    observed = observe_action(view, policy)
    if observed:
        actions.append(observed)
    missing = missing_slots(view)
    if missing:
        # Before any repoint: a replica pointed at a slot that does not exist never streams.
        actions.append(EnsureSlots(primary, missing))
    alerts: list[Alert] = []
    for name in view.replicas:
        probe = view.members[name]
        if name in view.record.fenced and name in view.stopped:
            actions.append(StartMember(name))
        if name in view.record.fenced and view.streams_from(name, primary) \
                and probe.timeline == view.primary.timeline:
            actions.append(Unfence(name))
        if probe.reachable and probe.in_recovery and not view.follows(name, primary) \
                and not view.streams_from(name, primary):
            actions.append(Repoint(name))
        if probe.reachable and probe.in_recovery and not view.streams_from(name, primary) \
                and (name in view.record.fenced or probe.receiver_status is None) \
                and (probe.timeline or 0) < (view.primary.timeline or 0):
            alerts.append(Alert(cluster=view.cluster, severity="warning", kind="replica_off_timeline",
                                summary=f"{name} is on timeline {probe.timeline}, the primary {primary} on "
                                        f"{view.primary.timeline}: its WAL is off the current history, it cannot "
                                        f"stream and is never a failover candidate until rewound or re-cloned "
                                        f"(`pg-ops rebuild {name}`)",
                                details={"member": name, "timeline": probe.timeline,
                                         "cluster_timeline": view.primary.timeline}))
    sync_actions, sync_alerts, memory = sync_upkeep(view, memory, policy)
    return actions + sync_actions, alerts + sync_alerts, memory


def decide(view: ClusterView, memory: HaMemory, policy: Policy) -> Decision:
    """One tick's decision for one cluster. `memory` comes from the sensor's cursor; the
    executor marks `memory.incident.run_failed` when the run it requested failed."""
    designated = view.designated
    lock = view.record.lock
    if lock is not None and not lock.expired(view.now):
        return Decision("change_in_progress", f"topology change in progress ({lock.operation} by {lock.holder})",
                        memory, unknown=_unknown_primary_keys(view))
    primary = view.primary
    strays = [n for n in view.writable if n != designated]
    if primary.writable:
        memory = replace(memory, incident=None, down_since=None, last_primary_lsn=primary.lsn)
        actions, alerts, memory = healthy_upkeep(view, memory, policy)
        if strays:
            return Decision("split_brain", f"{', '.join(strays)} writable besides the designated primary "
                                           f"{designated}", memory,
                            tuple(a for a in actions if isinstance(a, RoutePrimary | RenewLease)),
                            tuple(alerts), unknown=frozenset())
        fixes = [type(a).__name__ for a in actions if not isinstance(a, RoutePrimary | RecordObserved | RenewLease)]
        summary = f"primary {designated} writable" + (f"; upkeep: {', '.join(fixes)}" if fixes else "")
        if view.primary_misses:
            summary += f" (answered after {view.primary_misses} missed probe(s))"
        return Decision("healthy", summary, memory, tuple(actions), tuple(alerts))
    down_since = memory.down_since or view.now
    memory = replace(memory, down_since=down_since)
    if primary.reachable:
        stuck = (f"the designated primary {designated} answers but is a standby (a failover or switchover stopped "
                 f"half-way" + (f"; {', '.join(strays)} writable instead" if strays else "") + ")")
        return _no_primary(view, memory, policy, "primary_not_writable", stuck, down_since)
    verdict = primary_verdict(view, policy)
    if verdict.kind in ("up", "unconfirmed"):
        return Decision("primary_unreachable", verdict.reason, memory, unknown=_unknown_primary_keys(view))
    if verdict.kind != "down":
        alert = _alert(view, "critical", "primary_unreachable", verdict.reason, witnesses=list(verdict.witnesses))
        return Decision("primary_unreachable", verdict.reason, memory, alerts=(alert,),
                        unknown=frozenset())
    return _no_primary(view, memory, policy, "primary_down", verdict.reason, down_since)


def _no_primary(view: ClusterView, memory: HaMemory, policy: Policy, name: DecisionName, reason: str,
                down_since: float) -> Decision:
    """No writable designated primary: request one failover run per incident, unless the
    failover rules refuse or the last attempt failed on the same facts."""
    c = view.cluster
    plan = plan_failover(view, policy, FailoverIntent(reference_lsn=_text(memory.last_primary_lsn)))
    signature = _signature(view)
    incident = memory.incident
    resume_in_place = isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == view.designated
    held = view.record.in_maintenance(view.now)
    if (not policy.automatic or held) and not resume_in_place:
        # Manual mode and maintenance mode keep topology changes for people; promoting the
        # designated primary again (it fenced itself while isolated, or a change stopped
        # half-way) changes none.
        command = f"pg-ops failover --cluster {c}"
        extra = f"; it would refuse: {plan.reason}" if isinstance(plan, Refusal) else ""
        why = (f"the cluster is in maintenance mode until {_utc(view.record.maintenance_until)}"
               f"{' (' + view.record.maintenance_reason + ')' if view.record.maintenance_reason else ''}"
               if held else "failover mode is manual")
        alert = _alert(view, "critical", "manual_failover_needed",
                       f"{reason}; {why}: run `{command}`{extra}", command=command,
                       detected_at=down_since)
        return Decision("manual_failover_needed", reason, memory, alerts=(alert,),
                        unknown=frozenset())
    if isinstance(plan, Refusal) and plan.deterministic:
        if incident is None or incident.refused is None or incident.signature != signature:
            incident = Incident(id=f"{view.record.epoch}-{int(view.now)}", signature=signature, refused=plan.reason)
        alert = _alert(view, "critical", "failover_refused", f"{reason}; {plan.reason}", incident=incident.id,
                       detected_at=down_since)
        return Decision("failover_refused", plan.reason, replace(memory, incident=incident), alerts=(alert,),
                        unknown=frozenset())
    if isinstance(plan, Refusal):
        # Not settled yet (a member of the synchronous set may come back): say so, request nothing.
        alert = _alert(view, "critical", "failover_refused", f"{reason}; {plan.reason}", detected_at=down_since)
        return Decision("failover_refused", plan.reason, memory, alerts=(alert,),
                        unknown=frozenset())
    if incident is not None and incident.requested and incident.run_failed:
        if incident.signature == signature:
            alert = _alert(view, "critical", "failover_failed",
                           f"{reason}; the failover run for incident {incident.id} failed and nothing changed since; "
                           f"see the run, then `pg-ops failover --cluster {c}`", incident=incident.id)
            return Decision("failover_failed", reason, memory, alerts=(alert,),
                            unknown=frozenset())
        incident = None  # the cluster changed since: a new incident may be requested
    request = None
    if incident is None or not incident.requested:
        incident = Incident(id=f"{view.record.epoch}-{int(view.now)}", requested=True, signature=signature)
        request = FailoverRequest(c, incident.id, down_since, _text(memory.last_primary_lsn))
    # Async: a primary cut off rather than dead may have acknowledged writes no replica has, up
    # to its fencing; they are counted when it rejoins (its rewind), in a writes_discarded alert.
    maybe_lost = "" if policy.sync else (f"; if {view.designated} is cut off rather than down, writes it acknowledged "
                                         f"since are discarded when it rejoins: their count follows "
                                         f"(writes_discarded)")
    alert = _alert(view, "critical", name, f"{reason}; failover requested (incident {incident.id}){maybe_lost}",
                   incident=incident.id, detected_at=down_since, candidate=plan.candidate)
    return Decision(name, reason, replace(memory, incident=incident), alerts=(alert,), failover=request)
