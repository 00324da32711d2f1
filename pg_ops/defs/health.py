"""Health in Dagster: one health sensor per cluster, `cluster_health_<cluster>` (alerts, member
observations, failover run requests), `cluster_specs_sensor` (alerts about the spec files as a
whole), the run-failure alert sensor, the alerts resource, and the service-level checks with
their schedule. Thin: the decisions are operations/health.py's, the measurements
operations/slo.py's.

One sensor per cluster, not one over the fleet: the daemon evaluates sensors in parallel threads
(`sensors: use_threads` in dagster.yaml), so a cluster's failover request leaves when its own
tick sees the failure, not when every other cluster's watch has ended; each cluster's ticks,
cursor and skip reasons are its own in the UI, and a cluster that hangs a tick delays only itself.

Member observations go to one asset key per member, ["health", cluster, member]: Dagster
plots numeric metadata per asset key, so each member gets its own lag / connections / storage
plots, and "at most once a minute per member" is simply "at most once a minute per key".
The service-level checks hang off one asset per cluster, ["service_levels", cluster].
"""

import json
import logging
import time

import dagster as dg

from pg_ops.defs.deployment import health_evaluations, health_observation
from pg_ops.defs.failover import FAILOVER_JOB, failover_run_config
from pg_ops.defs.partitions import CLUSTER_TAG, TOPOLOGY_TAG, topology_run_tags
from pg_ops.defs.resources import ALERTS, AlertsResource, PgOpsResource
from pg_ops.errors import Refused, SpecError, first_line
from pg_ops.operations import alerts as alert_ops
from pg_ops.operations import cluster_alerts, slo
from pg_ops.operations import health as health_ops
from pg_ops.operations.alert_model import Alert
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha.model import FailoverRequest
from pg_ops.operations.health import SensorCursor
from pg_ops.operations.status import MemberStatus
from pg_ops.runs import chain_of_error_info, own_error
from pg_ops.spec import ClusterSpec

SENSOR_PREFIX = "cluster_health_"  # + the cluster's name with `-` as `_` (sensor_name)
SPECS_SENSOR_NAME = "cluster_specs_sensor"
SPECS_SENSOR_INTERVAL_S = 10  # a bad or unknown spec file is alerted within a daemon loop or two
RUN_FAILURE_SENSOR_NAME = "pg_ops_run_failure_alert"
SLO_JOB = "service_level_checks"
SLO_SCHEDULE = "service_level_checks_schedule"
RETENTION_SENSOR_NAME = "health_observation_retention"
OBSERVATIONS_KEPT_DAYS = 14
DETECTION_CHECK = "failed_member_detection"
HEALTH_REPORT_AT_LEAST_EVERY_S = 3600.0  # cluster_health/<cluster>'s checks, even when nothing changed
TICKS_KEPT = 30
DAEMON_LOOP_S = 5.0  # the sensor daemon's loop (dagster: at most one evaluation per sensor per loop)
WATCH_MARGIN_S = 1.5  # the tick ends this long before the next loop (its decision and delivery)
GROUP = "health"
CHECKS = ("connect_time", "concurrent_connections", "data_consistency", "query_latency_p95",
          "failed_member_detection")
log = logging.getLogger("pg_ops.health")


def member_asset_key(cluster: str, member: str) -> dg.AssetKey:
    return dg.AssetKey(["health", cluster, member])


def service_level_asset_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["service_levels", cluster])


def sensor_name(cluster: str) -> str:
    """The cluster's health sensor (Dagster names allow no `-`; cluster names, DNS labels, no `_`)."""
    return SENSOR_PREFIX + cluster.replace("-", "_")


def health_sensor_cursor(instance: dg.DagsterInstance, cluster: str) -> SensorCursor:
    """The cluster's health sensor's record (what the failed-member-detection check reads on demand)."""
    states = [s for s in instance.all_instigator_state()
              if s.instigator_name == sensor_name(cluster) and getattr(s.instigator_data, "cursor", None) is not None]
    states.sort(key=lambda s: getattr(s.instigator_data, "last_tick_timestamp", 0) or 0)
    return SensorCursor.from_json(getattr(states[-1].instigator_data, "cursor", None) if states else None)


