"""Backup stores against a real filesystem and a real SeaweedFS S3 server: objects appear
only when committed, failed uploads leave nothing behind, faults fail with a clear reason."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from pg_ops.spec import S3StoreSpec
from pg_ops.stores import StoreError, s3_credentials
from pg_ops.stores.filesystem import FileStore
from pg_ops.stores.s3 import MAX_PARTS, MIB, S3Credentials, S3Store, part_size
from pg_ops_tests.s3server import admin_identity, seaweedfs, shared_server, stop_shared_server
from pg_ops_tests.support.backups import tiny_tmpfs
from pg_ops_tests.support.helpers import free_port

SECRET = "super-secret-key-do-not-leak"


@pytest.fixture(scope="module")
def s3():
    return shared_server()


def s3_store(server, bucket: str, **overrides) -> S3Store:
    spec = S3StoreSpec(type="s3", bucket=bucket, prefix=overrides.pop("prefix", "pfx"), endpoint_url=server.endpoint,
                       **overrides)
    return S3Store(spec, S3Credentials(server.access_key, server.secret_key))


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(tmp_path / "store")
    server = request.getfixturevalue("s3")
    return s3_store(server, server.new_bucket())


def test_committed_objects_round_trip_and_list(store):
    store.check()
    data = os.urandom(3 * MIB)
    with store.open_writer("c/20261126T020000Z/app.dump.zst") as writer:
        for i in range(0, len(data), 65536):
            writer.write(data[i:i + 65536])
        assert store.list("c/") == []  # not visible before commit
        writer.commit()
    store.put_bytes("c/20261126T020000Z/manifest.json", b"{}")
    keys = [o.key for o in store.list("c/")]
    assert keys == ["c/20261126T020000Z/app.dump.zst", "c/20261126T020000Z/manifest.json"]
    assert store.get_bytes("c/20261126T020000Z/app.dump.zst") == data
    assert b"".join(store.iter_chunks("c/20261126T020000Z/app.dump.zst")) == data
    assert store.list("c/20261126T020000Z/app")[0].size == len(data)
    store.delete(keys)
    assert store.list("c/") == []
    with pytest.raises(StoreError, match="does not exist"):
        store.get_bytes("c/20261126T020000Z/app.dump.zst")


def test_base_backups_starting_in_the_same_second_get_folders_of_their_own(store, monkeypatch):
    """Two base backups of one cluster started in the same second (the archive sensor's first and
    a `pg-ops base-backup`): the second finds the first's claim in that second's folder, takes
    its own back and gets the next second; the first keeps its folder."""
    from pg_ops.operations import wal
    from pg_ops.stores import wal_archive as wa

    monkeypatch.setattr(wal.time, "sleep", lambda seconds: None)
    ref = wa.ArchiveRef("c", "7300000000000000001")
    second = datetime(2026, 12, 6, 20, 0, 0, 250000, tzinfo=UTC)
    clock = iter([second, second, second + timedelta(seconds=1)])
    first = wal.claim_backup_id(store, ref, now=lambda: second)
    again = wal.claim_backup_id(store, ref, now=lambda: next(clock))
    assert (first, again) == ("20261206T200000", "20261206T200001")
    claims = [o.key for o in store.list(f"{ref.root}/base/")]
    assert len(claims) == 2 and claims[0].startswith(f"{ref.root}/base/{first}/claim-")
    assert claims[1].startswith(f"{ref.root}/base/{again}/claim-")


def test_large_stream_uses_growing_multipart_parts(s3):
    store = s3_store(s3, s3.new_bucket())
    data = os.urandom(20 * MIB + 12345)  # 8 + 8 MiB parts and a short last one
    with store.open_writer("c/1/big") as writer:
        writer.write(data)
        uploads = store.pending_uploads("c/")
        assert [u.key for u in uploads] == ["c/1/big"]  # a multipart upload is in progress
        writer.commit()
    assert store.pending_uploads("c/") == []
    assert store.get_bytes("c/1/big") == data


def test_part_size_covers_terabytes_within_the_part_limit():
    assert part_size(1) >= 5 * MIB  # S3's minimum part size
    assert part_size(1000) == part_size(1) and part_size(1001) == 2 * part_size(1)
    assert sum(part_size(n) for n in range(1, MAX_PARTS + 1)) > 5 * 1024**4


def test_failed_upload_leaves_nothing_behind(store):
    data = os.urandom(17 * MIB)  # S3: two parts uploaded before the failure
    with pytest.raises(RuntimeError, match="dump died"):
        with store.open_writer("c/2/app.dump.zst") as writer:
            writer.write(data)
            raise RuntimeError("dump died")
    assert store.list("c/") == []
    assert store.pending_uploads("c/") == []


def test_pending_uploads_are_listed_and_aborted(store):
    writer = store.open_writer("c/3/app.dump.zst")
    writer.write(os.urandom(9 * MIB))  # S3: one part uploaded, then the process "dies"
    pending = store.pending_uploads("c/")
    assert [p.key for p in pending] == ["c/3/app.dump.zst"]
    assert datetime.now(UTC) - pending[0].started < timedelta(hours=1)
    store.abort_upload(pending[0])
    assert store.pending_uploads("c/") == [] and store.list("c/") == []


def test_file_store_objects_are_private(tmp_path):
    store = FileStore(tmp_path / "store")
    store.put_bytes("c/1/globals.sql.zst", b"role hashes", private=True)
    store.put_bytes("c/1/app.dump.zst", b"data")
    for name in ("globals.sql.zst", "app.dump.zst"):
        assert (tmp_path / "store/c/1" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "store/c/1").stat().st_mode & 0o777 == 0o700


def test_file_store_rejects_keys_outside_it(tmp_path):
    store = FileStore(tmp_path / "store")
    with pytest.raises(StoreError, match="invalid object key"):
        store.put_bytes("../escape", b"x")


def test_server_side_encryption_is_requested(s3):
    store = s3_store(s3, s3.new_bucket(), server_side_encryption="AES256")
    store.put_bytes("c/1/globals.sql.zst", b"x", private=True)
    with store.open_writer("c/1/app.dump.zst") as writer:
        writer.write(os.urandom(9 * MIB))
        writer.commit()
    for key in ("globals.sql.zst", "app.dump.zst"):
        head = store.client.head_object(Bucket=store.bucket, Key=f"pfx/c/1/{key}")
        assert head.get("ServerSideEncryption") == "AES256"


def test_disk_full_fails_clearly_and_leaves_no_partial_file():
    with tiny_tmpfs("2m") as folder:
        store = FileStore(folder / "store")
        with pytest.raises(StoreError, match="no space left on device"):
            with store.open_writer("c/1/app.dump.zst") as writer:
                for _ in range(8):
                    writer.write(os.urandom(MIB))
                writer.commit()
        assert store.list("c/") == [] and store.pending_uploads("c/") == []


def test_s3_unreachable_fails_clearly(s3):
    spec = S3StoreSpec(type="s3", bucket="bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    store = S3Store(spec, S3Credentials("AKIDEXAMPLE", SECRET))
    with pytest.raises(StoreError, match="S3 endpoint unreachable") as err:
        store.check()
    assert SECRET not in str(err.value) and "s3://bucket" in str(err.value)


def test_missing_bucket_fails_clearly(s3):
    store = s3_store(s3, "pgops-no-such-bucket")
    with pytest.raises(StoreError, match="bucket does not exist"):
        store.check()


def test_credentials_come_from_the_named_env_vars(monkeypatch):
    spec = S3StoreSpec.model_validate({"type": "s3", "bucket": "b", "credentials_env": {
        "access_key": "PGOPS_T_AK", "secret_key": "PGOPS_T_SK"}})
    monkeypatch.setenv("PGOPS_T_AK", "ak")
    monkeypatch.delenv("PGOPS_T_SK", raising=False)
    with pytest.raises(StoreError, match="PGOPS_T_SK is not set"):
        s3_credentials(spec)
    monkeypatch.setenv("PGOPS_T_SK", SECRET)
    creds = s3_credentials(spec)
    assert (creds.access_key, creds.secret_key) == ("ak", SECRET)
    assert SECRET not in repr(creds)
    secret_spec = S3StoreSpec(type="s3", bucket="b", credentials_secret="pg-backup-s3")
    with pytest.raises(StoreError, match="needs the Kubernetes platform"):
        s3_credentials(secret_spec)
    provided = s3_credentials(secret_spec, lambda name: S3Credentials(name, "x"))
    assert provided.access_key == "pg-backup-s3"


def test_zz_wrong_credentials_are_refused():
    """SeaweedFS accepts any key without an identity file: this server has one. It binds the
    same fixed ports as the shared server, so that one is stopped first (and restarted
    lazily by whichever test needs it next)."""
    stop_shared_server()
    with seaweedfs(identities=[admin_identity("goodkey", "goodsecret")]) as server:
        good = S3Store(S3StoreSpec(type="s3", bucket="pgops-creds", endpoint_url=server.endpoint),
                       S3Credentials("goodkey", "goodsecret"))
        good.client.create_bucket(Bucket="pgops-creds")
        good.check()
        good.put_bytes("c/1/x", b"ok")
        for access, secret in (("goodkey", SECRET), ("nobody", SECRET)):
            bad = S3Store(good.spec, S3Credentials(access, secret))
            with pytest.raises(StoreError, match="refused the credentials") as err:
                bad.check()
            assert SECRET not in str(err.value)
            with pytest.raises(StoreError, match="refused the credentials"):
                bad.put_bytes("c/1/y", b"no")
            with pytest.raises(StoreError, match="refused the credentials"):
                with bad.open_writer("c/1/z") as writer:
                    writer.write(os.urandom(9 * MIB))
                    writer.commit()
        assert [o.key for o in good.list("c/")] == ["c/1/x"]
        assert good.pending_uploads("c/") == []

