"""The backup store's checks, evaluated in the daemon without a run: `backup_is_fresh`
(pg_ops/defs/backups.py), `latest_backup_restores` and `drill_is_recent` (pg_ops/defs/drills.py),
and `upgrade_rehearsed` (pg_ops/defs/upgrades.py: the rehearsals the store holds, against the
major the primary answers with).

They used to be hourly schedules of check jobs: a run an hour each, a Kubernetes Job pod in
production. The `backup_store_checks` sensor reads the same store (the source of truth: a
backup or a drill result is what the store holds, whoever made it) every few minutes and
reports each check's evaluation when its outcome changes, and at least once an hour so the
UI shows how recent it is. The checks stay executable on demand (their jobs, or the UI).

Dagster's own freshness (FreshnessPolicy, or build_last_update_freshness_checks with its
sensor) judges from materialization events instead: it would call a backup fresh after the
store lost it, and its sensor still launches a run to evaluate its checks.
"""

import json
import logging
import time

import dagster as dg

from pg_ops.defs.backups import CHECK_FRESH, freshness_result, nightly_key
from pg_ops.defs.drills import CHECK_RECENT, CHECK_RESTORES, drill_key, recent_result, restores_result
from pg_ops.defs.resources import PgOpsResource
from pg_ops.defs.upgrades import CHECK_REHEARSED, rehearsal_key, rehearsed_result
from pg_ops.errors import PgOpsError
from pg_ops.spec import ClusterSpec

SENSOR_NAME = "backup_store_checks"
INTERVAL_SECONDS = 300
REPORT_AT_LEAST_EVERY = 3600
log = logging.getLogger("pg_ops.store_checks")


def store_results(ctx) -> list[tuple[dg.AssetKey, str, dg.AssetCheckResult]]:
    """The three checks of one cluster, from one look at its store. An unreachable store fails
    them all, with the reason (silence would read as 'still fine')."""
    from pg_ops.operations.drill import drill_status
    from pg_ops.operations.due import not_due_yet

    keys = [(nightly_key(ctx.name), CHECK_FRESH), (drill_key(ctx.name), CHECK_RESTORES),
            (drill_key(ctx.name), CHECK_RECENT)]
    try:
        status = drill_status(ctx)
        waiting = not_due_yet(ctx, "restore_drill")
        results = [freshness_result(ctx), restores_result(status, waiting), recent_result(status, waiting)]
    except PgOpsError as exc:
        results = [dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       metadata={"error": dg.MetadataValue.text(str(exc))})] * len(keys)
    found = [(key, name, result) for (key, name), result in zip(keys, results, strict=True)]
    try:
        found.append((rehearsal_key(ctx.name), CHECK_REHEARSED, rehearsed_result(ctx)))
    except PgOpsError as exc:  # the primary does not answer: the health sensor says so; no verdict here
        log.info("upgrade_rehearsed of %s not evaluated: %s", ctx.name, exc)
    return found


def evaluations_to_report(cursor: dict, results, now: float) -> tuple[list[dg.AssetCheckEvaluation], dict]:
    """Evaluations whose outcome changed since the last report, or that were last reported
    an hour ago; and the new cursor (per check: last reported outcome and time)."""
    events, memory = [], dict(cursor)
    for key, name, result in results:
        slot = f"{key.to_user_string()}:{name}"
        last = memory.get(slot)
        if last is None or last[0] != result.passed or now - last[1] >= REPORT_AT_LEAST_EVERY:
            events.append(dg.AssetCheckEvaluation(asset_key=key, check_name=name, passed=result.passed,
                                                  metadata=result.metadata, severity=result.severity,
                                                  description=result.description))
            memory[slot] = [result.passed, now]
    return events, memory


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    if not specs:
        return dg.Definitions()

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Backup freshness and drill results from each cluster's backup store, reported as "
                           "asset check evaluations (no run).")
    def backup_store_checks(context: dg.SensorEvaluationContext, pg_ops: PgOpsResource) -> dg.SensorResult:
        now = time.time()
        results = []
        for spec in specs:
            try:
                ctx = pg_ops.cluster(spec.name, context.log)
            except PgOpsError as exc:  # the spec is gone or unreadable: the health sensor alerts on it
                context.log.warning("backup store checks of %s skipped: %s", spec.name, exc)
                continue
            results += store_results(ctx)
        events, memory = evaluations_to_report(json.loads(context.cursor) if context.cursor else {}, results, now)
        return dg.SensorResult(asset_events=events, cursor=json.dumps(memory),
                               skip_reason=None if events else "no check changed since its last report")

    return dg.Definitions(sensors=[backup_store_checks])
