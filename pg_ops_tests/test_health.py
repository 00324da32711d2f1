"""Health passes, alert conditions and the sensor's decisions on real PostgreSQL clusters.

The sensor is evaluated in process here (build_sensor_context + its body); the real daemon
is in test_sensors_daemon.py.
"""

import contextlib
import dataclasses
import json
import os
import socket
import threading

import dagster as dg
import pytest

from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.defs.health import member_asset_key
from pg_ops.operations import health
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha.decide import primary_verdict
from pg_ops.operations.ha.model import Policy
from pg_ops.operations.ha.observe import read_view
from pg_ops.operations.status import cluster_status
from pg_ops.platforms.base import MemberReport
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.session import with_connection
from pg_ops.postgres.topology import probe_member
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.dagster import Sensor
from pg_ops_tests.support.faults import hung
from pg_ops_tests.support.helpers import free_port, kill_member, wait_for


def sql(ctx, member, query, dbname="postgres"):
    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None
    return with_connection(ctx.endpoints()[member], "postgres", ctx.admin_password(), run, dbname=dbname, timeout=10)


def kinds(alerts, member=None):
    return sorted(a.kind for a in alerts if member is None or a.details.get("member") == member)


def verdict(ctx):
    """Is the primary down, as the state machine would decide after its confirmation probes?"""
    policy = Policy.from_spec(ctx.spec)
    return primary_verdict(read_view(ctx, policy), policy)


def replicas(ctx):
    return [m for m in ctx.spec.member_names if m != ctx.state().primary]


