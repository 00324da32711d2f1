"""Failover, switchover, rebuild on real clusters (the member script does the data-plane half:
fencing itself, rewinding, rejoining).

The platform-neutral cases run on both platforms (`any_cluster`, `make_platform_spec`): local
processes, and pods of the fake Kubernetes API with real members behind them, where losing a
member means its pod is force-deleted and cannot be rescheduled (a dead node), fencing deletes
the pod, and the StatefulSet's replacement boots with the desired state of that moment."""

import contextlib
import os
import signal
import threading
import time

import psycopg
import pytest

from pg_ops.errors import LockHeld, LockLost, PgOpsError
from pg_ops.operations import failover as failover_ops
from pg_ops.operations.deploy import deploy
from pg_ops.operations.failover import failover, rebuild, switchover
from pg_ops.operations.status import cluster_status
from pg_ops.state import HeldLock, TopologyLock, update_state
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
    member_generation,
    recover_member,
    running_cluster,
    wait_for,
)


def test_failover_after_primary_lost_and_old_primary_rejoins(any_cluster):
    ctx = any_cluster
    old = ctx.state().primary
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 20, "writes before the failure")
        lose_member(ctx, old)  # its machine dies: processes SIGKILLed / pod gone, not rescheduled
        change = failover(ctx, detected_at=time.time())
        wait_for(lambda: len(writer.acked) and writer.acked[-1] > 0 and writes_after(writer, 5), "writes resume")
    assert change.new_primary != old and change.epoch == 2 and change.timeline == 2
    state = ctx.state()
    assert state.primary == change.new_primary and old in state.fenced
    assert any(k.startswith("promote") for k in change.steps)
    # The old primary comes back through the member script as a replica on the new timeline.
    recover_member(ctx, old)
    deploy(ctx)
    assert_one_primary_all_streaming(ctx)
    assert ctx.state().fenced == ()
    assert q(ctx, old, "select pg_is_in_recovery()") == [(True,)]


class WritableWatcher:
    """Probes a member every 50 ms and records each time a NEW incarnation of it (another
    supervisor / another pod than the one running when the watch began) accepted writes."""

    def __init__(self, ctx, member):
        self.ctx, self.member, self.writable_seen, self.stop = ctx, member, [], threading.Event()
        self.first = member_generation(ctx, member)
        self.incarnations = set()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _new_incarnation(self):
        generation = member_generation(self.ctx, self.member)
        return generation if generation not in (None, self.first) else None

    def run(self):
        password = self.ctx.admin_password()
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # down or not there yet is fine; writable is not
                generation = self._new_incarnation()
                if generation:
                    ep = self.ctx.endpoints()[self.member]
                    with psycopg.connect(host=ep.host, port=ep.port, user="postgres", dbname="postgres",
                                         password=password, connect_timeout=2) as conn:
                        writable = conn.execute("select not pg_is_in_recovery()").fetchone()[0]
                    self.incarnations.add(generation)
                    if writable and self._new_incarnation() == generation:
                        self.writable_seen.append(time.time())
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def test_failover_refused_while_primary_is_healthy(any_cluster):
    with pytest.raises(PgOpsError, match="refusing failover"):
        failover(any_cluster)
    assert any_cluster.state().epoch == 1 and any_cluster.state().fenced == ()


def test_forced_failover_fences_a_healthy_primary(any_cluster):
    ctx = any_cluster
    old = ctx.state().primary
    target = ctx.spec.member_names[2]
    before = member_generation(ctx, old)
    with WritableWatcher(ctx, old) as watcher:
        change = failover(ctx, to=target, force=True)
        assert change.new_primary == target
        if fake_of(ctx) is None:
            assert not ctx.platform.member_running(old)
        else:
            # The pod was deleted; the StatefulSet's replacement boots with the desired state
            # that names the new primary, so its member script rewinds it into a replica.
            assert member_generation(ctx, old) != before
        deploy(ctx)
        assert_one_primary_all_streaming(ctx)
    assert watcher.incarnations, f"{old} was never seen back"
    assert watcher.writable_seen == [], f"{old} was writable again after the failover: {watcher.writable_seen}"
    assert q(ctx, old, "select pg_is_in_recovery()") == [(True,)]
    assert "pg_rewind from primary" in ctx.platform.member_log_tail(old, lines=1000)  # it rewound


def test_interrupted_failover_with_dead_candidate_is_run_again(cluster):
    ctx = cluster
    old, first, second = ctx.spec.member_names
    kill_member(ctx.platform, old)
    # A failover run died right after writing the desired state, and its candidate died too.
    update_state(ctx.platform.state_store(), lambda s: s.model_copy(
        update={"epoch": s.epoch + 1, "primary": first, "fenced": (old,)}))
    kill_member(ctx.platform, first)
    change = failover(ctx)
    assert change.new_primary == second and change.old_primary == first and change.epoch == 3
    with primary_conn(ctx) as c:
        assert c.execute("select pg_is_in_recovery()").fetchone()[0] is False
        assert c.info.port == ctx.endpoints()[second].port


