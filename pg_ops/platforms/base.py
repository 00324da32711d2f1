"""The Platform protocol: the one seam between the local and the Kubernetes backends, as a few
capabilities (members, routing, record, secrets, cluster objects, archiving limits, scratch
targets)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pg_ops.credentials import Credentials
from pg_ops.errors import PgOpsError
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState, StateStore

if TYPE_CHECKING:
    from pg_ops.stores.s3 import S3Credentials

# A throw-away server: durability buys nothing there, and a restore is mostly writes.
SCRATCH_PARAMETERS = {"fsync": False, "synchronous_commit": "off", "full_page_writes": False,
                      "wal_level": "minimal", "max_wal_senders": 0, "max_replication_slots": 0,
                      "maintenance_work_mem": "256MB", "max_wal_size": "4GB", "autovacuum": False}


REPORT_FILE = "pg_ops-report"  # written by member.sh in its state dir (the data dir's parent)
FENCED_FILE = "pg_ops-fenced"  # written by a Kubernetes fence before it stops postgres; member.sh honours it
UPGRADE_GO_FILE = "pg_ops-upgrade-go"  # written by a Kubernetes upgrade's go (member.sh's UPGRADE_GO)


def report_pairs(text: str) -> dict[str, str]:
    """The member script's report as it is written: key=value lines (member.sh's `report`), an
    empty value meaning none. Only MemberReport.parse and the script's own tests read it so."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class DiscardedWrites:
    """The writes the member's last rewind or re-clone threw away (member.sh's discarded.*):
    the WAL range, its bytes and commits, where a diverged data dir was moved aside, and why
    they could not be counted (`unknown`: the amounts are then None)."""

    at: int | None
    from_lsn: str | None
    to_lsn: str | None
    timeline: int | None
    bytes: int | None
    transactions: int | None
    kept_aside: str | None
    unknown: str | None


@dataclass(frozen=True)
class MemberReport:
    """What the member script reported (base.REPORT_FILE; docs/architecture/interfaces.md lists
    the keys), parsed once: "" or None where it reported nothing. Keys it does not know are
    ignored, so an older or newer member script never breaks a reader."""

    boot_action: str = ""  # the boot table's row it took last (refused, wait, clone, …)
    boot_reason: str = ""  # refused: why; wait: what for; otherwise the detail
    boot_at: int | None = None  # since when (epoch seconds)
    isolated_at: float | None = None  # isolation fencing restarted this primary as a standby
    isolated_reason: str = ""
    upgrade_id: str = ""  # the record's upgrade it worked on last
    upgrade_step: str = ""  # initdb, checked, linked, started, failed, undone
    upgrade_reason: str = ""
    upgrade_system_identifier: str = ""  # the upgraded data dir's (pg_ops's go)
    passfile_generation: int | None = None  # Kubernetes: the passfile generation it copied
    discarded: DiscardedWrites | None = None

    @classmethod
    def parse(cls, text: str) -> MemberReport:
        raw = report_pairs(text)
        get = raw.get
        discarded = None
        if get("discarded.at"):
            discarded = DiscardedWrites(
                at=_int(get("discarded.at", "")), from_lsn=get("discarded.from"), to_lsn=get("discarded.to"),
                timeline=_int(get("discarded.timeline", "")), bytes=_int(get("discarded.bytes", "")),
                transactions=_int(get("discarded.transactions", "")),
                kept_aside=get("discarded.kept_aside") or None, unknown=get("discarded.unknown") or None)
        return cls(boot_action=get("boot.action", ""), boot_reason=get("boot.reason", ""),
                   boot_at=_int(get("boot.at", "")), isolated_at=_float(get("isolated.at", "")),
                   isolated_reason=get("isolated.reason", ""), upgrade_id=get("upgrade.id", ""),
                   upgrade_step=get("upgrade.step", ""), upgrade_reason=get("upgrade.reason", ""),
                   upgrade_system_identifier=get("upgrade.system_identifier", ""),
                   passfile_generation=_int(get("passfile.generation", "")), discarded=discarded)

    @property
    def refused(self) -> str | None:
        """Its refusal's reason when the row it took last is `refused`."""
        return self.boot_reason if self.boot_action == "refused" else None