def _failed_run_lookup(context):
    """Whether the failover run a run_key names has failed (asked only while an incident is open)."""
    def failed(run_key: str) -> bool:
        try:
            instance = context.instance
        except dg.DagsterInvariantViolationError:  # a test context without an instance
            return False
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
        return bool(runs) and runs[0].status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    return failed


def _observation(cluster: str, member: MemberStatus) -> dg.AssetObservation:
    """The member's observation: its status as asset metadata (the LSN as PostgreSQL prints it)."""
    fields = {"role": member.role, "streaming": member.streaming, "timeline": member.timeline,
              "lsn": None if member.lsn is None else str(member.lsn), "lag_bytes": member.lag_bytes,
              "lag_seconds": member.lag_seconds, "sync_state": member.sync_state, "connections": member.connections,
              "max_connections": member.max_connections, "storage_ratio": member.storage_ratio,
              "error": member.error}
    metadata: dict = {k: v for k, v in fields.items() if v is not None}
    if member.lag_seconds is not None:
        metadata["lag_seconds"] = dg.MetadataValue.float(float(member.lag_seconds))
    metadata["reachable"] = member.up
    return dg.AssetObservation(asset_key=member_asset_key(cluster, member.name), metadata=metadata)


def _failover_request(request: FailoverRequest) -> dg.RunRequest:
    config = failover_run_config(incident=request.incident, detected_at=request.detected_at,
                                 last_primary_lsn=request.last_primary_lsn, taken_over=request.taken_over)
    return dg.RunRequest(run_key=request.run_key, job_name=FAILOVER_JOB, partition_key=request.cluster,
                         run_config=config, tags=topology_run_tags(request.cluster))


def evaluate_health(context, contexts: list[ClusterContext], alerts: AlertsResource,
                    now: float | None = None, spec_alerts: tuple[list[Alert], set[str]] = ([], set()),
                    watch_seconds: float = 0.0) -> dg.SensorResult:
    """One tick over every cluster (the sensor's body, callable from benchmarks and tests).
    `spec_alerts`: alerts about the specs themselves and the clusters they were evaluated for
    (loaded_specs). `watch_seconds`: how long each healthy cluster's primary is watched after
    the decision."""
    now = now or time.time()
    cursor = SensorCursor.from_json(context.cursor)
    specs = {c.name: c.spec for c in contexts}
    watches = health_ops.watch_fleet(contexts, cursor.clusters, now,
                                     failed_run=_failed_run_lookup(context), watch_seconds=watch_seconds)
    active, unknown, scope, run_requests = list(spec_alerts[0]), set(), set(spec_alerts[1]), []
    for watch in watches:
        active += watch.alerts
        unknown |= watch.unknown
        if watch.health is not None:
            scope.add(watch.cluster)
        cursor.clusters[watch.cluster] = watch.memory
        cursor.detections = (cursor.detections + watch.detections)[-health_ops.DETECTIONS_KEPT:]
        if watch.failover is not None:
            run_requests.append(_failover_request(watch.failover))
    to_send, cursor.alerts = alert_ops.reconcile(cursor.alerts, active, unknown, scope, now)
    to_send += [event for watch in watches for event in watch.events]  # one-off: sent once, never resolved
    secrets = [s for c in contexts for s in cluster_alerts.cluster_secrets(c)]
    alerts.deliver(to_send, specs, secrets, context.log)
    cursor.ticks = (cursor.ticks + [now])[-TICKS_KEPT:]
    cursor.probe_seconds = round(max((w.health.seconds for w in watches if w.health), default=0.0), 3)
    events: list = [_observation(w.cluster, member) for w in watches for member in w.observe]
    events += cluster_health_events(cursor, watches, active, now, secrets)
    return dg.SensorResult(run_requests=run_requests, asset_events=events, cursor=cursor.to_json(),
                           skip_reason=None if (run_requests or events) else "all clusters unchanged")