@contextlib.contextmanager
def silent_server(port: int):
    """Accepts TCP connections on 127.0.0.1:port and never answers."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


# -- healthy ---------------------------------------------------------------------------------------
def test_healthy_cluster_reports_everything_and_alerts_nothing(shared_cluster):
    result = health.health_pass(shared_cluster)
    assert result.assessment.alerts == []
    rows = {m["name"]: m for m in result.status.to_dict()["members"]}
    for name in replicas(shared_cluster):
        row = rows[name]
        assert row["streaming"] is True and row["replication_state"] == "streaming"
        assert (row["lag_bytes"] is not None
                and row["sender"] == str(shared_cluster.endpoints()[shared_cluster.state().primary]))
    for row in rows.values():
        assert 0 < row["storage_ratio"] < 1 and row["data_dir_total_bytes"] > row["data_dir_used_bytes"] > 0
        assert row["connections"] >= 1 and row["max_connections"] == 200


def test_status_shows_the_same_health_data(shared_cluster):
    status = health.status_report(shared_cluster)
    assert status["alerts"] == []
    assert all("storage_ratio" in m and "receiver_status" in m for m in status["members"])


def test_unresolvable_host_and_refused_port_are_reported_not_raised():
    dns = probe_member("ghost", Endpoint("no-such-host.invalid", 5432), "postgres", "x", timeout=2)
    assert not dns.reachable and "no-such-host.invalid" in dns.error
    refused = probe_member("gone", Endpoint("127.0.0.1", free_port()), "postgres", "x", timeout=2)
    assert not refused.reachable and "refused" in refused.error.lower()


# -- replicas ----------------------------------------------------------------------------------------
def test_stopped_replica_alerts_once_and_resolves_after_restart(cluster):
    ctx = cluster
    victim = replicas(ctx)[0]
    sensor = Sensor([ctx])
    with WebhookCapture() as hook:
        os.environ["PG_OPS_ALERT_WEBHOOK"] = hook.url
        try:
            sensor.tick()
            assert hook.bodies == []
            ctx.platform.stop_member(victim)
            sensor.tick()
            sensor.tick()  # still down: no second alert
            assert hook.kinds() == [("member_down", victim)]
            detection = sensor.state["detections"][-1]
            assert detection["member"] == victim and detection["seconds"] > 0
            ctx.platform.start_member(victim)
            wait_for(lambda: health.health_pass(ctx).status.to_dict()["members"][1]["streaming"],
                     f"{victim} streaming again")
            sensor.tick()
            assert hook.kinds(resolved=True) == [("member_down", victim)]
            assert hook.bodies[-1]["fired_at"] == hook.bodies[0]["fired_at"]
            sensor.tick()
            assert len(hook.bodies) == 2
        finally:
            os.environ.pop("PG_OPS_ALERT_WEBHOOK", None)
    password = ctx.admin_password()
    assert all(password not in json.dumps(b) for b in hook.bodies)
    observed = {e.asset_key for e in sensor.events}
    assert member_asset_key(ctx.name, victim) in observed


def test_observations_on_change_and_otherwise_once_a_minute(shared_cluster):
    ctx = shared_cluster
    memory = health.TickMemory()
    rows = cluster_status(ctx).members
    assert len(health.due_observations(memory, rows, [], now=1000)) == 3
    assert health.due_observations(memory, rows, [], now=1010) == []
    changed = [dataclasses.replace(rows[1], role="down", streaming=None)] + [rows[0], rows[2]]
    assert [r.name for r in health.due_observations(memory, changed, [], now=1020)] == [rows[1].name]
    assert len(health.due_observations(memory, changed, [], now=1000 + health.OBSERVE_EVERY_S)) == 2


def test_paused_replay_under_writes_raises_a_lag_alert(make_spec):
    from pg_ops_tests.support.helpers import running_cluster
    spec = make_spec("lag", monitoring={"lag_alert_bytes": 1024 * 1024, "lag_alert_seconds": 3})
    with running_cluster(spec) as ctx:
        paused, other = replicas(ctx)
        sql(ctx, paused, "select pg_wal_replay_pause()")
        try:
            sql(ctx, ctx.state().primary, "create table filler (v text)", PG_OPS_DATABASE)
            for _ in range(4):
                sql(ctx, ctx.state().primary,
                    "insert into filler select repeat('x', 1000) from generate_series(1, 1000)",
                    PG_OPS_DATABASE)
            # The replica that replays catches up within moments (on a busy machine it may lag
            # past 1 MB for a tick); the paused one keeps lagging.
            result = wait_for(lambda: (r := health.health_pass(ctx))
                              and "replication_lag" in kinds(r.assessment.alerts, paused)
                              and "replication_lag" not in kinds(r.assessment.alerts, other) and r,
                              "a lag alert for the paused replica only")
            lag = next(a for a in result.assessment.alerts if a.kind == "replication_lag")
            assert lag.details["lag_bytes"] > 1024 * 1024 and lag.details["member"] == paused
        finally:
            sql(ctx, paused, "select pg_wal_replay_resume()")
        wait_for(lambda: "replication_lag" not in kinds(health.health_pass(ctx).assessment.alerts), "lag resolved")


def test_idle_cluster_raises_no_lag_alert(make_spec):
    import time

    from pg_ops_tests.support.helpers import running_cluster
    spec = make_spec("idle", monitoring={"lag_alert_seconds": 1, "lag_alert_bytes": 1024 * 1024})
    with running_cluster(spec) as ctx:
        sql(ctx, ctx.state().primary, "create table once (v int); insert into once values (1)", PG_OPS_DATABASE)
        replica = replicas(ctx)[0]
        wait_for(lambda: sql(ctx, replica, "select count(*) from once", PG_OPS_DATABASE)[0][0] == 1, "row replayed")
        naive = 0.0
        for _ in range(8):  # idle for a few seconds, well past lag_alert_seconds
            result = health.health_pass(ctx)
            assert "replication_lag" not in kinds(result.assessment.alerts), result.assessment.alerts
            time.sleep(0.5)
        naive = sql(ctx, replica, "select extract(epoch from now() - pg_last_xact_replay_timestamp())::float8")[0][0]
        assert naive > spec.monitoring.lag_alert_seconds  # the naive measure would have alerted


# -- faults: a hung member, a silent port ---------------------------------------------------------------
def test_hung_replica_is_reported_within_the_probe_deadline(cluster):
    ctx = cluster
    victim = replicas(ctx)[1]
    with hung(ctx, victim) as stopped:
        assert len(stopped) > 3  # postmaster + its auxiliary processes and backends
        result = health.health_pass(ctx)
    row = next(m for m in result.status.to_dict()["members"] if m["name"] == victim)
    # Whichever comes first: our deadline or libpq's connect_timeout (both 2 s).
    assert row["role"] == "down" and ("no answer within" in row["error"] or "timeout expired" in row["error"])
    assert ("member_down", victim) in [(a.kind, a.details.get("member")) for a in result.assessment.alerts]
    assert result.view.primary.reachable


def test_port_that_accepts_and_never_answers_is_reported(cluster):
    ctx = cluster
    victim = replicas(ctx)[0]
    ctx.platform.stop_member(victim)
    with silent_server(ctx.endpoints()[victim].port):
        result = health.health_pass(ctx)
    row = next(m for m in result.status.to_dict()["members"] if m["name"] == victim)
    # Whichever comes first: our deadline or libpq's connect_timeout (both 2 s).
    assert row["role"] == "down" and ("no answer within" in row["error"] or "timeout expired" in row["error"])


def test_hung_primary_is_confirmed_down_once_its_replicas_hear_nothing(cluster):
    ctx = cluster
    with hung(ctx, ctx.state().primary):
        found = verdict(ctx)
    # A stopped primary keeps its replication connections open, but it sends nothing: after
    # the confirmation probes the replicas have heard nothing from it for longer than the
    # silence threshold, so the state machine calls it down (a hung primary is as good as dead).
    assert found.kind == "down" and "heard nothing from it" in found.reason


# -- primary down ----------------------------------------------------------------------------------------
def _cut_off_from_primary(ctx: ClusterContext, port: int) -> ClusterContext:
    """pg_ops's view where the primary's address leads nowhere, while replicas stream from
    the real one (a network partition between pg_ops and the primary only)."""
    real = ctx.platform.member_endpoints()
    primary = ctx.state().primary
    platform = ctx.platform

    class CutOff:
        def __getattr__(self, name):
            return getattr(platform, name)

        def member_endpoints(self):
            return {**real, primary: Endpoint("127.0.0.1", port)}

    return ClusterContext(ctx.spec, CutOff(), ctx.log)


def test_primary_cut_off_from_pg_ops_but_alive_alerts_and_never_fails_over(cluster):
    ctx = _cut_off_from_primary(cluster, free_port())
    sensor = Sensor([ctx])
    sensor.tick()
    assert sensor.requests == []
    assert "primary_unreachable/" + cluster.state().primary in sensor.open_kinds()
    reason = next(v for v in sensor.state["alerts"].values() if v["kind"] == "primary_unreachable")["summary"]
    assert "unreachable from pg_ops but alive" in reason


def test_wrong_password_reports_every_member_and_requests_no_failover(cluster, monkeypatch):
    monkeypatch.setattr(ClusterContext, "admin_password", lambda self: "not-the-password")
    sensor = Sensor([cluster])
    sensor.tick()
    assert sensor.requests == []
    state = sensor.state["alerts"]
    downs = [v for v in state.values() if v["kind"] == "member_down"]
    assert len(downs) == 3 and all("password authentication failed" in v["summary"] for v in downs)
    assert any(v["kind"] == "primary_unreachable" and "no replica answers" in v["summary"] for v in state.values())


def test_killed_primary_requests_one_failover_per_incident(cluster):
    """failover.promote_in: run: the sensor only requests (its take-over in the tick: the next test)."""
    ctx = ClusterContext(cluster.spec.model_copy(update={
        "failover": cluster.spec.failover.model_copy(update={"promote_in": "run"})}), cluster.platform, cluster.log)
    primary = ctx.state().primary
    kill_member(ctx.platform, primary)
    found = verdict(ctx)
    assert found.kind == "down", found.reason
    with dg.instance_for_test() as instance:
        sensor = Sensor([ctx], instance=instance)
        sensor.tick()
        sensor.tick()
        assert len(sensor.requests) == 1
        request = sensor.requests[0]
        config = request.run_config["ops"]["run_failover"]["config"]
        incident = config["incident"]
        assert request.job_name == "failover" and request.partition_key == ctx.name
        assert request.run_key == f"failover-{ctx.name}-{incident}"
        assert request.tags["pg_ops/topology"] == ctx.name
        assert config["detected_at"] <= sensor.state["ticks"][0] + 1 and config["force"] is False
        assert config.get("last_primary_lsn") is None  # the primary was dead before the first tick

        # The requested failover failed and nothing changed since: no new request (a storm of
        # failing runs helps nobody), one failover_failed alert instead.
        @dg.op
        def fails():
            raise RuntimeError("failover failed")

        @dg.job
        def failover_stand_in():
            fails()

        failover_stand_in.execute_in_process(instance=instance, raise_on_error=False,
                                             tags={"dagster/run_key": request.run_key})
        sensor.tick()
        sensor.tick()
        assert len(sensor.requests) == 1
        assert f"failover_failed/{ctx.state().primary}" in sensor.open_kinds()
        assert f"primary_down/{ctx.state().primary}" not in sensor.open_kinds()


def test_the_sensor_takes_over_in_its_tick_and_the_run_finishes_and_records_it(cluster):
    """failover.promote_in: sensor (the default): the tick that confirms the primary down fences
    it, promotes and routes before it returns, so the new primary takes writes before any run
    exists; its request carries what it did, and the run finishes it (the proof write, the
    record). A run for a take-over the record no longer shows (another change since) refuses."""
    from pg_ops.errors import Refused
    from pg_ops.operations.failover import TakeOver, finish

    ctx = cluster
    old, epoch = ctx.state().primary, ctx.state().epoch
    kill_member(ctx.platform, old)
    sensor = Sensor([ctx])
    sensor.tick()
    sensor.tick()
    assert len(sensor.requests) == 1
    taken = TakeOver.from_json(sensor.requests[0].run_config["ops"]["run_failover"]["config"]["taken_over"])
    state = ctx.state()
    assert (state.primary, state.epoch) == (taken.candidate, epoch + 1) and taken.old_primary == old
    assert state.lock is None and old in state.fenced
    assert ctx.probe([taken.candidate])[taken.candidate].writable  # before any run
    assert "promote" in taken.steps and "route the primary endpoint" in taken.steps
    change = finish(ctx, taken)
    assert change.new_primary == taken.candidate and "verify a write through the primary endpoint" in change.steps
    assert "promote" in change.steps and "the health sensor took over" in "; ".join(change.notes)
    with pytest.raises(Refused, match="no longer the cluster's state"):
        finish(ctx, TakeOver(**{**taken.__dict__, "epoch": taken.epoch - 1}))


def test_killed_primary_in_manual_mode_alerts_with_the_command(cluster):
    ctx = cluster
    manual = ClusterContext(ctx.spec.model_copy(update={
        "failover": ctx.spec.failover.model_copy(update={"mode": "manual"})}), ctx.platform, ctx.log)
    kill_member(ctx.platform, ctx.state().primary)
    sensor = Sensor([manual])
    with WebhookCapture() as hook:
        os.environ["PG_OPS_ALERT_WEBHOOK"] = hook.url
        try:
            sensor.tick()
            sensor.tick()
        finally:
            os.environ.pop("PG_OPS_ALERT_WEBHOOK", None)
    assert sensor.requests == []
    manual_alerts = [b for b in hook.bodies if b["kind"] == "manual_failover_needed"]
    assert len(manual_alerts) == 1
    assert f"pg-ops failover --cluster {ctx.name}" in manual_alerts[0]["summary"]
    assert manual_alerts[0]["severity"] == "critical"


def test_maintenance_mode_holds_the_failover_keeps_the_alert_and_ends_by_itself(cluster, capsys):
    import time

    from pg_ops.cli import main as cli_main
    from pg_ops.operations.maintenance import set_maintenance

    ctx = cluster
    on = ["maintenance", "on", "--for", "2h", "--reason", "K3s upgrade", "--cluster", ctx.name, "--in-process"]
    assert cli_main(on) == 0 and "maintenance mode on until" in capsys.readouterr().out
    assert cli_main(["status", "--cluster", ctx.name]) == 0
    assert "MAINTENANCE MODE until" in capsys.readouterr().out
    assert cli_main(["maintenance", "off", "--cluster", ctx.name, "--in-process"]) == 0
    assert ctx.state().maintenance_until == 0
    assert cli_main(["maintenance", "on", "--for", "2 hours", "--cluster", ctx.name]) == 1
    assert "write it as 90m, 2h, 1d" in capsys.readouterr().err

    set_maintenance(ctx, 7200, "disk work")
    primary = ctx.state().primary
    kill_member(ctx.platform, primary)
    sensor = Sensor([ctx])
    with WebhookCapture() as hook:
        os.environ["PG_OPS_ALERT_WEBHOOK"] = hook.url
        try:
            sensor.tick()
            sensor.tick()
            assert sensor.requests == []  # held
            held = [b for b in hook.bodies if b["kind"] == "manual_failover_needed"]
            assert len(held) == 1 and "maintenance mode until" in held[0]["summary"]
            assert "(disk work)" in held[0]["summary"] and held[0]["severity"] == "critical"
            shown = [e for e in sensor.events if isinstance(e, dg.AssetObservation)]
            assert shown and "MAINTENANCE MODE until" in shown[-1].description  # the UI's asset page
            set_maintenance(ctx, 1.0, "ends in a second")
            time.sleep(1.5)
            sensor.tick()
            sensor.tick()
        finally:
            os.environ.pop("PG_OPS_ALERT_WEBHOOK", None)
    [request] = sensor.requests  # expired: the failover is requested as without maintenance
    assert request.job_name == "failover" and request.partition_key == ctx.name


def test_a_hanging_webhook_does_not_break_the_sensor(cluster):
    ctx = cluster
    ctx.platform.stop_member(replicas(ctx)[0])
    with WebhookCapture("hang") as hook:
        os.environ["PG_OPS_ALERT_WEBHOOK"] = hook.url
        try:
            result = Sensor([ctx]).tick()
        finally:
            os.environ.pop("PG_OPS_ALERT_WEBHOOK", None)
    assert hook.attempts >= 1
    assert "member_down" in result.cursor


@pytest.mark.parametrize("mode", ["automatic"])
def test_sensor_skips_failover_decisions_while_a_topology_change_holds_the_lock(cluster, mode):
    from pg_ops.state import TopologyLock, update_state
    ctx = cluster
    update_state(ctx.platform.state_store(), lambda s: s.model_copy(
        update={"lock": TopologyLock(holder="switchover@x:1", operation="switchover", expires_at=9e9)}))
    kill_member(ctx.platform, ctx.state().primary)
    sensor = Sensor([ctx])
    sensor.tick()
    assert sensor.requests == []
    assert not any(v["kind"] in ("primary_down", "primary_unreachable") for v in sensor.state["alerts"].values())


@pytest.mark.parametrize("unknown", [None, "the WAL from the fork point 0/3000000 is gone (recycled)"])
def test_discarded_writes_are_alerted_once_counted_or_not(unknown):
    """M3 (issue 20): a rewind whose discarded writes could not be counted is alerted as such
    (critical, "could NOT be counted", the reason), not skipped; a counted one gives the counts."""
    import time
    from types import SimpleNamespace

    pairs = {"discarded.at": str(int(time.time())), "discarded.from": "0/3000000", "discarded.timeline": "1",
             **({"discarded.unknown": unknown} if unknown else
                {"discarded.to": "0/3000082", "discarded.bytes": "130", "discarded.transactions": "1"})}
    report = MemberReport.parse("".join(f"{k}={v}\n" for k, v in pairs.items()))
    ctx = SimpleNamespace(name="c", spec=SimpleNamespace(member_names=["c-0"]),
                          platform=SimpleNamespace(member_report=lambda name: report))
    memory = health.TickMemory()
    [alert] = health.reported_events(ctx, memory, ["c-0"])
    assert alert.kind == "writes_discarded" and alert.severity == "critical"
    if unknown:
        assert f"could NOT be counted ({unknown}): writes it acknowledged may be lost" in alert.summary
    else:
        assert "1 transactions, 130 bytes of WAL (0/3000000 - 0/3000082 on timeline 1)" in alert.summary
    assert health.reported_events(ctx, memory, ["c-0"]) == []  # once
