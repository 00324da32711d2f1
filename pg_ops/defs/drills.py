"""Restore drills and the real restore in Dagster: per cluster, a `backups/<cluster>/restore_drill` asset (one
drill of the newest complete backup, or a chosen one), the `restore_drill` job, the
`weekly_restore_drill` schedule, a drill after each nightly backup where
`drills.after_backup` is set (an asset sensor on the nightly backup), and two checks read
from the store: `latest_backup_restores` (the newest drilled backup passed; its restore time
is the cluster's measured recovery time) and `drill_is_recent` (a passed drill within 8 days),
evaluated without a run by the backup_store_checks sensor (pg_ops/defs/store_checks.py).

A drill that fails raises (the run fails with the reason); the operation has already
written drill.json (`failed`) and fired the `restore_drill_failed` alert.

`restore_backup` is a plain op job (a restore produces no asset of ours): its run config
holds the backup id, the target DSN (refused if it carries a password) and the confirmation.
"""


import dagster as dg

from pg_ops.defs.backups import nightly_key
from pg_ops.defs.metadata import metadata_of
from pg_ops.defs.partitions import cluster_schedules
from pg_ops.defs.resources import ALERTS, AlertsResource, PgOpsResource
from pg_ops.operations import drill as drill_ops
from pg_ops.spec import ClusterSpec

GROUP = "restore_drills"
JOB = "restore_drill"
SCHEDULE = "weekly_restore_drill"
CHECKS_JOB = "restore_drill_checks"  # on demand; the backup_store_checks sensor evaluates them without a run
CHECK_RESTORES = "latest_backup_restores"
CHECK_RECENT = "drill_is_recent"
RECENT_DAYS = 8


class DrillConfig(dg.Config):
    backup_id: str | None = None  # default: the newest complete backup
    store: str = "primary"  # or "copy": the second store of backups.copy_to


class RestoreConfig(dg.Config):
    cluster: str
    backup_id: str
    target_dsn: str  # without a password: libpq reads PGPASSFILE / PGPASSWORD
    confirm: str
    database: str | None = None
    overwrite: bool = False
    keep_owners: bool = False


@dg.op(name="run_restore", description="Restore one database of a backup into a named target database.")
def run_restore(context: dg.OpExecutionContext, config: RestoreConfig, pg_ops: PgOpsResource) -> dict:
    from pg_ops.operations.restore import restore

    result = restore(pg_ops.cluster(config.cluster, context.log), config.backup_id, config.target_dsn,
                     config.confirm, database=config.database, overwrite=config.overwrite,
                     keep_owners=config.keep_owners)
    context.add_output_metadata(metadata_of(result, restored_mb=round(result.restored_bytes / 1e6, 3)))
    return result.as_dict()


@dg.job(name="restore_backup", executor_def=dg.in_process_executor, tags={"dagster/max_retries": "0"},
        description="Restore a backup into a named target database (never into the live cluster).")
def restore_backup():
    run_restore()


def restore_run_config(cluster: str, backup_id: str, target_dsn: str, confirm: str | None, database: str | None,
                       overwrite: bool, keep_owners: bool) -> dg.RunConfig:
    return dg.RunConfig(ops={"run_restore": RestoreConfig(
        cluster=cluster, backup_id=backup_id, target_dsn=target_dsn, confirm=confirm or "", database=database,
        overwrite=overwrite, keep_owners=keep_owners)})


def drill_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", cluster, "restore_drill"])


