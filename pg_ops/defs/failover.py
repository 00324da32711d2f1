"""Topology-change jobs: failover, switchover, rebuild_member, rolling_restart, rollout, upgrade,
upgrade_blue_green (and its rollback). In-process executor (one
interpreter per step would cost seconds of downtime), one partition per cluster, never
retried automatically. Each records the change as an observation on the replication asset.

Each job's run config is built here, beside its Config class, in one function (`failover_run_config`,
...): `pg-ops` and the health sensor launch the jobs with it. Each op reports its operation's
result dataclass through pg_ops/defs/metadata.py, where `pg-ops` reads it back."""

from typing import Any, Optional

import dagster as dg

from pg_ops.defs.metadata import metadata_of
from pg_ops.defs.partitions import (
    LONG_TOPOLOGY_SECONDS,
    QUICK_TOPOLOGY_SECONDS,
    cluster_partitions,
    topology_config,
    topology_job_tags,
)
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import failover as failover_ops
from pg_ops.operations import rollout as rollouts
from pg_ops.operations.failover import RebuildResult, RestartResult, TopologyChange
from pg_ops.operations.rollout import RolloutResult
from pg_ops.spec import ClusterSpec

REPLICATION_ASSET = dg.AssetKey(["deployment", "replication"])
FAILOVER_JOB, FAILOVER_OP = "failover", "run_failover"
SWITCHOVER_JOB, SWITCHOVER_OP = "switchover", "run_switchover"
REBUILD_JOB, REBUILD_OP = "rebuild_member", "run_rebuild"
ROLLING_RESTART_JOB, ROLLING_RESTART_OP = "rolling_restart", "run_rolling_restart"
ROLLOUT_JOB, ROLLOUT_OP = "rollout", "run_rollout"
UPGRADE_JOB, UPGRADE_OP = "upgrade", "run_upgrade"
BLUE_GREEN_JOB, BLUE_GREEN_OP = "upgrade_blue_green", "run_blue_green"
BLUE_GREEN_ROLLBACK_JOB, BLUE_GREEN_ROLLBACK_OP = "upgrade_blue_green_rollback", "run_blue_green_rollback"


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


# -- run config: one function per job, what `pg-ops` and the sensors launch it with -------------
def failover_run_config(*, to: str | None = None, force: bool = False, incident: str | None = None,
                        detected_at: float | None = None, last_primary_lsn: str | None = None,
                        taken_over: str | None = None) -> dg.RunConfig:
    return dg.RunConfig(ops={FAILOVER_OP: FailoverConfig(
        to=to, force=force, incident=incident, detected_at=detected_at, last_primary_lsn=last_primary_lsn,
        taken_over=taken_over)})


def switchover_run_config(to: str) -> dg.RunConfig:
    return dg.RunConfig(ops={SWITCHOVER_OP: SwitchoverConfig(to=to)})


def rebuild_run_config(member: str, reclone: bool = False) -> dg.RunConfig:
    return dg.RunConfig(ops={REBUILD_OP: RebuildConfig(member=member, reclone=reclone)})


def upgrade_run_config(to_major: int, force: bool = False) -> dg.RunConfig:
    return dg.RunConfig(ops={UPGRADE_OP: UpgradeConfig(to_major=to_major, force=force)})


def blue_green_run_config(to_major: int, as_name: str, read_only_days: float = 7.0) -> dg.RunConfig:
    return dg.RunConfig(ops={BLUE_GREEN_OP: BlueGreenConfig(to_major=to_major, as_name=as_name,
                                                            read_only_days=read_only_days)})


def blue_green_rollback_run_config(as_name: str) -> dg.RunConfig:
    return dg.RunConfig(ops={BLUE_GREEN_ROLLBACK_OP: BlueGreenRollbackConfig(as_name=as_name)})


