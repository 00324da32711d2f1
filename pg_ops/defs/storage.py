"""`storage_forecast_sensor`: every member's days to a full data filesystem, forecast from the
storage observations the health sensor keeps on `health/<c>/<m>` (pg_ops/operations/
storage_forecast.py), as an observation on the same key, and the `storage_filling` alert (fired
once, resolved once) while the alert threshold is forecast within
`monitoring.storage_forecast_days`. Both platforms: the observations are pg_ops's own."""

import json
import time

import dagster as dg

from pg_ops.defs.health import member_asset_key
from pg_ops.defs.resources import ALERTS, AlertsResource, PgOpsResource
from pg_ops.operations import alerts as alert_ops
from pg_ops.operations import cluster_alerts
from pg_ops.operations import storage_forecast as sf
from pg_ops.operations.alert_model import Alert
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec

SENSOR_NAME = "storage_forecast_sensor"
SENSOR_INTERVAL_S = 600
OBSERVATIONS_READ = 2000  # at most one a minute per member: a day's worth


def ratio_points(instance: dg.DagsterInstance, key: dg.AssetKey, since: float) -> list[tuple[float, float]]:
    """(time, storage_ratio) of the member's observations since `since`."""
    records = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key, after_timestamp=since),
                                          limit=OBSERVATIONS_READ).records
    points = []
    for record in records:
        observation = record.asset_observation
        value = observation.metadata.get("storage_ratio") if observation is not None else None
        if isinstance(value, dg.FloatMetadataValue) and value.value is not None:
            points.append((record.timestamp, float(value.value)))
    return points


def evaluate(instance: dg.DagsterInstance, specs: list[ClusterSpec], open_alerts: dict,
             now: float, min_span_s: float = sf.MIN_SPAN_S) -> tuple[list, list[Alert], dict]:
    """(observations, alerts to send, the new open-alert state)."""
    events, active = [], []
    for spec in specs:
        threshold = spec.monitoring.storage_alert_ratio
        for member in spec.member_names:
            key = member_asset_key(spec.name, member)
            f = sf.forecast(ratio_points(instance, key, now - sf.WINDOW_S), threshold, min_span_s)
            if f is None:
                continue
            events.append(dg.AssetObservation(asset_key=key, metadata={
                "storage_growth_per_day": dg.MetadataValue.float(f.growth_per_day),
                "storage_days_to_alert": dg.MetadataValue.float(f.days_to_threshold if f.days_to_threshold is not None
                                                                else -1.0),
                "storage_days_to_full": dg.MetadataValue.float(f.days_to_full if f.days_to_full is not None else -1.0),
                "storage_forecast_points": f.points}))
            alert = sf.filling_alert(spec.name, member, f, threshold, spec.monitoring.storage_forecast_days)
            if alert is not None:
                active.append(alert)
    mine = {k: v for k, v in open_alerts.items() if v.get("kind") == sf.KIND}
    to_send, state = alert_ops.reconcile(mine, active, None, {s.name for s in specs}, now)
    return events, to_send, state


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=SENSOR_INTERVAL_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Forecasts each member's data filesystem from its storage observations: days to the "
                           "storage alert and to full, and a storage_filling alert while the threshold is "
                           "forecast within monitoring.storage_forecast_days.")
    def storage_forecast_sensor(context: dg.SensorEvaluationContext, pg_ops: PgOpsResource,
                                alerts: AlertsResource) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        watched = [s for s in pg_ops.specs() if s.name in {x.name for x in specs}]
        events, to_send, cursor["alerts"] = evaluate(context.instance, watched, cursor.get("alerts", {}), time.time())
        if to_send:
            secrets = [x for s in watched for x in cluster_alerts.cluster_secrets(ClusterContext.for_spec(s))]
            alerts.deliver(to_send, {s.name: s for s in watched}, secrets, context.log)
        return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor),
                               skip_reason=None if events else "no member has enough storage observations to "
                                                               "forecast from yet")

    return dg.Definitions(sensors=[storage_forecast_sensor], resources={"alerts": ALERTS})
