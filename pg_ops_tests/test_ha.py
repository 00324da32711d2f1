"""The HA state machine, decision by decision, on hand-built views: no server, milliseconds
each (integration tests of the same cases run on real clusters in test_failover.py and
test_health.py)."""

from __future__ import annotations

import dataclasses

import pytest

from pg_ops.operations.ha.decide import decide, plan_failover, primary_verdict, sync_upkeep
from pg_ops.operations.ha.model import (
    ClusterView,
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
    Unfence,
)
from pg_ops.postgres.topology import MemberProbe, StandbyRow
from pg_ops.state import DesiredState, TopologyLock

NOW = 1_000_000.0
ADDR = {f"c-{i}": f"10.0.0.{i}:5432" for i in range(3)}


def policy(replication="async", automatic=True, **kw) -> Policy:
    base = Policy(cluster="c", replication=replication, automatic=automatic, probes=3, probe_interval_s=0.5,
                  max_lag_bytes=1000, silence_s=3.5, relax_after_s=10.0, observe_every_bytes=250)
    return dataclasses.replace(base, **kw)


def primary(name="c-0", lsn="0/5000000", standbys=(), sync_names="") -> MemberProbe:
    rows = [StandbyRow(name=n, state=state, sync_state="async", sent_lsn=flush, flush_lsn=flush, replay_lsn=flush,
                       lag_bytes=0, replay_lag_seconds=0.0) for n, state, flush in standbys]
    return MemberProbe(name=name, host="h", port=1, reachable=True, in_recovery=False, timeline=2, lsn=lsn,
                       replication=rows, synchronous_standby_names=sync_names)


def replica(name, lsn="0/5000000", source="c-0", streaming=True, silence=0.2, upstream=None, timeline=2,
            latest_end=None) -> MemberProbe:
    return MemberProbe(name=name, host="h", port=1, reachable=True, in_recovery=True, timeline=timeline,
                       lsn=lsn, receive_lsn=lsn, replay_lsn=lsn,
                       receiver_status="streaming" if streaming else None,
                       sender=ADDR[source] if streaming else None, silence_seconds=silence if streaming else None,
                       upstream=upstream or ADDR[source], latest_end_lsn=latest_end)


def down(name, error="connection refused") -> MemberProbe:
    return MemberProbe(name=name, host="h", port=1, reachable=False, error=error)


def view(members: dict, primary_name="c-0", misses=None, **record) -> ClusterView:
    fields = {"cluster": "c", "primary": primary_name, "epoch": 1, "members": ADDR, "observed_lsn": "0/5000000",
              "observed_at": NOW - 5, "observed_standbys": ("c-1", "c-2"), **record}
    state = DesiredState(**fields)
    if misses is None:
        misses = 0 if members[primary_name].reachable else 3
    return ClusterView(record=state, members=members, addresses={n: frozenset({a}) for n, a in ADDR.items()},
                       now=NOW, primary_misses=misses)


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


# -- the tick's decision ---------------------------------------------------------------------------------
def test_healthy_cluster_renews_the_lease_routes_and_otherwise_leaves_things_alone():
    d = decide(healthy(), HaMemory(), policy())
    assert d.name == "healthy" and d.actions == (RenewLease("c-0", 1), RoutePrimary("c-0")) and d.failover is None


def test_healthy_tick_refreshes_the_observed_lsn_when_it_moved():
    v = healthy(observed_lsn="0/4000000")
    d = decide(v, HaMemory(), policy())
    assert RecordObserved("0/5000000", ("c-1", "c-2")) in d.actions
    assert d.memory.last_primary_lsn == "0/5000000"


def test_replica_that_missed_the_repoint_is_repointed_and_a_rejoined_member_unfenced():
    v = view({"c-0": primary(standbys=_standbys(("c-2", "0/5000000"))),
              "c-1": replica("c-1", streaming=False, upstream="10.0.0.9:5432"),
              "c-2": replica("c-2")}, fenced=("c-2",))
    d = decide(v, HaMemory(), policy())
    assert Repoint("c-1") in d.actions and Unfence("c-2") in d.actions
    assert Repoint("c-2") not in d.actions


def test_lock_held_decides_nothing():
    lock = TopologyLock(holder="switchover@x:1", operation="switchover", expires_at=NOW + 60)
    d = decide(dead_primary(lock=lock), HaMemory(), policy())
    assert d.name == "change_in_progress" and d.failover is None and d.actions == ()
    assert "c/primary_down/c-0" in d.unknown


