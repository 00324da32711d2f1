"""Backups in Dagster: per cluster, a daily-partitioned `backups/<cluster>/nightly` asset (the
dump) and `backups/<cluster>/retained` (retention applied after it), the `backup_cluster`
job, the `nightly_backup` schedule, and a freshness check.

Why one asset per cluster with daily partitions (not one cluster x day multi-partitioned
asset): Dagster plots numeric metadata per asset key, so each cluster gets its own size /
duration / MB/s plots instead of one interleaved series, each cluster's partition bar shows
exactly which nights have a backup, and the freshness check is per cluster.

A failed backup fails the run with the reason; the operation records error.json and fires
the `backup_failed` alert (operations/backup.py: alert_backup_failed).
"""


from datetime import UTC, datetime

import dagster as dg

from pg_ops.defs.partitions import schedule_groups
from pg_ops.defs.resources import ALERTS, AlertsResource, PgOpsResource
from pg_ops.spec import ClusterSpec

GROUP = "backups"
JOB = "backup_cluster"
SCHEDULE = "nightly_backup"
FRESHNESS_JOB = "backup_freshness"  # on demand; the backup_store_checks sensor evaluates it without a run
CHECK_FRESH = "backup_is_fresh"
FRESH_HOURS = 26
# Partitions start here; `end_offset=1` makes today's partition exist at 02:00 today.
DAILY = dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)


def nightly_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", cluster, "nightly"])


def retained_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", cluster, "retained"])


def cluster_keys(cluster: str) -> list[dg.AssetKey]:
    return [nightly_key(cluster), retained_key(cluster)]


