"""Who may reach and disrupt the members: PodDisruptionBudget, NetworkPolicy and RBAC."""

from __future__ import annotations

from pg_ops.platforms import kubernetes_names as k
from pg_ops.render.meta import metadata
from pg_ops.spec import ClusterSpec


def pod_disruption_budget(spec: ClusterSpec) -> dict:
    """A node drain takes one member at a time; pg_ops handles the primary's (failover/switchover)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(spec, spec.name, "database"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": k.selector_labels(spec)}}}


def _tcp(port: int) -> dict:
    return {"protocol": "TCP", "port": port}


def network_policy(spec: ClusterSpec) -> dict:
    """Ingress: PostgreSQL from pods of any namespace (applications, pg_ops's runs) and from the
    external source ranges (the LoadBalancer keeps their address); metrics from any namespace
    (Prometheus). Egress: peers (clone, rewind, streaming) and cluster DNS only."""
    members = {"podSelector": {"matchLabels": k.selector_labels(spec)}}
    any_pod = {"namespaceSelector": {}}
    external = [{"ipBlock": {"cidr": cidr}} for cidr in spec.kubernetes.services.external.source_ranges]
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(spec, spec.name, "database"),
        "spec": {
            "podSelector": {"matchLabels": k.selector_labels(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [any_pod, *external], "ports": [_tcp(k.PORT)]},
                {"from": [any_pod], "ports": [_tcp(k.METRICS_PORT)]},
            ],
            "egress": [
                {"to": [members], "ports": [_tcp(k.PORT)]},
                {"to": [dns], "ports": [{"protocol": "UDP", "port": 53}, _tcp(53)]},
                *archive_egress(spec),
            ],
        },
    }


def archive_egress(spec: ClusterSpec) -> list[dict]:
    """WAL archiving: the primary's archive command reaches the S3 endpoint (its port, any address:
    an object store is often outside the cluster)."""
    from urllib.parse import urlparse

    store = spec.backups.store
    if not spec.backups.wal.enabled or store.type != "s3":
        return []
    url = urlparse(store.endpoint_url or "https://s3.amazonaws.com")
    return [{"ports": [_tcp(url.port or (80 if url.scheme == "http" else 443))]}]


def member_service_account(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata(spec, k.member_service_account(spec), "database"),
            "automountServiceAccountToken": False}


def pg_ops_role(spec: ClusterSpec) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": metadata(spec, k.role_name(spec), "rbac"),
            "rules": k.pg_ops_role_rules(spec)}


def pg_ops_role_binding(spec: ClusterSpec) -> dict:
    """Grants the Role to pg_ops's ServiceAccount where the Dagster release runs it."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata(spec, k.role_name(spec), "rbac"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": k.role_name(spec)},
            "subjects": [{"kind": "ServiceAccount", "name": k.service_account(spec),
                          "namespace": k.PG_OPS_NAMESPACE}]}
