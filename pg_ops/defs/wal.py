"""WAL archiving and point-in-time recovery in Dagster, per cluster with `backups.wal.enabled`:

- `backups/<cluster>/base_backup`: a base backup (then archive retention), job `base_backup`,
  schedule `base_backup_schedule` (cron `backups.wal.base_backup_schedule`);
- `backups/<cluster>/wal_archive`: observed every minute by `wal_archive_sensor` (age of the
  newest archived segment, failed attempts, WAL waiting, the recovery window and its gap), which
  fires and resolves the archiving alerts and, while the archive has a gap no member could fill
  or no base backup of the running system yet (a cluster just deployed), requests a `base_backup`
  run for that cluster; checks `wal_archive_is_current`,
  `wal_archive_not_failing` and `wal_archive_has_no_gap`;
- `backups/<cluster>/pitr_drill`: the point-in-time drill, job `pitr_drill`, schedule
  `weekly_pitr_drill` (cron `backups.wal.drill_schedule`); check `latest_recovery_point_drilled`
  (local clusters only: the drill's server is a local cluster restored from the archive);
- job `recover_cluster`: `pg-ops recover --to TIME --as NEW` (a new cluster; the UI's launchpad
  takes the same config).
"""

import json
import time

import dagster as dg

from pg_ops.defs.metadata import metadata_of
from pg_ops.defs.partitions import CLUSTER_TAG, cluster_schedules
from pg_ops.defs.resources import ALERTS, AlertsResource, PgOpsResource
from pg_ops.operations import recover as recover_ops
from pg_ops.spec import ClusterSpec

GROUP = "wal_archive"
BASE_JOB = "base_backup"
BASE_SCHEDULE = "base_backup_schedule"
DRILL_JOB = "pitr_drill"
DRILL_SCHEDULE = "weekly_pitr_drill"
RECOVER_JOB = "recover_cluster"
CHECKS_JOB = "wal_archive_checks"
CHECKS_SCHEDULE = "wal_archive_checks_hourly"
SENSOR = "wal_archive_sensor"
CHECK_CURRENT = "wal_archive_is_current"
CHECK_NOT_FAILING = "wal_archive_not_failing"
CHECK_NO_GAP = "wal_archive_has_no_gap"
CHECK_DRILLED = "latest_recovery_point_drilled"


def base_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", cluster, "base_backup"])


def archive_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", cluster, "wal_archive"])


def pitr_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["backups", cluster, "pitr_drill"])


class PitrDrillConfig(dg.Config):
    target_time: str | None = None  # ISO 8601; default: a time the drill chooses between its own markers
    store: str = "primary"  # or "copy": the second store of backups.copy_to


class RecoverConfig(dg.Config):
    cluster: str
    to: str  # ISO 8601 target time
    as_name: str  # the new cluster


def _window_metadata(window) -> dict:
    return {"window_oldest": dg.MetadataValue.text(window.oldest.isoformat() if window.oldest else "none"),
            "window_newest": dg.MetadataValue.text(window.newest.isoformat() if window.newest else "none"),
            "window_gap": dg.MetadataValue.text(window.gap or "none"),
            "system_identifier": dg.MetadataValue.text(window.sysid or "none")}


@dg.op(name="run_recover", description="Recover a cluster to a point in time as a NEW cluster.",
       tags={"kind": "postgres"})
def run_recover(context: dg.OpExecutionContext, config: RecoverConfig, pg_ops: PgOpsResource) -> dict:
    from pg_ops.operations.recover import parse_target_time, recover

    result = recover(pg_ops.cluster(config.cluster, context.log), parse_target_time(config.to), config.as_name)
    # Everything the CLI prints, in the output metadata: pg-ops reads it back from the run's events.
    context.add_output_metadata({**metadata_of(result), "spec": dg.MetadataValue.path(result.spec_path)})
    return result.as_dict()


@dg.job(name=RECOVER_JOB, executor_def=dg.in_process_executor, tags={"dagster/max_retries": "0"},
        description="Point-in-time recovery of a cluster into a new cluster (the source is only read).")
def recover_cluster():
    run_recover()


def recover_run_config(cluster: str, to: str, as_name: str) -> dg.RunConfig:
    return dg.RunConfig(ops={"run_recover": RecoverConfig(cluster=cluster, to=to, as_name=as_name)})


