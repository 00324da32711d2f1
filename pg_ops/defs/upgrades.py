"""Major-version upgrades in Dagster: per cluster, a `upgrades/<cluster>/rehearsal` asset (one
rehearsal of the upgrade to a chosen major on a restored copy of a backup: operations/upgrade.py)
and the `upgrade_rehearsal` job that materializes it (`pg-ops upgrade --to MAJOR --rehearse`).

A rehearsal that fails raises (the run fails with pg_upgrade's or the verification's reason,
its run-failure alert goes out); the operation has already recorded it beside the backup. Its
materialization carries the timed steps: `pg_upgrade_seconds` is the downtime window's core."""

import dagster as dg

from pg_ops.defs.resources import PgOpsResource
from pg_ops.spec import ClusterSpec

GROUP = "upgrades"
JOB = "upgrade_rehearsal"
CHECK_REHEARSED = "upgrade_rehearsed"


class RehearsalConfig(dg.Config):
    to_major: int  # the PostgreSQL major to rehearse the upgrade to (16, 17 or 18)
    backup_id: str | None = None  # default: the newest complete backup


def rehearsal_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["upgrades", cluster, "rehearsal"])


def rehearsal_run_kwargs(cluster: str) -> dict:
    return {"asset_selection": [rehearsal_key(cluster)]}


def rehearsal_run_config(cluster: str, to_major: int, backup_id: str | None) -> dg.RunConfig:
    op = "__".join(rehearsal_key(cluster).path).replace("-", "_")
    return dg.RunConfig(ops={op: RehearsalConfig(to_major=to_major, backup_id=backup_id)})


def rehearsed_result(ctx) -> dg.AssetCheckResult:
    """`upgrade_rehearsed`: the major the spec asks for (`postgres.version`) is what the cluster
    runs, or its upgrade passed a rehearsal within REHEARSAL_MAX_AGE_DAYS (what `pg-ops upgrade`
    requires without --force). A warning, not an error: nothing is broken until someone upgrades."""
    from pg_ops.operations.upgrade import REHEARSAL_MAX_AGE_DAYS, rehearsal_standing

    standing = rehearsal_standing(ctx)
    metadata: dict[str, dg.MetadataValue] = {"max_age_days": dg.MetadataValue.int(REHEARSAL_MAX_AGE_DAYS)}
    if standing.latest is not None:
        metadata["latest"] = dg.MetadataValue.json(standing.latest)
    return dg.AssetCheckResult(check_name=CHECK_REHEARSED, passed=standing.passed,
                               severity=dg.AssetCheckSeverity.WARN, description=standing.description,
                               metadata=metadata)


def _rehearsal_asset(spec: ClusterSpec) -> dg.AssetsDefinition:
    cluster = spec.name

    @dg.asset(key=rehearsal_key(cluster), group_name=GROUP, kinds={"postgres"},
              check_specs=[dg.AssetCheckSpec(CHECK_REHEARSED, asset=rehearsal_key(cluster),
                                             description="The major the spec asks for (postgres.version) is the "
                                                         "one the cluster runs, or its upgrade passed a rehearsal "
                                                         "within 7 days (pg-ops upgrade requires it).")],
              description=f"Upgrade rehearsal of cluster {cluster}: a backup restored into a scratch server of its "
                          f"major, upgraded there with pg_upgrade --link, and verified (row counts, amcheck, "
                          f"extensions updated); each step timed.")
    def rehearsal(context: dg.AssetExecutionContext, config: RehearsalConfig,
                  pg_ops: PgOpsResource) -> dg.MaterializeResult:
        from pg_ops.operations.upgrade import rehearse_upgrade

        ctx = pg_ops.cluster(cluster, context.log)
        report = rehearse_upgrade(ctx, config.to_major, config.backup_id)
        return dg.MaterializeResult(check_results=[rehearsed_result(ctx)], metadata={
            "result": dg.MetadataValue.text(report.result),
            "upgrade": dg.MetadataValue.text(f"PostgreSQL {report.from_major} -> {report.to_major}"),
            "backup_id": dg.MetadataValue.text(report.backup_id),
            "pg_upgrade_seconds": dg.MetadataValue.float(report.steps.get("pg_upgrade_seconds", 0.0)),
            "total_seconds": dg.MetadataValue.float(report.total_seconds),
            "report": dg.MetadataValue.json(report.as_dict()),  # what `pg-ops upgrade --rehearse` prints
        })

    return rehearsal


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    assets = [_rehearsal_asset(spec) for spec in specs]
    job = dg.define_asset_job(JOB, selection=dg.AssetSelection.assets(*assets), executor_def=dg.in_process_executor,
                              tags={"dagster/max_retries": "0"},
                              description="Rehearse a cluster's major-version upgrade on a restored copy of a backup.")
    return dg.Definitions(assets=assets, jobs=[job])
