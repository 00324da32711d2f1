"""Deployment as assets, one partition per cluster: credentials -> desired state -> members
-> roles and databases -> primary endpoint -> replication, and the `deploy_cluster` job; and, per cluster,
`cluster_health/<c>`: the cluster as it is now, with the deployment's checks.

The checks (every member up, exactly one writable primary, every replica streaming, replication
slots present) hang off `cluster_health/<c>`, not off the partitioned `replication` asset: they
are the cluster now, not at deploy time. Its health sensor (`cluster_health_<cluster>`) reports their evaluations and
an observation of the cluster (primary, epoch, members, what is wrong and what brings it back)
whenever one changes, and at least once an hour (pg_ops/defs/health.py); `deploy_cluster`
reports them at the end of each deploy; and they can be executed on demand (job
`cluster_health_checks`, or the UI)."""


from typing import Any

import dagster as dg

from pg_ops.defs.partitions import (
    LONG_TOPOLOGY_SECONDS,
    cluster_partitions,
    topology_config,
    topology_job_tags,
)
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import catalog
from pg_ops.operations import deploy as deploy_ops
from pg_ops.operations.status import cluster_status
from pg_ops.spec import ClusterSpec

GROUP = "deployment"
CHECK_MEMBERS_UP = "every_member_up"
CHECK_ONE_PRIMARY = "exactly_one_writable_primary"
CHECK_STREAMING = "every_replica_streaming"
CHECK_SLOTS = "replication_slots_present"
HEALTH_CHECKS = {
    CHECK_MEMBERS_UP: "Every member answers (a member down, fenced or not, fails it until `pg-ops deploy` brings it "
                      "back).",
    CHECK_ONE_PRIMARY: "Exactly one member accepts writes, and it is the designated primary.",
    CHECK_STREAMING: "Every replica's WAL receiver streams from the primary.",
    CHECK_SLOTS: "The primary holds a physical replication slot per replica.",
}
HEALTH_CHECKS_JOB = "cluster_health_checks"


def health_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["cluster_health", cluster])


def member_rows(status) -> str:
    lines = ["| member | role | timeline | lag bytes | error |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m.name} | {m.role} | {m.timeline if m.timeline is not None else ''} | "
              f"{m.lag_bytes if m.lag_bytes is not None else ''} | {(m.error or '').replace('|', '/')[:120]} |"
              for m in status.members]
    return "\n".join(lines)


def health_evaluations(cluster: str, members: dict, status) -> list[dg.AssetCheckEvaluation]:
    """The deployment checks of `cluster` from one probe of its members (`members`: name ->
    MemberProbe) and its status (operations/status.py) of the same moment."""
    found = deploy_ops.invariants(members, status.designated_primary)
    down = [m for m in status.members if not m.up]
    fenced_down = [m for m in down if m.role == "fenced"]
    hint = ("; a fenced former primary rejoins by itself as a replica once it reaches the primary (local: pg_ops "
            "starts it again; Kubernetes: its StatefulSet)" if fenced_down else "")
    hint += "; `pg-ops deploy` starts it again" if len(fenced_down) < len(down) else ""
    key = health_key(cluster)

    def evaluation(name: str, passed: bool, description: str, **metadata) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(asset_key=key, check_name=name, passed=passed, description=description,
                                       severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)

    not_streaming = list(found.not_streaming)
    return [
        evaluation(CHECK_MEMBERS_UP, not down,
                   ", ".join(f"{m.name} is {m.role} and does not answer" for m in down) + hint
                   if down else f"all {len(status.members)} members answer",
                   down=", ".join(f"{m.name} ({m.role})" for m in down) or "none",
                   members=len(status.members)),
        evaluation(CHECK_ONE_PRIMARY, found.one_primary,
                   f"writable: {', '.join(found.writable) or 'none'}; designated: {found.primary}",
                   writable=", ".join(found.writable) or "none", designated=found.primary),
        evaluation(CHECK_STREAMING, not not_streaming,
                   f"not streaming: {', '.join(not_streaming)}" if not_streaming else "every replica streams",
                   not_streaming=", ".join(not_streaming) or "none", replicas=len(found.replicas)),
        evaluation(CHECK_SLOTS, not found.missing_slots,
                   f"missing: {', '.join(found.missing_slots)}" if found.missing_slots else "one slot per replica",
                   missing=", ".join(found.missing_slots) or "none", slots=", ".join(found.slots)),
    ]


def health_observation(cluster: str, status, evaluations: list[dg.AssetCheckEvaluation],
                       alerts: list[str] | None = None) -> dg.AssetObservation:
    """The cluster now, readable on its asset page: healthy or not, why, and the members."""
    failed = [e for e in evaluations if not e.passed]
    primary = status.designated_primary
    summary = ("healthy: " if not failed else "NOT healthy: ") + "; ".join(
        [f"primary {primary}"] + [e.description or e.check_name for e in (failed or evaluations[:1])])
    metadata: dict[str, dg.MetadataValue] = {
        "healthy": dg.MetadataValue.bool(not failed),
        "summary": dg.MetadataValue.text(summary),
        "primary": dg.MetadataValue.text(primary),
        "epoch": dg.MetadataValue.int(int(status.epoch)),
        "failed_checks": dg.MetadataValue.text(", ".join(e.check_name for e in failed) or "none"),
        "members": dg.MetadataValue.md(member_rows(status)),
    }
    if status.pooler and "error" not in status.pooler:  # spec `pooler`: plotted on the asset page
        metadata.update({f"pooler_{k}": dg.MetadataValue.float(float(status.pooler[k]))
                         for k in ("clients_active", "clients_waiting", "servers", "max_wait_s")})
    if status.maintenance:  # pg-ops maintenance: automatic failover and rollouts held
        from pg_ops.operations.maintenance import until_text

        summary += f"; MAINTENANCE MODE until {until_text(status.maintenance['until'])}"
        metadata["summary"] = dg.MetadataValue.text(summary)
        metadata["maintenance_until"] = dg.MetadataValue.text(until_text(status.maintenance["until"]))
        metadata["maintenance_reason"] = dg.MetadataValue.text(status.maintenance["reason"] or "none given")
    if alerts is not None:
        metadata["active_alerts"] = dg.MetadataValue.text("; ".join(alerts) or "none")
    return dg.AssetObservation(asset_key=health_key(cluster), description=summary, metadata=metadata)


