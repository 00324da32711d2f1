"""Backup throughput on a ~1 GB database of random text (md5 hex: it compresses ~2x, unlike
pgbench data which compresses ~100x and measures nothing).

Measured in the same run, all against the same server and the same warm page cache, each as
MB/s of uncompressed dump (`pg_dump -Fc -Z 0` bytes) per wall second:
  - the backup operation into the filesystem store, fingerprints off and on (row counts),
  - the same into SeaweedFS S3 (fingerprints off),
  - baselines: raw `pg_dump -Fc` (its default gzip) and `pg_dump -Fc -Z 0 | zstd -1`, both
    to /dev/null (the zstandard module stands in when the zstd CLI is absent).
Targets (issue 3): file store, fingerprints off >= 4x raw `pg_dump -Fc` and >= 0.9x the raw
zstd pipe.

The cluster has one member and `backups.source: primary`: every figure then reads the same
server, and generating 1 GB does not also stream it to two replicas on a 2-core machine.
PG_OPS_BENCH_BACKUP_MB sets the size (default 1000); figures are medians of PG_OPS_BENCH_TRIALS
(default 3) interleaved runs, except the slow gzip baseline (one run).
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import subprocess
import time

import psycopg

from pg_ops import settings
from pg_ops.credentials import SUPERUSER
from pg_ops.operations.backup import backup
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres.dump import temporary_passfile
from pg_ops.spec import ClusterSpec
from pg_ops_tests.benchmarks.common import emit
from pg_ops_tests.s3server import seaweedfs
from pg_ops_tests.support.helpers import running_cluster, spec_from, temp_home, write_spec

SIZE_MB = int(os.environ.get("PG_OPS_BENCH_BACKUP_MB", "1000"))
TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "3"))  # medians: a 2-core VM is noisy
ROW_BYTES = 140  # 4 x md5 hex + row overhead in the dump
logging.basicConfig(level=logging.WARNING)


def generate(ctx: ClusterContext, size_mb: int) -> None:
    """Two sessions in parallel (2 cores), each inserting half of the rows."""
    rows = size_mb * 1_000_000 // ROW_BYTES
    dsn = ctx.platform.primary_dsn(SUPERUSER, "app")
    with psycopg.connect(dsn, password=ctx.admin_password(), autocommit=True) as conn:
        conn.execute("create table if not exists bench_text (id bigint, body text)")
    half = rows // 2

    def insert(lo: int, hi: int) -> subprocess.Popen:
        sql = (f"insert into bench_text select g, md5(random()::text) || md5(random()::text) || "
               f"md5(random()::text) || md5(random()::text) from generate_series({lo}, {hi}) g")
        ep = ctx.endpoints()[ctx.state().primary]
        return subprocess.Popen([str(settings.pg_bin() / "psql"), "-q", "-h", ep.host, "-p", str(ep.port), "-U",
                                 SUPERUSER, "-d", "app", "-c", sql], env={**os.environ, **pass_env(ctx)})

    procs = [insert(1, half), insert(half + 1, rows)]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("data generation failed")
    with psycopg.connect(dsn, password=ctx.admin_password(), autocommit=True) as conn:
        conn.execute("vacuum analyze bench_text")


_PASSFILES: list = []


def pass_env(ctx: ClusterContext) -> dict:
    if not _PASSFILES:
        cm = temporary_passfile(SUPERUSER, ctx.admin_password())
        _PASSFILES.append((cm, cm.__enter__()))
    return {"PGPASSFILE": str(_PASSFILES[0][1])}


def timed_shell(ctx: ClusterContext, pipeline: str) -> float:
    t0 = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, env={**os.environ, **pass_env(ctx)})
    return time.monotonic() - t0


def pg_dump_argv(ctx: ClusterContext, *extra: str) -> str:
    ep = ctx.endpoints()[ctx.state().primary]
    return " ".join([str(settings.pg_bin() / "pg_dump"), "-Fc", *extra, "-h", ep.host, "-p", str(ep.port),
                     "-U", SUPERUSER, "-d", "app"])


def zstd_pipe(ctx: ClusterContext) -> tuple[float, str]:
    if shutil.which("zstd"):
        return timed_shell(ctx, f"{pg_dump_argv(ctx, '-Z', '0')} | zstd -1 -q -c > /dev/null"), "zstd -1 (CLI)"
    code = ("import sys, zstandard; c = zstandard.ZstdCompressor(level=1).compressobj()\n"
            "while (b := sys.stdin.buffer.read(1 << 20)): c.compress(b)\nc.flush()")
    return timed_shell(ctx, f"{pg_dump_argv(ctx, '-Z', '0')} | python3 -c '{code}'"), "zstandard level 1"


def with_backups(ctx: ClusterContext, **backups) -> ClusterContext:
    raw = ctx.spec.model_dump()
    raw["backups"] = {**raw["backups"], **backups}
    return ClusterContext(ClusterSpec.model_validate(raw), ctx.platform, ctx.log)


def timed_backup(ctx: ClusterContext) -> tuple[float, int, int]:
    t0 = time.monotonic()
    manifest = backup(ctx, ctx.store())
    seconds = time.monotonic() - t0
    app = manifest.databases[0]
    return seconds, app.raw_bytes, app.stored_bytes


def main() -> None:
    with temp_home() as home:
        os.environ["PG_OPS_HOME"] = str(home)
        (home / "specs").mkdir()
        spec = spec_from(write_spec(home / "specs", "bench", postgres={"members": 1},
                                    backups={"source": "primary", "wal": {"enabled": False}}))
        with running_cluster(spec) as ctx:
            t0 = time.monotonic()
            generate(ctx, SIZE_MB)
            generated_s = time.monotonic() - t0
            # Warm the page cache, and learn the uncompressed dump size every figure divides.
            timed_shell(ctx, f"{pg_dump_argv(ctx, '-Z', '0')} > /dev/null")
            file_off = with_backups(ctx, fingerprint="none")
            file_on = with_backups(ctx, fingerprint="counts")
            offs, ons, zstds, plains = [], [], [], []
            for _ in range(TRIALS):  # interleaved, so drift in the VM's speed hits every figure alike
                seconds, raw_bytes, stored_bytes = timed_backup(file_off)
                offs.append(seconds)
                s_zstd, zstd_how = zstd_pipe(ctx)
                zstds.append(s_zstd)
                ons.append(timed_backup(file_on)[0])
                plains.append(timed_shell(ctx, f"{pg_dump_argv(ctx, '-Z', '0')} > /dev/null"))
            s_off, s_on, s_zstd, s_plain = (statistics.median(v) for v in (offs, ons, zstds, plains))
            s_gzip = timed_shell(ctx, f"{pg_dump_argv(ctx)} > /dev/null")
            with seaweedfs() as server:
                bucket = server.new_bucket()
                os.environ["PGOPS_BENCH_AK"], os.environ["PGOPS_BENCH_SK"] = server.access_key, server.secret_key
                s3ctx = with_backups(ctx, fingerprint="none", store={
                    "type": "s3", "bucket": bucket, "endpoint_url": server.endpoint,
                    "credentials_env": {"access_key": "PGOPS_BENCH_AK", "secret_key": "PGOPS_BENCH_SK"}})
                s_s3 = statistics.median(timed_backup(s3ctx)[0] for _ in range(TRIALS))
    mb = raw_bytes / 1e6

    def rate(seconds: float) -> float:
        return round(mb / seconds, 1)

    emit("backup", {
        "dump_mb": round(mb, 1), "stored_mb": round(stored_bytes / 1e6, 1), "generate_s": round(generated_s, 1),
        "backup_file_mb_s": rate(s_off), "backup_file_fingerprint_mb_s": rate(s_on), "backup_s3_mb_s": rate(s_s3),
        "raw_pg_dump_fc_mb_s": rate(s_gzip), "raw_pg_dump_z0_zstd_mb_s": rate(s_zstd), "zstd_baseline": zstd_how,
        "raw_pg_dump_z0_mb_s": rate(s_plain),
        "ratio_vs_pg_dump_fc": round(s_gzip / s_off, 2), "ratio_vs_zstd_pipe": round(s_zstd / s_off, 2),
        "fingerprint_cost": round(s_on / s_off, 2), "trials": TRIALS,
        "targets": {"ratio_vs_pg_dump_fc": ">= 4", "ratio_vs_zstd_pipe": ">= 0.9"},
    })


if __name__ == "__main__":
    main()
