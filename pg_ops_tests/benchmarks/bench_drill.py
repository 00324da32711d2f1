"""Restore drill wall time against a raw `pg_restore -j 2` of the same dump file into an
empty database, on the same ~1 GB random-text database as bench_backup (with a primary key,
so there is an index to rebuild and to amcheck).

The raw baseline gets everything for free that the drill pays for: the dump is already
decompressed on local disk and the target server is already running. The drill includes the
download with sha256 checks, starting its scratch server (overlapped with the download),
the globals, pg_restore -j 2, row counts and amcheck. Both restore into the same kind of
scratch server (same settings). Target (issue 4): drill <= 1.3x the raw restore.
PG_OPS_BENCH_BACKUP_MB sets the size (default 1000); medians of PG_OPS_BENCH_TRIALS (default 2)
interleaved runs.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
import zstandard

from pg_ops.credentials import SUPERUSER
from pg_ops.operations.backup import backup
from pg_ops.operations.drill import drill
from pg_ops.postgres import dump
from pg_ops_tests.benchmarks.bench_backup import SIZE_MB, generate
from pg_ops_tests.benchmarks.common import emit
from pg_ops_tests.support.helpers import running_cluster, spec_from, temp_home, write_spec

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "2"))
logging.basicConfig(level=logging.WARNING)


def raw_restore(ctx, dump_file: Path) -> float:
    with ctx.platform.scratch_target("bench") as scratch:
        ep = scratch.endpoint
        with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, dbname="postgres", password=scratch.password,
                             autocommit=True) as conn:
            conn.execute("create role app")  # what the drill's globals bring; not timed here
        t0 = time.monotonic()
        report = dump.pg_restore(ep, SUPERUSER, scratch.password, dump_file, jobs=2)
        seconds = time.monotonic() - t0
    if not report.ok:
        raise SystemExit(f"raw pg_restore failed: {report.errors[:3]}")
    return seconds


def main() -> None:
    with temp_home() as home:
        os.environ["PG_OPS_HOME"] = str(home)
        (home / "specs").mkdir()
        spec = spec_from(write_spec(home / "specs", "benchdrill", postgres={"members": 1},
                                    backups={"source": "primary", "wal": {"enabled": False}}))
        with running_cluster(spec) as ctx:
            generate(ctx, SIZE_MB)
            with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "app"), password=ctx.admin_password(),
                                 autocommit=True) as conn:
                conn.execute("alter table bench_text add primary key (id)")
            manifest = backup(ctx)
            app = manifest.databases[0]
            with tempfile.TemporaryDirectory(dir=home) as tmp:
                dump_file = Path(tmp) / "app.dump"
                with open(dump_file, "wb") as out:
                    zstandard.ZstdDecompressor().copy_stream(ctx.store().open_reader(app.key), out)
                raws, drills, reports = [], [], []
                for _ in range(TRIALS):
                    raws.append(raw_restore(ctx, dump_file))
                    t0 = time.monotonic()
                    reports.append(drill(ctx, manifest.id))
                    drills.append(time.monotonic() - t0)
    s_raw, s_drill = statistics.median(raws), statistics.median(drills)
    last = reports[-1]
    emit("drill", {
        "dump_mb": round(app.raw_bytes / 1e6, 1), "stored_mb": round(app.stored_bytes / 1e6, 1),
        "drill_s": round(s_drill, 2), "raw_pg_restore_j2_s": round(s_raw, 2),
        "ratio_drill_vs_raw": round(s_drill / s_raw, 2),
        "drill_download_s": last.download_seconds, "drill_restore_s": last.restore_seconds,
        "drill_verify_s": last.verify_seconds, "indexes_checked": last.databases["app"]["indexes_checked"],
        "trials": TRIALS, "target": {"ratio_drill_vs_raw": "<= 1.3"},
    })


if __name__ == "__main__":
    main()