@dataclass(frozen=True)
class ScratchTarget:
    """An empty, throw-away PostgreSQL server that is never a member of any cluster (restore
    drills restore into it). `name` says where it runs (a scratch cluster, a pod)."""

    name: str
    endpoint: Endpoint
    password: str = field(repr=False)  # of the superuser postgres


@dataclass(frozen=True)
class UpgradeScratch(ScratchTarget):
    """A scratch target of the cluster's major whose server `upgrade()` takes to a newer one in
    place, as the real upgrade would the primary (the upgrade rehearsal); it returns the seconds
    each step took, and leaves the same endpoint and password serving the new major."""

    upgrade: Callable[[], dict[str, float]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class RecoveryPodRequest:
    """What a point-in-time recovery in a pod needs (KubernetesPlatform.recovery_pod): the base
    backup's tar in the S3 store, the server's whole postgresql.conf (recovery settings and
    restore_command included), and the statement that sets the superuser's password once it
    is promoted. The keys are the store's, read at use; none of it is logged."""

    purpose: str
    bucket: str
    key: str  # of pg_ops's base backup tar (data.tar.zst)
    endpoint_url: str | None
    region: str | None
    config: str
    superuser_statement: str = field(repr=False)
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RecoveryPod:
    """A server recovering in a pod: where it will listen, and `ended()`, why it stopped (the
    script's one line: a base backup it could not fetch, a replay that ended before the target),
    None while it runs."""

    name: str
    endpoint: Endpoint
    ended: Callable[[], str | None] = field(repr=False)


# -- the contract ---------------------------------------------------------------------------------
# Platform is the one seam between the local and the Kubernetes backends, as a few capabilities.
# Each method says what it does on each platform, whether calling it again is harmless, and what
# it raises (besides PgOpsError subclasses for I/O it depends on: KubernetesError for the API).
# Operations never ask which platform they run on (`kind` is for status and messages only): a
# difference between the two is a method here. LocalPlatform and KubernetesPlatform subclass
# Platform, so mypy checks them against it (`make lint`).
#
# (BackupStore, the other seam, is an abc.ABC on purpose: it carries conveniences written once
# on top of its primitives, put_bytes / get_bytes / iter_chunks; a Platform carries none.)


class Members(Protocol):
    """Where members run, and starting, stopping, fencing and wiping them. Member names are
    the spec's (`<cluster>-<n>`)."""

    def member_endpoints(self) -> dict[str, Endpoint]:
        """Every member of the spec and the address pg_ops reaches it at. Local: 127.0.0.1 and
        base_port + n (no I/O). Kubernetes: the pod IP and its container port `postgresql` (one
        pod list); a member without a pod or IP gets its headless-Service DNS name, so it probes
        as unreachable. Read-only."""
        ...

    def peer_addresses(self) -> dict[str, str]:
        """host:port each member script uses to reach a peer (written into the record). Local:
        the member endpoints. Kubernetes: the headless-Service DNS names, or PG_OPS_K8S_ADDRESSES
        overrides (PgOpsError when that file is unreadable). No API call; read-only."""
        ...

    def member_running(self, name: str) -> bool:
        """Local: its supervisor process is alive. Kubernetes: its pod is Running, not being
        deleted, its postgres container not waiting (CrashLoopBackOff). Says nothing about
        whether postgres accepts connections (probe for that). Read-only."""
        ...

    def start_member(self, name: str) -> None:
        """Make the member run; a running member is left alone (idempotent). Local: spawns the
        member script detached and returns at once (MemberError when its port is taken).
        Kubernetes: the StatefulSet makes the pod; waits until it runs (MemberError naming the
        scheduler's or kubelet's reason when it stays Pending, or when the StatefulSet has too
        few replicas). Neither waits for postgres: poll a probe."""
        ...

    def stop_member(self, name: str) -> None:
        """Clean (fast) shutdown of the member now; returns once it is down. Local: TERM to its
        supervisor (SIGKILL of the process group after 30 s); it stays down until start_member.
        Kubernetes: a graceful delete of its pod, waited for (MemberError when it is still
        terminating after 60 s + its grace period); the StatefulSet makes a new pod at once,
        which boots from the record of that moment: a caller that needs the member to come back
        as something else writes the record first, and calls start_member to wait for it.
        Idempotent (local: also kills a postmaster left without its supervisor)."""
        ...

    def fence_member(self, name: str) -> bool:
        """Remove the member from routing and stop it at once wherever the platform can reach
        it, writing nothing more (no shutdown checkpoint). True when it is known to be stopped
        now; False when it may still run somewhere pg_ops cannot reach (a pod on a node cut
        off from the API server): then only its own isolation fencing stops it, and a failover
        waits until the platform confirms the stop (fence_confirmed) or the lease runs out.
        Local: SIGKILL of its process group (always True). Kubernetes: role label removed,
        `pg_ctl stop -m immediate` through an exec, then the pod force-deleted (grace 0): True;
        when the exec did not answer (a container that crashed and waits to restart, a node cut
        off), a graceful delete instead, which only the pod's kubelet completes. Idempotent."""
        ...

    def fence_confirmed(self, name: str) -> bool:
        """After fence_member said False: whether the platform knows by now that the member
        stopped. Local: always (its fence never says False). Kubernetes: the pod fence_member
        deleted with a grace period is gone from the API, which only its kubelet does once its
        containers stopped (the guarantee a StatefulSet's one-pod-per-name rests on)."""
        ...

    def fence_abandon(self, name: str) -> None:
        """Stop waiting for that confirmation (its lease ran out, or isolation fencing is off):
        Kubernetes force-deletes the pod, so the StatefulSet can make it again elsewhere while
        its node stays unreachable. Local: nothing to do."""
        ...

    def wipe_member(self, name: str, keep_aside: bool = False) -> str | None:
        """Delete the member's data so it re-clones at its next start. Local: the member must be
        stopped (MemberError otherwise); its data dir is emptied, or with `keep_aside` moved
        aside (`data.diverged-<time>`, returned) for a former primary whose writes nobody counted.
        Kubernetes: its PVC and pod are deleted (grace 0): the StatefulSet makes both again at
        once and the member re-clones into the empty volume; `keep_aside` is Unsupported there
        (check_wipe refuses it first). Idempotent."""
        ...

    def check_wipe(self, name: str, keep_aside: bool) -> None:
        """Raise Unsupported, before anything is touched, when `wipe_member(name, keep_aside)`
        cannot be done here. Local: never. Kubernetes: `keep_aside` (the volume goes whole)."""
        ...

    def stopped_for_good(self, name: str) -> bool:
        """True when the member's processes are gone and nothing but pg_ops will start them again
        (local: its supervisor is not running). Kubernetes: never (the StatefulSet controller
        recreates a pod, the kubelet restarts a container). Read-only."""
        ...

    def shutdown_checkpoint(self, name: str) -> str | None:
        """The LSN of a stopped member's shutdown checkpoint (its control file, read after a clean
        shutdown): the last WAL a switchover's target must have received. None when it is not
        known: the member did not shut down cleanly, or (Kubernetes) its pod and with it the only
        way to its volume are gone. Read-only."""
        ...

    def member_log_tail(self, name: str, lines: int = 5) -> str:
        """The last lines of the member script's and postgres's output ("" when there is none
        yet). Local: member.log. Kubernetes: the postgres container's log ("" before the
        container started; KubernetesError otherwise). Read-only."""
        ...

    def member_report(self, name: str) -> MemberReport:
        """What the member script reported (base.REPORT_FILE, parsed once: MemberReport): the boot
        table row it took (a refusal's reason), its isolation state and the writes its last
        rewind or re-clone discarded (docs/architecture/interfaces.md lists the keys). An empty
        MemberReport() when there is none (or the member's volume cannot be read now: local the
        file, Kubernetes an exec into the pod). Never raises; read-only."""
        ...

    def member_passfile(self, name: str) -> str:
        """The libpq passfile the member's own processes read (its member script's private
        copy, which its primary_conninfo names), as a path on the member's side."""
        ...

    def data_dir_usage(self, name: str) -> tuple[int, int] | None:
        """(used bytes, total bytes) of the filesystem holding the member's data; None when
        unknown now. Local: statvfs of the data dir (None before it exists). Kubernetes: `df`
        through an exec, bounded to a few seconds (None when the pod does not run or did not
        answer; a pod that did not answer is not asked again for a minute; MemberError when df
        fails). Read-only."""
        ...


class Routing(Protocol):
    """How clients reach the primary."""

    def primary_dsn(self, user: str, dbname: str) -> str:
        """A libpq string (no password) that always reaches the current primary. Local: every
        member, the designated one first, target_session_attrs=read-write (reads the record).
        Kubernetes: the primary Service's DNS name (or its PG_OPS_K8S_ADDRESSES override)."""
        ...

    def route_primary(self, name: str) -> None:
        """Send the primary endpoint to `name` and away from everyone else. Local: libpq picks
        the writable member; a running pooler is aimed at `name` (RELOAD) and its server
        connections to anyone else closed (RECONNECT). Kubernetes: every other pod labelled replica
        first, then `name` primary, so the Service never selects two (MemberError when the pod
        does not exist). Idempotent: labels already right are not written."""
        ...


class Record(Protocol):
    """Where the desired-state record lives (pg_ops/state.py: CAS, the topology lock)."""

    def state_store(self) -> StateStore:
        """Local: a file with flock and an atomic rename. Kubernetes: a ConfigMap updated with
        its resourceVersion. Building it does no I/O."""
        ...


class Secrets(Protocol):
    """The cluster's generated passwords, and the backup store's keys where the platform holds
    them."""

    spec: ClusterSpec

    def load_credentials(self) -> Credentials | None:
        """The cluster's passwords; None before the first deploy. Local: credentials.json
        (0600). Kubernetes: the credentials Secret. Read-only."""
        ...

    def load_credentials_or_fail(self) -> Credentials:
        """The stored credentials, or one line saying there are none yet."""
        creds = self.load_credentials()
        if creds is None:
            raise PgOpsError(f"cluster {self.spec.name}: no credentials yet (deploy it first)")
        return creds

    def ensure_credentials(self, initial: Credentials | None = None) -> Credentials:
        """Generate once (`initial`'s passwords when given: a cluster made from another, by
        `recover` or a blue/green upgrade, keeps its source's), never overwrite; add roles the
        spec gained. Local: also (re)writes the
        admin passfile. Kubernetes: written with the Secret's resourceVersion, so two writers
        racing cannot replace each other's passwords (PgOpsError after 5 conflicts).
        Idempotent."""
        ...

    def store_credentials(self, creds: Credentials) -> None:
        """Replace the stored passwords (rotate-password), and everything made from them that
        members and the exporter read: local, credentials.json, the admin passfile and every
        member's passfile; Kubernetes, the credentials Secret (its passfile key too), written
        with its resourceVersion. Raises PgOpsError when the store cannot be written."""
        ...

    def deliver_role_credentials(self, role: str, password: str, dbname: str) -> bool:
        """An application role's credentials (credentials.APP_CREDENTIAL_KEYS), for the primary
        and, as `<role>-read`, for the replicas. Local: 0600 files
        PG_OPS_HOME/clusters/<c>/app-credentials/<role>.json and <role>-read.json, the primary
        one multi-host with target_session_attrs=read-write. Kubernetes: Secrets
        <cluster>-<role> and <cluster>-<role>-read in each of the role's secret_namespaces
        (default: the cluster's), pointing at the primary and read Services. True when something
        was written (unchanged ones are left as they are). Idempotent."""
        ...

    def check_rotation(self, role: str) -> None:
        """Raise Unsupported, before anything is touched, when `role`'s password cannot be rotated
        here. Local: never. Kubernetes: the superuser and replication roles (the member script
        reads their passwords from a copy made when its pod starts)."""
        ...

    def remove_role_credentials(self, role: str) -> bool:
        """Remove what deliver_role_credentials wrote for `role` (a role that no longer has a
        password: absent, nologin, password: none). True when something was removed."""
        ...

    def passfile(self) -> Path | None:
        """A 0600 libpq passfile for the admin role on this machine, for psql and the exporter.
        Local: the cluster's `pgpass`. Kubernetes: None: the passwords stay in the Secret."""
        ...

    def s3_credentials(self, secret_name: str) -> S3Credentials:
        """The backup store's keys from the platform's secret `secret_name` (the spec's
        `credentials_secret`), read at use, never cached or logged. Kubernetes: the Secret's
        keys access_key / secret_key (PgOpsError when one is missing). Local: there are no
        platform secrets: StoreError (use credentials_env or boto3's default chain)."""
        ...


class ClusterObjects(Protocol):
    """The static parts of a cluster: configuration files and folders locally, the Git-owned
    objects on Kubernetes."""

    def prepare(self, state: DesiredState) -> None:
        """Make them exist as the spec says, before members start. Local: config files, member
        folders and passfiles, owned by the server user (PgOpsError when PG_OPS_HOME is out of
        its reach). Kubernetes: with kubernetes.gitops, only checks that the Git-owned objects
        exist (PgOpsError naming the missing ones: ArgoCD applies them); without, server-side
        applies them as field manager pg-ops, except the Role and RoleBinding, which only a
        cluster admin can apply (checked). Idempotent."""
        ...

    def git_owned_objects(self) -> list[tuple[dict, dict | None]]:
        """Each rendered Git-owned manifest with its live version (status and server fields
        included), None where it does not exist: what the drift check compares. Kubernetes:
        one read per object. Local: Unsupported (a local cluster has no Git-owned objects)."""
        ...

    def check_teardown(self) -> None:
        """Raise Unsupported when `teardown` is refused on this platform, before anything is
        touched. Local: never. Kubernetes: always (Git owns the objects)."""
        ...

    def teardown(self) -> None:
        """Delete the cluster, data included. Local: stops every member and deletes the
        cluster's folder (record, credentials, data); idempotent. Kubernetes: Unsupported.
        The caller holds the topology lock when there is a record."""
        ...


class Archiving(Protocol):
    """What the platform cannot do yet around WAL archiving and point-in-time recovery (ADR-003):
    each check raises Unsupported, before anything is touched, naming the reason."""

    def check_archive_store(self, store_type: str) -> None:
        """Whether the members' archive_command can write to a store of that type. Local: any
        (it runs on this machine). Kubernetes: only S3 (it runs in the pod, which does not see
        a folder of pg_ops's machine)."""
        ...

    def check_point_in_time(self, what: str) -> None:
        """Whether `what` (a point-in-time drill) can run. Local: yes (a local server restored
        from the archive). Kubernetes: yes (a recovery pod: recovery_pod), the archive being S3."""
        ...

    def check_recover(self) -> None:
        """Whether `pg-ops recover` can make a new cluster of this one. Local: yes. Kubernetes:
        Unsupported (a new StatefulSet whose first member restores in its pod is not built yet)."""
        ...


class Rollouts(Protocol):
    """What a configuration rollout compares and checks (operations/rollout.py): the server
    configuration and binaries the spec renders against what each member runs."""

    def discard_recovered(self) -> None:
        """Remove a new cluster whose recovery (`pg-ops recover`) failed, so its name can be used
        again: local, teardown; Kubernetes, its StatefulSet, claims, Secrets and record. Never
        called on a cluster that served."""
        ...

    def check_rollout(self) -> None:
        """Raise Unsupported when a rollout cannot run here, before anything is touched. Local:
        never. Kubernetes: always for now (the ConfigMap reaches the pods on the kubelet's own
        schedule; `rolling-restart` applies a change there by replacing the pods)."""
        ...

    def server_config_text(self) -> str:
        """The postgresql.conf this spec renders for its members. Local: the one file in config/.
        Kubernetes: the ConfigMap's."""
        ...

    def server_config_error(self) -> str | None:
        """PostgreSQL's own objection to the postgresql.conf this spec renders ("invalid value
        for parameter ..."), or None when a server would start with it. Local: `postgres -C`
        of the cluster's binaries on the rendered text, as the server user."""
        ...

    def running_binaries(self, name: str) -> str | None:
        """What member `name` runs: local, the resolved path of its postmaster's executable
        (None when it is down). Kubernetes: None (not compared yet)."""
        ...

    def rendered_binaries(self) -> str:
        """What the spec asks members to run, comparable with running_binaries: local, the
        resolved path of PG_OPS_PG_BIN's (or the wheel's) postgres."""
        ...


class MemberUpgrade(Protocol):
    """pg_upgrade --link of one member's data dir (Upgrades.member_upgrade), in the steps the
    upgrade times: prepare (before the downtime window), check and link (inside it); undo until
    the new server first started (the old major's data dir back as it was), finish after it (the
    old major's leftovers removed)."""

    def prepare(self, initdb_options: list[str]) -> None:
        """initdb of the new major beside the old data dir (postgres.upgrade.initdb_options: the
        old template0's locale, the old checksums); the old server may still run."""
        ...

    def check(self) -> None:
        """The old server stopped cleanly; `pg_upgrade --check`. UpgradeFailed: its reason."""
        ...

    def link(self) -> None:
        """`pg_upgrade --link`, then the new data dir in the old one's place."""
        ...

    def undo(self) -> None:
        ...

    def finish(self) -> None:
        ...

    def system_identifier(self) -> str:
        """The upgraded data dir's (pg_upgrade gives the new cluster its own initdb's)."""
        ...

    def go(self) -> None:
        """Once the record names the upgraded system identifier (the point of no return): make
        the member act on it now. Local: nothing (the member script starts on it). Kubernetes:
        the record mounted in a running pod lags the kubelet's sync by up to a minute, which
        would be downtime, so an exec also writes the go beside the data. Never raises: the
        record is the go either way."""
        ...

    def start_old(self, member: str) -> None:
        """Start a member of the cluster with the old major's binaries (after undo)."""
        ...


class Upgrades(Protocol):
    def member_upgrade(self, member: str, from_major: int, to_major: int, password: str) -> MemberUpgrade:
        """The in-place major upgrade of `member`'s data dir, its binaries found for both majors
        (one line when they are not). Local: MemberDataUpgrade. Kubernetes: PodDataUpgrade (the
        member script upgrades in the primary's pod, from an image with both majors)."""
        ...


class Pooling(Protocol):
    """The spec's connection pooler (PgBouncer) in front of the primary (operations/pooling.py)."""

    def pooler_endpoint(self) -> Endpoint | None:
        """Where applications reach the pooler; None when the spec has no pooler."""
        ...

    def start_pooler(self, primary: str) -> bool:
        """Run the pooler (aimed at `primary`) if it is not running; True when it was started.
        Local: a pgbouncer process as the server user. Kubernetes: refused at spec load."""
        ...

    def stop_pooler(self) -> None:
        """Stop it, by process group; nothing when it does not run."""
        ...

    def pooler_admin(self, command: str, timeout: float = 5.0) -> list[dict]:
        """One command on its admin console (PAUSE, RESUME, RECONNECT, RELOAD, SHOW …): rows as
        column -> value."""
        ...

    def move_pooler(self, cluster: str | None) -> None:
        """Aim the pooler at another cluster's primary (a blue/green cut hands the applications
        on this pooler to the new cluster) until called with None (the rollback): route_primary
        of either cluster keeps it on that cluster's primary meanwhile, through its failovers.
        Local: a `moved-to` file beside its configuration (and this cluster's name in the other's
        `poolers-moved-here`), then RELOAD. Kubernetes: Unsupported (there the primary Service is
        the endpoint)."""
        ...


class ScratchTargets(Protocol):
    """Throw-away servers that are never members of any cluster (restore drills)."""

    def scratch_target(self, purpose: str) -> AbstractContextManager[ScratchTarget]:
        """Start an empty server (SCRATCH_PARAMETERS) nothing routes to, wait until it accepts
        connections, and always remove it, data included, when the block ends (also on error).
        Local: a one-member cluster of its own on a free port under PG_OPS_HOME. Kubernetes: a
        pod of the cluster's image on an emptyDir, its password in a temporary Secret
        (MemberError with the scheduler's reason when it does not run in time)."""
        ...

    def upgrade_scratch(self, from_major: int, to_major: int) -> AbstractContextManager[UpgradeScratch]:
        """A scratch target like scratch_target's, of PostgreSQL `from_major` (the cluster's),
        that can be upgraded in place to `to_major` (pg_upgrade --link) for the upgrade
        rehearsal. Both platforms: a local server where pg_ops runs, with this machine's
        binaries of both majors (the rehearsal reads only the backup store)."""
        ...

    def recovery_pod(self, request: RecoveryPodRequest) -> AbstractContextManager[RecoveryPod]:
        """Start a server that restores the base backup and replays the archive to its target in
        a pod of the cluster's image (the point-in-time drill on Kubernetes), wait until that pod
        runs (not until it is promoted: RecoveryPod.ended says when it stopped instead), and
        always delete it and its Secret when the block ends. Kubernetes only; local: Unsupported
        (the local drill restores into local_recovery.drill_server on this machine)."""
        ...


class Platform(Members, Routing, Record, Secrets, ClusterObjects, Archiving, Rollouts, Pooling, ScratchTargets,
               Upgrades, Protocol):
    """Everything an operation may ask of where a cluster runs."""

    spec: ClusterSpec
    kind: Literal["local", "kubernetes"]  # for status and messages; never branched on
