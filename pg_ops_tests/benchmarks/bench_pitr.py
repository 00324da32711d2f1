"""Base backups, point-in-time recovery and archiving lag, on SeaweedFS S3 (WAL by barman-cloud).

1. Base backup: `wal.base_backup` (pg_basebackup -Ft -X none over the replication protocol,
   zstd-compressed straight into S3, complete once its end segment is archived) against the raw
   `pg_basebackup -Ft -X none` of the same cluster into a local folder, uncompressed. Target
   (issue 22): pg_ops >= 0.9x the raw MB/s.
2. PITR: a 1-member cluster with ~1 GB of random text and a base backup, then ~1 GB more of WAL
   (another table of the same size), a target time, the segment holding it archived. Measured:
   `recover --to T --as NEW` (pg_ops: restore, replay, promote, reset, deploy of the new cluster)
   against the raw way on the same objects: the backup's tar streamed from S3 into `tar --zstd -x`,
   the same recovery settings by hand, postgres started as the server user until it promotes.
   Target (issues 15, 22): pg_ops <= 1.2x the raw figure.
2. Archiving lag (RPO): a steady writer for PG_OPS_BENCH_LAG_S (default 90 s) while the age of
   the newest archived segment (pg_stat_archiver.last_archived_time) is sampled every second;
   target: its maximum <= 60 s (archive_timeout 60 s in the spec, as by default).

PG_OPS_BENCH_BACKUP_MB sets the size (default 1000).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from pg_ops import settings
from pg_ops.credentials import SUPERUSER
from pg_ops.operations import wal
from pg_ops.operations.recover import recover
from pg_ops.platforms.server_user import chown_tree, server_user
from pg_ops.postgres import archiving, barman
from pg_ops.spec import ClusterSpec
from pg_ops.stores import wal_archive as wa
from pg_ops_tests.benchmarks.bench_backup import SIZE_MB, generate
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.s3server import seaweedfs
from pg_ops_tests.support.helpers import (
    free_port,
    running_cluster,
    spec_from,
    stop_cluster,
    temp_home,
    write_spec,
)

LAG_SECONDS = float(os.environ.get("PG_OPS_BENCH_LAG_S", "90"))
logging.basicConfig(level=logging.WARNING)


def wal_bytes(ctx, since: str) -> int:
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "postgres"), password=ctx.admin_password(),
                         autocommit=True) as conn:
        return conn.execute("select pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", (since,)).fetchone()[0]


def current_lsn(ctx) -> str:
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "postgres"), password=ctx.admin_password(),
                         autocommit=True) as conn:
        return conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]


def raw_recovery(ctx, backup: wa.BaseBackup, target: datetime, home: Path) -> float:
    """The tar from S3 into `tar --zstd -x`, then replay by hand, as an operator would."""
    user = server_user()
    folder = Path(tempfile.mkdtemp(prefix="raw-pitr-", dir=home))
    os.chmod(folder, 0o755)
    data = folder / "data"
    t0 = time.monotonic()
    store = ctx.store()
    key = next(k for k in backup.keys if k.endswith("/data.tar.zst"))
    data.mkdir()
    tar = subprocess.Popen(["tar", "--zstd", "-x", "-C", str(data)], stdin=subprocess.PIPE)
    with store.open_reader(key) as reader:
        assert tar.stdin is not None
        shutil.copyfileobj(reader, tar.stdin, 1 << 20)
        tar.stdin.close()
    if tar.wait() != 0:
        raise SystemExit("raw restore: tar --zstd -x failed")
    creds = folder / "aws-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {os.environ['PGOPS_BENCH_AK']}\n"
                     f"aws_secret_access_key = {os.environ['PGOPS_BENCH_SK']}\n")
    restore = barman.restore_command(wa.s3_target(ctx.spec, wal.archive_ref(ctx)), settings.barman_bin(), str(creds))
    auto = data / "postgresql.auto.conf"
    auto.write_text(archiving.auto_conf_for_recovery(auto.read_text() if auto.exists() else "",
                                                     archiving.recovery_settings(restore, target)))
    (data / "recovery.signal").touch()
    (data / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    chown_tree(folder, user)
    os.chmod(data, 0o700)
    port = free_port()
    kwargs = user.process_kwargs()
    proc = subprocess.Popen([str(settings.pg_bin() / "postgres"), "-D", str(data), "-p", str(port),
                             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                             "-c", "archive_mode=off", "-c", "hot_standby=off"],
                            stdout=subprocess.DEVNULL, stderr=open(folder / "log", "wb"), start_new_session=True,
                            **kwargs)
    try:
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user=SUPERUSER, dbname="postgres",
                                     password=ctx.admin_password(), connect_timeout=2) as conn:
                    if not conn.execute("select pg_is_in_recovery()").fetchone()[0]:
                        return time.monotonic() - t0
            except psycopg.OperationalError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"raw recovery failed: {(folder / 'log').read_text()[-800:]}")
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def raw_base_backup(ctx, home: Path, member: str | None = None) -> tuple[float, int]:
    """`pg_basebackup -Ft -X none` of the same member (default the primary) into a local folder:
    (seconds, bytes)."""
    from pg_ops.credentials import REPLICATION_USER

    folder = Path(tempfile.mkdtemp(prefix="raw-base-", dir=home))
    ep = ctx.endpoints()[member or ctx.state().primary]
    t0 = time.monotonic()
    subprocess.run([str(settings.pg_bin() / "pg_basebackup"), "-h", ep.host, "-p", str(ep.port), "-U",
                    REPLICATION_USER, "-D", str(folder / "out"), "-Ft", "-X", "none", "--checkpoint=fast",
                    "--no-manifest"], check=True, env={**os.environ, "PGPASSWORD": ctx.credentials().password(
                        REPLICATION_USER)}, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    size = sum(f.stat().st_size for f in (folder / "out").iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, size


@dataclass
class BackupsThenWal:
    raw_s: float  # raw pg_basebackup -Ft -X none into a local folder
    raw_bytes: int
    backup: wa.BaseBackup  # pg_ops's
    seconds: float
    wal_mb: float  # written after pg_ops's base backup
    target: datetime  # a recovery target after all of it, its segment archived


def backups_then_wal(ctx, home: Path, size_mb: int) -> BackupsThenWal:
    """`size_mb` of data; the raw base backup, then pg_ops's, each after a checkpoint (neither pays
    for the data just written: both ask a fast checkpoint); as much WAL again (another table);
    a target time a second after it, its segment archived."""
    generate(ctx, size_mb)
    checkpoint(ctx)
    raw_s, raw_bytes = raw_base_backup(ctx, home)
    checkpoint(ctx)
    t0 = time.monotonic()
    backup = wal.base_backup(ctx)
    seconds = time.monotonic() - t0
    before = current_lsn(ctx)
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "app"), password=ctx.admin_password(),
                         autocommit=True) as conn:
        conn.execute("alter table bench_text rename to bench_text_first")
    generate(ctx, size_mb)
    wal_mb = wal_bytes(ctx, before) / 1e6
    time.sleep(1.1)
    target = datetime.now(UTC)
    time.sleep(1.1)
    wal.switch_and_wait(ctx, timeout=600)
    return BackupsThenWal(raw_s, raw_bytes, backup, seconds, wal_mb, target)


def checkpoint(ctx) -> None:
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "postgres"), password=ctx.admin_password(),
                         autocommit=True) as conn:
        conn.execute("checkpoint")


def archiving_lag(ctx, seconds: float) -> dict:
    stop = threading.Event()
    written = [0]

    def writer():
        with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "app"), password=ctx.admin_password(),
                             autocommit=True) as conn:
            conn.execute("create table if not exists steady (id bigserial, body text)")
            while not stop.is_set():
                conn.execute("insert into steady (body) select md5(random()::text) from generate_series(1, 200)")
                written[0] += 200
                time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    ages, start_lsn = [], current_lsn(ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = wal.archive_health(ctx)
        ages.append(health.status.last_archived_age_seconds)
        time.sleep(1.0)
    stop.set()
    thread.join(10)
    return {"age": summary(ages), "rows": written[0], "wal_mb": round(wal_bytes(ctx, start_lsn) / 1e6, 1)}


@contextlib.contextmanager
def s3_bench_cluster(name: str, members: int, source: str) -> Iterator[tuple[ClusterSpec, Path]]:
    """A throw-away PG_OPS_HOME and SeaweedFS, and the spec of a cluster archiving to a bucket of
    its own (archive_timeout 60 s, as by default; `source`: where base backups are taken)."""
    with seaweedfs() as server, temp_home() as home:
        os.environ["PG_OPS_HOME"] = str(home)
        (home / "specs").mkdir()
        os.environ["PG_OPS_CLUSTERS"] = str(home / "specs")
        os.environ["PGOPS_BENCH_AK"], os.environ["PGOPS_BENCH_SK"] = server.access_key, server.secret_key
        yield spec_from(write_spec(home / "specs", name, postgres={"members": members}, backups={
            "source": source, "wal": {"archive_timeout_seconds": 60},
            "store": {"type": "s3", "bucket": server.new_bucket(), "endpoint_url": server.endpoint,
                      "credentials_env": {"access_key": "PGOPS_BENCH_AK", "secret_key": "PGOPS_BENCH_SK"}}})), home


def main() -> None:
    with s3_bench_cluster("benchpitr", members=1, source="primary") as (spec, home):
        with running_cluster(spec) as ctx:
            lag = archiving_lag(ctx, LAG_SECONDS)
            run = backups_then_wal(ctx, home, SIZE_MB)
            raw_base_s, raw_base_bytes, backup, base_s = run.raw_s, run.raw_bytes, run.backup, run.seconds
            wal_mb, target = run.wal_mb, run.target
            raws, ours = [], []
            for i in range(2):
                raws.append(raw_recovery(ctx, backup, target, home))
                t0 = time.monotonic()
                result = recover(ctx, target, f"benchpitr-r{i}")
                ours.append(time.monotonic() - t0)
                from pg_ops.operations.context import ClusterContext

                stop_cluster(ClusterContext.for_spec(spec_from(Path(result.spec_path))))
    s_raw, s_ours = statistics.median(raws), statistics.median(ours)
    raw_mb = raw_base_bytes / 1e6
    emit("pitr", {
        "base_backup_mb": round(backup.size / 1e6, 1), "base_backup_s": round(base_s, 1), "wal_mb": round(wal_mb, 1),
        "base_backup_data_mb_s": round(raw_mb / base_s, 1), "raw_pg_basebackup_mb": round(raw_mb, 1),
        "raw_pg_basebackup_s": round(raw_base_s, 1), "raw_pg_basebackup_mb_s": round(raw_mb / raw_base_s, 1),
        "base_backup_ratio_vs_raw": round(raw_base_s / base_s, 2),
        "recover_s": round(s_ours, 2), "raw_restore_replay_s": round(s_raw, 2),
        "ratio_vs_raw": round(s_ours / s_raw, 2), "recover_restore_s": result.restore_seconds,
        "recover_replay_s": result.replay_seconds, "trials": len(raws),
        "archiving_lag_age_s": lag["age"], "archiving_lag_rows": lag["rows"], "archiving_lag_wal_mb": lag["wal_mb"],
        "archive_timeout_s": 60,
        "targets": {"ratio_vs_raw": "<= 1.2", "base_backup_ratio_vs_raw": ">= 0.9 (speed)",
                    "archiving_lag_age_s.max": "<= 60"},
    })


if __name__ == "__main__":
    main()
