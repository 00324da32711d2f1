"""Backups of a real PostgreSQL cluster into a real filesystem store and a real SeaweedFS:
what is stored restores to the same rows, and every fault fails clearly with no manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import zstandard

from pg_ops import settings
from pg_ops.credentials import SUPERUSER
from pg_ops.operations.backup import BackupFailed, backup
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.retention import prune
from pg_ops.stores import catalog as cat
from pg_ops.stores.s3 import S3Credentials, S3Store
from pg_ops_tests.s3server import shared_server
from pg_ops_tests.support.backups import fill_app, primary_conn, tiny_tmpfs, wait_until_replayed, with_store
from pg_ops_tests.support.helpers import free_port

S3_SECRET = "s3-secret-that-must-not-leak"


def restore_counts(ctx: ClusterContext, store, manifest: cat.Manifest, database: str) -> dict[str, int]:
    """Download, check the sha256, decompress, pg_restore into a fresh database, count rows."""
    entry = next(d for d in manifest.databases if d.name == database)
    stored = store.get_bytes(entry.key)
    assert hashlib.sha256(stored).hexdigest() == entry.sha256 and len(stored) == entry.stored_bytes
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    assert len(raw) == entry.raw_bytes and raw[:5] == b"PGDMP"
    target = f"restored_{manifest.id.lower()}"
    with primary_conn(ctx, "postgres") as conn:
        conn.execute(f"drop database if exists {target}")
        conn.execute(f"create database {target}")
    ep = ctx.endpoints()[ctx.state().primary]
    with tempfile.NamedTemporaryFile(suffix=".dump") as fh:
        fh.write(raw)
        fh.flush()
        result = subprocess.run(
            [str(settings.pg_bin() / "pg_restore"), "--exit-on-error", "-h", ep.host, "-p", str(ep.port),
             "-U", SUPERUSER, "-d", target, fh.name],
            capture_output=True, text=True, env={**os.environ, "PGPASSWORD": ctx.admin_password()})
    assert result.returncode == 0, result.stderr
    counts = {}
    with primary_conn(ctx, target) as conn:
        for name in entry.row_counts or {}:
            schema, table = name.split(".", 1)
            counts[name] = conn.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0]
    with primary_conn(ctx, "postgres") as conn:
        conn.execute(f"drop database {target}")
    return counts


@pytest.fixture(scope="module")
def filled(shared_cluster):
    fill_app(shared_cluster)
    return shared_cluster


def test_backup_from_a_replica_restores_to_identical_row_counts(filled, caplog):
    caplog.set_level(logging.INFO, logger="pg_ops")
    ctx = filled
    manifest = backup(ctx)
    store = ctx.store()
    assert manifest.source != ctx.state().primary and manifest.source_role == "replica"
    assert manifest.server_version.startswith("18.") and manifest.timeline == 1 and manifest.lsn
    app = manifest.databases[0]
    assert app.name == "app" and app.row_counts["public.items"] == 20000
    assert app.row_counts['Sales.Order lines'] == 7 and "public.scratch" not in app.row_counts
    assert restore_counts(ctx, store, manifest, "app") == app.row_counts
    # Layout, states, and private objects on disk.
    folder = store.root / ctx.name / manifest.id
    assert sorted(p.name for p in folder.iterdir()) == ["app.dump.zst", "globals.sql.zst", "manifest.json",
                                                         "postgres.dump.zst"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())
    globals_sql = zstandard.ZstdDecompressor().decompressobj().decompress(
        store.get_bytes(manifest.globals.key)).decode()
    assert "CREATE ROLE app" in globals_sql and "SCRAM-SHA-256$" in globals_sql
    record = next(r for r in cat.list_backups(store, ctx.name) if r.id == manifest.id)
    assert record.status == "complete" and record.manifest == manifest
    assert cat.read_manifest(store, ctx.name, manifest.id).databases[0].sha256 == app.sha256
    assert any("MB/s" in r.getMessage() for r in caplog.records)
    passwords = ctx.credentials().as_plain_dict().values()
    logged = "\n".join(r.getMessage() for r in caplog.records) + manifest.model_dump_json()
    assert not any(p in logged for p in passwords)


def test_every_database_is_backed_up_and_restorable_except_the_excluded(filled):
    """`postgres` and a database created by hand after the spec was written are in the backup
    and restore to their rows; `backups.exclude` and pg_ops's own database are not, and the
    manifest and `pg-ops backups` say so."""
    from pg_ops.operations.retention import backups_report

    ctx = filled
    with primary_conn(ctx, "postgres") as conn:
        conn.execute("create table if not exists in_postgres (n int)")
        conn.execute("insert into in_postgres select generate_series(1, 11)")
        for name in ("handmade", "skipme"):
            conn.execute(f"create database {name}")
    with primary_conn(ctx, "handmade") as conn:
        conn.execute("create table shop (n int)")
        conn.execute("insert into shop select generate_series(1, 5)")
        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    wait_until_replayed(ctx, lsn)
    excluding = with_store(ctx, ctx.spec.backups.store.model_dump(), exclude=["skipme"])
    try:
        manifest = backup(excluding)
        store = ctx.store()
        names = [d.name for d in manifest.databases]
        assert names == ["app", "handmade", "postgres"]
        assert manifest.excluded_databases == ["pg_ops", "skipme"]
        assert restore_counts(ctx, store, manifest, "handmade") == {"public.shop": 5}
        assert restore_counts(ctx, store, manifest, "postgres") == {"public.in_postgres": 11}
        row = next(r for r in backups_report(excluding) if r["id"] == manifest.id)
        assert row["databases"] == names and row["excluded"] == ["pg_ops", "skipme"]
    finally:
        with primary_conn(ctx, "postgres") as conn:
            conn.execute("drop table in_postgres")
            for name in ("handmade", "skipme"):
                conn.execute(f"drop database {name}")


def test_backup_into_seaweedfs_without_fingerprints(filled, monkeypatch):
    ctx = filled
    server = shared_server()
    bucket = server.new_bucket()
    monkeypatch.setenv("PGOPS_T_S3_AK", server.access_key)
    monkeypatch.setenv("PGOPS_T_S3_SK", S3_SECRET)
    s3ctx = with_store(ctx, {"type": "s3", "bucket": bucket, "prefix": "nightly", "endpoint_url": server.endpoint,
                             "credentials_env": {"access_key": "PGOPS_T_S3_AK", "secret_key": "PGOPS_T_S3_SK"}},
                       fingerprint="none")
    manifest = backup(s3ctx)
    assert manifest.fingerprint == "none" and manifest.databases[0].row_counts is None
    keys = sorted(o["Key"] for o in server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"nightly/{ctx.name}/{manifest.id}/{n}" for n in ("app.dump.zst", "globals.sql.zst",
                                                                       "manifest.json", "postgres.dump.zst")]
    store = s3ctx.store()
    stored = store.get_bytes(manifest.databases[0].key)
    assert hashlib.sha256(stored).hexdigest() == manifest.databases[0].sha256
    assert [r.status for r in cat.list_backups(store, ctx.name)] == ["complete"]


def _find_pg_dump(database: str) -> psutil.Process | None:
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].endswith("pg_dump") and any(f"dbname={database}" in a for a in cmd):
            return proc
    return None


def test_pg_dump_killed_half_way_fails_without_a_manifest(filled, caplog):
    caplog.set_level(logging.INFO)
    ctx = filled
    with primary_conn(ctx) as conn:  # enough rows that the dump is still running when killed
        conn.execute("create table if not exists bulk as select g, repeat(md5(g::text), 8) as t "
                     "from generate_series(1, 150000) g")
        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    wait_until_replayed(ctx, lsn)
    killed = {}

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "pid" not in killed:
            proc = _find_pg_dump("app")
            if proc is not None:
                proc.send_signal(signal.SIGSTOP)  # it can no longer finish; then it dies
                killed["pid"] = proc.pid
                time.sleep(0.2)
                proc.send_signal(signal.SIGKILL)
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    with pytest.raises(BackupFailed, match=r"pg_dump of database app on .* killed by signal 9") as err:
        backup(ctx)
    thread.join()
    assert killed
    store = ctx.store()
    failed = cat.list_backups(store, ctx.name)[-1]
    assert failed.id in str(err.value) and failed.status == "incomplete"
    names = {k.rsplit("/", 1)[1] for k in failed.keys}
    assert names == {"globals.sql.zst", "error.json"}  # no manifest, no partial dump
    assert store.pending_uploads(f"{ctx.name}/") == []
    assert "killed by signal 9" in failed.error
    assert any("backup_failed" in r.getMessage() for r in caplog.records)  # the alert was logged
    # The night a backup failed, retention prunes nothing.
    assert prune(ctx, store).blocked
    with primary_conn(ctx) as conn:
        conn.execute("drop table bulk")


def test_no_streaming_replica_falls_back_to_the_primary(cluster):
    ctx = cluster
    primary = ctx.state().primary
    for name in ctx.spec.member_names:
        if name != primary:
            ctx.platform.stop_member(name)
    manifest = backup(ctx)
    assert manifest.source == primary and manifest.source_role == "primary"


def test_store_faults_fail_clearly_without_leaking_secrets(filled, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    ctx = filled
    monkeypatch.setenv("PGOPS_T_S3_AK", "AKIDTEST")
    monkeypatch.setenv("PGOPS_T_S3_SK", S3_SECRET)
    creds = {"credentials_env": {"access_key": "PGOPS_T_S3_AK", "secret_key": "PGOPS_T_S3_SK"}}
    unreachable = with_store(ctx, {"type": "s3", "bucket": "pgops-x", "endpoint_url":
                                   f"http://127.0.0.1:{free_port()}", **creds})
    with pytest.raises(Exception, match="S3 endpoint unreachable") as err:
        backup(unreachable)
    assert S3_SECRET not in str(err.value)
    server = shared_server()
    missing = with_store(ctx, {"type": "s3", "bucket": "pgops-missing-bucket", "endpoint_url": server.endpoint,
                               **creds})
    with pytest.raises(Exception, match="bucket does not exist"):
        backup(missing)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert S3_SECRET not in logged and ctx.admin_password() not in logged
    assert logged.count("backup_failed") >= 2  # an alert for each failed backup


def test_disk_full_fails_without_a_manifest(filled):
    ctx = filled
    with primary_conn(ctx) as conn:
        conn.execute("create table if not exists incompressible as select g, "
                     "gen_random_uuid()::text || gen_random_uuid()::text as t from generate_series(1, 60000) g")
        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    wait_until_replayed(ctx, lsn)
    try:
        with tiny_tmpfs("1m") as folder:
            full = with_store(ctx, {"type": "file", "path": str(folder / "backups")})
            with pytest.raises(BackupFailed, match="no space left on device"):
                backup(full)
            store = full.store()
            records = cat.list_backups(store, ctx.name)
            assert [r.status for r in records] == ["incomplete"]
            assert not any(k.endswith(cat.MANIFEST) for k in records[0].keys)
            assert store.pending_uploads(f"{ctx.name}/") == []
    finally:
        with primary_conn(ctx) as conn:
            conn.execute("drop table if exists incompressible")


def test_manifest_is_written_last(filled):
    """The manifest's timestamp is not older than any object it lists (file store mtimes)."""
    ctx = filled
    manifest = backup(ctx)
    store = ctx.store()
    folder = Path(store.root) / ctx.name / manifest.id
    manifest_mtime = (folder / cat.MANIFEST).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= manifest_mtime for p in folder.iterdir())
    assert json.loads((folder / cat.MANIFEST).read_text())["id"] == manifest.id


