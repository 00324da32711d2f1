"""The second store (`backups.copy_to`, pg_ops/operations/copy.py) on a real cluster: the runs
copy every complete dump, base backup and WAL segment to SeaweedFS, the copy lists and drills
(a dump restore and a point-in-time recovery) from there, and still restores once the backup
store itself is gone."""

from __future__ import annotations

import json
import shutil

import psycopg
import pytest

from pg_ops.cli import main as cli_main
from pg_ops.credentials import SUPERUSER
from pg_ops.errors import SpecError
from pg_ops.operations.wal import archive_ref
from pg_ops.spec import load_spec
from pg_ops.stores import catalog as cat
from pg_ops.stores import wal_archive as wa
from pg_ops_tests.s3server import shared_server
from pg_ops_tests.support.helpers import running_cluster, spec_from, write_spec

AK, SK = "PGOPS_T_COPY_AK", "PGOPS_T_COPY_SK"


@pytest.fixture
def copied(pg_home, monkeypatch):
    server = shared_server()
    bucket = server.new_bucket()
    monkeypatch.setenv(AK, server.access_key)
    monkeypatch.setenv(SK, server.secret_key)
    copy_store = {"type": "s3", "bucket": bucket, "prefix": "second", "endpoint_url": server.endpoint,
                  "credentials_env": {"access_key": AK, "secret_key": SK}}
    spec = spec_from(write_spec(pg_home / "specs", "cp", postgres={"members": 2}, backups={
        "store": {"type": "file", "path": "backups"}, "wal": {"archive_timeout_seconds": 5},
        "copy_to": {"store": copy_store, "retention_days": 30}}))
    with running_cluster(spec) as ctx:
        yield ctx


def sql(ctx, query: str):
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "app"), password=ctx.admin_password(),
                         autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


def objects(store, prefix: str) -> dict[str, int]:
    return {o.key: o.size for o in store.list(prefix)}


def test_the_second_store_holds_every_complete_object_and_drills_restore_from_it(copied, capsys):
    ctx = copied
    sql(ctx, "create table kept (n int primary key); insert into kept select generate_series(1, 5000)")
    assert cli_main(["backup", "--cluster", ctx.name, "--in-process", "--json"]) == 0
    backup = json.loads(capsys.readouterr().out)
    assert backup["copy"].startswith("copied "), backup["copy"]
    assert " 0 objects" not in backup["copy"], backup["copy"]
    assert cli_main(["base-backup", "--cluster", ctx.name, "--in-process"]) == 0
    capsys.readouterr()

    source, copy = ctx.store(), ctx.copy_store()
    # Every object of the dump, its manifest included (hold, drill and error notes are the store's own).
    dump = {k: v for k, v in objects(source, cat.backup_prefix(ctx.name, backup["id"])).items()
            if not k.rsplit("/", 1)[-1].startswith(("hold-", "drill", "error"))}
    assert dump and objects(copy, cat.backup_prefix(ctx.name, backup["id"])) == dump
    # Every base backup object, and every WAL file from the oldest base backup on.
    ref = archive_ref(ctx, source)
    listing, copied_listing = wa.list_archive(source, ref), wa.list_archive(copy, ref)
    assert [b.id for b in copied_listing.base_backups] == [b.id for b in listing.base_backups]
    floor = min(b.begin_segno for b in listing.base_backups)
    copied_keys = {s.key for s in copied_listing.segments}
    assert copied_keys <= {s.key for s in listing.segments} and all(
        s.segment.segno >= floor for s in copied_listing.segments)
    base = listing.base_backups[-1]  # the WAL its consistency needs is there
    assert {s.key for s in listing.segments if base.begin_segno <= s.segment.segno <= base.end_segno} <= copied_keys

    assert cli_main(["backups", "--cluster", ctx.name, "--from", "copy", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["id"] == backup["id"] and row["status"] == "complete"

    assert cli_main(["restore-drill", "--cluster", ctx.name, "--from", "copy", "--in-process", "--json"]) == 0
    drilled = json.loads(capsys.readouterr().out)
    assert drilled["result"] == "passed" and drilled["backup_id"] == backup["id"]
    assert cli_main(["restore-drill", "--point-in-time", "--cluster", ctx.name, "--from", "copy",
                     "--in-process", "--json"]) == 0
    pitr = json.loads(capsys.readouterr().out)
    assert pitr["result"] == "passed" and pitr["store"] == "copy"
    assert wa.list_drills(copy, ref) and not wa.list_drills(source, ref)  # the copy's own record

    # The backup store is lost (its MinIO went with the cluster): the copy still restores.
    shutil.rmtree(source.describe())
    assert cli_main(["restore-drill", "--cluster", ctx.name, "--from", "copy", "--in-process", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "passed"
    assert cli_main(["backups", "--cluster", ctx.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # the primary store is empty now


def test_a_copy_in_the_store_itself_and_from_copy_without_one_are_refused(pg_home, capsys):
    path = write_spec(pg_home / "specs", "same", backups={"store": {"type": "file", "path": "b"},
                                                          "copy_to": {"store": {"type": "file", "path": "b/"}}})
    with pytest.raises(SpecError, match="backups.copy_to is backups.store itself"):
        load_spec(path)
    path.unlink()
    write_spec(pg_home / "specs", "nocopy")
    assert cli_main(["restore-drill", "--cluster", "nocopy", "--from", "copy"]) == 1
    assert "has no second store: --from copy needs backups.copy_to" in capsys.readouterr().err
