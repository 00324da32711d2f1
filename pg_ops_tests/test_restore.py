"""The real restore into a named target database on another real PostgreSQL server, and
every case it must refuse."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.backup import backup
from pg_ops.operations.restore import RestoreRefused, restore
from pg_ops_tests.support.backups import fill_app, primary_conn, wait_until_replayed


@pytest.fixture(scope="module")
def source(shared_cluster):
    ctx = shared_cluster
    fill_app(ctx)
    with primary_conn(ctx) as conn:
        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    wait_until_replayed(ctx, lsn)
    return ctx, backup(ctx)


@pytest.fixture(scope="module")
def target(source):
    """Another server (not a member of the cluster), and its admin password."""
    ctx, _ = source
    with ctx.platform.scratch_target("target") as other:
        yield other


def target_dsn(other, dbname: str) -> str:
    return make_conninfo(host=other.endpoint.host, port=other.endpoint.port, user=SUPERUSER, dbname=dbname)


@pytest.fixture
def target_password(target, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", target.password)
    return target.password


def counts(dsn: str) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {"items": conn.execute("select count(*) from items").fetchone()[0],
                "lines": conn.execute('select count(*) from "Sales"."Order lines"').fetchone()[0]}


def test_restore_into_a_new_database_on_another_server(source, target, target_password):
    ctx, manifest = source
    dsn = target_dsn(target, "app_restored")
    result = restore(ctx, manifest.id, dsn, confirm=ctx.name)
    assert result.source_database == "app" and not result.overwritten and "password" not in result.target
    rows = manifest.databases[0].row_counts
    assert counts(dsn) == {"items": rows["public.items"], "lines": rows["Sales.Order lines"]}


def test_a_non_empty_target_is_refused_unless_overwrite(source, target, target_password):
    ctx, manifest = source
    dsn = target_dsn(target, "app_busy")
    with psycopg.connect(target_dsn(target, "postgres"), autocommit=True) as conn:
        conn.execute("create database app_busy")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table precious (x int)")
    with pytest.raises(RestoreRefused, match="target database app_busy is not empty"):
        restore(ctx, manifest.id, dsn, confirm=ctx.name)
    with psycopg.connect(dsn, autocommit=True) as conn:  # untouched
        assert conn.execute("select count(*) from precious").fetchone()[0] == 0
    result = restore(ctx, manifest.id, dsn, confirm=ctx.name, overwrite=True)
    assert result.overwritten and counts(dsn)["items"] == manifest.databases[0].row_counts["public.items"]


def test_unsafe_requests_are_refused(source, target, target_password):
    ctx, manifest = source
    dsn = target_dsn(target, "app_x")
    with pytest.raises(RestoreRefused, match=f"needs --confirm {ctx.name}"):
        restore(ctx, manifest.id, dsn, confirm=None)
    with pytest.raises(RestoreRefused, match=f"needs --confirm {ctx.name}"):
        restore(ctx, manifest.id, dsn, confirm="other")
    with pytest.raises(RestoreRefused, match="carries a password"):
        restore(ctx, manifest.id, dsn + " password=hunter22", confirm=ctx.name)
    with pytest.raises(PgOpsError, match="backup 20000101T000000Z of cluster shared does not exist"):
        restore(ctx, "20000101T000000Z", dsn, confirm=ctx.name)


def test_the_live_primary_is_refused(source, monkeypatch):
    ctx, manifest = source
    monkeypatch.setenv("PGPASSWORD", ctx.admin_password())
    ep = ctx.endpoints()[ctx.state().primary]
    live = make_conninfo(host=ep.host, port=ep.port, user=SUPERUSER, dbname="app_copy")
    with pytest.raises(RestoreRefused, match=f"member of cluster {ctx.name}"):
        restore(ctx, manifest.id, live, confirm=ctx.name)
    with primary_conn(ctx, "postgres") as conn:
        assert conn.execute("select 1 from pg_database where datname = 'app_copy'").fetchone() is None


def test_cli_restore_runs_the_job(source, target, target_password, capsys):
    from pg_ops.cli import main as cli_main

    ctx, manifest = source
    dsn = target_dsn(target, "app_cli")
    assert cli_main(["restore", "--cluster", ctx.name, "--backup", manifest.id, "--target", dsn]) == 1
    assert "needs --confirm" in capsys.readouterr().err
    assert cli_main(["restore", "--cluster", ctx.name, "--backup", manifest.id, "--target", dsn,
                     "--confirm", ctx.name]) == 0
    assert "restored app" in capsys.readouterr().out
    assert counts(dsn)["items"] == manifest.databases[0].row_counts["public.items"]