def test_confirmed_down_requests_one_failover_per_incident():
    d1 = decide(dead_primary(), HaMemory(), policy())
    assert d1.name == "primary_down" and d1.failover is not None
    d2 = decide(dead_primary(), d1.memory, policy())
    assert d2.name == "primary_down" and d2.failover is None  # same incident: no second request


def test_failed_run_is_not_retried_on_the_same_facts_but_is_once_they_change():
    d1 = decide(dead_primary(), HaMemory(), policy())
    failed = dataclasses.replace(d1.memory, incident=dataclasses.replace(d1.memory.incident, run_failed=True))
    d2 = decide(dead_primary(), failed, policy())
    assert d2.name == "failover_failed" and d2.failover is None
    changed = dead_primary(members={"c-2": replica("c-2", lsn="0/5000010", streaming=False)})
    d3 = decide(changed, failed, policy())
    assert d3.name == "primary_down" and d3.failover is not None


def test_deterministic_refusal_requests_nothing_and_waits_for_the_cluster_to_change():
    lagging = dead_primary(members={"c-1": replica("c-1", lsn="0/4000000", streaming=False),
                                    "c-2": replica("c-2", lsn="0/4000000", streaming=False)})
    d1 = decide(lagging, HaMemory(), policy())
    assert d1.name == "failover_refused" and d1.failover is None
    assert [a.kind for a in d1.alerts] == ["failover_refused"]
    d2 = decide(lagging, d1.memory, policy())
    assert d2.name == "failover_refused" and d2.memory.incident.id == d1.memory.incident.id
    caught_up = dead_primary()
    d3 = decide(caught_up, d2.memory, policy())
    assert d3.name == "primary_down" and d3.failover is not None


def test_manual_mode_alerts_with_the_command_and_the_refusal():
    d = decide(dead_primary(), HaMemory(), policy(automatic=False))
    assert d.name == "manual_failover_needed" and d.failover is None
    assert "pg-ops failover --cluster c" in d.alerts[0].summary


def test_designated_primary_that_is_a_standby_is_resumed():
    v = view({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)},
             primary_name="c-1")
    d = decide(v, HaMemory(), policy())
    assert d.name == "primary_not_writable" and d.failover is not None
    assert d.alerts[0].severity == "critical"


def test_pg_ops_cut_off_alerts_and_never_requests():
    v = dead_primary(members={"c-1": replica("c-1", silence=0.3), "c-2": replica("c-2", silence=0.3)})
    d = decide(v, HaMemory(), policy())
    assert d.name == "primary_unreachable" and d.failover is None
    assert "still stream from it" in d.alerts[0].summary


def test_unconfirmed_keeps_open_alerts_open():
    d = decide(dead_primary(misses=1), HaMemory(), policy())
    assert d.name == "primary_unreachable" and not d.alerts and "c/primary_down/c-0" in d.unknown


def test_split_brain_is_named():
    v = healthy()
    v = v.with_members({"c-1": primary("c-1")})
    assert decide(v, HaMemory(), policy()).name == "split_brain"


def test_memory_round_trips_through_the_cursor():
    memory = HaMemory(incident=Incident(id="1-2", requested=True, signature="s"), down_since=1.0,
                      departed={"c-1": 7}, last_primary_lsn="0/1")
    assert HaMemory.from_dict(memory.to_dict()) == memory
    assert HaMemory.from_dict({"incident": "garbage"}) == HaMemory()


def test_manual_mode_still_resumes_the_designated_primary_in_place():
    # It fenced itself while isolated (a standby now, the most advanced member): promoting it
    # again changes no topology, so manual mode does not wait for a person.
    v = view({"c-0": replica("c-0", lsn="0/5000100", streaming=False),
              "c-1": replica("c-1", streaming=False), "c-2": replica("c-2", streaming=False)})
    d = decide(v, HaMemory(), policy(automatic=False))
    assert d.name == "primary_not_writable" and d.failover is not None
    refused_elsewhere = view({"c-0": down("c-0"), "c-1": replica("c-1", streaming=False),
                              "c-2": replica("c-2", streaming=False)}, primary_name="c-1")
    d = decide(refused_elsewhere, HaMemory(), policy(automatic=False))
    assert d.name == "primary_not_writable" and d.failover is not None  # resume of c-1, the designated one