def test_s3_store_class_is_used_for_s3_specs(filled):
    s3ctx = with_store(filled, {"type": "s3", "bucket": "pgops-any", "endpoint_url": "http://127.0.0.1:1"})
    assert isinstance(s3ctx.store(), S3Store) and S3Credentials("a", "b") != S3Credentials("a", "c")


def test_cli_backup_runs_the_dagster_job_and_backups_lists_it(filled, capsys):
    from pg_ops.cli import main as cli_main

    assert cli_main(["backup", "--cluster", filled.name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "complete" and out["size"] > 0 and out["run_id"]
    assert cli_main(["backups", "--cluster", filled.name, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == out["id"]
    assert {"id", "started", "size", "duration", "status", "expires"} <= set(rows[0])
    assert {r["status"] for r in rows} <= {"complete", "incomplete", "verified", "failed"}
    assert cli_main(["backups", "--cluster", filled.name]) == 0
    text = capsys.readouterr().out
    assert out["id"] in text and "STATUS" in text

    # The run recorded both assets for today's partition, with numeric metadata to plot.
    from dagster import DagsterInstance

    from pg_ops.defs.backups import nightly_key, retained_key, today_partition
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(nightly_key(filled.name))
        assert event.asset_materialization.partition == today_partition()
        meta = event.asset_materialization.metadata
        assert meta["size_bytes"].value == out["size"] and meta["throughput_mb_per_s"].value > 0
        assert meta["backup_id"].value == out["id"]
        assert instance.get_latest_materialization_event(retained_key(filled.name)) is not None


def _member_of(proc: psutil.Process, ctx: ClusterContext) -> str:
    dbname_arg = next(a for a in proc.cmdline() if a.startswith("--dbname="))
    port = int(dbname_arg.split("port=")[1].split()[0])
    return next(n for n, ep in ctx.endpoints().items() if ep.port == port)


def test_recovery_conflict_on_the_replica_falls_back_to_the_primary(cluster, caplog):
    """A replica that must replay a VACUUM cancels the dump's snapshot (no feedback, no
    delay allowed): the dump is taken again from the primary and the backup completes."""
    caplog.set_level(logging.INFO)
    ctx = cluster
    fill_app(ctx, rows=200000)
    primary = ctx.state().primary
    replicas = [m for m in ctx.spec.member_names if m != primary]
    for name in replicas:
        ep = ctx.endpoints()[name]
        with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, dbname="postgres",
                             password=ctx.admin_password(), autocommit=True) as conn:
            conn.execute("alter system set max_standby_streaming_delay = 0")
            conn.execute("alter system set hot_standby_feedback = off")
            conn.execute("select pg_reload_conf()")
    paused = {}

    def provoke():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = _find_pg_dump("app")
            if proc is not None:
                proc.send_signal(signal.SIGSTOP)
                paused["member"] = _member_of(proc, ctx)
                try:
                    with primary_conn(ctx) as conn:
                        conn.execute("delete from items where id % 2 = 0")
                        conn.execute("vacuum items")
                        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
                    wait_until_replayed(ctx, lsn)
                finally:
                    proc.send_signal(signal.SIGCONT)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=provoke, daemon=True)
    thread.start()
    manifest = backup(ctx)
    thread.join()
    assert paused["member"] in replicas
    app = manifest.databases[0]
    assert app.source == primary
    assert app.row_counts["public.items"] == 100000  # the primary's data after the delete
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"replica {paused['member']} cancelled the dump" in messages
    assert store_has_no_partials(ctx.store(), ctx.name)


def store_has_no_partials(store, cluster: str) -> bool:
    return store.pending_uploads(f"{cluster}/") == []
