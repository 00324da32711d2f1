"""Restore drills on real PostgreSQL and real stores: a good backup passes and becomes
verified; every corruption is caught with its reason and marks the backup failed; the
scratch target is always cleaned up."""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import timedelta

import psutil
import pytest

from pg_ops.errors import PgOpsError
from pg_ops.operations.backup import backup
from pg_ops.operations.drill import DrillFailed, drill
from pg_ops.stores import catalog as cat
from pg_ops_tests.s3server import shared_server
from pg_ops_tests.support.backups import copy_backup, fill_app, primary_conn, wait_until_replayed, with_store


@pytest.fixture(scope="module")
def backed_up(shared_cluster):
    ctx = shared_cluster
    fill_app(ctx)
    with primary_conn(ctx) as conn:
        conn.execute("create index if not exists items_body on items (body)")
        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    wait_until_replayed(ctx, lsn)
    manifest = backup(ctx)
    return ctx, manifest


def scratch_leftovers(ctx) -> list[str]:
    """Scratch clusters' folders, drill work folders, and postgres processes of scratch clusters."""
    from pg_ops import settings

    home = settings.home()
    left = [p.name for p in (home / "clusters").iterdir() if p.name.startswith("drill-")]
    left += [p.name for p in (home / "drills").iterdir()] if (home / "drills").exists() else []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "postgres" in cmd and f"{home}/clusters/drill-" in cmd:
            left.append(f"pid {proc.pid}")
    return left


def test_a_good_backup_passes_and_becomes_verified(backed_up, caplog):
    caplog.set_level(logging.INFO)
    ctx, manifest = backed_up
    report = drill(ctx, manifest.id)
    assert report.result == "passed" and report.backup_id == manifest.id
    app = report.databases["app"]
    assert app["count_problems"] == [] and app["tables_counted"] == len(manifest.databases[0].row_counts)
    assert app["indexes_checked"] >= 2 and app["index_problems"] == []  # items_pkey, items_body
    assert report.restored_bytes == manifest.raw_bytes and report.restore_seconds > 0
    # The only errors ignored are the proven-harmless ones: the scratch server's own roles.
    assert report.ignored_errors and all('already exists' in e and ('"postgres"' in e or '"replicator"' in e)
                                         for e in report.ignored_errors)
    store = ctx.store()
    record = next(r for r in cat.list_backups(store, ctx.name) if r.id == manifest.id)
    assert record.status == "verified" and record.drill["result"] == "passed"
    assert not any(k.rsplit("/", 1)[1].startswith(cat.HOLD_PREFIX) for k in record.keys)
    assert scratch_leftovers(ctx) == []


