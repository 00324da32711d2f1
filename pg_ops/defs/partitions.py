"""One partition per cluster: the partition key is the cluster's name."""

from __future__ import annotations

import dagster as dg

from pg_ops.defs.resources import PgOpsResource
from pg_ops.errors import PgOpsError
from pg_ops.spec import ClusterSpec

# Runs that change topology carry this tag. The QueuedRunCoordinator allows one run per
# distinct value (dagster.yaml). The value is the cluster's name on every launch path: the
# jobs' partitioned config derives it from the partition (UI launchpad, backfills, sensor run
# requests) and pg-ops sets the same tags. A run without a partition keeps the job's default
# value and is serialised against every cluster. It is a second layer: the lock in the
# desired-state record is what holds.
TOPOLOGY_TAG = "pg_ops/topology"
# The cluster a run belongs to (alerts name it; a backup's partition is a date, not a cluster).
CLUSTER_TAG = "pg_ops/cluster"
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Run monitoring (dagster.yaml) stops a topology run that outlives this: a hung one would hold
# its cluster's queue slot for ever. A failover or switchover takes seconds (the record's lock
# expires after 600 s); a rebuild, deploy or rolling restart may clone a large data directory.
QUICK_TOPOLOGY_SECONDS = 600
LONG_TOPOLOGY_SECONDS = 3600


def topology_job_tags(max_runtime_seconds: int) -> dict[str, str]:
    """Definition tags of a topology job: never retried, stopped after `max_runtime_seconds`."""
    return {TOPOLOGY_TAG: "any-cluster", "dagster/max_retries": "0", MAX_RUNTIME_TAG: str(max_runtime_seconds)}


def cluster_partitions(specs: list[ClusterSpec]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([s.name for s in specs])


def cluster_tags(cluster: str) -> dict[str, str]:
    """What a run of a cluster-partitioned topology job adds for its partition."""
    return {TOPOLOGY_TAG: cluster, CLUSTER_TAG: cluster}


def topology_config(partitions: dg.StaticPartitionsDefinition) -> dg.PartitionedConfig:
    """The topology jobs' config: empty (each launch supplies its own), with the partition's
    cluster tags, so the tag concurrency limit is per cluster whoever launches the run."""
    return dg.PartitionedConfig(partitions_def=partitions, run_config_for_partition_key_fn=lambda _key: {},
                                tags_for_partition_key_fn=cluster_tags)


def topology_run_tags(cluster: str, max_runtime_seconds: int = QUICK_TOPOLOGY_SECONDS) -> dict[str, str]:
    """Every tag a topology run of `cluster` carries (pg-ops and the health sensor set them
    explicitly; Dagster derives the same from the job and the partition)."""
    return {**topology_job_tags(max_runtime_seconds), **cluster_tags(cluster)}


def schedule_groups(specs: list[ClusterSpec], cron_of, base_name: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """One schedule per distinct cron over the clusters that share it: (schedule name, cron,
    clusters). The group holding the first spec keeps the documented name (`nightly_backup`,
    `weekly_restore_drill`); the others are suffixed with their first cluster."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        groups.setdefault(cron_of(spec), []).append(spec.name)
    return [(base_name if index == 0 else f"{base_name}_{clusters[0].replace('-', '_')}", cron, tuple(clusters))
            for index, (cron, clusters) in enumerate(groups.items())]


def cluster_schedules(specs: list[ClusterSpec], cron_of, base_name: str, job, key_of, what: str,
                      nothing_to_do=None) -> list:
    """Schedules of an unpartitioned per-cluster asset job (`schedule_groups`): each tick asks
    for the asset `key_of(cluster)` of every cluster in its group; `what` starts the description.
    `nothing_to_do(ctx)`: why the job has nothing to do yet on a cluster (a drill with no backup
    to drill), or None; such a cluster is skipped with that reason instead of getting a run that
    would fail. When it cannot tell (the store does not answer), the run is requested: its failure
    says why."""
    out = []
    for name, cron, clusters in schedule_groups(specs, cron_of, base_name):
        skips = " (skipped, with the reason, on a cluster with nothing to drill yet)" if nothing_to_do else ""

        @dg.schedule(name=name, cron_schedule=cron, job=job, execution_timezone="UTC",
                     default_status=dg.DefaultScheduleStatus.RUNNING,
                     description=f"{what} of {', '.join(clusters)} ({cron} UTC){skips}.")
        def scheduled(context: dg.ScheduleEvaluationContext, pg_ops: PgOpsResource, clusters=clusters):
            stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
            requests, reasons = [], []
            for cluster in clusters:
                reason = None
                if nothing_to_do is not None:
                    try:
                        reason = nothing_to_do(pg_ops.cluster(cluster, context.log))
                    except PgOpsError as exc:
                        context.log.warning("could not tell whether %s has anything to do (%s): requesting the "
                                            "run", cluster, exc)
                if reason:
                    reasons.append(f"{cluster}: {reason}")
                    continue
                requests.append(dg.RunRequest(run_key=f"{cluster}-{stamp}", asset_selection=[key_of(cluster)],
                                              tags={CLUSTER_TAG: cluster}))
            if not requests:
                return dg.SkipReason("; ".join(reasons))
            for reason in reasons:
                context.log.info("skipped %s", reason)
            return requests

        out.append(scheduled)
    return out
