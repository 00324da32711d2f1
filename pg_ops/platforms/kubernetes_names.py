"""Names shared by the rendered (Git-owned) manifests and the Kubernetes platform backend
(pg_ops-owned objects). One place, so a rename cannot split them.

Ownership (DESIGN.md): Git/ArgoCD own the StatefulSet, Services, PDB, NetworkPolicy, RBAC,
the config and member-script ConfigMaps. pg_ops owns the desired-state ConfigMap, the
credentials Secret and the pods' role label, and never renders them for Git.
"""

from __future__ import annotations

from pg_ops.spec import ClusterSpec

# -- labels ------------------------------------------------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"          # value: "postgresql"
LABEL_INSTANCE = "app.kubernetes.io/instance"  # value: cluster name
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ROLE = "pg-ops.io/role"                  # "primary" | "replica"; set only by pg_ops
ROLE_PRIMARY = "primary"
ROLE_REPLICA = "replica"
FIELD_MANAGER = "pg-ops"

# -- in-container paths ------------------------------------------------------------------------
PGDATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{PGDATA_MOUNT}/pgdata"
STATE_MOUNT = "/etc/pg-ops/state"              # desired-state ConfigMap (no subPath: it must refresh)
STATE_KEY = "desired-state"
CONFIG_MOUNT = "/etc/pg-ops/config"            # postgresql.conf, pg_hba.conf, pg_ident.conf
SCRIPT_MOUNT = "/opt/pg-ops"                   # member.sh
SECRET_MOUNT = "/etc/pg-ops/secret"            # credentials Secret (key "pgpass" for the member script)
PASSFILE_KEY = "pgpass"
RUN_DIR = "/var/run/pg-ops"                    # emptyDir
PG_BIN_16 = "/usr/lib/postgresql/16/bin"
CONTAINER = "postgres"
PORT_NAME = "postgresql"
PORT = 5432


def selector_labels(spec: ClusterSpec) -> dict[str, str]:
    return {LABEL_NAME: "postgresql", LABEL_INSTANCE: spec.name}


def statefulset_name(spec: ClusterSpec) -> str:
    """Pods are <cluster>-0, -1, … : the member names on both platforms."""
    return spec.name


def headless_service(spec: ClusterSpec) -> str:
    return f"{spec.name}-headless"


def primary_service(spec: ClusterSpec) -> str:
    return spec.kubernetes.services.primary.name


def replicas_service(spec: ClusterSpec) -> str:
    return f"{spec.kubernetes.services.primary.name}-read"


def external_service(spec: ClusterSpec) -> str:
    return f"{spec.kubernetes.services.primary.name}-external"


def state_configmap(spec: ClusterSpec) -> str:
    return f"{spec.name}-pg-ops-state"


def config_configmap(spec: ClusterSpec) -> str:
    return f"{spec.name}-config"


def script_configmap(spec: ClusterSpec) -> str:
    return f"{spec.name}-member-script"


def credentials_secret(spec: ClusterSpec) -> str:
    return f"{spec.name}-credentials"


def service_account(spec: ClusterSpec) -> str:
    return "pg-ops"


def peer_address(spec: ClusterSpec, member: str) -> str:
    """host:port a member script uses to reach a peer: stable DNS through the headless Service."""
    ns = spec.kubernetes.namespace
    return f"{member}.{headless_service(spec)}.{ns}.svc.cluster.local:{PORT}"