def _cluster_defs(spec: ClusterSpec) -> tuple[list, list, list]:
    cluster = spec.name

    @dg.asset(key=base_key(cluster), group_name=GROUP, kinds={"postgres"},
              description=f"Base backup of {cluster} for point-in-time recovery (pg_basebackup over the "
                          f"replication protocol, streamed into the store), then retention of base backups and WAL.")
    def base_backup(context: dg.AssetExecutionContext, pg_ops: PgOpsResource,
                    alerts: AlertsResource) -> dg.MaterializeResult:
        from pg_ops.operations.copy import copy_after_backup
        from pg_ops.operations.retention import prune_archive
        from pg_ops.operations.wal import base_backup as take
        from pg_ops.operations.wal import recovery_window

        ctx = pg_ops.cluster(cluster, context.log, alerts)
        started = time.monotonic()
        backup = take(ctx)
        seconds = time.monotonic() - started
        pruned = prune_archive(ctx)
        copied = copy_after_backup(ctx, "base backup")  # backups.copy_to: the second store
        return dg.MaterializeResult(metadata={
            **copied,
            "backup_id": dg.MetadataValue.text(backup.id),
            "size_mb": dg.MetadataValue.float(round(backup.size / 1e6, 3)),
            "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
            "begin_wal": dg.MetadataValue.text(backup.begin_wal), "end_wal": dg.MetadataValue.text(backup.end_wal),
            "pruned_base_backups": dg.MetadataValue.text(", ".join(pruned.deleted_base_backups) or "none"),
            "pruned_segments": dg.MetadataValue.int(pruned.deleted_segments),
            "retention_blocked": dg.MetadataValue.text(pruned.blocked or "no"),
            **_window_metadata(recovery_window(ctx))})

    @dg.asset(key=pitr_key(cluster), deps=[base_key(cluster)], group_name=GROUP, kinds={"postgres"},
              description=f"Point-in-time drill of {cluster}: the archive recovered into a throw-away server, "
                          f"heartbeat rows before the target present and none after, amcheck.")
    def pitr_drill(context: dg.AssetExecutionContext, config: PitrDrillConfig,
                   pg_ops: PgOpsResource, alerts: AlertsResource) -> dg.MaterializeResult:
        from pg_ops.operations.recover import parse_target_time
        from pg_ops.operations.recover import pitr_drill as drill

        target = parse_target_time(config.target_time) if config.target_time else None
        report = drill(pg_ops.cluster(cluster, context.log, alerts), target, where=config.store)
        indexes_checked = sum(d.get("indexes_checked", 0) for d in report.amcheck.values())
        return dg.MaterializeResult(metadata=metadata_of(report, store=config.store, indexes_checked=indexes_checked))

    archive = dg.AssetSpec(archive_key(cluster), group_name=GROUP,
                           description=f"The WAL archive of {cluster}: observed by {SENSOR} every minute.")

    @dg.asset_check(asset=archive_key(cluster), name=CHECK_CURRENT,
                    description="The newest archived segment is younger than archive_timeout + margin.")
    def wal_archive_is_current(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        from pg_ops.operations.wal import archive_health

        health = archive_health(pg_ops.cluster(cluster, context.log))
        age = health.status.last_archived_age_seconds
        return dg.AssetCheckResult(passed=not health.stale, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "last_archived_wal": dg.MetadataValue.text(health.status.last_archived_wal or "none"),
            "age_seconds": dg.MetadataValue.float(round(age, 1) if age is not None else -1.0),
            "limit_seconds": dg.MetadataValue.float(float(health.stale_after_seconds))})

    @dg.asset_check(asset=archive_key(cluster), name=CHECK_NOT_FAILING,
                    description="The archiver's last attempt succeeded (pg_stat_archiver on the primary).")
    def wal_archive_not_failing(context: dg.AssetCheckExecutionContext,
                                pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        from pg_ops.operations.wal import archive_health

        health = archive_health(pg_ops.cluster(cluster, context.log))
        return dg.AssetCheckResult(passed=not health.status.failing, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "failed_count": dg.MetadataValue.int(health.status.failed_count),
            "last_failed_wal": dg.MetadataValue.text(health.status.last_failed_wal or "none"),
            "ready_segments": dg.MetadataValue.int(health.status.ready_segments)})

    @dg.asset_check(asset=archive_key(cluster), name=CHECK_NO_GAP,
                    description="Every WAL segment and timeline history file after the newest base backup is in "
                                "the archive (the current incarnation's): recovery reaches the newest segment.")
    def wal_archive_has_no_gap(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        from pg_ops.operations.wal import recovery_window

        window = recovery_window(pg_ops.cluster(cluster, context.log))
        return dg.AssetCheckResult(passed=window.gap is None, severity=dg.AssetCheckSeverity.ERROR, metadata={
            "first_missing": dg.MetadataValue.text(window.first_missing or "none"),
            "older_base_backups_stop_at": dg.MetadataValue.text(window.before_gap or "none"),
            **_window_metadata(window)})

    @dg.asset_check(asset=pitr_key(cluster), name=CHECK_DRILLED,
                    description="The newest point-in-time drill passed, within the last 8 days; not due yet "
                                "(passes, saying so) before the cluster's first scheduled drill after its first "
                                "base backup.")
    def latest_recovery_point_drilled(context: dg.AssetCheckExecutionContext,
                                      pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        from pg_ops.operations.due import not_due_yet
        from pg_ops.operations.recover import pitr_drill_status

        ctx = pg_ops.cluster(cluster, context.log)
        status = pitr_drill_status(ctx)
        latest = status["latest"] or {}
        waiting = None if latest else not_due_yet(ctx, "pitr_drill")
        return dg.AssetCheckResult(passed=status["drilled"] or waiting is not None, description=waiting,
                                   severity=dg.AssetCheckSeverity.ERROR, metadata={
            "due": dg.MetadataValue.text(waiting or "yes"),
            "drilled_base_backup": dg.MetadataValue.text(latest.get("base_backup") or "none"),
            "newest_base_backup": dg.MetadataValue.text(status["newest_base_backup"] or "none"),
            "result": dg.MetadataValue.text(latest.get("result") or "none"),
            "age_days": dg.MetadataValue.float(round(status["age_days"], 2) if status["age_days"] is not None
                                               else -1.0),
            "from_newest_base_backup": dg.MetadataValue.bool(status["from_newest_base_backup"]),
            "reason": dg.MetadataValue.text(latest.get("reason") or "")})

    checks = [wal_archive_is_current, wal_archive_not_failing, wal_archive_has_no_gap]
    if not recover_ops.drills_point_in_time(spec):  # no drill asset, schedule or check that could only fail
        return [base_backup], [archive], checks
    return [base_backup, pitr_drill], [archive], [*checks, latest_recovery_point_drilled]


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    archiving = [s for s in specs if s.backups.wal.enabled]
    assets, specs_only, checks = [], [], []
    for spec in archiving:
        a, s, c = _cluster_defs(spec)
        assets += a
        specs_only += s
        checks += c
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = [recover_cluster]
    schedules, sensors = [], []
    if archiving:
        base_assets = [a for a in assets if a.key.path[-1] == "base_backup"]
        drill_assets = [a for a in assets if a.key.path[-1] == "pitr_drill"]
        base_job = dg.define_asset_job(BASE_JOB, selection=dg.AssetSelection.assets(*base_assets),
                                       executor_def=dg.in_process_executor, tags={"dagster/max_retries": "0"},
                                       description="Base backup of a cluster, then archive retention.")
        checks_job = dg.define_asset_job(CHECKS_JOB, selection=dg.AssetSelection.checks(*checks),
                                         executor_def=dg.in_process_executor,
                                         description="WAL archive checks (no backup, no drill).")
        jobs += [base_job, checks_job]
        schedules.append(dg.ScheduleDefinition(name=CHECKS_SCHEDULE, cron_schedule="27 * * * *", job=checks_job,
                                               execution_timezone="UTC",
                                               default_status=dg.DefaultScheduleStatus.RUNNING))
        schedules += cluster_schedules(archiving, lambda s: s.backups.wal.base_backup_schedule, BASE_SCHEDULE,
                                       base_job, base_key, "Base backup")
        drilled = [s for s in archiving if recover_ops.drills_point_in_time(s)]
        if drilled:
            drill_job = dg.define_asset_job(DRILL_JOB, selection=dg.AssetSelection.assets(*drill_assets),
                                            executor_def=dg.in_process_executor, tags={"dagster/max_retries": "0"},
                                            description="Point-in-time drill of a cluster.")
            jobs.append(drill_job)
            schedules += cluster_schedules(drilled, lambda s: s.backups.wal.drill_schedule, DRILL_SCHEDULE,
                                           drill_job, pitr_key, "Point-in-time drill",
                                           nothing_to_do=recover_ops.nothing_to_pitr_drill)
        sensors.append(_archive_sensor(base_job))
    return dg.Definitions(assets=[*assets, *specs_only], asset_checks=checks, jobs=jobs, schedules=schedules,
                          sensors=sensors, resources={"alerts": ALERTS})


def _archive_sensor(base_job) -> dg.SensorDefinition:
    @dg.sensor(name=SENSOR, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
               job=base_job,
               description="Every archiving cluster's WAL archive: age of the newest segment, failed attempts, "
                           "WAL waiting on the primary (alerts fire once, resolve once) and the recovery window; "
                           "a gap no member could fill, or an archive with no base backup yet, requests a base "
                           "backup of that cluster.")
    def wal_archive_sensor(context: dg.SensorEvaluationContext, pg_ops: PgOpsResource,
                           alerts: AlertsResource) -> dg.SensorResult:
        from pg_ops.operations.context import ClusterContext
        from pg_ops.operations.wal import watch_archiving

        contexts = [ClusterContext.for_spec(s, context.log, alerts.delivery()) for s in pg_ops.specs()
                    if s.backups.wal.enabled]
        cursor = json.loads(context.cursor) if context.cursor else {}
        healths, cursor["alerts"] = watch_archiving(contexts, cursor.get("alerts", {}))
        copying = [c for c in contexts if c.spec.backups.copy_to is not None]
        if copying:  # backups.copy_to: the new WAL (and whatever a run could not copy) to the second store
            from pg_ops.operations.copy import copy_catch_up

            _copied, cursor["copy_alerts"] = copy_catch_up(copying, cursor.get("copy_alerts", {}))
        events, requests = [], []
        for cluster, health in healths.items():
            if isinstance(health, str):
                continue
            window = health.window
            hour = time.strftime("%Y%m%dT%H", time.gmtime())
            if window is not None and window.gap:
                # One request per gap and hour: a base backup that failed is asked for again.
                requests.append(gap_base_backup_request(cluster, window.sysid, window.first_missing or "gap", hour))
            elif window is not None and window.base_backups == 0 and window.sysid:
                # Archiving has started and nothing can be recovered yet: the window starts now,
                # not at the first nightly base backup (once per incarnation and hour, as above).
                requests.append(first_base_backup_request(cluster, window.sysid, hour))
            s = health.status
            events.append(dg.AssetObservation(asset_key=archive_key(cluster), metadata={
                "last_archived_wal": s.last_archived_wal or "none",
                "last_archived_age_seconds": dg.MetadataValue.float(round(s.last_archived_age_seconds or -1.0, 1)),
                "failed_count": s.failed_count, "ready_segments": s.ready_segments,
                "backlog_mb": dg.MetadataValue.float(round(health.backlog_bytes / 1e6, 1)),
                "failing": s.failing, "stale": health.stale,
                **(_window_metadata(window) if window is not None else {})}))
        return dg.SensorResult(asset_events=events, run_requests=requests, cursor=json.dumps(cursor, default=str))

    return wal_archive_sensor


def gap_base_backup_request(cluster: str, sysid: str, first_missing: str, hour: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"{cluster}-{sysid}-gap-{first_missing}-{hour}", asset_selection=[base_key(cluster)],
                         tags={CLUSTER_TAG: cluster, "pg_ops/reason": f"wal_archive_gap {first_missing}"})


def first_base_backup_request(cluster: str, sysid: str, hour: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"{cluster}-{sysid}-first-{hour}", asset_selection=[base_key(cluster)],
                         tags={CLUSTER_TAG: cluster, "pg_ops/reason": "no base backup of this system yet"})


def pitr_drill_run_config(cluster: str, target_time: str | None, store: str = "primary") -> dg.RunConfig:
    op = "__".join(pitr_key(cluster).path).replace("-", "_")
    return dg.RunConfig(ops={op: PitrDrillConfig(target_time=target_time, store=store)})


__all__ = ["build", "recover_run_config", "pitr_drill_run_config", "base_key", "pitr_key", "archive_key"]
