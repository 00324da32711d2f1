"""Upkeep between topology changes. Sync mode is kept right by the health sensor: relaxed (with
an alert) while no standby streams, tightened again when one does; sync-strict never relaxes.
Also the status rows the exporter reads (the dead man's switch)."""

import time

import pytest

from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.operations.deploy import deploy
from pg_ops.operations.health import TickMemory, watch_cluster
from pg_ops.postgres.session import with_connection
from pg_ops_tests.support.helpers import kill_member, running_cluster


def setting(ctx, member, name="synchronous_standby_names"):
    return with_connection(ctx.endpoints()[member], "postgres", ctx.admin_password(),
                           lambda c: c.execute(f"show {name}").fetchone()[0], timeout=5)


def kinds(watch):
    return {a.kind for a in watch.alerts}


@pytest.mark.parametrize("mode", ["sync", "sync-strict"])
def test_sync_mode_relaxes_only_when_allowed_and_tightens_again(make_spec, mode):
    spec = make_spec("m", postgres={"members": 3, "replication": mode}, monitoring={"interval_seconds": 1})
    with running_cluster(spec) as ctx:
        primary = ctx.state().primary
        replicas = [m for m in ctx.spec.member_names if m != primary]
        assert setting(ctx, primary).startswith("ANY 1 (") and sorted(ctx.state().sync_set) == replicas
        for replica in replicas:
            kill_member(ctx.platform, replica)
        # The first tick without a standby does not relax yet: right after a failover the
        # standbys reconnect within a second or two, and relaxing then would give up RPO 0.
        watch = watch_cluster(ctx, TickMemory())
        assert setting(ctx, primary).startswith("ANY 1 (") and "sync_relaxed" not in kinds(watch)
        deadline = time.monotonic() + 8  # relax_after is 2 intervals: 2 s here
        while time.monotonic() < deadline and "sync_relaxed" not in kinds(watch):
            time.sleep(0.5)
            watch = watch_cluster(ctx, watch.memory)
        if mode == "sync":
            assert setting(ctx, primary) == "" and "sync_relaxed" in kinds(watch)
            assert ctx.state().sync_set == ()  # nobody is known to hold the relaxed commits
        else:
            assert setting(ctx, primary).startswith("ANY 1 (") and "sync_relaxed" not in kinds(watch)
        deploy(ctx)
        watch = watch_cluster(ctx, watch.memory)
        assert setting(ctx, primary).startswith("ANY 1 (") and "sync_relaxed" not in kinds(watch)
        assert sorted(ctx.state().sync_set) == replicas


def test_health_tick_is_recorded_for_the_exporter(make_spec):
    with running_cluster(make_spec("tick")) as ctx:
        watch_cluster(ctx, TickMemory())
        rows = with_connection(ctx.endpoints()[ctx.state().primary], "postgres", ctx.admin_password(),
                               lambda c: c.execute("select key, value from status").fetchall(),
                               dbname=PG_OPS_DATABASE, timeout=5)
        assert ("health_tick", 3.0) in rows


def test_failover_is_recorded_for_the_exporter(make_spec):
    from pg_ops.operations.failover import failover

    with running_cluster(make_spec("rec")) as ctx:
        kill_member(ctx.platform, ctx.state().primary)
        change = failover(ctx)
        rows = dict(with_connection(ctx.endpoints()[change.new_primary], "postgres", ctx.admin_password(),
                                    lambda c: c.execute("select key, value from status").fetchall(),
                                    dbname=PG_OPS_DATABASE, timeout=5))
        assert rows["failover"] == change.epoch == 2


def test_backup_and_drill_are_recorded_for_the_exporter(make_spec):
    from pg_ops.operations.backup import backup
    from pg_ops.operations.drill import drill

    with running_cluster(make_spec("bk")) as ctx:
        manifest = backup(ctx)
        report = drill(ctx, manifest.id)
        rows = dict(with_connection(ctx.endpoints()[ctx.state().primary], "postgres", ctx.admin_password(),
                                    lambda c: c.execute("select key, value from status").fetchall(),
                                    dbname=PG_OPS_DATABASE, timeout=5))
        assert rows["backup_complete"] == manifest.stored_bytes
        assert rows["drill_success"] == report.restored_bytes > 0
