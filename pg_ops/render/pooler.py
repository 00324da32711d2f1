"""The pooler of a Kubernetes cluster whose spec sets `pooler` (docs/architecture/kubernetes.md,
"The pooler"): PgBouncer as a Deployment in front of the primary Service, Git-owned like the
rest.

- It forwards every database to the primary Service, whose selector pg_ops moves: a failover
  or switchover needs no change here. pg_ops still drives each pooler pod through its admin
  console (PAUSE before a planned change, RECONNECT and RESUME after it: operations/pooling.py).
- `<primary-service>-pooler` on the primary Service's port: applications change a host name.
- Its pods carry their own labels (names.pooler_labels), so no member selector, budget
  or NetworkPolicy reaches them; a budget of their own keeps one running through a drain, and
  their NetworkPolicy lets clients in and lets them reach only the members and DNS.
- Its one secret, PgBouncer's own login line, is one key of the credentials Secret, mounted alone.
"""

from __future__ import annotations

import hashlib

from pg_ops.postgres import pgbouncer
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.render import names as k
from pg_ops.render.meta import checkov_skips, metadata
from pg_ops.spec import ClusterSpec

POOLER_UID, POOLER_GID = 998, 996  # the pgbouncer user and group of CloudNativePG's image
INI = "pgbouncer.ini"
USERLIST = "userlist.txt"
BINARY = "/usr/bin/pgbouncer"


def config_name(spec: ClusterSpec) -> str:
    return f"{k.pooler_name(spec)}-config"


def ini(spec: ClusterSpec) -> str:
    assert spec.pooler is not None
    ns = spec.kubernetes.namespace
    target = Endpoint(f"{k.primary_service(spec)}.{ns}.svc.cluster.local", spec.kubernetes.services.primary.port)
    return pgbouncer.ini_text(spec.pooler, target=target, listen=Endpoint("*", k.POOLER_PORT),
                              auth_file=f"{k.POOLER_AUTH_MOUNT}/{USERLIST}",
                              header="Every database goes to the primary Service.")


def _labels(spec: ClusterSpec) -> dict[str, str]:
    return {**k.pooler_labels(spec), k.LABEL_COMPONENT: "pooler"}


def config_configmap(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(spec, config_name(spec), "pooler"),
            "data": {INI: ini(spec)}}


def deployment(spec: ClusterSpec) -> dict:
    assert spec.pooler is not None
    tcp = {"tcpSocket": {"port": k.PORT_NAME}}
    digest = hashlib.sha256(ini(spec).encode()).hexdigest()[:16]
    spread = {"labelSelector": {"matchLabels": k.pooler_labels(spec)}, "topologyKey": "kubernetes.io/hostname"}
    container = {
        "name": k.POOLER_CONTAINER,
        "image": spec.pooler.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [BINARY, f"{k.POOLER_CONFIG_MOUNT}/{INI}"],
        # Named like the members' port: the pooler speaks PostgreSQL's protocol, and the Service's
        # targetPort is the same name.
        "ports": [{"name": k.PORT_NAME, "containerPort": k.POOLER_PORT, "protocol": "TCP"}],
        "readinessProbe": {**tcp, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {**tcp, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "config", "mountPath": k.POOLER_CONFIG_MOUNT, "readOnly": True},
                         {"name": "auth", "mountPath": k.POOLER_AUTH_MOUNT, "readOnly": True}],
    }
    skips = checkov_skips(
        CKV_K8S_40="CloudNativePG's PgBouncer image runs as its pgbouncer user, uid 998",
        CKV_K8S_43="images are pinned by tag in the cluster spec; digests are not known offline",
        CKV_K8S_15="IfNotPresent on purpose: a registry outage must not keep a pooler from restarting",
    )
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(spec, k.pooler_name(spec), "pooler", annotations=skips),
        "spec": {
            "replicas": spec.pooler.replicas,
            "selector": {"matchLabels": k.pooler_labels(spec)},
            # One pooler at a time: clients of a stopping pod reconnect to the others.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                # A changed pgbouncer.ini rolls the pods (PgBouncer reads its file at start).
                "metadata": {"labels": _labels(spec), "annotations": {"pg-ops.io/pooler-config-sha256": digest}},
                "spec": {
                    "automountServiceAccountToken": False,  # it never calls the API
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsUser": POOLER_UID, "runAsGroup": POOLER_GID, "fsGroup": POOLER_GID,
                                        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "podAffinityTerm": spread}]}},
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_name(spec)}},
                        # Only PgBouncer's own login line, never the rest of the credentials Secret.
                        {"name": "auth", "secret": {"secretName": k.credentials_secret(spec), "defaultMode": 0o440,
                                                    "items": [{"key": k.POOLER_USERLIST_KEY, "path": USERLIST}]}},
                    ],
                },
            },
        },
    }


def service(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(spec, k.pooler_service(spec), "pooler"),
            "spec": {"type": "ClusterIP", "selector": k.pooler_labels(spec),
                     "ports": [{"name": k.PORT_NAME, "port": spec.kubernetes.services.primary.port,
                                "targetPort": k.PORT_NAME, "protocol": "TCP"}]}}


def disruption_budget(spec: ClusterSpec) -> dict:
    """A drain keeps one pooler running (with one replica: none is kept, or a drain would hang)."""
    assert spec.pooler is not None
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": metadata(spec, k.pooler_name(spec), "pooler"),
            "spec": {"minAvailable": min(1, spec.pooler.replicas - 1),
                     "selector": {"matchLabels": k.pooler_labels(spec)}}}


def network_policy(spec: ClusterSpec) -> dict:
    """Ingress: clients from pods of any namespace (applications, pg_ops's runs driving the admin
    console). Egress: the members' PostgreSQL port and cluster DNS only."""
    tcp = {"protocol": "TCP", "port": k.POOLER_PORT}
    members = {"podSelector": {"matchLabels": k.selector_labels(spec)}}
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata(spec, k.pooler_name(spec), "pooler"),
            "spec": {"podSelector": {"matchLabels": k.pooler_labels(spec)},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [tcp]}],
                     "egress": [{"to": [members], "ports": [{"protocol": "TCP", "port": k.PORT}]},
                                {"to": [dns], "ports": [{"protocol": "UDP", "port": 53},
                                                        {"protocol": "TCP", "port": 53}]}]}}


def pooler_objects(spec: ClusterSpec) -> list[dict]:
    """Nothing without `pooler` in the spec."""
    if spec.pooler is None:
        return []
    return [config_configmap(spec), deployment(spec), service(spec), disruption_budget(spec), network_policy(spec)]