def cluster_health_events(cursor: SensorCursor, watches, active: list[Alert], now: float, secrets=()) -> list:
    """The deployment checks of each watched cluster and an observation of it, on its
    cluster_health/<cluster> asset (pg_ops/defs/deployment.py), whenever a check's outcome, the
    primary, maintenance mode or the cluster's active alerts change, and at least once an hour (the UI then shows
    how recent they are). `cursor.reported` remembers what was last reported per cluster;
    the alerts shown are scrubbed of `secrets` as delivered ones are."""
    reported = cursor.reported
    events: list = []
    for watch in watches:
        if watch.health is None:  # the pass did not run: its health_check_failed alert says why
            continue
        status = watch.health.status
        evaluations = health_evaluations(watch.cluster, watch.health.view.members, status)
        alerts = sorted(f"{a.severity} {a.kind}: {alert_ops.scrub(a, secrets).summary}" for a in active
                        if a.cluster == watch.cluster)
        signature = json.dumps([status.designated_primary, status.maintenance,
                                [(e.check_name, e.passed, e.description) for e in evaluations],
                                sorted(f"{a.kind}:{a.details.get('member', '')}" for a in active
                                       if a.cluster == watch.cluster)])
        last = reported.get(watch.cluster)
        if last is not None and last.sig == signature and now - last.at < HEALTH_REPORT_AT_LEAST_EVERY_S:
            continue
        reported[watch.cluster] = health_ops.Seen(signature, now)
        events += [*evaluations, health_observation(watch.cluster, status, evaluations, alerts)]
    return events


def sensor_timing(interval_seconds: int) -> tuple[int, float]:
    """(minimum_interval_seconds, watch seconds) for the health sensor. The daemon evaluates
    sensors at most once per loop of DAEMON_LOOP_S; a minimum interval equal to the loop makes
    it skip every other loop whenever a loop comes a few milliseconds early, so the minimum
    is set below the loop. Each tick then watches the primary for most of the loop, so a
    failure is seen within a probe interval rather than at the next loop."""
    if interval_seconds <= DAEMON_LOOP_S:
        return 1, DAEMON_LOOP_S - WATCH_MARGIN_S
    return interval_seconds - 2, DAEMON_LOOP_S - WATCH_MARGIN_S


# -- specs the loaded definitions do not know ----------------------------------------------------
SPECS_SCOPE = "pg_ops"  # the cluster name of alerts about the specs as a whole


def loaded_specs(read_specs, loaded: list[ClusterSpec]) -> tuple[list[ClusterSpec], tuple[list[Alert], set[str]]]:
    """The specs to watch this tick: those of the files as they are now, limited to clusters the
    loaded code location knows (a failover request for another one would fail partition
    validation and, with it, the tick of every cluster). A spec added since the code location
    loaded is skipped with an alert until it is reloaded; unreadable spec files leave the loaded
    specs in charge, with an alert. Returns (specs, (alerts, clusters those were evaluated for))."""
    known = {s.name for s in loaded}
    now = time.time()
    try:
        current = read_specs()
    except SpecError as exc:
        alert = Alert(cluster=SPECS_SCOPE, severity="critical", kind="cluster_specs_unreadable",
                      summary=f"the cluster specs cannot be read ({exc}); watching the specs loaded with the "
                              f"code location", fired_at=now)
        return loaded, ([alert], {SPECS_SCOPE})
    # About pg_ops itself, so under SPECS_SCOPE (always evaluated: it resolves once the cluster
    # is loaded, whatever that cluster's own health says); `member` is its subject, as in
    # every alert key.
    alerts = [Alert(cluster=SPECS_SCOPE, severity="warning", kind="cluster_not_loaded",
                    summary=f"cluster {s.name} is in the specs but not in the loaded code location: not watched, "
                            f"and no failover can be launched for it until the code location is reloaded",
                    details={"member": s.name}, fired_at=now) for s in current if s.name not in known]
    return [s for s in current if s.name in known], (alerts, {SPECS_SCOPE})


