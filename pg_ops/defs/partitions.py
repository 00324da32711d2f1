"""One partition per cluster: the partition key is the cluster's name."""

from __future__ import annotations

import dagster as dg

from pg_ops.spec import ClusterSpec

# Runs that change topology carry this tag. The QueuedRunCoordinator allows one run per
# distinct value (dagster.yaml). pg_ops's own launches (CLI, sensors) set it to the cluster
# name; a launch from the UI keeps the job's default value, so those are serialised across
# clusters. It is a second layer: the lock in the desired-state record is what holds.
TOPOLOGY_TAG = "pg_ops/topology"
TOPOLOGY_JOB_TAGS = {TOPOLOGY_TAG: "any-cluster", "dagster/max_retries": "0"}


def cluster_partitions(specs: list[ClusterSpec]) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([s.name for s in specs])


def topology_run_tags(cluster: str) -> dict[str, str]:
    return {**TOPOLOGY_JOB_TAGS, TOPOLOGY_TAG: cluster}


def schedule_groups(specs: list[ClusterSpec], cron_of, base_name: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """One schedule per distinct cron over the clusters that share it: (schedule name, cron,
    clusters). The group holding the first spec keeps the documented name (`nightly_backup`,
    `weekly_restore_drill`); the others are suffixed with their first cluster."""
    groups: dict[str, list[str]] = {}
    for spec in specs:
        groups.setdefault(cron_of(spec), []).append(spec.name)
    return [(base_name if index == 0 else f"{base_name}_{clusters[0].replace('-', '_')}", cron, tuple(clusters))
            for index, (cron, clusters) in enumerate(groups.items())]
