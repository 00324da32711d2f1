"""Deployment as assets, one partition per cluster: credentials -> desired state -> members
-> primary endpoint -> replication (with its checks), and the `deploy_cluster` job."""


from typing import Any

import dagster as dg

from pg_ops.defs.partitions import (
    LONG_TOPOLOGY_SECONDS,
    cluster_partitions,
    topology_config,
    topology_job_tags,
)
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import deploy as ops
from pg_ops.operations.status import cluster_status
from pg_ops.spec import ClusterSpec

GROUP = "deployment"
CHECK_ONE_PRIMARY = "exactly_one_writable_primary"
CHECK_STREAMING = "every_replica_streaming"
CHECK_SLOTS = "replication_slots_present"


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    partitions = cluster_partitions(specs)
    common: dict[str, Any] = {"partitions_def": partitions, "group_name": GROUP, "key_prefix": ["deployment"]}

    @dg.asset(**common, description="Generated passwords (a 0600 file locally, a Secret on Kubernetes).")
    def credentials(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        creds = ctx.platform.ensure_credentials()
        passfile = ctx.platform.passfile()
        return dg.MaterializeResult(metadata={
            "roles": dg.MetadataValue.text(", ".join(sorted(creds.passwords))),
            "passfile": dg.MetadataValue.path(str(passfile)) if passfile else dg.MetadataValue.text("n/a"),
        })

    @dg.asset(**common, deps=[credentials], description="The desired-state record (epoch, primary, lock).")
    def desired_state(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        state = ops.ensure_record(ctx)
        return dg.MaterializeResult(metadata={
            "epoch": state.epoch, "primary": state.primary, "record_version": state.version,
            "bootstrap": state.bootstrap,
        })

    @dg.asset(**common, deps=[desired_state], description="PostgreSQL members started through the member script.")
    def members(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        started = ops.start_members(ctx)
        state = ctx.state()
        return dg.MaterializeResult(metadata={
            "members": len(ctx.spec.member_names), "started": ", ".join(started) or "none",
            "system_identifier": state.system_identifier,
        })

    @dg.asset(**common, deps=[members], description="The endpoint that always reaches the current primary.")
    def primary_endpoint(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = ops.verify_primary_endpoint(ctx)
        return dg.MaterializeResult(metadata={
            "primary": result["member"],
            "dsn": dg.MetadataValue.text(ctx.platform.primary_dsn("postgres", "postgres")),
            "connect_ms": dg.MetadataValue.float(round(result["connect_ms"], 2)),
        })

    @dg.asset(
        **common, deps=[primary_endpoint], description="Streaming replication from the primary to every replica.",
        check_specs=[
            dg.AssetCheckSpec(CHECK_ONE_PRIMARY, asset=dg.AssetKey(["deployment", "replication"]),
                              description="Exactly one member accepts writes, and it is the designated primary."),
            dg.AssetCheckSpec(CHECK_STREAMING, asset=dg.AssetKey(["deployment", "replication"]),
                              description="Every replica's WAL receiver streams from the primary."),
            dg.AssetCheckSpec(CHECK_SLOTS, asset=dg.AssetKey(["deployment", "replication"]),
                              description="The primary holds a physical replication slot per replica."),
        ],
    )
    def replication(context: dg.AssetExecutionContext, pg_ops: PgOpsResource):
        ctx = pg_ops.cluster(context.partition_key, context.log)
        status = cluster_status(ctx)
        yield dg.MaterializeResult(metadata={
            "epoch": status.epoch,
            "primary": status.designated_primary,
            "max_lag_bytes": max((m.lag_bytes or 0) for m in status.members),
        })
        yield from replication_checks(ops.invariants(ctx.probe(), status.designated_primary))

    deploy_cluster = dg.define_asset_job(
        "deploy_cluster", selection=dg.AssetSelection.groups(GROUP), partitions_def=partitions,
        config=topology_config(partitions), executor_def=dg.in_process_executor,
        tags=topology_job_tags(LONG_TOPOLOGY_SECONDS),
        description="Deploy (or repair) a cluster: idempotent; starts what is stopped, re-clones what is empty.",
    )
    return dg.Definitions(assets=[credentials, desired_state, members, primary_endpoint, replication],
                          jobs=[deploy_cluster])


def replication_checks(found: ops.Invariants):
    """The deployment invariants (operations/deploy.py: the ones `deploy` fails on), one check each."""
    yield dg.AssetCheckResult(
        check_name=CHECK_ONE_PRIMARY, passed=found.one_primary,
        metadata={"writable": ", ".join(found.writable) or "none", "designated": found.primary},
    )
    not_streaming = list(found.not_streaming)
    yield dg.AssetCheckResult(
        check_name=CHECK_STREAMING, passed=not not_streaming,
        metadata={"not_streaming": ", ".join(not_streaming) or "none", "replicas": len(found.replicas)},
    )
    yield dg.AssetCheckResult(
        check_name=CHECK_SLOTS, passed=not found.missing_slots,
        metadata={"missing": ", ".join(found.missing_slots) or "none", "slots": ", ".join(found.slots)},
    )