# -- the failed-member-detection check, evaluated by the sensor itself ------------------------------
def detection_checks(before: SensorCursor, after: SensorCursor, specs: list[ClusterSpec],
                     now: float) -> list[dg.AssetCheckEvaluation]:
    """failed_member_detection of each cluster from the sensor's own record (no run, no reading
    another instigator's cursor): when the tick recorded a new member failure for the cluster,
    and otherwise once an hour."""
    ticks = before.ticks
    new_hour = not ticks or int(ticks[-1] // 3600) != int(now // 3600)
    fresh = {d.cluster for d in after.detections if d not in before.detections}
    return [check_evaluation(DETECTION_CHECK, service_level_asset_key(s.name), slo.failed_member_detection(
                after, s.name, now=now, sensor_interval=s.monitoring.interval_seconds))
            for s in specs if new_hour or s.name in fresh]


def with_detection_checks(result: dg.SensorResult, before: str | None, specs: list[ClusterSpec],
                          now: float) -> dg.SensorResult:
    checks = detection_checks(SensorCursor.from_json(before), SensorCursor.from_json(result.cursor), specs, now)
    if not checks:
        return result
    return dg.SensorResult(run_requests=result.run_requests, asset_events=[*result.asset_events, *checks],
                           cursor=result.cursor)


# -- observation retention ---------------------------------------------------------------------
def trim_observations(instance: dg.DagsterInstance, keys: list[dg.AssetKey], now: float | None = None,
                      kept_days: float = OBSERVATIONS_KEPT_DAYS) -> list[dg.AssetKey]:
    """Bound the member observations. Dagster 1.13's public API deletes asset events only a
    whole key at a time (`DagsterInstance.wipe_assets`; `delete_run` takes a run's events, and
    these are run-less): so a member's history is wiped when its oldest observation is older
    than `kept_days`, and starts again with the sensor's next observation (within a minute).
    What is kept is between 0 and `kept_days` of history, at most one row a minute per member."""
    cutoff = (now or time.time()) - kept_days * 86400
    stale = []
    for key in keys:
        oldest = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=1, ascending=True).records
        if oldest and oldest[0].timestamp < cutoff:
            stale.append(key)
    if stale:
        instance.wipe_assets(stale)
    return stale