def test_second_failover_is_refused_by_the_lock(cluster):
    store = cluster.platform.state_store()
    lock = TopologyLock(holder="failover@other:7", operation="failover", expires_at=time.time() + 60)
    update_state(store, lambda s: s.model_copy(update={"lock": lock}))
    kill_member(cluster.platform, cluster.state().primary)
    with pytest.raises(LockHeld, match="failover held by failover@other:7"):
        failover(cluster)


def test_a_failover_that_lost_its_lock_stops_before_it_promotes(cluster, monkeypatch):
    """L2: the run's lock renewals stall past the TTL while it fences, and another run takes the
    lock over: the run stops with LockLost before it promotes anything."""
    store = cluster.platform.state_store()
    monkeypatch.setattr(failover_ops, "LOCK_TTL_S", 3)
    monkeypatch.setattr(HeldLock, "_renew_once", lambda self: None)
    real_fence = failover_ops.fence

    def fence_then_lose_the_lock(ctx, member, probe):
        stopped = real_fence(ctx, member, probe)
        time.sleep(3.5)  # no renewal past the TTL: another run takes the lock over
        taken = TopologyLock(holder="failover@other:7", operation="failover", expires_at=time.time() + 60)
        update_state(store, lambda s: s.model_copy(update={"lock": taken}))
        return stopped

    monkeypatch.setattr(failover_ops, "fence", fence_then_lose_the_lock)
    kill_member(cluster.platform, cluster.state().primary)
    with pytest.raises(LockLost, match="failover@other:7"):
        failover(cluster)
    candidate = cluster.state().primary  # the record names it (written before the fence)
    assert cluster.probe([candidate])[candidate].in_recovery is True, "promoted after losing the lock"
    assert store.read().lock.holder == "failover@other:7"


def test_switchover_loses_no_row_and_old_primary_follows(any_cluster):
    ctx = any_cluster
    old = ctx.state().primary
    target = ctx.spec.member_names[1]
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 50, "writes before the switchover")
        change = switchover(ctx, to=target)
        wait_for(lambda: writes_after(writer, 5), "writes resume after the switchover")
    acked = set(writer.acked)
    present = {r[0] for r in q(ctx, target, "select n from writes")}
    assert acked <= present, f"lost {len(acked - present)} acknowledged rows"
    assert change.new_primary == target and ctx.state().primary == target
    assert_one_primary_all_streaming(ctx)
    assert q(ctx, old, "select pg_is_in_recovery()") == [(True,)]


def test_a_switchover_whose_target_misses_the_final_wal_rolls_back_and_loses_nothing(cluster, monkeypatch):
    """M6 (issue 20): the target's WAL receiver stops just before the old primary's clean shutdown
    while clients keep committing: it never gets the shutdown checkpoint. Not promoted (it used
    to be, within the lag guard of a pre-shutdown LSN): the old primary is designated and started
    again at a new epoch, and every acknowledged row is there."""
    ctx = cluster
    old, target = ctx.state().primary, ctx.spec.member_names[1]
    monkeypatch.setattr(failover_ops, "FINAL_WAL_TIMEOUT_S", 5)
    real_stop = ctx.platform.stop_member

    def cut_the_target_then_stop(name):
        if name == old:
            q(ctx, target, "alter system set primary_conninfo = ''", "postgres")
            q(ctx, target, "select pg_reload_conf()", "postgres")
            wait_for(lambda: not q(ctx, target, "select 1 from pg_stat_wal_receiver", "postgres"), "receiver gone")
            wait_for(lambda: writes_after(writer, 20), "commits the target does not receive")
        real_stop(name)

    monkeypatch.setattr(ctx.platform, "stop_member", cut_the_target_then_stop)
    epoch = ctx.state().epoch
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 50, "writes before the switchover")
        with pytest.raises(PgOpsError, match=rf"switchover to {target} refused: member {target} did not receive the "
                                             rf"old primary's final WAL \(shutdown checkpoint .*\); {old} is the "
                                             rf"primary again \(epoch {epoch + 2}\), nothing lost"):
            switchover(ctx, to=target)
        wait_for(lambda: writes_after(writer, 5), "writes resume on the old primary")
    state = ctx.state()
    assert (state.primary, state.epoch, state.final_lsn) == (old, epoch + 2, "")
    present = {r[0] for r in q(ctx, old, "select n from writes")}
    assert set(writer.acked) <= present, f"lost {len(set(writer.acked) - present)} acknowledged rows"
    wait_for(lambda: q(ctx, target, "select status from pg_stat_wal_receiver", "postgres") == [("streaming",)],
             f"{target} streaming from {old} again")


