"""Base backups and the point-in-time drill on Kubernetes (issue 22), on the real control plane
(stand-in node: members and the recovery pod run as processes here), SeaweedFS as S3.

1. Base backup: `wal.base_backup` of the Kubernetes cluster (pg_basebackup over the replication
   protocol from where pg_ops runs, reaching the member at its pod IP, zstd straight into S3)
   against the raw `pg_basebackup -Ft -X none` of the same member into a local folder. Target:
   pg_ops >= 0.9x the raw MB/s.
2. Point-in-time recovery: the drill's recovery pod (created, scheduled and started by the real
   control plane; the base backup fetched from S3 and the WAL replayed in the pod, promoted, the
   store's password set), from the drill's start until its server is writable, against the raw
   way on the same objects (the tar from S3 into `tar --zstd -x`, replay by hand, as in
   bench_pitr). Target: <= 1.2x.
3. `pg-ops recover --as NEW` to the same target (once): the new cluster's first pod restores and
   replays on its own volume and starts as the primary; from the recovery's start until that
   primary is writable, against the same raw figure (the target is the same: <= 1.2x), and the
   whole run (the new cluster deployed) beside it.

PG_OPS_BENCH_K8S_MB sets the size of the data (default 300; the same again is written as WAL after
the base backup). TRIALS (PG_OPS_BENCH_TRIALS, default 2) recoveries of each.
"""

from __future__ import annotations

import logging
import os
import statistics

from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.operations.recover import new_cluster_spec, pitr_drill, recover
from pg_ops_tests.benchmarks.bench_pitr import backups_then_wal, raw_recovery
from pg_ops_tests.benchmarks.common import emit
from pg_ops_tests.s3server import seaweedfs
from pg_ops_tests.support.helpers import (
    BACKUP_SECRET,
    create_backup_secret,
    home_environment,
    real_kubernetes,
    spec_from,
    write_platform_spec,
)

SIZE_MB = int(os.environ.get("PG_OPS_BENCH_K8S_MB", "300"))
TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "2"))
logging.basicConfig(level=logging.WARNING)


def main() -> None:
    with seaweedfs() as server, home_environment() as home, real_kubernetes() as kube:
        # raw_recovery reads the keys from these (an AWS credentials file, as an operator would).
        os.environ["PGOPS_BENCH_AK"], os.environ["PGOPS_BENCH_SK"] = server.access_key, server.secret_key
        spec = spec_from(write_platform_spec(home / "specs", "k8spitr", "kubernetes", postgres={"members": 1},
                                             backups={"wal": {"archive_timeout_seconds": 60}, "store": {
                                                 "type": "s3", "bucket": server.new_bucket(),
                                                 "endpoint_url": server.endpoint,
                                                 "credentials_secret": BACKUP_SECRET}}))
        kube.register_cluster(spec)
        create_backup_secret(kube, spec, server)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        run = backups_then_wal(ctx, home, SIZE_MB)
        raw_base_s, raw_base_bytes, backup, base_s = run.raw_s, run.raw_bytes, run.backup, run.seconds
        wal_mb, target = run.wal_mb, run.target
        raws, pods, starts = [], [], []
        for _ in range(TRIALS):
            raws.append(raw_recovery(ctx, backup, target, home))
            report = pitr_drill(ctx, target)
            pods.append(report.restore_seconds + report.replay_seconds)
            starts.append(report.restore_seconds)
        kube.register_cluster(new_cluster_spec(spec, "k8spitr-back"))  # the admin's Role for it
        recovered = recover(ctx, target, "k8spitr-back")
    raw_mb = raw_base_bytes / 1e6
    s_raw, s_pod = statistics.median(raws), statistics.median(pods)
    emit("k8s_pitr", {
        "data_mb": SIZE_MB, "base_backup_mb": round(backup.size / 1e6, 1), "wal_mb": round(wal_mb, 1),
        "base_backup_s": round(base_s, 1), "base_backup_data_mb_s": round(raw_mb / base_s, 1),
        "raw_pg_basebackup_s": round(raw_base_s, 1), "raw_pg_basebackup_mb_s": round(raw_mb / raw_base_s, 1),
        "base_backup_ratio_vs_raw": round(raw_base_s / base_s, 2),
        "recovery_pod_s": round(s_pod, 2), "recovery_pod_start_s": round(statistics.median(starts), 2),
        "raw_restore_replay_s": round(s_raw, 2), "ratio_vs_raw": round(s_pod / s_raw, 2), "trials": len(raws),
        "recover_to_writable_s": round(recovered.restore_seconds + recovered.replay_seconds, 2),
        "recover_pod_start_s": round(recovered.restore_seconds, 2), "recover_total_s": round(recovered.seconds, 2),
        "recover_ratio_vs_raw": round((recovered.restore_seconds + recovered.replay_seconds) / s_raw, 2),
        "targets": {"base_backup_ratio_vs_raw": ">= 0.9 (speed)", "ratio_vs_raw": "<= 1.2",
                    "recover_ratio_vs_raw": "<= 1.2"},
    })


if __name__ == "__main__":
    main()
