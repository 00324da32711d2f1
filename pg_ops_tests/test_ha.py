"""The HA state machine, decision by decision, on hand-built views: no server, milliseconds
each (integration tests of the same cases run on real clusters in test_failover.py and
test_health.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import get_args

import pytest

from pg_ops.operations.ha.decide import decide, plan_failover, plan_switchover, primary_verdict, sync_upkeep
from pg_ops.operations.ha.model import (
    DECISIONS,
    ClusterView,
    Decision,
    DecisionName,
    EnsureSlots,
    FailoverIntent,
    FailoverPlan,
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
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.topology import MemberProbe, StandbyRow
from pg_ops.state import DesiredState, TopologyLock

NOW = 1_000_000.0
ADDR = {f"c-{i}": f"10.0.0.{i}:5432" for i in range(3)}


def policy(replication="async", automatic=True, **kw) -> Policy:
    base = Policy(cluster="c", replication=replication, automatic=automatic, probes=3, probe_interval_s=0.5,
                  max_lag_bytes=1000, silence_s=3.5, relax_after_s=10.0, observe_every_bytes=250)
    return dataclasses.replace(base, **kw)


def primary(name="c-0", lsn="0/5000000", standbys=(), sync_names="", slots=None, timeline=2) -> MemberProbe:
    rows = [StandbyRow(name=n, state=state, sync_state="async", sent_lsn=Lsn.parse(flush), flush_lsn=Lsn.parse(flush),
                       replay_lsn=Lsn.parse(flush), lag_bytes=0, replay_lag_seconds=0.0)
            for n, state, flush in standbys]
    if slots is None:  # by default the primary has the slot of every other member
        slots = [n.replace("-", "_") for n in ADDR if n != name]
    return MemberProbe(name=name, host="h", port=1, reachable=True, in_recovery=False, timeline=timeline,
                       lsn=Lsn.parse(lsn),
                       replication=rows, synchronous_standby_names=sync_names,
                       slots=[{"slot_name": s, "active": True} for s in slots])


def replica(name, lsn="0/5000000", source="c-0", streaming=True, silence=0.2, upstream=None, timeline=2,
            latest_end=None) -> MemberProbe:
    return MemberProbe(name=name, host="h", port=1, reachable=True, in_recovery=True, timeline=timeline,
                       lsn=Lsn.parse(lsn), receive_lsn=Lsn.parse(lsn), replay_lsn=Lsn.parse(lsn),
                       receiver_status="streaming" if streaming else None,
                       sender=ADDR[source] if streaming else None, silence_seconds=silence if streaming else None,
                       upstream=upstream or ADDR[source], latest_end_lsn=Lsn.parse(latest_end))


def down(name, error="connection refused") -> MemberProbe:
    return MemberProbe(name=name, host="h", port=1, reachable=False, error=error)


def view(members: dict, primary_name="c-0", misses=None, fenced_itself=(), **record) -> ClusterView:
    fields = {"cluster": "c", "primary": primary_name, "epoch": 1, "members": ADDR, "observed_lsn": "0/5000000",
              "observed_at": NOW - 5, "observed_standbys": ("c-1", "c-2"), "timeline": 2, **record}
    state = DesiredState(**fields)
    if misses is None:
        misses = 0 if members[primary_name].reachable else 3
    return ClusterView(record=state, members=members, addresses={n: frozenset({a}) for n, a in ADDR.items()},
                       now=NOW, primary_misses=misses, fenced_itself=frozenset(fenced_itself))


def healthy(**record) -> ClusterView:
    return view({"c-0": primary(standbys=[("c-1", "streaming", "0/5000000"), ("c-2", "streaming", "0/5000000")]),
                 "c-1": replica("c-1"), "c-2": replica("c-2")}, **record)


def dead_primary(**kw) -> ClusterView:
    members = {"c-0": down("c-0"), "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)}
    members.update(kw.pop("members", {}))
    return view(members, **kw)


# -- is the primary down? --------------------------------------------------------------------------------
@pytest.mark.parametrize("members,misses,kind", [
    ({}, 0, "up"),
    ({"c-0": down("c-0")}, 1, "unconfirmed"),
    ({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)}, 3, "down"),
    # the replicas still hear from it: only pg_ops is cut off
    ({"c-0": down("c-0"), "c-1": replica("c-1", silence=0.5)}, 3, "alive"),
    # streaming, but silent beyond the threshold: the primary went quiet (a partition or a hang)
    ({"c-0": down("c-0"), "c-1": replica("c-1", silence=4.0), "c-2": replica("c-2", silence=3.9)}, 3, "down"),
    # a replica that merely lags in replay still hears from the primary: alive
    ({"c-0": down("c-0"), "c-1": replica("c-1", lsn="0/1000000", silence=0.1), "c-2": replica("c-2", streaming=False)},
     3, "alive"),
    # an unreachable replica may still stream from it (partition {primary, c-2} | {pg_ops, c-1})
    ({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False), "c-2": down("c-2")}, 3, "unknown_witness"),
    ({"c-0": down("c-0"), "c-1": down("c-1"), "c-2": down("c-2")}, 3, "no_witness"),
])
def test_primary_verdict(members, misses, kind):
    base = healthy()
    v = dataclasses.replace(base, members={**base.members, **members}, primary_misses=misses)
    assert primary_verdict(v, policy()).kind == kind


def test_an_unreachable_replica_the_primary_reported_gone_is_no_witness():
    # c-2 died earlier: the primary's last report (the record) listed only c-1 as streaming.
    v = dead_primary(members={"c-2": down("c-2")}, observed_standbys=("c-1",))
    assert primary_verdict(v, policy()).kind == "down"


# -- which member to promote -----------------------------------------------------------------------------
def test_candidate_is_the_replica_with_the_highest_received_lsn():
    v = dead_primary(members={"c-1": replica("c-1", lsn="0/5000000", streaming=False),
                              "c-2": replica("c-2", lsn="0/5000100", streaming=False)}, observed_lsn="0/5000100")
    plan = plan_failover(v, policy())
    assert isinstance(plan, FailoverPlan) and plan.candidate == "c-2" and plan.lag_bytes == 0
    assert plan.old_primary == "c-0" and plan.fence == ("c-0",)


def test_lag_guard_uses_the_recorded_reference_and_refuses_unless_forced():
    # A CLI failover has no sensor memory: the record's observed LSN is the reference.
    v = dead_primary(members={"c-1": replica("c-1", lsn="0/5000000", streaming=False),
                              "c-2": replica("c-2", lsn="0/4FFF000", streaming=False)}, observed_lsn="0/5010000")
    refused = plan_failover(v, policy())
    assert isinstance(refused, Refusal) and "c-1 is 65536 bytes behind the record's observed LSN" in refused.reason
    forced = plan_failover(v, policy(), FailoverIntent(force=True))
    assert isinstance(forced, FailoverPlan) and forced.candidate == "c-1" and forced.lag_bytes == 65536


def test_a_replica_hours_behind_is_refused_by_the_wal_end_it_was_told():
    # No record reference, but the primary's WAL end as last reported to the replica is far ahead.
    v = dead_primary(members={"c-1": replica("c-1", lsn="0/1000000", streaming=False, latest_end="0/9000000"),
                              "c-2": replica("c-2", lsn="0/1000000", streaming=False)},
                     observed_lsn="", observed_at=0, observed_standbys=())
    refused = plan_failover(v, policy(), FailoverIntent(to="c-1"))
    assert isinstance(refused, Refusal) and "bytes behind the primary's WAL end as reported to c-1" in refused.reason


def test_unknown_reference_is_refused_unless_forced():
    v = dead_primary(observed_lsn="", observed_at=0, observed_standbys=())
    refused = plan_failover(v, policy())
    assert isinstance(refused, Refusal) and "no reference LSN" in refused.reason
    assert isinstance(plan_failover(v, policy(), FailoverIntent(force=True)), FailoverPlan)


def test_sensor_reference_counts_too():
    v = dead_primary(observed_lsn="0/5000000")
    refused = plan_failover(v, policy(), FailoverIntent(reference_lsn="0/6000000"))
    assert isinstance(refused, Refusal) and "the sensor's last view of the primary" in refused.reason


@pytest.mark.parametrize("to,fragment", [
    ("c-9", "member 'c-9' does not exist"),
    ("c-0", "already the designated primary"),
])
def test_bad_targets_are_refused(to, fragment):
    refused = plan_failover(dead_primary(), policy(), FailoverIntent(to=to))
    assert isinstance(refused, Refusal) and fragment in refused.reason


def test_healthy_primary_is_refused_unless_forced_and_then_fenced():
    refused = plan_failover(healthy(), policy())
    assert isinstance(refused, Refusal) and "answers and is writable" in refused.reason
    plan = plan_failover(healthy(), policy(), FailoverIntent(to="c-2", force=True))
    assert isinstance(plan, FailoverPlan) and plan.candidate == "c-2" and plan.fence == ("c-0",)


def test_a_fenced_member_that_streams_again_is_a_candidate():
    # fenced means only "must not be writable": c-1 rejoined and holds the most WAL.
    v = dead_primary(members={"c-1": replica("c-1", lsn="0/5000200", streaming=False),
                              "c-2": replica("c-2", lsn="0/5000000", streaming=False)}, fenced=("c-1",))
    plan = plan_failover(v, policy())
    assert isinstance(plan, FailoverPlan) and plan.candidate == "c-1"


def test_sync_promotes_a_member_of_the_synchronous_set_with_the_other_replica_gone():
    # c-2 left earlier, the set was narrowed to c-1 (it holds every acknowledged commit).
    v = dead_primary(members={"c-2": down("c-2")}, sync_set=("c-1",), observed_standbys=("c-1",))
    plan = plan_failover(v, policy("sync"))
    assert isinstance(plan, FailoverPlan) and plan.candidate == "c-1"


def test_sync_refuses_while_a_member_of_the_synchronous_set_does_not_answer():
    v = dead_primary(members={"c-2": down("c-2")}, sync_set=("c-1", "c-2"), observed_standbys=("c-1",))
    refused = plan_failover(v, policy("sync"))
    assert isinstance(refused, Refusal) and "c-2 of the synchronous set does not answer" in refused.reason
    assert not refused.deterministic  # c-2 may come back: decide again then
    assert isinstance(plan_failover(v, policy("sync"), FailoverIntent(force=True)), FailoverPlan)


def test_sync_refuses_a_target_outside_the_synchronous_set():
    v = dead_primary(sync_set=("c-1",))
    refused = plan_failover(v, policy("sync"), FailoverIntent(to="c-2"))
    assert isinstance(refused, Refusal) and "not in the synchronous set" in refused.reason


def test_sync_set_member_is_promoted_even_behind_the_reference():
    # The reference includes WAL no standby acknowledged: commits never acknowledged are not lost.
    v = dead_primary(sync_set=("c-1", "c-2"), observed_lsn="0/6000000")
    plan = plan_failover(v, policy("sync"))
    assert isinstance(plan, FailoverPlan)


# -- may a switchover begin? ----------------------------------------------------------------------------
@pytest.mark.parametrize("v,to,fragment", [
    (dead_primary(), "c-1", "the primary c-0 is not healthy (connection refused); a switchover needs it: "
                            "use `pg-ops failover`"),
    (healthy(), "c-9", "member 'c-9' does not exist"),
    (healthy(), "c-0", "c-0 is already the primary"),
    (view({"c-0": primary(standbys=[("c-1", "streaming", "0/5000000")]), "c-1": replica("c-1"),
           "c-2": replica("c-2", streaming=False)}), "c-2",
     "cannot switch over to c-2: it is not streaming (no WAL receiver)"),
])
def test_a_switchover_needs_a_writable_primary_and_a_streaming_target(v, to, fragment):
    refusal = plan_switchover(v, to)
    assert isinstance(refusal, Refusal) and fragment in refusal.reason


def test_a_switchover_to_a_streaming_replica_of_a_writable_primary_may_begin():
    assert plan_switchover(healthy(), "c-1") is None


def test_half_finished_change_is_resumed_on_the_designated_primary():
    # The record names c-1, which is still a standby; c-0 (the old primary) is gone.
    v = view({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)},
             primary_name="c-1", fenced=("c-0",))
    plan = plan_failover(v, policy())
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == "c-1" and plan.fence == ()


def test_half_finished_change_fences_a_writable_old_primary_first():
    v = view({"c-0": primary(), "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)},
             primary_name="c-1")
    plan = plan_failover(v, policy())
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.fence == ("c-0",)


@pytest.mark.parametrize("received, promoted", [("0/5000028", False), ("0/5000000", False), ("0/50000A0", True)])
def test_a_stopped_switchover_is_resumed_only_on_a_member_past_the_shutdown_checkpoint(received, promoted):
    """M6: the switchover recorded the old primary's shutdown checkpoint (0/5000028) after its
    clean shutdown; a resume promotes the target only once it received past that record, however
    small the gap (the lag guard's 1000 bytes here would have let 0/5000000 through)."""
    v = view({"c-0": down("c-0"), "c-1": replica("c-1", lsn=received, streaming=False),
              "c-2": replica("c-2", lsn="0/4000000", streaming=False)},
             primary_name="c-1", observed_lsn="0/5000000", final_lsn="0/5000028")
    plan = plan_failover(v, policy())
    if promoted:
        assert isinstance(plan, FailoverPlan) and plan.candidate == "c-1" and plan.resume
        assert "has the old primary's final WAL (shutdown checkpoint 0/5000028)" in plan.notes
    else:
        assert isinstance(plan, Refusal) and "c-1 has not received the old primary's final WAL" in plan.reason
        assert not plan.deterministic  # it may still arrive: asked again next tick
    forced = plan_failover(v, policy(), FailoverIntent(force=True))
    assert isinstance(forced, FailoverPlan) and forced.candidate == "c-1"


def test_a_fenced_former_primary_stopped_for_good_is_started_again():
    """After a failover the old primary is fenced; locally its processes are gone (the fence's
    SIGKILL): the healthy tick starts it (its member script rejoins it as a replica once it
    reaches the primary). Not where its platform restarts it, and not an unfenced member."""
    members = {"c-1": primary("c-1", standbys=[("c-2", "streaming", "0/5000000")]), "c-0": down("c-0"),
               "c-2": replica("c-2", source="c-1")}
    v = view(members, primary_name="c-1", fenced=("c-0",), epoch=2)
    stopped = dataclasses.replace(v, stopped=frozenset({"c-0"}))
    assert StartMember("c-0") in decide(stopped, HaMemory(), policy()).actions
    assert not any(isinstance(a, StartMember) for a in decide(v, HaMemory(), policy()).actions)
    unfenced = dataclasses.replace(view(members, primary_name="c-1", epoch=2), stopped=frozenset({"c-0"}))
    assert not any(isinstance(a, StartMember) for a in decide(unfenced, HaMemory(), policy()).actions)


@pytest.mark.parametrize("replication, says", [("async", True), ("sync", False)])
def test_the_failover_alert_says_a_cut_off_primarys_writes_are_counted_later(replication, says):
    d = decide(dead_primary(), HaMemory(), policy(replication))
    assert d.failover is not None
    text = "if c-0 is cut off rather than down, writes it acknowledged since are discarded when it rejoins"
    assert (text in d.alerts[0].summary) is says


# -- the synchronous set -------------------------------------------------------------------------------
def _standbys(*rows):
    return [(n, "streaming", flush) for n, flush in rows]


def test_sync_set_narrows_only_after_the_rest_caught_up():
    v = view({"c-0": primary(lsn="0/5000100", standbys=_standbys(("c-1", "0/5000000"))), "c-1": replica("c-1"),
              "c-2": down("c-2")}, sync_set=("c-1", "c-2"))
    actions, _, memory = sync_upkeep(v, HaMemory(), policy("sync"))
    assert not any(isinstance(a, RecordSyncSet) for a in actions)  # c-1 has not flushed 0/5000100 yet
    assert memory.departed == {"c-2": 0x5000100}
    v2 = view({"c-0": primary(lsn="0/5000200", standbys=_standbys(("c-1", "0/5000100"))), "c-1": replica("c-1"),
               "c-2": down("c-2")}, sync_set=("c-1", "c-2"))
    actions, _, memory = sync_upkeep(v2, memory, policy("sync"))
    # Narrowing: the server setting first, then the record (the record stays a superset).
    assert actions[:2] == [SetSyncNames('ANY 1 ("c-1")'), RecordSyncSet(("c-1",))]
    assert memory.departed == {}


def test_sync_set_widens_record_first_when_a_standby_has_caught_up():
    v = view({"c-0": primary(standbys=_standbys(("c-1", "0/5000000"), ("c-2", "0/5000000")),
                             sync_names='ANY 1 ("c-1")'), "c-1": replica("c-1"), "c-2": replica("c-2")},
             sync_set=("c-1",))
    actions, _, _ = sync_upkeep(v, HaMemory(), policy("sync"))
    assert actions == [RecordSyncSet(("c-1", "c-2")), SetSyncNames('ANY 1 ("c-1", "c-2")')]


def test_catchup_standby_does_not_widen():
    v = view({"c-0": primary(standbys=[("c-1", "streaming", "0/5000000"), ("c-2", "catchup", "0/1000000")],
                             sync_names='ANY 1 ("c-1")'), "c-1": replica("c-1"), "c-2": replica("c-2")},
             sync_set=("c-1",))
    actions, _, _ = sync_upkeep(v, HaMemory(), policy("sync"))
    assert actions == []


def test_sync_relaxes_only_after_the_grace_and_sync_strict_never():
    members = {"c-0": primary(sync_names='ANY 1 ("c-1", "c-2")'), "c-1": down("c-1"), "c-2": down("c-2")}
    v = view(members, sync_set=("c-1", "c-2"))
    actions, alerts, memory = sync_upkeep(v, HaMemory(), policy("sync"))
    assert actions == [] and alerts == [] and memory.no_standby_since == NOW
    later = dataclasses.replace(v, now=NOW + 10)
    actions, alerts, _ = sync_upkeep(later, memory, policy("sync"))
    assert actions == [SetSyncNames(""), RecordSyncSet(())] and [a.kind for a in alerts] == ["sync_relaxed"]
    actions, alerts, _ = sync_upkeep(later, memory, policy("sync-strict"))
    assert actions == [] and alerts == []


def test_async_clears_sync_names_and_the_set():
    v = healthy(sync_set=("c-1",))
    v = v.with_members({"c-0": dataclasses.replace(v.primary, synchronous_standby_names='ANY 1 ("c-1")')})
    actions, _, _ = sync_upkeep(v, HaMemory(), policy())
    assert actions == [SetSyncNames(""), RecordSyncSet(())]


# -- the tick's decision: ha-state-machine.md's table, row by row ----------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    """One row of "The tick's decision" in docs/architecture/ha-state-machine.md: its situation
    (the test id; a row with several cases adds what each shows after a colon), the decision
    `decide` names, the tick, and what else the row promises (further ticks included)."""

    situation: str
    decision: str
    tick: Callable[[], Decision]
    then: Callable[[Decision], None] = lambda d: None


def _healthy_renews_the_lease_and_routes(d):
    assert d.actions == (RenewLease("c-0", 1), RoutePrimary("c-0")) and d.failover is None


def _healthy_refreshes_the_observed_lsn(d):
    assert RecordObserved("0/5000000", ("c-1", "c-2"), 2) in d.actions
    assert d.memory.last_primary_lsn == Lsn.parse("0/5000000")


def _repointed_and_unfenced(d):
    assert Repoint("c-1") in d.actions and Unfence("c-2") in d.actions
    assert Repoint("c-2") not in d.actions


def _split_brain_routes_to_the_designated_primary(d):
    # Only the lease and the route to the designated primary (its member script stops the other);
    # no upkeep on a cluster with two writable members, no failover. The critical split_brain
    # alert is the health pass's (operations/health.py), raised from the same probes.
    assert d.actions == (RenewLease("c-0", 1), RoutePrimary("c-0")) and d.failover is None
    assert "c-1 writable besides the designated primary c-0" in d.summary
    assert d.alerts == () and d.unknown == frozenset()


def _lock_decides_nothing(d):
    assert d.failover is None and d.actions == ()
    assert "c/primary_down/c-0" in d.unknown


def _one_failover_per_incident(d1):
    assert d1.failover is not None
    d2 = decide(dead_primary(), d1.memory, policy())
    assert d2.name == "primary_down" and d2.failover is None  # same incident: no second request


def _failed_run_failed(d1):
    return dataclasses.replace(d1.memory, incident=dataclasses.replace(d1.memory.incident, run_failed=True))


def _failed_run_retried_once_the_facts_change(d2):
    assert d2.failover is None
    failed = _failed_run_failed(decide(dead_primary(), HaMemory(), policy()))
    changed = dead_primary(members={"c-2": replica("c-2", lsn="0/5000010", streaming=False)})
    d3 = decide(changed, failed, policy())
    assert d3.name == "primary_down" and d3.failover is not None


def _lagging():
    return dead_primary(members={"c-1": replica("c-1", lsn="0/4000000", streaming=False),
                                 "c-2": replica("c-2", lsn="0/4000000", streaming=False)})


def _refused_until_the_cluster_changes(d1):
    assert d1.failover is None
    assert [a.kind for a in d1.alerts] == ["failover_refused"]
    d2 = decide(_lagging(), d1.memory, policy())
    assert d2.name == "failover_refused" and d2.memory.incident.id == d1.memory.incident.id
    caught_up = dead_primary()
    d3 = decide(caught_up, d2.memory, policy())
    assert d3.name == "primary_down" and d3.failover is not None


def _sync_member_silent():
    # c-2, of the synchronous set, does not answer: it may hold the newest acknowledged commit.
    return dead_primary(members={"c-2": down("c-2")}, sync_set=("c-1", "c-2"), observed_standbys=("c-1",))


def _refused_for_now_and_decided_again(d1):
    assert d1.failover is None
    assert [(a.kind, a.severity) for a in d1.alerts] == [("failover_refused", "critical")]
    assert "c-2 of the synchronous set does not answer" in d1.alerts[0].summary
    assert d1.memory.incident is None  # nothing settled: no incident to wait out
    d2 = decide(_sync_member_silent(), d1.memory, policy("sync"))
    assert d2.name == "failover_refused" and d2.failover is None and d2.alerts  # every tick, until c-2 answers
    back = dead_primary(sync_set=("c-1", "c-2"), observed_standbys=("c-1",))
    d3 = decide(back, d2.memory, policy("sync"))
    assert d3.name == "primary_down" and d3.failover is not None


def _manual_alerts_with_the_command(d):
    assert d.failover is None
    assert "pg-ops failover --cluster c" in d.alerts[0].summary


def _maintenance_holds_and_expires(held):
    assert held.failover is None
    assert "maintenance mode until" in held.alerts[0].summary and "(K3s upgrade)" in held.alerts[0].summary
    assert held.alerts[0].severity == "critical"  # every alert goes on
    expired = decide(dead_primary(maintenance_until=NOW - 1), HaMemory(), policy())
    assert expired.name == "primary_down" and expired.failover is not None


def _resumed_with_a_critical_alert(d):
    assert d.failover is not None
    assert d.alerts[0].severity == "critical"


def _manual_mode_resumes_in_place(d):
    assert d.failover is not None
    refused_elsewhere = view({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False),
                              "c-2": replica("c-2", streaming=False)}, primary_name="c-1")
    d = decide(refused_elsewhere, HaMemory(), policy(automatic=False))
    assert d.name == "primary_not_writable" and d.failover is not None  # resume of c-1, the designated one


def _cut_off_alerts_and_never_requests(d):
    assert d.failover is None
    assert "still stream from it" in d.alerts[0].summary


def _unconfirmed_keeps_open_alerts_open(d):
    assert not d.alerts and "c/primary_down/c-0" in d.unknown


CASES = [
    Case("a topology change holds the lock", "change_in_progress",
         lambda: decide(dead_primary(lock=TopologyLock(holder="switchover@x:1", operation="switchover",
                                                       expires_at=NOW + 60)), HaMemory(), policy()),
         _lock_decides_nothing),
    Case("the designated primary is writable: renews the lease, routes, otherwise leaves things alone", "healthy",
         lambda: decide(healthy(), HaMemory(), policy()), _healthy_renews_the_lease_and_routes),
    Case("the designated primary is writable: refreshes the observed LSN when it moved", "healthy",
         lambda: decide(healthy(observed_lsn="0/4000000"), HaMemory(), policy()),
         _healthy_refreshes_the_observed_lsn),
    Case("the designated primary is writable: repoints a replica that missed the repoint, unfences a rejoined member",
         "healthy",
         lambda: decide(view({"c-0": primary(standbys=_standbys(("c-2", "0/5000000"))),
                              "c-1": replica("c-1", streaming=False, upstream="10.0.0.9:5432"),
                              "c-2": replica("c-2")}, fenced=("c-2",)), HaMemory(), policy()),
         _repointed_and_unfenced),
    Case("another member is writable too", "split_brain",
         lambda: decide(healthy().with_members({"c-1": primary("c-1")}), HaMemory(), policy()),
         _split_brain_routes_to_the_designated_primary),
    Case("the designated primary answers as a standby", "primary_not_writable",
         lambda: decide(view({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False),
                              "c-2": replica("c-2", streaming=False)}, primary_name="c-1"), HaMemory(), policy()),
         _resumed_with_a_critical_alert),
    # It fenced itself while isolated (a standby now, the most advanced member): promoting it
    # again changes no topology, so manual mode does not wait for a person.
    Case("the designated primary answers as a standby: manual mode still resumes it in place", "primary_not_writable",
         lambda: decide(view({"c-0": replica("c-0", lsn="0/5000100", streaming=False),
                              "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)}),
                        HaMemory(), policy(automatic=False)),
         _manual_mode_resumes_in_place),
    Case("not confirmed: pg_ops is cut off, the replicas still stream from it", "primary_unreachable",
         lambda: decide(dead_primary(members={"c-1": replica("c-1", silence=0.3), "c-2": replica("c-2", silence=0.3)}),
                        HaMemory(), policy()),
         _cut_off_alerts_and_never_requests),
    Case("not confirmed: fewer misses than probes keep open alerts open", "primary_unreachable",
         lambda: decide(dead_primary(misses=1), HaMemory(), policy()), _unconfirmed_keeps_open_alerts_open),
    Case("confirmed down, automatic mode, the failover rules allow it", "primary_down",
         lambda: decide(dead_primary(), HaMemory(), policy()), _one_failover_per_incident),
    Case("confirmed down, the rules refuse deterministically", "failover_refused",
         lambda: decide(_lagging(), HaMemory(), policy()), _refused_until_the_cluster_changes),
    Case("confirmed down, the rules refuse for now", "failover_refused",
         lambda: decide(_sync_member_silent(), HaMemory(), policy("sync")), _refused_for_now_and_decided_again),
    Case("confirmed down, manual mode", "manual_failover_needed",
         lambda: decide(dead_primary(), HaMemory(), policy(automatic=False)), _manual_alerts_with_the_command),
    Case("confirmed down, manual mode: maintenance mode holds the failover and expires by itself",
         "manual_failover_needed",
         lambda: decide(dead_primary(maintenance_until=NOW + 600, maintenance_reason="K3s upgrade"), HaMemory(),
                        policy()),
         _maintenance_holds_and_expires),
    Case("the requested run failed and nothing changed since", "failover_failed",
         lambda: decide(dead_primary(), _failed_run_failed(decide(dead_primary(), HaMemory(), policy())), policy()),
         _failed_run_retried_once_the_facts_change),
]


@pytest.mark.parametrize("case", CASES, ids=[c.situation for c in CASES])
def test_decide(case):
    d = case.tick()
    assert d.name == case.decision, d.summary
    case.then(d)


def test_every_decision_has_a_case():
    assert {c.decision for c in CASES} == set(DECISIONS) == set(get_args(DecisionName))


def test_memory_round_trips_through_the_cursor():
    memory = HaMemory(incident=Incident(id="1-2", requested=True, signature="s"), down_since=1.0,
                      departed={"c-1": Lsn(7)}, last_primary_lsn=Lsn.parse("0/1"))
    assert HaMemory.from_dict(memory.to_dict()) == memory
    assert HaMemory.from_dict({"incident": "garbage"}) == HaMemory()


# -- issue 20: synchronous modes through every failure (safety review H1, H2, H3, M5) -----------------
def _stalled_sync_failover(sync_set=("c-1", "c-2"), **members):
    """The failover from c-0 to c-1 wrote the record and fenced c-0, then its promotion stalled
    (c-1's replay held by a query) or fencing raised: c-1 is designated but still a standby."""
    base = {"c-0": down("c-0"), "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)}
    return view({**base, **members}, primary_name="c-1", fenced=("c-0",), sync_set=sync_set, epoch=2)


@pytest.mark.parametrize("replication", ["sync", "sync-strict"])
def test_h1_a_stalled_sync_failover_is_resumed_by_the_next_tick(replication):
    # The record keeps the synchronous set until the new primary has taken over: c-1 and c-2
    # answer, c-1 is the most advanced of them (and designated): resumed, nothing lost.
    v = _stalled_sync_failover()
    plan = plan_failover(v, policy(replication))
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == "c-1" and plan.fence == ()
    d = decide(v, HaMemory(), policy(replication))
    assert d.name == "primary_not_writable" and d.failover is not None
    # The review's view (a record written before the fix, or a set relaxed before the failure):
    # no set, the old primary gone; c-1 is the last designated and the most advanced member.
    plan = plan_failover(_stalled_sync_failover(sync_set=()), policy(replication))
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == "c-1"


def test_h1_the_kept_set_still_guards_the_resume():
    # c-2 of the kept set does not answer: it may hold the newest acknowledged commit.
    refused = plan_failover(_stalled_sync_failover(**{"c-2": down("c-2")}), policy("sync"))
    assert isinstance(refused, Refusal) and "c-2 of the synchronous set does not answer" in refused.reason
    # c-2 received more than c-1 meanwhile: it is promoted instead (at a new epoch, failover.py).
    plan = plan_failover(_stalled_sync_failover(**{"c-2": replica("c-2", lsn="0/5000100", streaming=False)}),
                         policy("sync"))
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == "c-2"


def test_h1_a_switchover_whose_final_lsn_wait_timed_out_is_resumed():
    # The old primary c-0 was stopped cleanly (down, not fenced); the set was kept.
    v = view({"c-0": down("c-0"), "c-1": replica("c-1", lsn="0/5000100", streaming=False),
              "c-2": replica("c-2", lsn="0/5000100", streaming=False)}, primary_name="c-1", sync_set=("c-1", "c-2"),
             epoch=2, observed_lsn="0/5000100")
    plan = plan_failover(v, policy("sync"))
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == "c-1" and plan.lag_bytes == 0


def _fenced_itself(lsn="0/5000100"):
    """c-0, the designated primary, fenced itself while isolated: a standby with no upstream."""
    return replica("c-0", lsn=lsn, streaming=False, upstream="")


@pytest.mark.parametrize("replication", ["async", "sync", "sync-strict"])
@pytest.mark.parametrize("automatic", [True, False])
def test_h2_a_primary_that_fenced_itself_is_resumed_in_place_with_a_replica_still_down(replication, automatic):
    # Scenario A: pg_ops was down while both replicas restarted; it is back while c-2 still is not.
    v = view({"c-0": _fenced_itself(), "c-1": replica("c-1", streaming=False), "c-2": down("c-2")},
             sync_set=("c-1", "c-2") if replication != "async" else (), fenced_itself=("c-0",))
    plan = plan_failover(v, policy(replication, automatic=automatic))
    assert isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == "c-0" and plan.fence == ()
    d = decide(v, HaMemory(), policy(replication, automatic=automatic))
    assert d.name == "primary_not_writable" and d.failover is not None  # manual mode too: no topology change


@pytest.mark.parametrize("replication", ["sync", "sync-strict"])
def test_h2_a_resume_never_promotes_a_lagging_replica_over_the_fenced_primary(replication):
    # Scenario B: both replicas are back, cascading from c-0 (a standby now), 16 MB behind it.
    v = view({"c-0": _fenced_itself(lsn="0/6000000"),
              "c-1": replica("c-1", lsn="0/5000000", source="c-0"),
              "c-2": replica("c-2", lsn="0/5000000", source="c-0")}, sync_set=("c-1", "c-2"), fenced_itself=("c-0",))
    plan = plan_failover(v, policy(replication))
    assert isinstance(plan, FailoverPlan) and plan.candidate == "c-0" and plan.resume
    # Its member script's report could not be read: the set's rule applies, and a lagging member
    # of the set is still never promoted over it.
    unknown = dataclasses.replace(v, fenced_itself=frozenset())
    refused = plan_failover(unknown, policy(replication))
    assert isinstance(refused, Refusal) and "holds more WAL" in refused.reason
    # Asked for a lagging member by name: refused, since it would drop c-0's WAL tail.
    refused = plan_failover(v, policy(replication), FailoverIntent(to="c-2"))
    assert isinstance(refused, Refusal) and "holds more WAL" in refused.reason


def _diverged_old_primary(**record):
    """c-1 (the primary since the last failover, timeline 2) is lost; c-0, the ex-primary that
    fenced itself on timeline 1 with writes beyond the fork, booted as a standby of c-1 while
    c-1 was unreachable (no divergence check), so it holds the most bytes, off the history."""
    return view({"c-0": replica("c-0", lsn="0/7000000", streaming=False, timeline=1),
                 "c-1": down("c-1"), "c-2": replica("c-2", lsn="0/5100000", streaming=False, source="c-1")},
                primary_name="c-1", fenced=("c-0",), observed_lsn="0/5100000", **record)


@pytest.mark.parametrize("record", [{"timeline": 2}, {"timeline": 0}])  # 0: a record from before it was kept
@pytest.mark.parametrize("replication", ["async", "sync"])
def test_h3_a_diverged_member_on_an_older_timeline_is_never_the_candidate(record, replication):
    v = _diverged_old_primary(**record)
    plan = plan_failover(v, policy(replication))
    if replication == "async":
        assert isinstance(plan, FailoverPlan) and plan.candidate == "c-2" and plan.lag_bytes == 0
        assert any("c-0 (timeline 1) behind the cluster's timeline 2" in n for n in plan.notes)
    else:  # no set recorded: every replica must answer, and c-0 answers off the history
        assert isinstance(plan, Refusal) and "off the current timeline (c-0)" in plan.reason
    refused = plan_failover(v, policy(), FailoverIntent(to="c-0"))
    assert isinstance(refused, Refusal) and "timeline 1, behind the cluster's timeline 2" in refused.reason
    # Same LSN order, newer timeline: (timeline, LSN) decides, not the LSN alone.
    ahead = v.with_members({"c-0": replica("c-0", lsn="0/7000000", streaming=False, timeline=2),
                            "c-2": replica("c-2", lsn="0/5100000", streaming=False, timeline=3)})
    plan = plan_failover(ahead, policy(), FailoverIntent(force=True))
    assert isinstance(plan, FailoverPlan) and plan.candidate == "c-2"


def test_h3_a_fenced_member_on_an_older_timeline_is_reported_by_the_healthy_tick():
    v = view({"c-1": primary("c-1", standbys=_standbys(("c-2", "0/5000000"))),
              "c-0": replica("c-0", lsn="0/7000000", streaming=False, timeline=1, upstream=ADDR["c-1"]),
              "c-2": replica("c-2", source="c-1")}, primary_name="c-1", fenced=("c-0",))
    d = decide(v, HaMemory(), policy())
    assert d.name == "healthy" and Unfence("c-0") not in d.actions
    assert [(a.kind, a.details["member"]) for a in d.alerts] == [("replica_off_timeline", "c-0")]


def test_m5_a_late_promotion_gets_its_replication_slots_before_the_repoint():
    # The run gave up on c-1's promotion (and its resume too); c-1 promoted by itself later. It
    # has no slots, c-2 still follows the dead c-0, and the record still holds the old set.
    v = view({"c-0": down("c-0"), "c-1": primary("c-1", slots=[], sync_names=""),
              "c-2": replica("c-2", streaming=False, source="c-0")},
             primary_name="c-1", fenced=("c-0",), sync_set=("c-1", "c-2"), epoch=2)
    d = decide(v, HaMemory(), policy("sync"))
    assert d.name == "healthy"
    kinds = [type(a).__name__ for a in d.actions]
    assert EnsureSlots("c-1", ("c-0", "c-2")) in d.actions and Repoint("c-2") in d.actions
    assert kinds.index("EnsureSlots") < kinds.index("Repoint")
    # The primary is never its own synchronous standby: the record drops it, after the setting.
    assert d.actions[-2:] == (SetSyncNames('ANY 1 ("c-2")'), RecordSyncSet(("c-2",)))
    healthy_again = healthy()
    assert not any(isinstance(a, EnsureSlots) for a in decide(healthy_again, HaMemory(), policy()).actions)


def test_h2_in_place_is_only_for_a_primary_that_fenced_itself():
    # A switchover whose final-LSN wait timed out (async): c-1 never was the primary and lacks the
    # final WAL; the in-place rule does not apply, the lag guard against the final LSN does.
    v = view({"c-0": down("c-0"), "c-1": replica("c-1", lsn="0/5000000", streaming=False),
              "c-2": replica("c-2", lsn="0/5000000", streaming=False)}, primary_name="c-1", epoch=2,
             observed_lsn="0/5100000")
    refused = plan_failover(v, policy())
    assert isinstance(refused, Refusal) and "c-1 is 1048576 bytes behind the record's observed LSN" in refused.reason