# -- what a run records ------------------------------------------------------------------------
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

    @dg.op(name=FAILOVER_OP, description="Fail over to the best replica after the primary is confirmed down.")
    def run_failover(context: dg.OpExecutionContext, config: FailoverConfig, pg_ops: PgOpsResource) -> TopologyChange:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        if config.taken_over:
            change = failover_ops.finish(ctx, failover_ops.TakeOver.from_json(config.taken_over))
        else:
            change = failover_ops.failover(ctx, to=config.to, force=config.force, detected_at=config.detected_at,
                                           last_primary_lsn=config.last_primary_lsn)
        _recorded(context, metadata_of(change, incident=config.incident))
        return change

    @dg.op(name=SWITCHOVER_OP, description="Planned, lossless change of primary.")
    def run_switchover(context: dg.OpExecutionContext, config: SwitchoverConfig,
                       pg_ops: PgOpsResource) -> TopologyChange:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        change = failover_ops.switchover(ctx, to=config.to)
        _recorded(context, metadata_of(change))
        return change

    @dg.op(name=REBUILD_OP, description="Rewind (or re-clone) a replica from the current primary.")
    def run_rebuild(context: dg.OpExecutionContext, config: RebuildConfig, pg_ops: PgOpsResource) -> RebuildResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = failover_ops.rebuild(ctx, config.member, reclone=config.reclone)
        context.add_output_metadata(metadata_of(result))
        return result

    @dg.op(name=ROLLING_RESTART_OP,
           description="Restart replicas one at a time, then switch over, so no restart is a failover.")
    def run_rolling_restart(context: dg.OpExecutionContext, pg_ops: PgOpsResource) -> RestartResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = failover_ops.rolling_restart(ctx)
        _observe(context, metadata_of(result, operation="rolling_restart"))
        context.add_output_metadata(metadata_of(result))
        return result

    @dg.op(name=ROLLOUT_OP, description="Bring every member to the rendered configuration and binaries: reload what "
                                        "can be reloaded, restart (replicas first, then a switchover) only what "
                                        "needs it.")
    def run_rollout(context: dg.OpExecutionContext, pg_ops: PgOpsResource) -> RolloutResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = rollouts.rollout(ctx)
        _observe(context, metadata_of(result, operation="rollout"))
        context.add_output_metadata(metadata_of(result))
        return result

    @dg.op(name=UPGRADE_OP,
           description="Major-version upgrade in place: pg_upgrade --link on the primary inside one downtime window, "
                       "then the replicas re-cloned, extensions updated, statistics rebuilt, a base backup.")
    def run_upgrade(context: dg.OpExecutionContext, config: UpgradeConfig, pg_ops: PgOpsResource) -> dict:
        from pg_ops.operations.upgrade import upgrade

        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = upgrade(ctx, config.to_major, force=config.force)
        metadata = {k: v for k, v in result.as_dict().items() if k not in ("steps", "extensions_updated")}
        metadata = {"operation": "upgrade", **metadata, **result.steps,
                    "extensions_updated": {db: names for db, names in result.extensions_updated.items() if names}}
        return _recorded(context, metadata)

    @dg.op(name=BLUE_GREEN_OP,
           description="Blue/green major-version upgrade: a new cluster on the new major filled by logical "
                       "replication, then a cut of seconds (the source read-only, caught up, sequences, fingerprints).")
    def run_blue_green(context: dg.OpExecutionContext, config: BlueGreenConfig, pg_ops: PgOpsResource) -> dict:
        from pg_ops.operations.blue_green import blue_green

        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = blue_green(ctx, config.to_major, config.as_name, read_only_days=config.read_only_days)
        metadata = {"operation": "upgrade_blue_green",
                    **{k: v for k, v in result.as_dict().items() if k != "steps"}, **result.steps}
        return _recorded(context, metadata)

    @dg.op(name=BLUE_GREEN_ROLLBACK_OP,
           description="Within a blue/green upgrade's rollback period: the source's databases writable again.")
    def run_blue_green_rollback(context: dg.OpExecutionContext, config: BlueGreenRollbackConfig,
                                pg_ops: PgOpsResource) -> dict:
        from pg_ops.operations.blue_green import rollback

        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = {"operation": "upgrade_blue_green_rollback", "from": config.as_name,
                    "databases_writable": rollback(ctx, config.as_name)}
        return _recorded(context, metadata)

    common: dict[str, Any] = {"partitions_def": partitions, "config": topology_config(partitions),
                              "executor_def": dg.in_process_executor}
    quick = {**common, "tags": topology_job_tags(QUICK_TOPOLOGY_SECONDS)}
    long = {**common, "tags": topology_job_tags(LONG_TOPOLOGY_SECONDS)}

    @dg.job(name=FAILOVER_JOB, **quick, description="Automatic or manual failover (launched by the cluster's health "
                                                    "sensor, cluster_health_<cluster>).")
    def failover_job():
        run_failover()

    @dg.job(name=SWITCHOVER_JOB, **quick, description="Planned switchover to a named replica (zero loss).")
    def switchover_job():
        run_switchover()

    @dg.job(name=REBUILD_JOB, **long, description="Rebuild a replica: pg_rewind, else re-clone.")
    def rebuild_job():
        run_rebuild()

    @dg.job(name=ROLLING_RESTART_JOB, **long, description="Restart every member without an unplanned failover.")
    def rolling_restart_job():
        run_rolling_restart()

    @dg.job(name=ROLLOUT_JOB, **long, description="Apply a changed configuration or new binaries to every member, "
                                                  "with a restart only where PostgreSQL needs one.")
    def rollout_job():
        run_rollout()

    @dg.job(name=UPGRADE_JOB, **long, description="Major-version upgrade in place (pg_upgrade --link), after a passed "
                                                   "rehearsal (upgrade_rehearsal).")
    def upgrade_job():
        run_upgrade()

    @dg.job(name=BLUE_GREEN_JOB, **long, description="Major-version upgrade into a NEW cluster by logical "
                                                              "replication; the source stays read-only for a rollback.")
    def blue_green_job():
        run_blue_green()

    @dg.job(name=BLUE_GREEN_ROLLBACK_JOB, **quick, description="Make a blue/green upgrade's source writable "
                                                                      "again (within its rollback period).")
    def blue_green_rollback_job():
        run_blue_green_rollback()

    return dg.Definitions(jobs=[failover_job, switchover_job, rebuild_job, rolling_restart_job, rollout_job,
                                upgrade_job, blue_green_job, blue_green_rollback_job])
