"""The cases that fell between the old failover places, each on real clusters (the pure
decisions behind them are in test_ha.py): a fenced member that rejoined, a change that stopped
half-way, a recreated primary pod, a CLI failover with lagging replicas, a replica that missed
the repoint, a refusal watched over many ticks, and sync mode losing a replica then the primary."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest

from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.errors import MemberError, PgOpsError
from pg_ops.operations import failover as failover_ops
from pg_ops.operations.deploy import deploy
from pg_ops.operations.failover import failover
from pg_ops.operations.ha import act
from pg_ops.operations.health import TickMemory, watch_cluster
from pg_ops.postgres import admin
from pg_ops.postgres.session import connect
from pg_ops.render import names as names
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.dagster import Sensor
from pg_ops_tests.support.failover import (
    Writer,
    assert_one_primary_all_streaming,
    primary_conn,
    q,
    writes_after,
)
from pg_ops_tests.support.helpers import (
    cluster_on,
    fake_of,
    kill_member,
    lose_member,
    recover_member,
    requested_run,
    running_cluster,
    spec_from,
    wait_for,
    write_platform_spec,
)


def tick(ctx, memory=None):
    """One sensor tick; `memory` (the cursor's part for this cluster) is carried over in place."""
    memory = TickMemory() if memory is None else memory
    watch = watch_cluster(ctx, memory)
    vars(memory).update(vars(watch.memory))
    return watch


def sync_setting(ctx, member):
    return q(ctx, member, "show synchronous_standby_names", "postgres")[0][0]


def test_rejoined_fenced_member_is_a_full_replica_again(make_platform_spec):
    with cluster_on(make_platform_spec("rj", postgres={"members": 3, "replication": "sync"})) as ctx:
        old = ctx.state().primary
        lose_member(ctx, old)
        change = failover(ctx)
        assert old in ctx.state().fenced
        # The lost machine comes back: its member script rewinds it into a replica of the new primary.
        recover_member(ctx, old)
        ctx.platform.start_member(old)
        wait_for(lambda: tick(ctx).health.view.streams_from(old, change.new_primary), f"{old} streaming", timeout=90)
        memory = TickMemory()
        wait_for(lambda: tick(ctx, memory) and old in ctx.state().sync_set, f"{old} back in the synchronous set",
                 timeout=60)
        state = ctx.state()
        assert old not in state.fenced  # fenced means "must not be writable", nothing more
        assert f'"{old}"' in sync_setting(ctx, change.new_primary)
        # It is a candidate again: a failover may promote it.
        lose_member(ctx, change.new_primary)
        second = failover(ctx, to=old)
        assert second.new_primary == old and q(ctx, old, "select pg_is_in_recovery()", "postgres") == [(False,)]


def test_failed_fencing_leaves_a_change_the_tick_resumes(any_cluster, monkeypatch):
    ctx = any_cluster
    old = ctx.state().primary
    lose_member(ctx, old)
    real_fence = ctx.platform.fence_member

    def broken_fence(name):
        raise MemberError(f"member {name}: the API refused the pod deletion (injected)")

    monkeypatch.setattr(ctx.platform, "fence_member", broken_fence)
    with pytest.raises(MemberError, match="injected"):
        failover(ctx)
    monkeypatch.setattr(ctx.platform, "fence_member", real_fence)
    stuck = ctx.state()
    assert stuck.primary != old and not ctx.probe([stuck.primary])[stuck.primary].writable
    with dg.instance_for_test() as instance:
        sensor = Sensor([ctx], instance=instance)
        sensor.tick()
        assert f"primary_not_writable/{stuck.primary}" in sensor.open_kinds()
        assert len(sensor.requests) == 1  # the change is resumed (by the tick itself) and a failover run requested
    change = requested_run(ctx, sensor.requests[0])
    assert change.new_primary == stuck.primary and change.epoch == stuck.epoch
    assert "resumed a change that stopped half-way" in "; ".join(change.notes)
    if fake_of(ctx) is not None:
        pod = fake_of(ctx).object("pods", ctx.spec.kubernetes.namespace, change.new_primary)
        assert pod["metadata"]["labels"][names.LABEL_ROLE] == names.ROLE_PRIMARY
    recover_member(ctx, old)
    ctx.platform.start_member(old)
    wait_for(lambda: ctx.probe([old])[old].streaming, f"{old} rejoins", timeout=90)


def test_failed_promotion_is_resumed(cluster, monkeypatch):
    ctx = cluster
    old = ctx.state().primary
    kill_member(ctx.platform, old)
    real_promote = failover_ops.promote
    monkeypatch.setattr(failover_ops, "promote", lambda c, m, epoch: (_ for _ in ()).throw(
        MemberError(f"member {m}: pg_promote did not complete within 30 s (injected)")))
    with pytest.raises(MemberError, match="injected"):
        failover(ctx)
    monkeypatch.setattr(failover_ops, "promote", real_promote)
    watch = tick(ctx)
    assert watch.decision.name == "primary_not_writable" and watch.failover is not None
    change = requested_run(ctx, watch.failover)
    assert change.new_primary == ctx.state().primary
    assert q(ctx, change.new_primary, "select pg_is_in_recovery()", "postgres") == [(False,)]


def test_recreated_primary_pod_is_routed_by_the_tick(pg_home):
    spec = spec_from(write_platform_spec(pg_home / "specs", "rc", "kubernetes"))
    with cluster_on(spec) as ctx:
        fake = fake_of(ctx)
        primary = ctx.state().primary
        first_uid = fake.object("pods", spec.kubernetes.namespace, primary)["metadata"]["uid"]
        ctx.platform.stop_member(primary)  # an eviction: the StatefulSet recreates the pod from its template
        wait_for(lambda: (pod := fake.object("pods", spec.kubernetes.namespace, primary)) is not None
                 and pod["metadata"]["uid"] != first_uid, "the recreated pod")
        wait_for(lambda: ctx.probe([primary])[primary].writable, "the primary back", timeout=90)
        labels = fake.object("pods", spec.kubernetes.namespace, primary)["metadata"]["labels"]
        assert names.LABEL_ROLE not in labels  # the template has no runtime labels
        watch = tick(ctx)
        assert watch.decision.name == "healthy"
        labels = fake.object("pods", spec.kubernetes.namespace, primary)["metadata"]["labels"]
        assert labels[names.LABEL_ROLE] == names.ROLE_PRIMARY
        # The endpoint routes again once the pod's readiness probe passes (the Service follows it).
        wait_for(lambda: "primary_endpoint" not in {a.kind for a in tick(ctx).alerts}, "the primary endpoint",
                 timeout=60)


def _lagging_cluster(ctx):
    """Both replicas stopped while the primary writes ~3 MB; the tick records that LSN; then the
    primary dies and the replicas come back, far behind it."""
    primary = ctx.state().primary
    replicas = [m for m in ctx.spec.member_names if m != primary]
    for name in replicas:
        ctx.platform.stop_member(name)
    q(ctx, primary, "create table filler (v text)")
    q(ctx, primary, "insert into filler select (select string_agg(md5(random()::text || i || j), '') "
                    "from generate_series(1, 50) j) from generate_series(1, 2000) i")  # ~3 MB of WAL
    tick(ctx)  # the sensor's view of the primary goes into the record
    assert ctx.state().observed_lsn
    kill_member(ctx.platform, primary)
    for name in replicas:
        ctx.platform.start_member(name)
    for name in replicas:
        wait_for(lambda name=name: ctx.probe([name])[name].reachable, f"{name} back")
    return primary


def test_cli_failover_with_lagging_replicas_is_refused(cluster, capsys):
    import json

    from pg_ops.cli import main as cli_main

    ctx = cluster
    _lagging_cluster(ctx)
    assert cli_main(["failover", "--cluster", ctx.name]) == 1
    err = capsys.readouterr().err
    assert "bytes behind the record's observed LSN" in err and "refusing (use --force)" in err
    assert ctx.state().epoch == 1
    assert cli_main(["failover", "--cluster", ctx.name, "--force", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["lag_bytes_at_promotion"] > 1024 * 1024  # what --force gave up, recorded honestly


def test_refused_failover_is_requested_never_and_alerted_once(make_spec):
    with running_cluster(make_spec("rf", monitoring={"interval_seconds": 1})) as ctx:
        primary = _lagging_cluster(ctx)
        sensor = Sensor([ctx])
        with WebhookCapture() as hook:
            os.environ["PG_OPS_ALERT_WEBHOOK"] = hook.url
            try:
                for _ in range(10):  # ten ticks, each confirming the dead primary again
                    sensor.tick()
            finally:
                os.environ.pop("PG_OPS_ALERT_WEBHOOK", None)
        assert sensor.requests == []
        refused = [b for b in hook.bodies if b["kind"] == "failover_refused"]
        assert len(refused) == 1 and refused[0]["details"]["member"] == primary
        assert "bytes behind" in refused[0]["summary"]


def test_replica_that_missed_the_repoint_is_repointed_by_the_tick(any_cluster, monkeypatch):
    ctx = any_cluster
    old = ctx.state().primary
    missed = ctx.spec.member_names[2]
    real = act.repoint_member

    def flaky(c, name, primary, state):
        if name == missed:
            raise MemberError(f"{name}: no answer within 5 s (injected)")
        return real(c, name, primary, state)

    lose_member(ctx, old)
    monkeypatch.setattr(act, "repoint_member", flaky)
    change = failover(ctx, to=ctx.spec.member_names[1])
    monkeypatch.setattr(act, "repoint_member", real)
    assert not ctx.probe([missed])[missed].streaming  # still pointing at the dead primary
    watch = tick(ctx)
    assert any(type(a).__name__ == "Repoint" and a.member == missed for a in watch.decision.actions)
    wait_for(lambda: tick(ctx).health.view.streams_from(missed, change.new_primary), f"{missed} follows again")


def test_sync_mode_loses_a_replica_then_the_primary_and_loses_nothing(make_platform_spec):
    spec = make_platform_spec("sq", postgres={"members": 3, "replication": "sync"}, monitoring={"interval_seconds": 1})
    with cluster_on(spec) as ctx:
        old = ctx.state().primary
        survivor, gone = ctx.spec.member_names[1], ctx.spec.member_names[2]
        with Writer(ctx) as writer:
            wait_for(lambda: len(writer.acked) > 50, "sync writes")
            lose_member(ctx, gone)
            memory = TickMemory()

            wait_for(lambda: tick(ctx, memory) and ctx.state().sync_set == (survivor,),
                     "the synchronous set narrowed to the survivor", timeout=60)
            assert sync_setting(ctx, old) == f'ANY 1 ("{survivor}")'
            wait_for(lambda: writes_after(writer, 20), "writes acknowledged by the survivor alone")
            lose_member(ctx, old)
            change = failover(ctx)  # no --force: the survivor holds every acknowledged commit
            # No standby is left to acknowledge: writes wait until the tick relaxes sync mode.
            wait_for(lambda: tick(ctx, memory) and writes_after(writer, 5), "writes resume once relaxed")
        assert change.new_primary == survivor
        present = {r[0] for r in q(ctx, survivor, "select n from writes")}
        assert set(writer.acked) <= present, f"lost {len(set(writer.acked) - present)} acknowledged rows"


def test_failover_keeps_sync_mode_while_the_standbys_reconnect(cluster_sync):
    ctx = cluster_sync
    old = ctx.state().primary
    kill_member(ctx.platform, old)
    change = failover(ctx)
    # Right after the promotion: not relaxed (the other replica reconnects within a second).
    assert sync_setting(ctx, change.new_primary).startswith("ANY 1 (")
    memory = TickMemory()
    watch = tick(ctx, memory)
    assert "sync_relaxed" not in {a.kind for a in watch.alerts}
    deadline = time.monotonic() + 30
    while ctx.state().sync_set == () and time.monotonic() < deadline:
        tick(ctx, memory)
    assert ctx.state().sync_set and old not in ctx.state().sync_set
    assert_one_primary_all_streaming_except(ctx, old)


def assert_one_primary_all_streaming_except(ctx, missing):
    probes = ctx.probe()
    assert [n for n, p in probes.items() if p.writable] == [ctx.state().primary]
    # A receiver counts as streaming once settled (half a second after it started: SETTLED_RECEIVER_MS);
    # a replica repointed a moment ago has just started one.
    wait_for(lambda: all(p.streaming for n, p in ctx.probe().items() if n not in (ctx.state().primary, missing)),
             f"every member but {missing} and the primary streaming", timeout=10)


@pytest.fixture
def cluster_sync(make_spec):
    with running_cluster(make_spec("ks", postgres={"members": 3, "replication": "sync"})) as ctx:
        yield ctx


def test_refusal_reason_is_one_line(cluster):
    with pytest.raises(PgOpsError) as err:
        failover(cluster)
    assert "\n" not in str(err.value) and "refusing failover" in str(err.value)
    assert_one_primary_all_streaming(cluster)


# -- issue 20: synchronous modes through every failure (the pure cases are in test_ha.py) ---------------
def _nothing_acknowledged_lost(ctx, writer, member):
    present = {r[0] for r in q(ctx, member, "select n from writes")}
    lost = sorted(set(writer.acked) - present)
    assert writer.acked and not lost, f"{len(lost)} acknowledged rows missing on {member}: {lost[:10]}"


def _stalled(c, member, epoch):
    raise MemberError(f"member {member}: pg_promote did not complete within 30 s (injected)")


def test_stalled_sync_promotion_is_resumed_by_the_next_tick_and_loses_nothing(cluster_sync, monkeypatch):
    """H1: the record keeps the synchronous set until the new primary has taken over, so the
    tick resumes a sync failover whose promotion stalled (it used to refuse: "no synchronous set
    recorded ... use --force")."""
    ctx = cluster_sync
    old = ctx.state().primary
    memory = TickMemory()
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 50, "sync writes")
        kill_member(ctx.platform, old)
        real_promote = failover_ops.promote
        monkeypatch.setattr(failover_ops, "promote", _stalled)
        with pytest.raises(MemberError, match="injected"):
            failover(ctx)
        monkeypatch.setattr(failover_ops, "promote", real_promote)
        stalled = ctx.state()
        assert stalled.primary != old and set(stalled.sync_set) == set(ctx.spec.member_names) - {old}
        watch = tick(ctx, memory)
        assert watch.decision.name == "primary_not_writable" and watch.failover is not None, watch.decision.summary
        change = requested_run(ctx, watch.failover)
        wait_for(lambda: writes_after(writer, 5), "writes resume on the new primary")
    assert change.new_primary == stalled.primary and change.epoch == stalled.epoch
    assert ctx.state().timeline == change.timeline
    _nothing_acknowledged_lost(ctx, writer, change.new_primary)


def test_promotion_completing_after_the_run_gave_up_gets_its_slots_from_the_tick(cluster_sync, monkeypatch):
    """M5: the promotion was requested but the run gave up waiting for it; it completes later.
    The healthy tick creates the slots the repoint uses, so the other replica streams again."""
    ctx = cluster_sync
    old = ctx.state().primary
    kill_member(ctx.platform, old)

    def late(c, member, epoch):
        c.sql(member, lambda conn: conn.execute("select pg_promote(false)"))
        raise MemberError(f"member {member}: pg_promote did not complete within 30 s (injected; it completes later)")

    real_promote = failover_ops.promote
    monkeypatch.setattr(failover_ops, "promote", late)
    with pytest.raises(MemberError, match="injected"):
        failover(ctx)
    monkeypatch.setattr(failover_ops, "promote", real_promote)
    new = ctx.state().primary
    other = next(m for m in ctx.spec.member_names if m not in (old, new))
    wait_for(lambda: ctx.probe([new])[new].writable, "the late promotion")
    memory = TickMemory()
    wait_for(lambda: tick(ctx, memory).health.view.streams_from(other, new), f"{other} streaming from {new}",
             timeout=60)
    slots = {s["slot_name"]: s["active"] for s in ctx.probe([new])[new].slots}
    assert {admin.slot_name(other), admin.slot_name(old)} <= set(slots)
    wait_for(lambda: any(s["slot_name"] == admin.slot_name(other) and s["active"] for s in ctx.probe([new])[new].slots),
             f"{other} streaming through its slot")
    # The former primary may be back by now (rewound, streaming): then it is in the set too.
    wait_for(lambda: tick(ctx, memory) and other in ctx.state().sync_set, "the synchronous set of the new primary",
             timeout=60)


def _fence_the_primary_with_pg_ops_away(ctx, writer):
    """pg_ops stops ticking and both replicas stop: the primary fences itself (a standby with
    its isolation marker) once its lease and every standby reply are older than lease_seconds."""
    primary = ctx.state().primary
    replicas = [m for m in ctx.spec.member_names if m != primary]
    wait_for(lambda: len(writer.acked) > 50, "sync writes")
    for name in replicas:
        ctx.platform.stop_member(name)
    wait_for(lambda: ctx.probe([primary])[primary].in_recovery is True, "the primary fencing itself", timeout=60)
    assert ctx.platform.member_report(primary).isolated_at
    return primary, replicas


def test_sync_primary_that_fenced_itself_is_resumed_in_place_when_ticks_resume(make_spec):
    """H2, scenario A: pg_ops comes back while one replica is still down. The designated primary
    is the last known primary and holds every commit it acknowledged: promoted in place (it used
    to refuse: "... of the synchronous set does not answer")."""
    spec = make_spec("fz", postgres={"members": 3, "replication": "sync"}, monitoring={"interval_seconds": 1})
    with running_cluster(spec) as ctx:
        memory = TickMemory()
        tick(ctx, memory)
        epoch = ctx.state().epoch
        with Writer(ctx) as writer:
            primary, (first, second) = _fence_the_primary_with_pg_ops_away(ctx, writer)
            ctx.platform.start_member(first)
            wait_for(lambda: ctx.probe([first])[first].reachable, f"{first} back")
            watch = tick(ctx, memory)
            assert watch.decision.name == "primary_not_writable" and watch.failover is not None, watch.decision.summary
            change = requested_run(ctx, watch.failover)
            assert change.new_primary == primary and change.epoch == epoch
            tick(ctx, memory)
            ctx.platform.start_member(second)
            wait_for(lambda: tick(ctx, memory) and writes_after(writer, 5), "writes acknowledged again", timeout=60)
        assert ctx.state().primary == primary
        # The supervisor clears its isolation marker on its next one-second check once it sees
        # itself writable (and a tick may have had to promote it in place once more: with pg_ops
        # away longer than the lease while the replica starts, it fences itself again, correctly).
        wait_for(lambda: tick(ctx, memory) and not ctx.platform.member_report(primary).isolated_at,
                 "the isolation marker cleared")
        _nothing_acknowledged_lost(ctx, writer, primary)
        wait_for(lambda: all(tick(ctx, memory).health.view.streams_from(r, primary) for r in (first, second)),
                 "both replicas streaming from the resumed primary", timeout=90)


def test_deploy_promotes_a_primary_that_fenced_itself_in_place(make_spec):
    """L5: deploy does not wait a minute for a member that fenced itself (it never promotes
    itself back): the failover rules say it is the one, so deploy promotes it in place."""
    spec = make_spec("fd", postgres={"members": 3, "replication": "sync"}, failover={"lease_seconds": 8})
    with running_cluster(spec) as ctx:
        epoch = ctx.state().epoch
        with Writer(ctx) as writer:
            primary, replicas = _fence_the_primary_with_pg_ops_away(ctx, writer)
            result = deploy(ctx)
            wait_for(lambda: writes_after(writer, 5), "writes acknowledged again")
        assert result.primary == primary and result.epoch == epoch and set(result.started) == set(replicas)
        _nothing_acknowledged_lost(ctx, writer, primary)
        assert_one_primary_all_streaming(ctx)


def test_diverged_old_primary_on_an_old_timeline_is_never_promoted(make_spec, monkeypatch):
    """H3: an ex-primary holding writes beyond the fork on the old timeline boots as a standby
    while the new primary cannot be read (no divergence check then), so it has the most bytes.
    When the new primary is lost too, the member on the cluster's timeline is promoted, not it:
    candidates compare (timeline, LSN)."""
    spec = make_spec("tl", failover={"lease_seconds": 10})
    with running_cluster(spec) as ctx:
        a = ctx.state().primary
        # pg_ops away and both replicas stopped: a acknowledges writes alone (async) until it
        # fences itself; pg_ops never sees that tail.
        for name in ctx.spec.member_names:
            if name != a:
                ctx.platform.stop_member(name)
        act.renew_lease(ctx, a, ctx.state().epoch)
        q(ctx, a, "create table tail as select g as n, repeat('x', 200) as pad from generate_series(1, 150000) g",
          "postgres")
        wait_for(lambda: ctx.probe([a])[a].in_recovery is True, f"{a} fencing itself", timeout=60)
        kill_member(ctx.platform, a)  # then its machine dies: nothing starts it until the test does
        monkeypatch.setattr(ctx.platform, "stopped_for_good", lambda name: False)
        for name in ctx.spec.member_names:
            if name != a:
                ctx.platform.start_member(name)
        wait_for(lambda: all(p.reachable for n, p in ctx.probe().items() if n != a), "the replicas back")
        first = failover(ctx)
        b = first.new_primary
        c = next(m for m in ctx.spec.member_names if m not in (a, b))
        q(ctx, b, "create table after_failover as select g as n from generate_series(1, 100) g", "postgres")
        memory = TickMemory()
        wait_for(lambda: tick(ctx, memory).health.view.streams_from(c, b), f"{c} streaming from {b}")
        wait_for(lambda: q(ctx, c, "select to_regclass('after_failover') is not null", "postgres")[0][0]
                 and q(ctx, c, "select count(*) from after_failover", "postgres")[0][0] == 100, f"{c} has b's rows")
        tick(ctx, memory)
        # b's machine is lost; a comes back while b cannot be read: a standby of b on timeline 1.
        kill_member(ctx.platform, b)
        ctx.platform.start_member(a)
        wait_for(lambda: ctx.probe([a])[a].reachable, f"{a} back as a standby")
        probes = ctx.probe([a, c])
        assert probes[a].timeline < probes[c].timeline == ctx.state().timeline == first.timeline
        second = failover(ctx)
        assert second.new_primary == c, second.notes
        assert any(f"{a} (timeline" in n for n in second.notes)
        assert q(ctx, c, "select count(*) from after_failover", "postgres") == [(100,)]
        # Its member script sees it behind a primary it now reaches and boots it again: rewound onto
        # c's timeline, the tail it alone acknowledged counted (it was never on the cluster's history).
        wait_for(lambda: tick(ctx, memory).health.view.streams_from(a, c), f"{a} rewound and streaming from {c}",
                 timeout=120)
        report = ctx.platform.member_report(a)
        assert report.discarded is not None and report.discarded.timeline == 1, \
            (report, ctx.platform.member_log_tail(a, 30))
        assert (report.discarded.transactions or 0) >= 1, report


def test_sync_promotion_held_by_a_query_on_the_candidate_is_resumed_and_loses_nothing(cluster_sync, monkeypatch):
    """H1 as it happens: a long query on the replicas (the nightly dump runs on the most advanced
    one) holds replay by a lock conflict, for up to max_standby_streaming_delay (300 s); the
    primary dies; the run's pg_promote waits 30 s (5 here) and gives up. The next tick resumes it (it used
    to refuse, the set having been cleared), and once the query ends the resume promotes the same
    member: every acknowledged row is there."""
    ctx = cluster_sync
    old = ctx.state().primary
    replicas = [m for m in ctx.spec.member_names if m != old]
    with primary_conn(ctx) as c:
        c.execute("create table hold (n int)")
    wait_for(lambda: all(q(ctx, r, "select to_regclass('hold') is not null")[0][0] for r in replicas),
             "hold replicated")
    readers = []
    for name in replicas:
        reader = connect(ctx.endpoints()[name], "postgres", ctx.admin_password(), dbname=PG_OPS_DATABASE,
                         autocommit=False)
        reader.execute("select count(*) from hold")  # an open transaction holding its lock
        readers.append(reader)
    try:
        with Writer(ctx) as writer:
            wait_for(lambda: len(writer.acked) > 20, "sync writes")
            with primary_conn(ctx) as c:
                c.execute("drop table hold")  # its lock's replay waits for the readers
            acked = len(writer.acked)
            wait_for(lambda: len(writer.acked) > acked + 50, "writes acknowledged while replay is held")
            for name in replicas:
                row = q(ctx, name, "select pg_last_wal_replay_lsn() < pg_last_wal_receive_lsn()")
                assert row == [(True,)], f"{name}: replay not held"
            kill_member(ctx.platform, old)
            monkeypatch.setattr(failover_ops, "PROMOTE_WAIT_S", 5)  # 30 in production: the same give-up
            with pytest.raises(MemberError, match="pg_promote did not complete within 5 s"):
                failover(ctx)
            stalled = ctx.state()
            assert q(ctx, stalled.primary, "select pg_is_in_recovery()", "postgres") == [(True,)]
            watch = tick(ctx)
            assert watch.decision.name == "primary_not_writable" and watch.failover is not None, watch.decision.summary
            real_promote = failover_ops.promote

            def query_ends_then_promote(c, member, epoch):
                for reader in readers:
                    reader.close()  # the dump finished
                return real_promote(c, member, epoch)

            monkeypatch.setattr(failover_ops, "promote", query_ends_then_promote)
            change = failover(ctx)
            monkeypatch.setattr(failover_ops, "promote", real_promote)
            wait_for(lambda: writes_after(writer, 5), "writes resume on the new primary")
    finally:
        for reader in readers:
            reader.close()
    assert change.new_primary == stalled.primary and change.epoch == stalled.epoch
    _nothing_acknowledged_lost(ctx, writer, change.new_primary)


def test_repoint_of_a_member_without_primary_conninfo_carries_its_passfile(cluster):
    """A member that fenced itself drops its upstream (member.sh: demote_isolated); repointing it
    builds a conninfo from nothing, which must name the passfile its member script uses, or the
    replication user cannot authenticate and it never streams."""
    ctx = cluster
    primary = ctx.state().primary
    name = next(m for m in ctx.spec.member_names if m != primary)
    q(ctx, name, "alter system set primary_conninfo = ''", "postgres")
    q(ctx, name, "select pg_reload_conf()", "postgres")
    wait_for(lambda: not ctx.probe([name])[name].streaming, f"{name} without an upstream")
    act.repoint_member(ctx, name, primary, ctx.state())
    wait_for(lambda: ctx.probe([name])[name].streaming, f"{name} streaming again", timeout=30)
    conninfo = q(ctx, name, "show primary_conninfo", "postgres")[0][0]
    assert f"passfile={ctx.platform.member_passfile(name)}" in conninfo or \
        f"passfile='{ctx.platform.member_passfile(name)}'" in conninfo, conninfo
