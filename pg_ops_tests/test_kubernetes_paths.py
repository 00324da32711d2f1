"""The health, backup and restore-drill operations on the Kubernetes platform: the fake API
server with real PostgreSQL members behind its pods, the same operations the local platform
runs in test_health.py, test_backup.py and test_drill.py (which cover their faults in depth)."""

from __future__ import annotations

import pytest

from pg_ops.operations import health
from pg_ops.operations.backup import backup, open_store
from pg_ops.operations.deploy import deploy
from pg_ops.operations.drill import drill
from pg_ops.stores import catalog as cat
from pg_ops_tests.helpers import lose_member, recover_member, wait_for
from pg_ops_tests.test_backup import fill_app

# Every case here runs on the shared cluster's Kubernetes instance.
pytestmark = pytest.mark.parametrize("shared_any_cluster", ["kubernetes"], indirect=True)


def replicas(ctx) -> list[str]:
    return [m for m in ctx.spec.member_names if m != ctx.state().primary]


def test_health_pass_is_clean_and_measures_storage_through_pod_exec(shared_any_cluster):
    ctx = shared_any_cluster
    result = health.health_pass(ctx)
    assert result.assessment.alerts == []
    rows = {m["name"]: m for m in result.status["members"]}
    assert result.status["platform"] == "kubernetes"
    for name in replicas(ctx):
        assert rows[name]["streaming"] is True and rows[name]["replication_state"] == "streaming"
        assert rows[name]["lag_bytes"] is not None
    for row in rows.values():
        assert 0 < row["storage_ratio"] < 1 and row["data_dir_total_bytes"] > row["data_dir_used_bytes"] > 0
        assert row["connections"] >= 1


def test_backup_from_a_replica_and_its_drill_pass(shared_any_cluster):
    ctx = shared_any_cluster
    fill_app(ctx, rows=5000)
    manifest = backup(ctx)
    assert manifest.source in replicas(ctx)  # backups.source: replica, reached at its pod
    app = next(d for d in manifest.databases if d.name == "app")
    assert app.row_counts["public.items"] == 5000
    report = drill(ctx, manifest.id)
    assert report.result == "passed" and report.databases["app"]["count_problems"] == []
    assert report.databases["app"]["tables_counted"] == len(app.row_counts)
    record = next(r for r in cat.list_backups(open_store(ctx), ctx.name) if r.id == manifest.id)
    assert record.status == "verified"


def test_lost_replica_pod_is_reported_down_and_clears_once_rescheduled(shared_any_cluster):
    ctx = shared_any_cluster
    replica = replicas(ctx)[0]
    lose_member(ctx, replica)  # its node is gone: the pod stays Pending
    try:
        result = health.health_pass(ctx)
        down = [a for a in result.assessment.alerts if a.kind == "member_down"]
        assert [a.details["member"] for a in down] == [replica] and down[0].severity == "warning"
        row = next(m for m in result.status["members"] if m["name"] == replica)
        assert row["role"] == "down" and row["storage_ratio"] is None  # no pod to exec into: unknown
    finally:
        recover_member(ctx, replica)
    deploy(ctx)  # waits for the pod, labels it for the Services
    wait_for(lambda: health.health_pass(ctx).assessment.alerts == [], "no alert once the pod runs again", timeout=60)
