"""Topology-change jobs: failover, switchover, rebuild_member, rolling_restart, rollout, upgrade,
upgrade_blue_green (and its rollback). In-process executor (one
interpreter per step would cost seconds of downtime), one partition per cluster, never
retried automatically. Each records the change as an observation on the replication asset."""

from typing import Any, Optional

import dagster as dg

from pg_ops.defs.partitions import (
    LONG_TOPOLOGY_SECONDS,
    QUICK_TOPOLOGY_SECONDS,
    cluster_partitions,
    topology_config,
    topology_job_tags,
)
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import failover as ops
from pg_ops.operations import rollout as rollouts
from pg_ops.spec import ClusterSpec

REPLICATION_ASSET = dg.AssetKey(["deployment", "replication"])


class FailoverConfig(dg.Config):
    to: Optional[str] = None  # noqa: UP045 - Dagster config needs Optional
    force: bool = False
    incident: Optional[str] = None  # noqa: UP045
    detected_at: Optional[float] = None  # noqa: UP045 - unix time the sensor first saw the primary fail
    last_primary_lsn: Optional[str] = None  # noqa: UP045 - the primary's last LSN the sensor observed
    # What the health sensor's tick already did (operations/failover.TakeOver as JSON: member
    # names, LSNs, timings); the run then finishes and records that change instead of deciding.
    taken_over: Optional[str] = None  # noqa: UP045


class SwitchoverConfig(dg.Config):
    to: str


class RebuildConfig(dg.Config):
    member: str
    reclone: bool = False


class UpgradeConfig(dg.Config):
    to_major: int  # the PostgreSQL major to upgrade to (the spec's postgres.version)
    force: bool = False  # without a passed rehearsal within a week


class BlueGreenConfig(dg.Config):
    to_major: int  # the new cluster's PostgreSQL major
    as_name: str  # the new cluster's name
    read_only_days: float = 7.0  # how long the source stays read-only for a rollback


class BlueGreenRollbackConfig(dg.Config):
    as_name: str  # the cluster the blue/green upgrade made


def _observe(context: dg.OpExecutionContext, metadata: dict) -> None:
    context.log_event(dg.AssetObservation(asset_key=REPLICATION_ASSET, partition=context.partition_key,
                                          metadata=metadata))


