"""The Git-owned Kubernetes manifests of a cluster, rendered from its ClusterSpec.

Pure functions: no Dagster, no cluster access, no secrets. `pg-ops render` writes them to
deploy/kubernetes/<cluster>/ for ArgoCD; the Kubernetes platform applies the same objects when a
cluster is not GitOps-managed, and its drift check compares live objects with them.
"""

from __future__ import annotations

from pg_ops.render.access import (
    app_secret_access,
    drill_access,
    member_service_account,
    network_policy,
    pg_ops_role,
    pg_ops_role_binding,
    pod_disruption_budgets,
)
from pg_ops.render.config import config_configmap, script_configmap
from pg_ops.render.monitoring import exporter_queries_configmap, prometheus_rule, service_monitor
from pg_ops.render.output import check_git_safe, default_output_dir, write_manifests
from pg_ops.render.pooler import pooler_objects
from pg_ops.render.services import services
from pg_ops.render.statefulset import statefulset
from pg_ops.spec import ClusterSpec

__all__ = ["manifests", "write_manifests", "default_output_dir", "check_git_safe"]


def manifests(spec: ClusterSpec) -> list[dict]:
    """Every Git-owned object of a kubernetes cluster, in apply order."""
    account, binding = member_service_account(spec), pg_ops_role_binding(spec)
    workload = [
        config_configmap(spec), script_configmap(spec), exporter_queries_configmap(spec),
        *services(spec), statefulset(spec), *pod_disruption_budgets(spec), network_policy(spec),
        service_monitor(spec), prometheus_rule(spec), *pooler_objects(spec),
    ]
    # The Role grants read access to each of these by name (and apply access without GitOps).
    objects = [account, pg_ops_role(spec, [account, binding, *workload]), binding, *workload,
               *drill_access(spec), *app_secret_access(spec)]  # in the drills' and applications' namespaces
    check_git_safe(spec, objects)
    return objects