def result_of(evaluation: dg.AssetCheckEvaluation) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(asset_key=evaluation.asset_key, check_name=evaluation.check_name,
                               passed=evaluation.passed, description=evaluation.description,
                               severity=evaluation.severity, metadata=evaluation.metadata)


def health_checks(spec: ClusterSpec) -> dg.AssetChecksDefinition:
    key = health_key(spec.name)

    @dg.multi_asset_check(name=f"cluster_health_{spec.name.replace('-', '_')}",
                          specs=[dg.AssetCheckSpec(n, asset=key, description=d) for n, d in HEALTH_CHECKS.items()])
    def checks(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource):
        ctx = pg_ops.cluster(spec.name, context.log)
        status = cluster_status(ctx)
        for evaluation in health_evaluations(spec.name, ctx.probe(), status):
            yield result_of(evaluation)

    return checks


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
        state = deploy_ops.ensure_record(ctx)
        return dg.MaterializeResult(metadata={
            "epoch": state.epoch, "primary": state.primary, "record_version": state.version,
            "bootstrap": state.bootstrap,
        })

    @dg.asset(**common, deps=[desired_state], description="PostgreSQL members started through the member script.")
    def members(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        started = deploy_ops.start_members(ctx)
        state = ctx.state()
        return dg.MaterializeResult(metadata={
            "members": len(ctx.spec.member_names), "started": ", ".join(started) or "none",
            "system_identifier": state.system_identifier,
        })

    @dg.asset(**common, deps=[members], description="The spec's roles, memberships, databases, schemas, extensions "
              "and default privileges, and the applications' credentials delivered (files locally, Secrets on "
              "Kubernetes); idempotent: `changed` is 0 when the cluster already matched.")
    def roles_and_databases(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        return dg.MaterializeResult(metadata=catalog.reconcile(ctx).metadata())

    @dg.asset(**common, deps=[roles_and_databases],
              description="The endpoint that always reaches the current primary.")
    def primary_endpoint(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        result = deploy_ops.verify_primary_endpoint(ctx)
        return dg.MaterializeResult(metadata={
            "primary": result["member"],
            "dsn": dg.MetadataValue.text(ctx.platform.primary_dsn("postgres", "postgres")),
            "connect_ms": dg.MetadataValue.float(round(result["connect_ms"], 2)),
        })

    @dg.asset(**common, deps=[primary_endpoint], description="Streaming replication from the primary to every "
              "replica (its checks, the cluster now: cluster_health/<cluster>).")
    def replication(context: dg.AssetExecutionContext, pg_ops: PgOpsResource) -> dg.MaterializeResult:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        status = cluster_status(ctx)
        # The deployment checks as this deploy leaves the cluster, on cluster_health/<cluster>
        # (the health sensor keeps them current from here on).
        evaluations = health_evaluations(ctx.name, ctx.probe(), status)
        for event in [*evaluations, health_observation(ctx.name, status, evaluations)]:
            context.instance.report_runless_asset_event(event)
        return dg.MaterializeResult(metadata={
            "epoch": status.epoch,
            "primary": status.designated_primary,
            "max_lag_bytes": max((m.lag_bytes or 0) for m in status.members),
        })

    deployed = [credentials, desired_state, members, roles_and_databases, primary_endpoint, replication]
    deploy_cluster = dg.define_asset_job(
        "deploy_cluster", selection=dg.AssetSelection.assets(*deployed), partitions_def=partitions,
        config=topology_config(partitions), executor_def=dg.in_process_executor,
        tags=topology_job_tags(LONG_TOPOLOGY_SECONDS),
        description="Deploy (or repair) a cluster: idempotent; starts what is stopped, re-clones what is empty.",
    )
    health_assets = [dg.AssetSpec(health_key(s.name), group_name=GROUP, deps=[replication.key],
                                  description=f"Cluster {s.name} now: which member is primary, which answer, "
                                              f"replication; kept current by its health sensor (its checks "
                                              f"and observations).")
                     for s in specs]
    checks = [health_checks(s) for s in specs]
    checks_job = dg.define_asset_job(HEALTH_CHECKS_JOB, selection=dg.AssetSelection.checks(*checks),
                                     executor_def=dg.in_process_executor,
                                     description="The deployment checks of every cluster now, on demand "
                                                 "(each cluster's health sensor reports them without a run).")
    return dg.Definitions(assets=[*deployed, *health_assets], asset_checks=checks,
                          jobs=[deploy_cluster, checks_job])