def _recorded(context: dg.OpExecutionContext, metadata: dict) -> dict:
    """A topology change's metadata: observed on the replication asset, on the op's output, returned."""
    _observe(context, metadata)
    context.add_output_metadata(metadata)
    return metadata


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    partitions = cluster_partitions(specs)

    @dg.op(description="Fail over to the best replica after the primary is confirmed down.")
    def run_failover(context: dg.OpExecutionContext, config: FailoverConfig, pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        if config.taken_over:
            change = ops.finish(ctx, ops.TakeOver.from_json(config.taken_over))
        else:
            change = ops.failover(ctx, to=config.to, force=config.force, detected_at=config.detected_at,
                                  last_primary_lsn=config.last_primary_lsn)
        metadata = {**change.metadata(), **({"incident": config.incident} if config.incident else {})}
        return _recorded(context, metadata)

    @dg.op(description="Planned, lossless change of primary.")
    def run_switchover(context: dg.OpExecutionContext, config: SwitchoverConfig, pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = ops.switchover(ctx, to=config.to).metadata()
        return _recorded(context, metadata)

    @dg.op(description="Rewind (or re-clone) a replica from the current primary.")
    def run_rebuild(context: dg.OpExecutionContext, config: RebuildConfig, pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = ops.rebuild(ctx, config.member, reclone=config.reclone)
        context.add_output_metadata(metadata)
        return metadata

    @dg.op(description="Restart replicas one at a time, then switch over, so no restart is a failover.")
    def run_rolling_restart(context: dg.OpExecutionContext, pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = ops.rolling_restart(ctx)
        _observe(context, {"operation": "rolling_restart", **metadata})
        context.add_output_metadata(metadata)
        return metadata

    @dg.op(description="Bring every member to the rendered configuration and binaries: reload what can be "
                       "reloaded, restart (replicas first, then a switchover) only what needs it.")
    def run_rollout(context: dg.OpExecutionContext, pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = rollouts.rollout(ctx).metadata()
        _observe(context, {"operation": "rollout", **metadata})
        context.add_output_metadata(metadata)
        return metadata

    @dg.op(description="Major-version upgrade in place: pg_upgrade --link on the primary inside one downtime window, "
                       "then the replicas re-cloned, extensions updated, statistics rebuilt, a base backup.")
    def run_upgrade(context: dg.OpExecutionContext, config: UpgradeConfig, pg_ops: PgOpsResource) -> dict:
        from pg_ops.operations.upgrade import upgrade

        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = upgrade(ctx, config.to_major, force=config.force)
        metadata = {k: v for k, v in result.as_dict().items() if k not in ("steps", "extensions_updated")}
        metadata = {"operation": "upgrade", **metadata, **result.steps,
                    "extensions_updated": {db: names for db, names in result.extensions_updated.items() if names}}
        return _recorded(context, metadata)

    @dg.op(description="Blue/green major-version upgrade: a new cluster on the new major filled by logical "
                       "replication, then a cut of seconds (the source read-only, caught up, sequences, fingerprints).")
    def run_blue_green(context: dg.OpExecutionContext, config: BlueGreenConfig, pg_ops: PgOpsResource) -> dict:
        from pg_ops.operations.blue_green import blue_green

        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = blue_green(ctx, config.to_major, config.as_name, read_only_days=config.read_only_days)
        metadata = {"operation": "upgrade_blue_green",
                    **{k: v for k, v in result.as_dict().items() if k != "steps"}, **result.steps}
        return _recorded(context, metadata)

    @dg.op(description="Within a blue/green upgrade's rollback period: the source's databases writable again.")
    def run_blue_green_rollback(context: dg.OpExecutionContext, config: BlueGreenRollbackConfig,
                                pg_ops: PgOpsResource) -> dict:
        from pg_ops.operations.blue_green import rollback

        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = {"operation": "upgrade_blue_green_rollback", "from": config.as_name,
                    "databases_writable": rollback(ctx, config.as_name)}
        return _recorded(context, metadata)

    common: dict[str, Any] = {"partitions_def": partitions, "config": topology_config(partitions), "executor_def": dg.in_process_executor}
    quick = {**common, "tags": topology_job_tags(QUICK_TOPOLOGY_SECONDS)}
    long = {**common, "tags": topology_job_tags(LONG_TOPOLOGY_SECONDS)}

    @dg.job(name="failover", **quick, description="Automatic or manual failover (launched by the cluster's health sensor, cluster_health_<cluster>).")
    def failover_job():
        run_failover()

    @dg.job(name="switchover", **quick, description="Planned switchover to a named replica (zero loss).")
    def switchover_job():
        run_switchover()

    @dg.job(name="rebuild_member", **long, description="Rebuild a replica: pg_rewind, else re-clone.")
    def rebuild_job():
        run_rebuild()

    @dg.job(name="rolling_restart", **long, description="Restart every member without an unplanned failover.")
    def rolling_restart_job():
        run_rolling_restart()

    @dg.job(name="rollout", **long, description="Apply a changed configuration or new binaries to every member, "
                                                  "with a restart only where PostgreSQL needs one.")
    def rollout_job():
        run_rollout()

    @dg.job(name="upgrade", **long, description="Major-version upgrade in place (pg_upgrade --link), after a passed "
                                                   "rehearsal (upgrade_rehearsal).")
    def upgrade_job():
        run_upgrade()

    @dg.job(name="upgrade_blue_green", **long, description="Major-version upgrade into a NEW cluster by logical "
                                                              "replication; the source stays read-only for a rollback.")
    def blue_green_job():
        run_blue_green()

    @dg.job(name="upgrade_blue_green_rollback", **quick, description="Make a blue/green upgrade's source writable "
                                                                      "again (within its rollback period).")
    def blue_green_rollback_job():
        run_blue_green_rollback()

    return dg.Definitions(jobs=[failover_job, switchover_job, rebuild_job, rolling_restart_job, rollout_job,
                                upgrade_job, blue_green_job, blue_green_rollback_job])
