"""Names shared by the rendered (Git-owned) manifests and the Kubernetes platform backend
(pg_ops-owned objects). One place, so a rename cannot split them.

Ownership (docs/architecture/design.md): Git/ArgoCD own the StatefulSet, Services, PDB, NetworkPolicy, RBAC,
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
# On pg_ops-owned objects (state ConfigMap, credentials Secret) instead of LABEL_INSTANCE:
# ArgoCD tracks resources by LABEL_INSTANCE by default and would prune what Git does not hold.
LABEL_CLUSTER = "pg-ops.io/cluster"
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
RECOVERY_MOUNT = "/etc/pg-ops/recovery"        # the recovery Secret (recovery_secret), or a drill's
RECOVERY_SCRIPT = "recover_pod.sh"
PASSFILE_KEY = "pgpass"
RUN_DIR = "/var/run/pg-ops"                    # emptyDir
# The official image's layout (PGDG's packages): each major's binaries in its own folder, so an
# image may carry two (deploy/postgres/Dockerfile's OLD_MAJORS, for an upgrade in place).
PG_BINS = "/usr/lib/postgresql/{major}/bin"
DEFAULT_MAJOR = 16  # the major of postgres:16, the default image, when postgres.version is unset


def pg_bin(major: int | None) -> str:
    """The bin folder of PostgreSQL `major` in the member image (None: the default image's)."""
    return PG_BINS.format(major=major or DEFAULT_MAJOR)


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


def recovery_secret(spec: ClusterSpec) -> str:
    """The inputs of a cluster's first boot as a point-in-time recovery (`pg-ops recover`):
    recover_pod.sh, the recovery's postgresql.conf, the base backup's place, a token the desired
    state names. Present only while that recovery runs; mounted optionally by every member."""
    return f"{spec.name}-recovery"


def app_secret(spec: ClusterSpec, role: str) -> str:
    """An application role's credentials Secret (`<cluster>-<role>`, `_` as `-`); its replicas'
    variant adds `-read`. In each of the role's secret_namespaces."""
    return f"{spec.name}-{role.replace('_', '-')}"


def service_account(spec: ClusterSpec) -> str:
    return "pg-ops"


def peer_address(spec: ClusterSpec, member: str) -> str:
    """host:port a member script uses to reach a peer: stable DNS through the headless Service."""
    ns = spec.kubernetes.namespace
    return f"{member}.{headless_service(spec)}.{ns}.svc.cluster.local:{PORT}"


# -- added for the rendered manifests (pg_ops/render/) ------------------------------------------
LABEL_COMPONENT = "app.kubernetes.io/component"  # which Service / object of a cluster
TLS_MOUNT = "/etc/pg-ops/tls"                    # spec.kubernetes.tls_secret (tls.crt, tls.key)
EXPORTER_CONTAINER = "postgres-exporter"
METRICS_PORT_NAME = "metrics"
METRICS_PORT = 9187
# K3s's default --cluster-cidr. Members accept password logins (scram) from pods only in this
# range and from the external source ranges; another pod network needs another value here.
POD_NETWORK = "10.42.0.0/16"
# Where pg_ops itself runs (the Dagster Helm release, deploy/dagster/): its ServiceAccount
# `service_account(spec)` lives there; each cluster's RoleBinding grants it that cluster's Role.
PG_OPS_NAMESPACE = "dagster"


def password_key(role: str) -> str:
    """Key of the credentials Secret holding one role's password alone (the exporter reads
    `password_key("postgres")` as a file); the Secret also holds PASSFILE_KEY."""
    return f"{role}-password"


def member_service_account(spec: ClusterSpec) -> str:
    """The members' own ServiceAccount: no API access, token not mounted."""
    return f"{spec.name}-member"


def role_name(spec: ClusterSpec) -> str:
    return f"{spec.name}-pg-ops"


def member_pod_names(spec: ClusterSpec) -> list[str]:
    """The StatefulSet's pods (the members): what pg_ops labels, execs into and reads logs of."""
    return spec.member_names


def data_claim(member: str) -> str:
    """The PVC the StatefulSet's claim template `data` makes for a member."""
    return f"{DATA_CLAIM_TEMPLATE}-{member}"


DATA_CLAIM_TEMPLATE = "data"


def plural(kind: str) -> str:
    """The resource name of a kind (NetworkPolicy -> networkpolicies, Ingress -> ingresses)."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + "s"


# -- the pooler (spec `pooler`; render/pooler.py) -------------------------------------------------
# Its pods carry neither LABEL_NAME=postgresql nor a role label: no member Service, budget or
# NetworkPolicy selects them, and the members' selectors never reach them.
POOLER_CONTAINER = "pgbouncer"
POOLER_PORT = 6432
POOLER_CONFIG_MOUNT = "/etc/pg-ops/pooler"        # pgbouncer.ini (the pooler's ConfigMap)
POOLER_AUTH_MOUNT = "/etc/pg-ops/pooler-auth"     # userlist.txt (one key of the credentials Secret)
POOLER_USERLIST_KEY = "pooler-userlist"           # in the credentials Secret: PgBouncer's own login


def pooler_labels(spec: ClusterSpec) -> dict[str, str]:
    return {LABEL_NAME: "pgbouncer", LABEL_INSTANCE: spec.name}


def pooler_name(spec: ClusterSpec) -> str:
    """The Deployment, its ConfigMap (`-config`), budget and NetworkPolicy."""
    return f"{spec.name}-pooler"


def pooler_service(spec: ClusterSpec) -> str:
    """Where applications reach the pooler: beside the primary Service, on the same port."""
    return f"{primary_service(spec)}-pooler"


# -- scratch targets (restore-drill pods) --------------------------------------------------------
# On a temporary pod pg_ops makes (value: its purpose, e.g. "drill") and on its Secret. Such a
# pod carries neither LABEL_NAME nor LABEL_INSTANCE, so no Service, PDB, NetworkPolicy or the
# StatefulSet selects it: it can never be taken for a member.
LABEL_SCRATCH = "pg-ops.io/scratch-target"
SCRATCH_PASSWORD_KEY = "postgres-password"


def scratch_labels(spec: ClusterSpec, purpose: str) -> dict[str, str]:
    return {LABEL_CLUSTER: spec.name, LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_SCRATCH: purpose}


def drill_namespace(spec: ClusterSpec) -> str:
    """Where restore-drill (scratch) pods and their Secrets live: not the cluster's namespace."""
    return spec.kubernetes.drill_namespace or f"{spec.kubernetes.namespace}-drills"


def scratch_name(spec: ClusterSpec, purpose: str, suffix: str) -> str:
    """<cluster>-<purpose>-<random>: the pod and its Secret."""
    return f"{spec.name}-{purpose}-{suffix}"
