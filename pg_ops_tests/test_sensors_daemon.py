"""End to end through the real Dagster daemon: the health sensor runs on its own, POSTs a
member-down alert when a replica stops and its resolution after the restart, and its record
(the cursor) holds the failed-member detection time the service-level check reads."""


import dagster as dg
import pytest

from pg_ops.defs.health import health_sensor_cursor
from pg_ops.operations import slo
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.dagster import dagster_daemon, prepared_instance
from pg_ops_tests.support.helpers import kill_member, running_cluster, wait_for

pytestmark = pytest.mark.daemon
def test_daemon_alerts_on_a_stopped_replica_and_on_its_return(make_spec, pg_home):
    spec = make_spec("dmn", monitoring={"interval_seconds": 1})
    instance = prepared_instance(pg_home)
    with running_cluster(spec) as ctx, WebhookCapture() as hook, \
            dagster_daemon(pg_home, {"PG_OPS_ALERT_WEBHOOK": hook.url}):
        try:
            wait_for(lambda: len(health_sensor_cursor(instance, spec.name).ticks) >= 2, "two health sensor ticks",
                     timeout=120)
            victim = [m for m in spec.member_names if m != ctx.state().primary][0]
            ctx.platform.stop_member(victim)
            wait_for(lambda: ("member_down", victim) in hook.kinds(resolved=False), "member_down alert", timeout=60)
            ctx.platform.start_member(victim)
            wait_for(lambda: ("member_down", victim) in hook.kinds(resolved=True), "member_down resolved", timeout=90)
            history = health_sensor_cursor(instance, spec.name)
        except AssertionError:
            print((pg_home / "daemon.log").read_text()[-3000:])
            raise
        finally:
            instance.dispose()
    downs = [b for b in hook.bodies if b["kind"] == "member_down"]
    assert len(downs) == 2 and downs[0]["fired_at"] == downs[1]["fired_at"] and downs[1]["resolved_at"]
    password = ctx.admin_password()
    assert all(password not in str(b) for b in hook.bodies)
    detection = [d for d in history.detections if d.member == victim]
    assert detection and detection[-1].cluster == "dmn"
    level = slo.failed_member_detection(history, "dmn", sensor_interval=1)
    assert level.figure is not None and level.details["recorded_failures"] >= 1
    print(f"\nfailed-member detection through the daemon: {detection[-1].seconds:.2f} s; level: {level.summary}")


def test_daemon_fails_over_a_lost_primary_and_it_rejoins(make_spec, pg_home):
    """The whole loop: the primary member is lost (supervisor and postgres SIGKILLed); the
    sensor confirms it and takes over in its own tick (fence, promote, route: failover.promote_in
    sensor, the default), then requests the failover run, which the daemon launches and which
    finishes and records the change; writes resume through the primary endpoint; `deploy` brings
    the old primary back as a replica on the new timeline."""
    import psycopg

    from pg_ops.credentials import PG_OPS_DATABASE
    from pg_ops.operations.deploy import deploy
    from pg_ops.operations.status import cluster_status

    spec = make_spec("dfo", monitoring={"interval_seconds": 1})
    instance = prepared_instance(pg_home)
    with running_cluster(spec) as ctx, WebhookCapture() as hook, \
            dagster_daemon(pg_home, {"PG_OPS_ALERT_WEBHOOK": hook.url}):
        try:
            wait_for(lambda: len(health_sensor_cursor(instance, spec.name).ticks) >= 2, "two health sensor ticks",
                     timeout=120)
            old = ctx.state().primary
            kill_member(ctx.platform, old)
            wait_for(lambda: ctx.state().epoch == 2 and ctx.state().lock is None, "the failover", timeout=120)
            runs = wait_for(lambda: instance.get_runs(filters=dg.RunsFilter(job_name="failover")), "the failover run",
                            timeout=60)
            wait_for(lambda: instance.get_run_by_id(runs[0].run_id).is_finished, "the run to finish", timeout=60)
            assert len(runs) == 1 and instance.get_run_by_id(runs[0].run_id).is_success
            assert runs[0].tags["dagster/run_key"].startswith("failover-dfo-")
            # The run recorded the whole change: the sensor's steps and its own.
            records = instance.fetch_observations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(["deployment", "replication"]), asset_partitions=["dfo"]), limit=5).records
            change = next(r.asset_observation.metadata for r in records
                          if r.asset_observation.metadata.get("operation").value == "failover")
            steps = change["steps"].value
            assert "promote" in steps and "verify a write through the primary endpoint" in steps
            assert "the health sensor took over" in "; ".join(change["notes"].value)
            new = ctx.state().primary
            with psycopg.connect(ctx.platform.primary_dsn("postgres", PG_OPS_DATABASE),
                                 password=ctx.admin_password(), autocommit=True) as conn:
                conn.execute("create table after_failover (v int)")
                assert conn.execute("select current_setting('cluster_name')").fetchone()[0] == new
            deploy(ctx)
            status = cluster_status(ctx).to_dict()
            row = {m["name"]: m for m in status["members"]}
            assert row[old]["role"] == "replica" and row[old]["streaming"] and row[old]["timeline"] == 2
            assert status["writable_members"] == [new]
        except AssertionError:
            print((pg_home / "daemon.log").read_text()[-3000:])
            raise
        finally:
            instance.dispose()
    assert ("primary_down", old) in hook.kinds(resolved=False)
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="failover"))) == 1  # one incident, one run