def test_switchover_refuses_a_member_that_is_down(cluster):
    ctx = cluster
    target = ctx.spec.member_names[2]
    kill_member(ctx.platform, target)
    with pytest.raises(PgOpsError, match=f"cannot switch over to {target}: it is not streaming"):
        switchover(ctx, to=target)
    assert ctx.state().epoch == 1


def test_comeback_ex_primary_never_stays_writable(cluster):
    """A replica that becomes writable without being designated (a promotion behind pg_ops's
    back, a stale comeback) is stopped by its member script and rejoins as a replica."""
    ctx = cluster
    rogue = ctx.spec.member_names[2]
    q(ctx, rogue, "select pg_promote(true)", dbname="postgres")
    wait_for(lambda: q(ctx, rogue, "select pg_is_in_recovery()", "postgres") == [(True,)], "rogue back in recovery",
             timeout=60)
    wait_for(lambda: cluster_status(ctx).to_dict()["writable_members"] == [ctx.state().primary] and
             all(m["streaming"] for m in cluster_status(ctx).to_dict()["members"] if m["role"] == "replica"),
             "rogue streaming again", timeout=60)


def test_postgres_crash_with_supervisor_alive_recovers_in_place(cluster):
    ctx = cluster
    primary = ctx.state().primary
    pid = int((ctx.platform.data_dir(primary) / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: q(ctx, primary, "select not pg_is_in_recovery()", "postgres") == [(True,)],
             "primary restarted in place", timeout=60)
    assert ctx.state().primary == primary and ctx.state().epoch == 1
    wait_for(lambda: cluster_status(ctx).to_dict()["writable_members"] == [primary], "one writable member")


def test_rebuild_by_rewind_and_by_reclone(any_cluster):
    ctx = any_cluster
    replica = ctx.spec.member_names[1]
    q(ctx, ctx.state().primary, "create table before_rebuild (v int); insert into before_rebuild values (7)")
    result = rebuild(ctx, replica)
    assert result.method == "rewind"
    result = rebuild(ctx, replica, reclone=True)
    assert result.method == "re-clone"
    assert q(ctx, replica, "select v from before_rebuild") == [(7,)]
    assert_one_primary_all_streaming(ctx)
    with pytest.raises(PgOpsError, match="is the primary; switch over first"):
        rebuild(ctx, ctx.state().primary)


def test_sync_mode_loses_no_acknowledged_commit(make_platform_spec):
    with cluster_on(make_platform_spec("sy", postgres={"members": 3, "replication": "sync"})) as ctx:
        old = ctx.state().primary
        assert q(ctx, old, "show synchronous_standby_names", "postgres")[0][0].startswith("ANY 1")
        with Writer(ctx) as writer:
            wait_for(lambda: len(writer.acked) > 50, "sync writes")
            lose_member(ctx, old)
            change = failover(ctx)
            wait_for(lambda: writes_after(writer, 5), "writes resume")
        present = {r[0] for r in q(ctx, change.new_primary, "select n from writes")}
        assert set(writer.acked) <= present, f"lost {len(set(writer.acked) - present)} acknowledged rows"


def test_no_replica_at_all_is_a_clear_refusal(make_spec):
    with running_cluster(make_spec("solo", postgres={"members": 1})) as ctx:
        kill_member(ctx.platform, ctx.state().primary)
        with pytest.raises(PgOpsError, match="has no replica: there is nothing to fail over to"):
            failover(ctx, force=True)


def test_rolling_restart_through_the_cli_job(any_cluster, capsys):
    import json

    from pg_ops.cli import main as cli_main

    ctx = any_cluster
    old = ctx.state().primary
    pids = {n: member_generation(ctx, n) for n in ctx.spec.member_names}
    # --in-process: a Kubernetes cluster's runs otherwise go to its deployment (pg_ops/runs.py)
    assert cli_main(["rolling-restart", "--cluster", ctx.name, "--json", "--in-process"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["primary"] != old and ctx.state().primary == meta["primary"] and meta["epoch"] == 2
    assert all(member_generation(ctx, n) != pids[n] for n in ctx.spec.member_names)  # every member restarted
    assert_one_primary_all_streaming(ctx)


def test_failover_job_via_cli_records_run_and_metadata(cluster, capsys):
    import json

    from dagster import DagsterInstance

    from pg_ops.cli import main as cli_main

    ctx = cluster
    old = ctx.state().primary
    kill_member(ctx.platform, old)
    assert cli_main(["failover", "--cluster", ctx.name, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["old_primary"] == old and meta["new_primary"] == ctx.state().primary and meta["epoch"] == 2
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert runs[0].job_name == "failover" and runs[0].tags["pg_ops/topology"] == ctx.name
    assert cli_main(["failover", "--cluster", ctx.name]) == 1  # the new primary is healthy
    assert "refusing failover" in capsys.readouterr().err