def health_sensor(spec: ClusterSpec) -> dg.SensorDefinition:
    """The cluster's health sensor: its spec as the files say now (a changed threshold applies at
    the next tick), skipped once the cluster is gone from them."""
    minimum_interval, watch_seconds = sensor_timing(spec.monitoring.interval_seconds)

    @dg.sensor(name=sensor_name(spec.name), minimum_interval_seconds=minimum_interval,
               default_status=dg.DefaultSensorStatus.RUNNING,
               job_name=FAILOVER_JOB,  # defined in pg_ops/defs/failover.py
               description=f"Every member of cluster {spec.name}: alerts (fire once, resolve once), lag and state "
                           f"observations, and a failover run when its primary is confirmed down.")
    def cluster_health(context: dg.SensorEvaluationContext, pg_ops: PgOpsResource,
                       alerts: AlertsResource) -> dg.SensorResult | dg.SkipReason:
        now = time.time()
        watched, _ = loaded_specs(pg_ops.specs, [spec])  # the spec-file alerts: cluster_specs_sensor's
        if not watched:
            return dg.SkipReason(f"cluster {spec.name} is no longer in the cluster specs")
        contexts = [ClusterContext.for_spec(s, context.log) for s in watched]
        result = evaluate_health(context, contexts, alerts, now=now, watch_seconds=watch_seconds)
        return with_detection_checks(result, context.cursor, watched, now)

    return cluster_health


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    @dg.sensor(name=SPECS_SENSOR_NAME, minimum_interval_seconds=SPECS_SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="The cluster spec files as a whole: alerts when they cannot be read, or name a "
                           "cluster the loaded code location does not know (no health sensor watches it).")
    def cluster_specs_sensor(context: dg.SensorEvaluationContext, pg_ops: PgOpsResource,
                             alerts: AlertsResource) -> dg.SensorResult:
        _, spec_alerts = loaded_specs(pg_ops.specs, specs)
        return evaluate_health(context, [], alerts, spec_alerts=spec_alerts)

    @dg.sensor(name=RETENTION_SENSOR_NAME, minimum_interval_seconds=3600, default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Wipes a member's health observations once the oldest is {OBSERVATIONS_KEPT_DAYS} "
                           f"days old.")
    def observation_retention(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        wiped = trim_observations(context.instance,
                                  [member_asset_key(s.name, m) for s in specs for m in s.member_names])
        return dg.SkipReason(f"wiped the observations of {', '.join(k.to_user_string() for k in wiped)}" if wiped
                             else f"no member's observations are older than {OBSERVATIONS_KEPT_DAYS} days")

    # Every 5 s: a failed topology run is worth knowing about as soon as a failed member.
    @dg.run_failure_sensor(name=RUN_FAILURE_SENSOR_NAME, default_status=dg.DefaultSensorStatus.RUNNING,
                           minimum_interval_seconds=5, description="Alerts when any pg_ops run fails.")
    def run_failure_alert(context: dg.RunFailureSensorContext, alerts: AlertsResource, pg_ops: PgOpsResource):
        try:
            current = pg_ops.specs()
        except SpecError:  # the health sensor alerts on it; this alert still goes out
            current = specs
        deliver_run_failure(context, alerts, {s.name: s for s in current})

    member_assets = [dg.AssetSpec(member_asset_key(s.name, m), group_name=GROUP,
                                  description=f"Member {m} of {s.name}: state and lag, observed by "
                                              f"{sensor_name(s.name)}.")
                     for s in specs for m in s.member_names]
    slo_assets = [dg.AssetSpec(service_level_asset_key(s.name), group_name=GROUP,
                               description=f"Service levels of cluster {s.name} (asset checks).")
                  for s in specs]
    checks = [service_level_checks(s) for s in specs]
    # failed_member_detection is evaluated by the health sensor itself (and on demand in the UI).
    detection = [dg.AssetCheckKey(service_level_asset_key(s.name), DETECTION_CHECK) for s in specs]
    job = dg.define_asset_job(SLO_JOB,
                              selection=dg.AssetSelection.checks(*checks) - dg.AssetSelection.checks(*detection),
                              executor_def=dg.in_process_executor,
                              description="Measure every cluster's service levels now.")
    schedule = dg.ScheduleDefinition(name=SLO_SCHEDULE, job=job, cron_schedule="17 * * * *",
                                     default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description="Service-level checks every hour.")
    return dg.Definitions(assets=member_assets + slo_assets, asset_checks=checks, jobs=[job], schedules=[schedule],
                          sensors=[*(health_sensor(s) for s in specs), cluster_specs_sensor, run_failure_alert,
                                   observation_retention],
                          resources={"alerts": ALERTS})


def run_cluster(run, specs: dict[str, ClusterSpec]) -> str:
    """The cluster a run belongs to: its pg_ops/cluster tag (every pg_ops launch path sets it),
    else its topology tag, a partition or a selected asset that names a cluster, else the only
    cluster. Never a backup's partition, which is a date."""
    tags = run.tags
    named = [tags.get(CLUSTER_TAG), tags.get(TOPOLOGY_TAG), tags.get("dagster/partition")]
    named += [k.path[1] for k in (run.asset_selection or ()) if len(k.path) > 1]
    found = next((name for name in named if name in specs), None)
    return found or tags.get(CLUSTER_TAG) or (next(iter(specs)) if len(specs) == 1 else SPECS_SCOPE)


def run_failure_alert_for(run, message: str, specs: dict[str, ClusterSpec], refused: bool = False) -> Alert:
    """CRITICAL for a failed topology run, WARNING otherwise; a run that refused what it was
    asked (errors.Refused: nothing changed, the person who asked was told) is never CRITICAL."""
    cluster = run_cluster(run, specs)
    topology = TOPOLOGY_TAG in run.tags and not refused
    return Alert(cluster=cluster, severity="critical" if topology else "warning", kind="run_failed",
                 summary=f"run {run.job_name} ({run.run_id[:8]}) for {cluster} failed: {message}",
                 details={"job": run.job_name, "run_id": run.run_id, "partition": run.tags.get("dagster/partition")},
                 fired_at=time.time())


def deliver_run_failure(context: dg.RunFailureSensorContext, alerts: AlertsResource,
                        specs: dict[str, ClusterSpec]) -> Alert:
    steps = context.get_step_failure_events()
    error = steps[0].step_failure_data.error if steps and steps[0].event_specific_data else None
    own = own_error(chain_of_error_info(error)) if error is not None else None
    message = (own.message if own else context.failure_event.message or "the run failed").strip()
    refused = own is not None and own.class_name == Refused.__name__
    alert = run_failure_alert_for(context.dagster_run, first_line(message) or "failed", specs, refused)
    secrets = []
    if alert.cluster in specs:
        secrets = cluster_alerts.cluster_secrets(ClusterContext.for_spec(specs[alert.cluster]))
    alerts.deliver([alert], specs, secrets, context.log, events=True)
    return alert


def service_level_checks(spec: ClusterSpec) -> dg.AssetChecksDefinition:
    asset = service_level_asset_key(spec.name)
    descriptions = {
        "connect_time": "Connecting through the primary endpoint takes < 5 s.",
        "concurrent_connections": "100 connections can be held at once.",
        "data_consistency": "A row written on the primary (pg_ops database) is read back from every replica.",
        "query_latency_p95": "p95 latency < 100 ms under a short pgbench run (scratch database).",
        "failed_member_detection": "A failed member is detected in < 30 s (from the health sensor's record).",
    }

    @dg.multi_asset_check(name=f"service_levels_{spec.name.replace('-', '_')}", can_subset=True,
                          specs=[dg.AssetCheckSpec(n, asset=asset, description=d) for n, d in descriptions.items()])
    def checks(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource):
        ctx = pg_ops.cluster(spec.name, context.log)
        wanted = {k.name for k in context.selected_asset_check_keys}
        measure = {
            "connect_time": lambda: slo.connect_time(ctx),
            "concurrent_connections": lambda: slo.concurrent_connections(ctx),
            "data_consistency": lambda: slo.data_consistency(ctx),
            "query_latency_p95": lambda: slo.query_latency(ctx),
            "failed_member_detection": lambda: slo.failed_member_detection(
                health_sensor_cursor(context.instance, spec.name), spec.name,
                sensor_interval=spec.monitoring.interval_seconds),
        }
        for name in CHECKS:
            if name in wanted:
                yield check_result(name, asset, measure[name]())

    return checks


def level_metadata(level: slo.ServiceLevel) -> dict:
    metadata = {"summary": dg.MetadataValue.text(level.summary), "limit": level.limit, "unit": level.unit}
    if level.figure is not None:
        metadata["figure"] = dg.MetadataValue.float(float(level.figure))
    for key, value in level.details.items():
        if value is None:
            continue
        metadata[key] = dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
    return metadata


def check_result(name: str, asset: dg.AssetKey, level: slo.ServiceLevel) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=name, asset_key=asset, passed=level.passed, metadata=level_metadata(level),
                               severity=dg.AssetCheckSeverity.ERROR)


def check_evaluation(name: str, asset: dg.AssetKey, level: slo.ServiceLevel) -> dg.AssetCheckEvaluation:
    """The same result, reported from outside a run (by a sensor)."""
    return dg.AssetCheckEvaluation(asset_key=asset, check_name=name, passed=level.passed,
                                   metadata=level_metadata(level), severity=dg.AssetCheckSeverity.ERROR)
