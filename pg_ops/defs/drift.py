"""Drift: of the Git-owned Kubernetes objects, one asset per Kubernetes cluster (what Git /
ArgoCD own: StatefulSet, Services, PDB, NetworkPolicy, RBAC, config ConfigMaps) with an asset
check that fails and names every drifted field; and of every cluster's roles, memberships,
databases, schemas and extensions against its spec (asset catalog/<cluster>, check
matches_spec). One job runs the checks, every hour. Local clusters have no Git-owned objects."""

import dagster as dg

from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import catalog as catalog_ops
from pg_ops.operations import drift as drift_ops
from pg_ops.spec import ClusterSpec

GROUP = "gitops"
CHECK_NAME = "matches_rendered_manifests"
CATALOG_GROUP = "catalog"
CATALOG_CHECK_NAME = "matches_spec"
JOB_NAME = "drift_check"
SCHEDULE_NAME = "hourly_drift_check"


def git_owned_asset_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["gitops", cluster, "git_owned_objects"])


def drift_check(spec: ClusterSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=git_owned_asset_key(spec.name), name=CHECK_NAME,
                    description="Every live Git-owned object sets the fields its rendered manifest sets, to the "
                                "same values (server-populated and defaulted fields are ignored).")
    def check(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        report = drift_ops.check_drift(pg_ops.cluster(spec.name, context.log))
        return dg.AssetCheckResult(
            passed=report.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=report.summary(),
            metadata={"objects_checked": len(report.checked), "missing": len(report.missing),
                      "drifted_fields": len(report.drifted),
                      "drift": dg.MetadataValue.md("\n".join(f"- `{line}`" for line in report.lines()) or "none")},
        )

    return check


def catalog_asset_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey(["catalog", cluster])


def catalog_check(spec: ClusterSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=catalog_asset_key(spec.name), name=CATALOG_CHECK_NAME,
                    description="pg_roles, pg_auth_members, pg_database, pg_namespace and pg_extension on the "
                                "primary match the spec's roles and databases (each difference named).")
    def check(context: dg.AssetCheckExecutionContext, pg_ops: PgOpsResource) -> dg.AssetCheckResult:
        report = catalog_ops.check_catalog(pg_ops.cluster(spec.name, context.log))
        return dg.AssetCheckResult(
            passed=report.passed, severity=dg.AssetCheckSeverity.ERROR, description=report.summary(),
            metadata={"differences": len(report.differences), "objects_checked": report.checked,
                      "drift": dg.MetadataValue.md("\n".join(f"- `{d}`" for d in report.differences) or "none")})

    return check


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    kubernetes = [s for s in specs if s.platform == "kubernetes"]
    if not specs:
        return dg.Definitions()
    assets = [dg.AssetSpec(git_owned_asset_key(s.name), group_name=GROUP,
                           description=f"The Git-owned Kubernetes objects of {s.name} "
                                       f"(namespace {s.kubernetes.namespace}), applied by "
                                       f"{'ArgoCD' if s.kubernetes.gitops else 'pg_ops'}.")
              for s in kubernetes]
    assets += [dg.AssetSpec(catalog_asset_key(s.name), group_name=CATALOG_GROUP,
                            description=f"The roles, memberships, databases, schemas and extensions of {s.name}, "
                                        f"made by deploy from its spec.") for s in specs]
    checks = [drift_check(s) for s in kubernetes] + [catalog_check(s) for s in specs]
    job = dg.define_asset_job(JOB_NAME, selection=dg.AssetSelection.checks(*checks),
                              executor_def=dg.in_process_executor,
                              description="Compare the live Git-owned objects of every Kubernetes cluster "
                                          "with the rendered manifests, and every cluster's roles and "
                                          "databases with its spec.")
    schedule = dg.ScheduleDefinition(name=SCHEDULE_NAME, job=job, cron_schedule="43 * * * *",
                                     default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description="Drift of the Git-owned objects and of the roles and "
                                                 "databases, every hour.")
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=[job], schedules=[schedule])
