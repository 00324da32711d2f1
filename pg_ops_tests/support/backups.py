"""Data to back up and stores to put it in: what the backup, drill and restore tests share."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from pg_ops.credentials import SUPERUSER
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec
from pg_ops.stores import catalog as cat
from pg_ops_tests.support.helpers import wait_for


def primary_conn(ctx: ClusterContext, dbname: str = "app") -> psycopg.Connection:
    return psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, dbname), password=ctx.admin_password(),
                           autocommit=True)


def fill_app(ctx: ClusterContext, rows: int = 20000) -> None:
    with primary_conn(ctx) as conn:
        conn.execute("create table if not exists items (id bigint primary key, body text not null)")
        conn.execute("insert into items select g, md5(g::text) || md5(random()::text) from generate_series(1, %s) g "
                     "on conflict do nothing", (rows,))
        conn.execute('create schema if not exists "Sales"')
        conn.execute('create table if not exists "Sales"."Order lines" (n int)')
        conn.execute('insert into "Sales"."Order lines" select generate_series(1, 7)')
        conn.execute("create unlogged table if not exists scratch (x int)")
        lsn = conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]
    wait_until_replayed(ctx, lsn)


def wait_until_replayed(ctx: ClusterContext, lsn: str) -> None:
    from pg_ops.postgres.lsn import Lsn

    target = Lsn.parse(lsn)
    replicas = [m for m in ctx.spec.member_names if m != ctx.state().primary]
    wait_for(lambda: all((p.replay_lsn or 0) >= target for p in ctx.probe(replicas).values()),
             "replicas replayed the test data")


def with_store(ctx: ClusterContext, store_spec: dict, **backups) -> ClusterContext:
    raw = ctx.spec.model_dump()
    raw["backups"] = {**raw["backups"], **backups, "store": store_spec}
    return ClusterContext(ClusterSpec.model_validate(raw), ctx.platform, ctx.log)


def copy_backup(ctx, manifest: cat.Manifest, seconds: int) -> str:
    """A copy of a complete backup under a later id (file store), to corrupt."""
    store = ctx.store()
    new_id = cat.new_backup_id(cat.backup_time(manifest.id) + timedelta(seconds=seconds))
    src, dst = store.root / ctx.name / manifest.id, store.root / ctx.name / new_id
    shutil.copytree(src, dst)
    (dst / cat.DRILL).unlink(missing_ok=True)
    text = (dst / cat.MANIFEST).read_text().replace(manifest.id, new_id)
    (dst / cat.MANIFEST).write_text(text)
    return new_id


@contextlib.contextmanager
def tiny_tmpfs(size: str = "2m"):
    """A small filesystem that fills up for real (root can mount tmpfs here)."""
    folder = Path(tempfile.mkdtemp(prefix="pg-ops-full-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()