def _cluster_defs(spec: ClusterSpec) -> tuple[list, list]:
    cluster = spec.name

    @dg.asset(key=drill_key(cluster), deps=[nightly_key(cluster)], group_name=GROUP, kinds={"postgres"},
              description=f"Restore drill of cluster {cluster}: the backup restored into a throw-away instance "
                          f"and verified (sha256, pg_restore errors, row counts, amcheck).")
    def restore_drill(context: dg.AssetExecutionContext, config: DrillConfig,
                      pg_ops: PgOpsResource, alerts: AlertsResource) -> dg.MaterializeResult:
        from pg_ops.operations.drill import drill

        ctx = pg_ops.cluster(cluster, context.log, alerts)
        store = ctx.store_from(config.store)
        report = drill(ctx, config.backup_id, store=store, holder=f"drill-{context.run_id[:8]}")
        return dg.MaterializeResult(metadata={
            "store": dg.MetadataValue.text(f"{config.store}: {store.describe()}"),
            "backup_id": dg.MetadataValue.text(report.backup_id),
            "result": dg.MetadataValue.text(report.result),
            "recovery_seconds": dg.MetadataValue.float(round(report.download_seconds + report.restore_seconds, 3)),
            "total_seconds": dg.MetadataValue.float(report.total_seconds),
            "download_seconds": dg.MetadataValue.float(report.download_seconds),
            "restore_seconds": dg.MetadataValue.float(report.restore_seconds),
            "verify_seconds": dg.MetadataValue.float(report.verify_seconds),
            "restored_mb": dg.MetadataValue.float(round(report.restored_bytes / 1e6, 3)),
            "indexes_checked": dg.MetadataValue.int(sum(d["indexes_checked"] or 0 for d in report.databases.values())),
            "report": dg.MetadataValue.json(report.as_dict()),  # what `pg-ops restore-drill` prints
        })

    @dg.asset_check(asset=drill_key(cluster), name=CHECK_RESTORES,
                    description="The newest drilled backup restored and verified; metadata: its restore time; "
                                "not due yet (passes, saying so) before the cluster's first drill with a backup "
                                "(from the store; evaluated by the backup_store_checks sensor).")
    def latest_backup_restores(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        from pg_ops.operations.drill import drill_status
        from pg_ops.operations.due import not_due_yet

        ctx = pg_ops.cluster(cluster, context.log)
        return restores_result(drill_status(ctx), not_due_yet(ctx, "restore_drill"))

    @dg.asset_check(asset=drill_key(cluster), name=CHECK_RECENT,
                    description=f"A drill passed within the last {RECENT_DAYS} days; not due yet (passes, saying so) "
                                f"before the cluster's first drill with a backup (from the store; evaluated by "
                                f"the backup_store_checks sensor).")
    def drill_is_recent(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        from pg_ops.operations.drill import drill_status
        from pg_ops.operations.due import not_due_yet

        ctx = pg_ops.cluster(cluster, context.log)
        return recent_result(drill_status(ctx), not_due_yet(ctx, "restore_drill"))

    return [restore_drill], [latest_backup_restores, drill_is_recent]


def restores_result(status: dict, waiting: str | None = None) -> dg.AssetCheckResult:
    """latest_backup_restores from drill_status (the store's drill.json files). `waiting`: why
    no drill is due yet (operations/due.py), which passes only while no drill exists."""
    latest = status["latest"]
    waiting = waiting if not latest else None
    return dg.AssetCheckResult(
        passed=(bool(latest) and latest.get("result") == "passed") or waiting is not None,
        severity=dg.AssetCheckSeverity.ERROR, description=waiting,
        metadata={"due": dg.MetadataValue.text(waiting or "yes"),
                  "backup_id": dg.MetadataValue.text((latest or {}).get("backup_id") or "none"),
                  "reason": dg.MetadataValue.text((latest or {}).get("reason") or ""),
                  "recovery_seconds": dg.MetadataValue.float(
                      round((latest or {}).get("download_seconds", -1.0)
                            + (latest or {}).get("restore_seconds", 0.0), 3))})


def recent_result(status: dict, waiting: str | None = None) -> dg.AssetCheckResult:
    """drill_is_recent from drill_status; `waiting` as in restores_result (only while no drill exists)."""
    age = status["last_passed_age_days"]
    waiting = waiting if not status["latest"] else None
    return dg.AssetCheckResult(
        passed=(age is not None and age <= RECENT_DAYS) or waiting is not None,
        severity=dg.AssetCheckSeverity.ERROR, description=waiting,
        metadata={"due": dg.MetadataValue.text(waiting or "yes"),
                  "last_passed_age_days": dg.MetadataValue.float(round(age, 2) if age is not None else -1.0),
                  "limit_days": dg.MetadataValue.int(RECENT_DAYS)})


def drill_run_kwargs(cluster: str) -> dict:
    """execute_in_process arguments of one cluster's drill (the CLI's `pg-ops restore-drill`)."""
    return {"asset_selection": [drill_key(cluster)]}


def drill_run_config(cluster: str, backup_id: str | None, store: str = "primary") -> dg.RunConfig:
    op = "__".join(drill_key(cluster).path).replace("-", "_")
    return dg.RunConfig(ops={op: DrillConfig(backup_id=backup_id, store=store)})


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    assets, checks = [], []
    for spec in specs:
        a, c = _cluster_defs(spec)
        assets += a
        checks += c
    job = dg.define_asset_job(JOB, selection=dg.AssetSelection.assets(*assets), executor_def=dg.in_process_executor,
                              tags={"dagster/max_retries": "0"},
                              description="Restore drill of a cluster's newest (or a chosen) backup.")
    checks_job = dg.define_asset_job(CHECKS_JOB, selection=dg.AssetSelection.checks(*checks),
                                     executor_def=dg.in_process_executor,
                                     description="Drill checks read from the store (no restore), on demand: the "
                                                 "backup_store_checks sensor evaluates them without a run.")
    schedules = cluster_schedules(specs, lambda s: s.drills.schedule, SCHEDULE, job, drill_key, "Restore drill",
                                  nothing_to_do=drill_ops.nothing_to_drill)
    sensors = [_after_backup_sensor(spec.name, job) for spec in specs if spec.drills.after_backup]
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[job, checks_job, restore_backup],
                          schedules=schedules, sensors=sensors, resources={"alerts": ALERTS})


def _after_backup_sensor(cluster: str, job) -> dg.SensorDefinition:
    @dg.asset_sensor(asset_key=nightly_key(cluster), job=job, name=f"drill_after_backup_{cluster.replace('-', '_')}",
                     default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60,
                     description=f"Drill each new backup of {cluster} (drills.after_backup).")
    def after_backup(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        materialization = asset_event.asset_materialization
        entry = materialization.metadata.get("backup_id") if materialization else None
        backup_id = str(entry.value) if entry is not None else None
        yield dg.RunRequest(run_key=f"{cluster}-after-{backup_id or asset_event.run_id}",
                            asset_selection=[drill_key(cluster)], run_config=drill_run_config(cluster, backup_id),
                            tags={"pg_ops/cluster": cluster})

    return after_backup