@pytest.mark.parametrize("damage,reason", [
    ("flip", "sha256"),
    ("truncate", "truncated"),
    ("missing", "missing from the store"),
    ("counts", "rows restored, the manifest says"),
    ("other_database", "the manifest says"),
])
def test_corruption_is_caught_and_marks_the_backup_failed(backed_up, damage, reason, caplog):
    caplog.set_level(logging.INFO)
    ctx, manifest = backed_up
    offset = ["flip", "truncate", "missing", "counts", "other_database"].index(damage) + 1
    backup_id = copy_backup(ctx, manifest, offset)
    store = ctx.store()
    folder = store.root / ctx.name / backup_id
    dump_file = folder / "app.dump.zst"
    if damage == "flip":
        data = bytearray(dump_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump_file.write_bytes(bytes(data))
    elif damage == "truncate":
        dump_file.write_bytes(dump_file.read_bytes()[: dump_file.stat().st_size // 2])
    elif damage == "missing":
        dump_file.unlink()
    else:
        raw = json.loads((folder / cat.MANIFEST).read_text())
        if damage == "counts":
            raw["databases"][0]["row_counts"]["public.items"] += 1
        else:
            raw["databases"][0]["name"] = "billing"
        (folder / cat.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(DrillFailed, match=reason) as err:
        drill(ctx, backup_id)
    assert backup_id in str(err.value)
    record = next(r for r in cat.list_backups(store, ctx.name) if r.id == backup_id)
    assert record.status == "failed" and reason in record.drill["reason"]
    assert any("restore_drill_failed" in r.getMessage() for r in caplog.records)
    assert scratch_leftovers(ctx) == []
    shutil.rmtree(folder)


def test_unknown_or_incomplete_backup_is_refused(backed_up):
    ctx, manifest = backed_up
    with pytest.raises(PgOpsError, match="backup 20000101T000000Z of cluster shared does not exist"):
        drill(ctx, "20000101T000000Z")
    store = ctx.store()
    incomplete = cat.new_backup_id(cat.backup_time(manifest.id) + timedelta(seconds=30))
    store.put_bytes(cat.object_key(ctx.name, incomplete, cat.GLOBALS), b"x")
    with pytest.raises(PgOpsError, match="is incomplete"):
        drill(ctx, incomplete)
    store.delete([cat.object_key(ctx.name, incomplete, cat.GLOBALS)])


def test_drill_from_seaweedfs(backed_up, monkeypatch):
    ctx, _ = backed_up
    server = shared_server()
    monkeypatch.setenv("PGOPS_T_S3_AK", server.access_key)
    monkeypatch.setenv("PGOPS_T_S3_SK", server.secret_key)
    s3ctx = with_store(ctx, {"type": "s3", "bucket": server.new_bucket(), "endpoint_url": server.endpoint,
                             "credentials_env": {"access_key": "PGOPS_T_S3_AK", "secret_key": "PGOPS_T_S3_SK"}})
    manifest = backup(s3ctx)
    report = drill(s3ctx)  # the newest complete backup
    assert report.backup_id == manifest.id and report.result == "passed"
    assert [r.status for r in cat.list_backups(s3ctx.store(), ctx.name)] == ["verified"]
    assert scratch_leftovers(ctx) == []


def test_cli_restore_drill_runs_the_job_and_reports(backed_up, capsys):
    from pg_ops.cli import main as cli_main

    ctx, manifest = backed_up
    assert cli_main(["restore-drill", "--cluster", ctx.name, "--backup", manifest.id, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backup_id"] == manifest.id and report["result"] == "passed" and report["run_id"]
    assert cli_main(["restore-drill", "--cluster", ctx.name]) == 0
    text = capsys.readouterr().out
    assert "PASSED" in text and "indexes checked" in text
    assert cli_main(["restore-drill", "--cluster", ctx.name, "--backup", "20000101T000000Z"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert scratch_leftovers(ctx) == []


def test_drill_checks_read_the_store(backed_up):
    import dagster as dg

    from pg_ops.defs import drills
    from pg_ops.defs.resources import PgOpsResource
    from pg_ops.operations.drill import drill_status

    ctx, manifest = backed_up
    drill(ctx, manifest.id)
    status = drill_status(ctx)
    assert status["last_passed_age_days"] is not None and status["last_passed_age_days"] < 0.01
    defs = dg.Definitions.merge(drills.build([ctx.spec]), dg.Definitions(
        resources={"pg_ops": PgOpsResource(clusters_path=os.environ["PG_OPS_CLUSTERS"])}))
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def(drills.CHECKS_JOB).execute_in_process(instance=instance)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations[drills.CHECK_RECENT].passed
    restores = evaluations[drills.CHECK_RESTORES]
    assert restores.passed and restores.metadata["backup_id"].value == manifest.id
    assert restores.metadata["recovery_seconds"].value > 0


def test_the_drill_resets_the_scratch_superuser_without_sending_its_password(pg_home):
    """The drill's globals end by giving the scratch server's postgres its password back: the
    statement psql runs holds a SCRAM-SHA-256 verifier, so a server logging every statement
    never sees the password, and the password works afterwards."""
    import secrets as pysecrets

    from pg_ops.credentials import generate_password
    from pg_ops.operations.drill import superuser_reset
    from pg_ops.platforms.local import LocalScratchServer
    from pg_ops.postgres import admin, dump
    from pg_ops.postgres.session import with_connection
    from pg_ops_tests.support.helpers import wait_for

    server = LocalScratchServer(f"drill-{pysecrets.token_hex(4)}", generate_password())
    try:
        server.start()
        server.wait_ready()
        target = server.target("scratch for the test")
        def run(query):
            return with_connection(target.endpoint, "postgres", target.password,
                                   lambda conn: (cur := conn.execute(query)).description and cur.fetchall(),
                                   timeout=10)
        run("alter system set log_statement = 'all'")
        run("select pg_reload_conf()")
        wait_for(lambda: run("show log_statement") == [("all",)], "log_statement = all on the scratch server")
        # As the source's globals do: postgres gets another (hashed) password, then the reset.
        other = generate_password()
        globals_sql = with_connection(target.endpoint, "postgres", target.password,
                                      lambda conn: admin.set_password_statement(conn, "postgres", other), timeout=10)
        reset = superuser_reset(target)
        assert target.password not in reset and "SCRAM-SHA-256$" in reset
        result = dump.psql_script(target.endpoint, "postgres", target.password, "postgres",
                                  f"{globals_sql}\n{reset}\n".encode())
        assert result.ok, result.errors
        assert run("select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'postgres'") == [(True,)]
        log = server.platform.log_path(server.member).read_text(errors="replace")
        assert "statement: alter role \"postgres\" with password 'SCRAM-SHA-256$" in log  # it was logged
        assert target.password not in log and other not in log
    finally:
        server.remove()
