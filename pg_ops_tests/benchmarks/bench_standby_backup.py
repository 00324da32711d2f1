"""A base backup taken from the standby (`backups.source: replica`, the default; issue 22):
`wal.base_backup` of a 2-member cluster on SeaweedFS S3 (pg_basebackup -Ft -X none over the
replication protocol from the most caught-up streaming standby, zstd straight into the store,
its end read from the standby) against the raw `pg_basebackup -Ft -X none` from the same standby
into a local folder, uncompressed, in the same run, both after the archive caught up with the
data's WAL. Target: pg_ops >= 0.9x the raw MB/s.
PG_OPS_BENCH_BACKUP_MB sets the data size (default 1000)."""

from __future__ import annotations

import logging
import time

from pg_ops.operations import wal
from pg_ops_tests.benchmarks.bench_pitr import SIZE_MB, generate, raw_base_backup, s3_bench_cluster
from pg_ops_tests.benchmarks.common import emit
from pg_ops_tests.support.helpers import running_cluster, wait_for

logging.basicConfig(level=logging.WARNING)


def main() -> None:
    with s3_bench_cluster("benchstandby", members=2, source="replica") as (spec, home):
        with running_cluster(spec) as ctx:
            generate(ctx, SIZE_MB)
            primary = ctx.state().primary
            standby = next(m for m in spec.member_names if m != primary)

            def caught_up() -> bool:
                seen = ctx.probe([primary])[primary].standby(standby)
                return seen is not None and seen.lag_bytes == 0

            wait_for(caught_up, "the standby replayed everything", timeout=600)
            # The archive catches up with the generated WAL first: a base backup counts as complete
            # once its end segment is archived, and the backlog is not the backup's cost.
            wal.switch_and_wait(ctx, timeout=900)
            raw_s, raw_bytes = raw_base_backup(ctx, home, member=standby)
            t0 = time.monotonic()
            backup = wal.base_backup(ctx)
            ours_s = time.monotonic() - t0
    raw_mb = raw_bytes / 1e6
    emit("standby_base_backup", {
        "source": backup.source, "source_role": backup.source_role, "data_mb": round(raw_mb, 1),
        "base_backup_s": round(ours_s, 2), "base_backup_stored_mb": round(backup.size / 1e6, 1),
        "base_backup_data_mb_s": round(raw_mb / ours_s, 1), "raw_pg_basebackup_s": round(raw_s, 2),
        "raw_pg_basebackup_mb_s": round(raw_mb / raw_s, 1), "ratio_vs_raw": round(raw_s / ours_s, 2),
        "target": {"ratio_vs_raw": ">= 0.9 (speed)"}})


if __name__ == "__main__":
    main()
