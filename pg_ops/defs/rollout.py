"""Changes to a running cluster. Maintenance mode (job `maintenance`, `pg-ops maintenance`), and
changes rolled out by themselves: the check "members run the rendered configuration" on each
cluster's `cluster_health/<c>`, and `rollout_sensor`, which starts the `rollout` job
(pg_ops/defs/failover.py) for a cluster whose members do not run what its spec renders, when
operations/rollout.py's `why_wait` finds nothing against it (a refused value, a member down or
not streaming, no recent backup, outside `maintenance.window`); otherwise its tick says why the
change waits. One run per target (the run key is the rendered configuration's and binaries'
digest): a failed rollout is not retried by the sensor, its run-failure alert goes out instead."""

import json
from datetime import UTC, datetime

import dagster as dg

from pg_ops.defs.deployment import health_key
from pg_ops.defs.health import loaded_specs
from pg_ops.defs.partitions import LONG_TOPOLOGY_SECONDS, cluster_partitions, topology_run_tags
from pg_ops.defs.resources import PgOpsResource
from pg_ops.errors import PgOpsError
from pg_ops.operations import maintenance
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.rollout import ClusterConfig, member_configs, target_signature, why_wait
from pg_ops.spec import ClusterSpec

CHECK_NAME = "members_run_rendered_configuration"
SENSOR_NAME = "rollout_sensor"
JOB_NAME = "rollout"  # defined in pg_ops/defs/failover.py with the other topology jobs
SENSOR_INTERVAL_S = 60
MAINTENANCE_JOB = "maintenance"
MAINTENANCE_OP = "set_maintenance_mode"


class MaintenanceConfig(dg.Config):
    seconds: float = 0.0  # 0: off
    reason: str = ""


def maintenance_run_config(seconds: float, reason: str = "") -> dg.RunConfig:
    return dg.RunConfig(ops={MAINTENANCE_OP: MaintenanceConfig(seconds=seconds, reason=reason)})


def config_evaluation(cluster: str, configs: ClusterConfig) -> dg.AssetCheckEvaluation:
    pending = configs.pending
    return dg.AssetCheckEvaluation(
        asset_key=health_key(cluster), check_name=CHECK_NAME, passed=not pending,
        severity=dg.AssetCheckSeverity.WARN, description=configs.summary(),
        metadata={"pending": dg.MetadataValue.json(pending),
                  "members": dg.MetadataValue.text(", ".join(sorted(configs.members)))})


def rollout_request(ctx: ClusterContext) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"rollout-{ctx.name}-{target_signature(ctx)}", job_name=JOB_NAME,
                         partition_key=ctx.name, tags=topology_run_tags(ctx.name, LONG_TOPOLOGY_SECONDS))


def evaluate(contexts: list[ClusterContext], cursor: dict, now: datetime) -> tuple[list, list, list[str]]:
    """(run requests, check evaluations that changed since the cursor, what each waiting cluster
    waits for). Updates `cursor` (cluster -> the last reported evaluation)."""
    requests, events, said = [], [], []
    for ctx in contexts:
        try:
            ctx.state()
            configs = member_configs(ctx)
        except PgOpsError as exc:  # not deployed yet, no credentials: nothing to roll out
            said.append(f"{ctx.name}: {exc}")
            continue
        evaluation = config_evaluation(ctx.name, configs)
        reported = f"{evaluation.passed}:{evaluation.description}"
        if cursor.get(ctx.name) != reported:
            events.append(evaluation)
            cursor[ctx.name] = reported
        if not configs.pending:
            continue
        try:
            wait = why_wait(ctx, configs, now)
        except PgOpsError as exc:
            wait = str(exc)
        if wait:
            said.append(f"{ctx.name}: {configs.summary()}; waits: {wait}")
        else:
            requests.append(rollout_request(ctx))
    return requests, events, said


def config_check(spec: ClusterSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=health_key(spec.name), name=CHECK_NAME,
                    description="Every member runs the configuration and binaries its spec renders (nothing "
                                "waiting for a reload or a restart, nothing refused).")
    def members_run_rendered_configuration(context: dg.AssetCheckExecutionContext,
                                           pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        evaluation = config_evaluation(spec.name, member_configs(pg_ops.cluster(spec.name, context.log)))
        return dg.AssetCheckResult(passed=evaluation.passed, severity=evaluation.severity,
                                   description=evaluation.description, metadata=evaluation.metadata)

    return members_run_rendered_configuration


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    checks = [config_check(spec) for spec in specs]
    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=SENSOR_INTERVAL_S, job_name=JOB_NAME,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Starts a rollout when a cluster's members do not run what its spec renders, "
                           "inside its maintenance window, with every replica streaming and a recent backup; "
                           "otherwise says why the change waits.")
    def rollout_sensor(context: dg.SensorEvaluationContext, pg_ops: PgOpsResource) -> dg.SensorResult:
        watched = loaded_specs(pg_ops.specs, specs)[0]
        cursor = json.loads(context.cursor or "{}")
        requests, events, said = evaluate([ClusterContext.for_spec(s, context.log) for s in watched], cursor,
                                          datetime.now(UTC))
        skip = None if requests else ("; ".join(said) or "every member of every cluster runs its rendered "
                                                          "configuration")
        return dg.SensorResult(run_requests=requests, asset_events=events, cursor=json.dumps(cursor),
                               skip_reason=skip)

    @dg.op(name=MAINTENANCE_OP, description="Hold (or resume) the cluster's automatic failover and rollouts.")
    def set_maintenance_mode(context: dg.OpExecutionContext, config: MaintenanceConfig,
                             pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        state = maintenance.set_maintenance(ctx, config.seconds or None, config.reason)
        on = state.maintenance_until > 0
        metadata = {"maintenance": "on" if on else "off",
                    "until": maintenance.until_text(state.maintenance_until) if on else "",
                    "reason": state.maintenance_reason}
        context.log_event(dg.AssetObservation(asset_key=health_key(ctx.name), metadata=metadata,
                                              description=f"maintenance mode {metadata['maintenance']}"
                                                          + (f" until {metadata['until']}" if on else "")))
        context.add_output_metadata(metadata)
        return metadata

    @dg.job(name=MAINTENANCE_JOB, partitions_def=cluster_partitions(specs), executor_def=dg.in_process_executor,
            description="Maintenance mode on (for a time) or off: no automatic failover or rollout meanwhile; "
                        "alerts go on (pg-ops maintenance).")
    def maintenance_job():
        set_maintenance_mode()

    return dg.Definitions(asset_checks=checks, sensors=[rollout_sensor], jobs=[maintenance_job])
