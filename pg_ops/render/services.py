"""The Services of a cluster. Primary, read-only and external Services select on the role label
pg_ops puts on pods (never in Git), so routing follows a failover without a sync."""

from __future__ import annotations

from pg_ops.render import names as k
from pg_ops.render.meta import metadata
from pg_ops.spec import ClusterSpec

METALLB_IPS = "metallb.io/loadBalancerIPs"
POSTGRES_PORT = {"name": k.PORT_NAME, "port": k.PORT, "targetPort": k.PORT_NAME, "protocol": "TCP"}


def headless_service(spec: ClusterSpec) -> dict:
    """Stable per-member DNS (<pod>.<this>.<ns>.svc) for replication. Not-ready members are
    published too: a replica being cloned must resolve its peers, and they it."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(spec, k.headless_service(spec), "headless"),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": k.selector_labels(spec),
                     "ports": [POSTGRES_PORT, {"name": k.METRICS_PORT_NAME, "port": k.METRICS_PORT,
                                               "targetPort": k.METRICS_PORT_NAME, "protocol": "TCP"}]}}


def _role_service(spec: ClusterSpec, name: str, component: str, role: str, port: int) -> dict:
    service: dict = {"apiVersion": "v1", "kind": "Service",
                     "metadata": metadata(spec, name, component),
                     "spec": {"type": "ClusterIP", "selector": {**k.selector_labels(spec), k.LABEL_ROLE: role},
                              "ports": [{**POSTGRES_PORT, "port": port}]}}
    if role == k.ROLE_PRIMARY:
        # Who is primary is pg_ops's decision (the label it moves after promoting and before
        # verifying a write), not the readiness probe's: a promoted replica was not ready a
        # moment ago (its primary had gone quiet) and would stay out of the Service until its
        # next probe, seconds of downtime for nothing.
        service["spec"]["publishNotReadyAddresses"] = True
    return service


def primary_service(spec: ClusterSpec) -> dict:
    return _role_service(spec, k.primary_service(spec), "primary", k.ROLE_PRIMARY,
                         spec.kubernetes.services.primary.port)


def replicas_service(spec: ClusterSpec) -> dict:
    return _role_service(spec, k.replicas_service(spec), "read", k.ROLE_REPLICA,
                         spec.kubernetes.services.primary.port)


def external_service(spec: ClusterSpec) -> dict | None:
    """The primary for admins outside the cluster (MetalLB address). externalTrafficPolicy Local
    keeps the client's address, so loadBalancerSourceRanges, the NetworkPolicy and pg_hba.conf
    all see who is really connecting."""
    ext = spec.kubernetes.services.external
    if ext.type == "none":
        return None
    svc = _role_service(spec, k.external_service(spec), "external", k.ROLE_PRIMARY,
                        spec.kubernetes.services.primary.port)
    svc["spec"]["type"] = ext.type
    svc["spec"]["externalTrafficPolicy"] = "Local"
    if ext.type == "LoadBalancer":
        if ext.ip:
            # metallb.io/ (MetalLB 0.14.9+, which deprecated metallb.universe.tf/; older MetalLB
            # reads only the old prefix: docs/quickstart.md).
            svc["metadata"]["annotations"] = {METALLB_IPS: ext.ip}
        if ext.source_ranges:
            svc["spec"]["loadBalancerSourceRanges"] = list(ext.source_ranges)
    return svc


def services(spec: ClusterSpec) -> list[dict]:
    found = [headless_service(spec), primary_service(spec), replicas_service(spec), external_service(spec)]
    return [s for s in found if s is not None]