def today_partition(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")


def _cluster_assets(spec: ClusterSpec) -> tuple[list[dg.AssetsDefinition], list[dg.AssetChecksDefinition]]:
    cluster = spec.name

    @dg.asset(key=nightly_key(cluster), partitions_def=DAILY, group_name=GROUP, kinds={"postgres"},
              description=f"Nightly logical backup of cluster {cluster}: pg_dump -Fc per database + globals, "
                          f"zstd in the pipe, manifest last ({spec.backups.store.type} store).")
    def nightly(context: dg.AssetExecutionContext, pg_ops: PgOpsResource,
                alerts: AlertsResource) -> dg.MaterializeResult:
        from pg_ops.operations.backup import backup

        ctx = pg_ops.cluster(cluster, context.log, alerts)
        manifest = backup(ctx)
        store = ctx.store()
        seconds = max(manifest.seconds, 1e-6)
        rows = sum(sum((d.row_counts or {}).values()) for d in manifest.databases)
        return dg.MaterializeResult(metadata={
            "backup_id": dg.MetadataValue.text(manifest.id),
            "size_bytes": dg.MetadataValue.int(manifest.stored_bytes),
            "raw_bytes": dg.MetadataValue.int(manifest.raw_bytes),
            "size_mb": dg.MetadataValue.float(round(manifest.stored_bytes / 1e6, 3)),
            "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
            "throughput_mb_per_s": dg.MetadataValue.float(round(manifest.raw_bytes / 1e6 / seconds, 2)),
            "compression_ratio": dg.MetadataValue.float(round(manifest.raw_bytes / max(manifest.stored_bytes, 1), 2)),
            "databases": dg.MetadataValue.int(len(manifest.databases)),
            "rows_counted": dg.MetadataValue.int(rows),
            "source": dg.MetadataValue.text(f"{manifest.source} ({manifest.source_role})"),
            "lsn": dg.MetadataValue.text(manifest.lsn or ""),
            "store": dg.MetadataValue.text(store.describe()),
            "database_names": dg.MetadataValue.text(", ".join(d.name for d in manifest.databases)),
            "excluded_databases": dg.MetadataValue.text(", ".join(manifest.excluded_databases) or "none"),
        })

    @dg.asset(key=retained_key(cluster), deps=[nightly_key(cluster)], partitions_def=DAILY, group_name=GROUP,
              description=f"Retention of cluster {cluster}'s backups: {spec.backups.retention_days} days, "
                          f"the newest {spec.backups.min_keep} good ones and the newest verified one always kept.")
    def retained(context: dg.AssetExecutionContext, pg_ops: PgOpsResource,
                 alerts: AlertsResource) -> dg.MaterializeResult:
        from pg_ops.operations.copy import copy_after_backup
        from pg_ops.operations.retention import prune

        ctx = pg_ops.cluster(cluster, context.log, alerts)
        result = prune(ctx)
        copied = copy_after_backup(ctx, "nightly backup")  # backups.copy_to: the second store
        return dg.MaterializeResult(metadata={
            **copied,
            "kept": dg.MetadataValue.int(len(result.kept)),
            "deleted": dg.MetadataValue.int(len(result.deleted)),
            "aborted_uploads": dg.MetadataValue.int(len(result.aborted_uploads)),
            "deleted_ids": dg.MetadataValue.text(", ".join(result.deleted) or "none"),
            "blocked": dg.MetadataValue.text(result.blocked or "no"),
            "decisions": dg.MetadataValue.md("\n".join(
                f"- `{d.id}` {d.status}: {'keep' if d.keep else 'DELETE'} ({d.reason})" for d in result.decisions)
                or "no backups"),
        })

    @dg.asset_check(asset=nightly_key(cluster), name=CHECK_FRESH,
                    description=f"The newest complete backup of {cluster} is at most {FRESH_HOURS} h old; a cluster "
                                f"younger than its first scheduled backup (plus 2 h) passes as not due yet "
                                f"(from the store; evaluated by the backup_store_checks sensor).")
    def backup_is_fresh(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        return freshness_result(pg_ops.cluster(cluster, context.log))

    return [nightly, retained], [backup_is_fresh]


def freshness_result(ctx) -> dg.AssetCheckResult:
    """backup_is_fresh, read from the store (the source of truth: a backup is what it holds)."""
    from pg_ops.operations.due import not_due_yet
    from pg_ops.operations.retention import freshness

    newest, age_hours = freshness(ctx)
    waiting = not_due_yet(ctx, "backup") if newest is None else None
    return dg.AssetCheckResult(
        passed=(age_hours is not None and age_hours <= FRESH_HOURS) or waiting is not None,
        severity=dg.AssetCheckSeverity.ERROR, description=waiting,
        metadata={"newest_good_backup": dg.MetadataValue.text(newest or "none"),
                  "age_hours": dg.MetadataValue.float(round(age_hours, 2) if age_hours is not None else -1.0),
                  "limit_hours": dg.MetadataValue.int(FRESH_HOURS),
                  "due": dg.MetadataValue.text(waiting or "yes")})


def _schedules(specs: list[ClusterSpec], job) -> list[dg.ScheduleDefinition]:
    """One schedule per distinct cron; the one covering the first spec is `nightly_backup`."""
    schedules = []
    for name, cron, clusters in schedule_groups(specs, lambda s: s.backups.schedule, SCHEDULE):

        @dg.schedule(name=name, cron_schedule=cron, job=job, execution_timezone="UTC",
                     default_status=dg.DefaultScheduleStatus.RUNNING,
                     description=f"Back up {', '.join(clusters)} ({cron} UTC), then apply retention.")
        def nightly_backup(context: dg.ScheduleEvaluationContext, clusters=clusters):
            day = today_partition(context.scheduled_execution_time)
            for cluster in clusters:
                yield dg.RunRequest(run_key=f"{cluster}-{day}", partition_key=day,
                                    asset_selection=cluster_keys(cluster), tags={"pg_ops/cluster": cluster})

        schedules.append(nightly_backup)
    return schedules


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    assets, checks = [], []
    for spec in specs:
        cluster_assets, cluster_checks = _cluster_assets(spec)
        assets += cluster_assets
        checks += cluster_checks
    job = dg.define_asset_job(
        JOB, selection=dg.AssetSelection.groups(GROUP), partitions_def=DAILY, executor_def=dg.in_process_executor,
        tags={"dagster/max_retries": "0"},
        description="Back up a cluster (select its backups/<cluster>/* assets), then apply retention.")
    freshness_job = dg.define_asset_job(
        FRESHNESS_JOB, selection=dg.AssetSelection.checks(*checks), executor_def=dg.in_process_executor,
        description=f"Fail when a cluster's newest good backup is older than {FRESH_HOURS} h (on demand: the "
                    f"backup_store_checks sensor evaluates it without a run).")
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[job, freshness_job],
                          schedules=_schedules(specs, job), resources={"alerts": ALERTS})


def backup_run_kwargs(cluster: str, day: str | None = None) -> dict:
    """execute_in_process arguments of one cluster's backup run (the CLI's `pg-ops backup`)."""
    return {"partition_key": day or today_partition(), "asset_selection": cluster_keys(cluster)}


__all__ = ["build", "backup_run_kwargs", "nightly_key", "retained_key"]
