"""Service-level checks on a real cluster, through Dagster's asset checks."""

import dataclasses

import dagster as dg

from pg_ops.defs import failover as failover_defs
from pg_ops.defs import health as health_defs
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import slo
from pg_ops.operations.health import Detection, SensorCursor
from pg_ops.postgres.load import SCRATCH_DATABASE
from pg_ops.postgres.session import with_connection


def sql(ctx, member, query):
    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None
    return with_connection(ctx.endpoints()[member], "postgres", ctx.admin_password(), run, timeout=10)


def test_service_level_checks_record_their_figures(shared_cluster):
    ctx = shared_cluster
    defs = dg.Definitions.merge(health_defs.build([ctx.spec]), failover_defs.build([ctx.spec]),
                                dg.Definitions(resources={"pg_ops": PgOpsResource()}))
    job = defs.resolve_job_def(health_defs.SLO_JOB)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    # failed_member_detection is the health sensor's to evaluate (pg_ops_tests/test_runs.py).
    assert set(evaluations) == set(health_defs.CHECKS) - {health_defs.DETECTION_CHECK}
    for name in ("connect_time", "concurrent_connections", "data_consistency", "query_latency_p95"):
        ev = evaluations[name]
        assert ev.passed, (name, ev.metadata["summary"].value)
        assert ev.metadata["figure"].value is not None
    assert evaluations["concurrent_connections"].metadata["figure"].value >= 100
    assert evaluations["connect_time"].metadata["figure"].value < 5
    assert evaluations["query_latency_p95"].metadata["transactions"].value > 0
    primary = ctx.state().primary
    assert sql(ctx, primary, f"select count(*) from pg_database where datname = '{SCRATCH_DATABASE}'") == [(0,)]
    assert sql(ctx, primary,
               "select count(*) from pg_stat_activity where application_name like 'pg_ops-slo-%'") == [(0,)]


def test_consistency_fails_when_a_replica_stops_replaying(shared_cluster):
    ctx = shared_cluster
    replica = [m for m in ctx.spec.member_names if m != ctx.state().primary][0]
    sql(ctx, replica, "select pg_wal_replay_pause()")
    try:
        level = slo.data_consistency(ctx, timeout=2)
    finally:
        sql(ctx, replica, "select pg_wal_replay_resume()")
    assert not level.passed and level.details["missing"] == [replica]
    assert slo.data_consistency(ctx).passed


def test_detection_level_from_the_sensor_record():
    now = 10_000.0
    def detection(cluster, member, seconds):
        return Detection(cluster=cluster, member=member, seen_down_at=now - 20, last_seen_up_at=now - 20 - seconds,
                         seconds=seconds)

    history = SensorCursor(ticks=[now - 15, now - 10, now - 5], probe_seconds=0.1,
                           detections=[detection("c", "c-1", 5.2), detection("other", "o-1", 99)])
    level = slo.failed_member_detection(history, "c", now=now)
    assert level.passed and level.figure == 5.2 and level.details["recorded_failures"] == 1
    slow = dataclasses.replace(history, detections=[detection("c", "c-2", 41.0)])
    assert not slo.failed_member_detection(slow, "c", now=now).passed
    stale = slo.failed_member_detection(history, "c", now=now + 600)
    assert not stale.passed and "not watching" in stale.summary
