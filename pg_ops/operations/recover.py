"""Point-in-time recovery into a NEW cluster, and the point-in-time drill.

    pg-ops recover --to TIME --as NEW_CLUSTER
    pg-ops restore-drill --point-in-time [TIME]

`recover` restores the newest base backup that ended before TIME into the first member of a
new local cluster, replays the source's archive up to TIME (following failovers through the
timeline history), promotes, then deploys the new cluster like any other (replicas cloned from
it, slots, sync mode). The source is only read. The new spec is written beside pg_ops's own
state (PG_OPS_HOME/specs, loaded with PG_OPS_CLUSTERS), so the code location operates the new
cluster from its next load (pg-ops reloads the deployment's code location after the run), and
`pg-ops teardown` of it removes the spec too.

Refused before anything runs: a target before the oldest base backup or after the newest
archived segment (naming the window), a segment missing between the base backup and the
target (naming the gap), a new name that is taken (a spec or a local cluster of that name).

The drill recovers into a throw-away server: by default to a time it chooses between two
marker rows it commits itself (so "before present, after absent" is exact), else to the TIME
given; it checks pg_ops's heartbeat rows around the target and amcheck on every B-tree index,
and records the result in the archive (`<cluster>.wal/<sysid>/drills/`), like dump drills.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import yaml

from pg_ops import settings
from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.errors import ClusterExists, PgOpsError
from pg_ops.operations.activity import record_marker, record_status
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.members import lease_kept
from pg_ops.operations.wal import archive_ref, require_archiving, s3_keys_env, switch_and_wait
from pg_ops.poll import poll
from pg_ops.postgres import admin, archiving, barman, dump, status_table
from pg_ops.postgres.session import with_connection
from pg_ops.spec import DNS_LABEL, ClusterSpec, load_specs
from pg_ops.stores import BackupStore
from pg_ops.stores import wal_archive as wa

if TYPE_CHECKING:
    from pg_ops.operations.deploy import DeployResult
    from pg_ops.platforms.base import RecoveryPod, RecoveryPodRequest
    from pg_ops.platforms.local import LocalPlatform
    from pg_ops.postgres.conninfo import Endpoint

RECOVERY_TIMEOUT_S = 6 * 3600.0
# The archive hold of a recovery or drill outlasts every step it covers: restoring the base
# backup (barman's 6 h bound), replay (RECOVERY_TIMEOUT_S) and an hour for the rest (L6: a
# 6 h hold could lapse mid-replay and let retention prune the WAL being replayed).
RECOVERY_HOLD_S = 6 * 3600.0 + RECOVERY_TIMEOUT_S + 3600.0
PROGRESS_EVERY_S = 30.0
# What our own probes are told while the server replays: not a failure of the recovery.
CONNECTION_REFUSALS = ("not accepting connections", "is starting up", "not yet accepting", "in recovery mode",
                       "is shutting down", "Hot standby mode is disabled")
# Our own probe with the store's superuser password, refused by restored data that holds an
# older one (wait_promoted sets the store's): not a failure of the recovery.
AUTH_REFUSED = "password authentication failed"
MARKER_SPACING_S = 1.0  # between a marker row and the target: commit timestamps are not the target


class RecoveryRefused(PgOpsError):
    """A recovery that cannot give what was asked: said before anything starts."""


# -- the target ---------------------------------------------------------------------------------------
def parse_target_time(text: str) -> datetime:
    """ISO 8601; a time without an offset is UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RecoveryRefused(f"--to {text!r} is not a time (use ISO 8601, e.g. 2026-12-01T21:30:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _t(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "none"


@dataclass(frozen=True)
class RecoveryPlan:
    cluster: str
    target: datetime
    base_backup: wa.BaseBackup
    window: tuple[datetime, datetime]
    last_segno: int

    def as_dict(self) -> dict:
        return {"cluster": self.cluster, "target": self.target.isoformat(), "base_backup": self.base_backup.id,
                "window": [_t(self.window[0]), _t(self.window[1])]}


def plan_recovery(listing: wa.ArchiveListing, starts: dict[int, int], target: datetime) -> RecoveryPlan:
    """Which base backup and WAL a recovery to `target` needs; refuses what the archive cannot give."""
    cluster = listing.cluster
    newest = listing.newest_segment
    if not listing.base_backups:
        raise RecoveryRefused(f"cluster {cluster}: no complete base backup in the archive yet (take one: "
                              f"the base_backup job)")
    if newest is None:
        raise RecoveryRefused(f"cluster {cluster}: no archived WAL yet")
    oldest = listing.base_backups[0].end_time
    window = f"recovery window {_t(oldest)} .. {_t(newest.archived_at)}"
    if target < oldest:
        raise RecoveryRefused(f"cluster {cluster}: target {_t(target)} is before the oldest base backup "
                              f"({listing.base_backups[0].id}, consistent at {_t(oldest)}); {window}")
    if target > newest.archived_at:
        raise RecoveryRefused(f"cluster {cluster}: target {_t(target)} is after the newest archived WAL "
                              f"({newest.segment.name}, archived {_t(newest.archived_at)}); {window}")
    base = [b for b in listing.base_backups if b.end_time <= target][-1]
    # The first segment archived at or after the target holds it: the WAL needed ends there.
    after = [s for s in listing.segments if not s.segment.partial and s.archived_at >= target
             and s.segment.segno >= base.begin_segno]
    last = min(after, key=lambda s: s.segment.segno).segment.segno if after else newest.segment.segno
    gap = wa.find_gap(listing, starts, base.begin_segno, last)
    if gap:
        raise RecoveryRefused(f"cluster {cluster}: cannot recover to {_t(target)}: {gap}; {window}")
    return RecoveryPlan(cluster, target, base, (oldest, newest.archived_at), last)


def check_recovery(ctx: ClusterContext, target: datetime, store: BackupStore | None = None) -> RecoveryPlan:
    require_archiving(ctx)
    store = store or ctx.store()
    listing = wa.list_archive(store, archive_ref(ctx, store))
    return plan_recovery(listing, wa.timeline_starts(store, listing), target)


# -- the new cluster ------------------------------------------------------------------------------------
RECOVERED_HEADER = "# Recovered by pg-ops recover"  # forget_recovered_spec removes a spec that starts so
MADE_BY_UPGRADE = "# Made by pg-ops upgrade --as"  # a blue/green upgrade's new cluster: the same


def specs_folder() -> Path:
    """Where the new cluster's spec goes: beside pg_ops's own state (settings.made_specs_path),
    never into the git work tree; every later load of the specs includes it."""
    path = settings.made_specs_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_cluster_spec(source: ClusterSpec, name: str) -> ClusterSpec:
    """The source's spec under a new name (local: free ports)."""
    from pg_ops.platforms.local import free_base_port

    if not DNS_LABEL.match(name) or len(name) > 40:
        raise RecoveryRefused(f"--as {name!r} is not a DNS-1123 label of at most 40 characters")
    raw = source.model_dump(mode="json")
    raw["name"] = name
    if source.platform == "local":
        # Free now, and no other local cluster's (spec.load_specs refuses an overlap).
        taken = [range(s.local.base_port, s.local.base_port + s.postgres.members) for s in load_specs()
                 if s.platform == "local"]
        raw["local"] = {**raw["local"], "base_port": free_base_port(source.postgres.members, taken)}
    else:
        # Its own Services: the source's name would hand the source's primary Service (and its
        # applications) to the recovered cluster. No external address until someone gives it one
        # (the source keeps its own; a cut-over changes the specs in Git). pg_ops applies its
        # objects itself (gitops: false), as nothing in Git knows it yet; its manifests are
        # rendered for Git, and its spec can say gitops: true once they are committed.
        raw["kubernetes"]["services"] = {"primary": {**raw["kubernetes"]["services"]["primary"],
                                                     "name": f"{name}-primary"},
                                         "external": {"type": "none"}}
        raw["kubernetes"]["gitops"] = False
    return ClusterSpec.model_validate(raw)


def write_recovered_spec(new_spec: ClusterSpec, source: str, target: datetime, base_backup: str) -> Path:
    """The new cluster's spec where pg_ops loads specs from (specs_folder). The run writes it
    where it runs; the CLI writes it again where it runs when the run was the deployment's."""
    path = specs_folder() / f"{new_spec.name}.yaml"
    how = (f"`pg-ops teardown --cluster {new_spec.name}` removes the cluster and this file"
           if new_spec.platform == "local"
           else f"its manifests for Git: `pg-ops render --cluster {new_spec.name}`")
    path.write_text(f"{RECOVERED_HEADER} from cluster {source} to {_t(target)} (base backup {base_backup}); {how}.\n"
                    + yaml.safe_dump(new_spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    return path


def forget_recovered_spec(name: str) -> Path | None:
    """After `teardown` of a cluster `recover` made: its spec goes too (only a file recover wrote,
    never a spec someone keeps in that folder). Returns the file removed."""
    path = settings.made_specs_path() / f"{name}.yaml"
    if path.is_file() and path.read_text().startswith((RECOVERED_HEADER, MADE_BY_UPGRADE)):
        path.unlink()
        return path
    return None


def refuse_existing(new_spec: ClusterSpec) -> None:
    from pg_ops.platforms import platform_for
    from pg_ops.platforms.local import LocalPlatform

    name = new_spec.name
    folder = specs_folder()
    known = {s.name for s in load_specs()}
    if name in known or (folder / f"{name}.yaml").exists():
        raise RecoveryRefused(f"--as {name}: a cluster named {name} already exists (its spec is loaded from "
                              f"{settings.clusters_path()} or {folder}); choose a new name")
    if new_spec.platform == "local":
        probe = ClusterSpec.model_validate({"name": name})
        if LocalPlatform(probe).root.exists():
            raise RecoveryRefused(f"--as {name}: a local cluster named {name} already exists "
                                  f"({LocalPlatform(probe).root}); choose a new name")
        return
    refuse_without_access(new_spec)  # it may not even read the new cluster's record without it
    if platform_for(new_spec).state_store().read() is not None:
        raise RecoveryRefused(f"--as {name}: a cluster named {name} already runs in namespace "
                              f"{new_spec.kubernetes.namespace} (its desired-state record exists); choose a new name")


def refuse_without_access(new_spec: ClusterSpec) -> None:
    """A new Kubernetes cluster needs its own Role and RoleBinding (by name: pg_ops's access is
    per cluster), which only a cluster admin applies. Missing: its manifests are rendered (the
    admin's files, and Git's) and the recovery is refused until they are applied."""
    from pg_ops.platforms.kubernetes import KubernetesPlatform
    from pg_ops.render import default_output_dir, manifests, write_manifests

    platform = KubernetesPlatform(new_spec)
    missing = platform.missing_git_owned()
    if not missing:
        return
    out = default_output_dir(new_spec)
    write_manifests(new_spec, manifests(new_spec), out)
    raise RecoveryRefused(f"--as {new_spec.name}: its access is not applied yet ({', '.join(missing)}); its "
                          f"manifests are rendered in {out}: {platform.how_to_apply(str(out))}, then run the same "
                          f"command again")


def validate_recover(ctx: ClusterContext, target: datetime, as_name: str) -> RecoveryPlan:
    """Everything `recover` refuses, checked before a run exists (the CLI calls it first)."""
    ctx.platform.check_recover()
    if as_name == ctx.name:
        raise RecoveryRefused(f"--as {as_name}: that is the source cluster itself; recovery always makes a new one")
    new_spec = new_cluster_spec(ctx.spec, as_name)
    refuse_existing(new_spec)
    store = ctx.store()
    if store.list(f"{wa.archive_root(as_name)}/"):
        raise RecoveryRefused(f"--as {as_name}: the backup store {store.describe()} already holds a WAL archive "
                              f"{wa.archive_root(as_name)} (a cluster of that name existed); choose a new name")
    return check_recovery(ctx, target, store)


# -- filling a data dir ------------------------------------------------------------------------------
def base_backup_filler(ctx: ClusterContext, store: BackupStore, backup: wa.BaseBackup) -> Callable[[Path], None]:
    """pg_ops's own base backups (one pg_basebackup tar, zstd) are extracted by pg_ops from any
    store; one barman-cloud-backup made (pg_ops took them so on S3 before it streamed its own)
    is restored by barman-cloud-restore."""
    if not any(k.endswith("/data.tar.zst") for k in backup.keys):
        ref = archive_ref(ctx, store)

        def fill_s3(data: Path) -> None:
            barman.restore_base_backup(wa.s3_target(ctx.spec, ref), backup.id, data, s3_keys_env(ctx))
        return fill_s3

    def fill_file(data: Path) -> None:
        import zstandard

        key = next(k for k in backup.keys if k.endswith("/data.tar.zst"))
        with store.open_reader(key) as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|") as tar:
                tar.extractall(data, filter="fully_trusted")  # our own pg_basebackup tar, checked below
        if not (data / "backup_label").exists():
            raise PgOpsError(f"base backup {backup.id}: no backup_label in its tar")
    return fill_file


def wait_promoted(platform: LocalPlatform, member: str, password: str, target: datetime, log,
                  timeout: float = RECOVERY_TIMEOUT_S) -> float:
    """Until the recovered member is writable; fails with PostgreSQL's own FATAL line.

    The restored data holds the roles' passwords as they were at the target. When the superuser's
    was rotated after it, the store's password is refused: once the member has promoted (its
    control file says so, no login needed) the store's is set in single-user mode, so pg_ops never
    needs, keeps or re-applies the older one; `deploy` then sets every other role's from the store."""
    from pg_ops.platforms import local_recovery
    from pg_ops.postgres.topology import probe_members

    started = time.monotonic()
    next_report = started + PROGRESS_EVERY_S
    endpoint = platform.member_endpoints()[member]
    reset: list[bool] = []

    def attempt() -> float | None:
        nonlocal next_report
        probe = probe_members({member: endpoint}, SUPERUSER, password, 3.0)[member]
        if probe.writable:
            return time.monotonic() - started
        if AUTH_REFUSED in (probe.error or "") and local_recovery.promoted(platform, member):
            if reset:
                raise PgOpsError(f"recovery to {_t(target)}: {member} still refuses the superuser's password "
                                 f"after it was set in single-user mode")
            log.warning("recovery to %s: %s holds an older superuser password than the credentials store "
                        "(rotated after the target); setting the store's in single-user mode", _t(target), member)
            local_recovery.run_single_user(platform, member, admin.offline_password_statement(SUPERUSER, password))
            reset.append(True)
            return None
        tail = platform.member_log_tail(member, 40)
        fatal = [line for line in tail.splitlines()
                 if "FATAL" in line and not any(m in line for m in (*CONNECTION_REFUSALS, AUTH_REFUSED))]
        if fatal:
            raise PgOpsError(f"recovery to {_t(target)} failed on {member}: {fatal[-1].split('FATAL:', 1)[-1].strip()}")
        if time.monotonic() >= next_report:
            log.info("recovery of %s to %s: replayed up to %s", member, _t(target), probe.replay_lsn or "?")
            next_report = time.monotonic() + PROGRESS_EVERY_S
        return None

    def expired() -> PgOpsError:
        return PgOpsError(f"recovery to {_t(target)} not finished on {member} after {timeout:g} s")

    return poll(attempt, timeout=timeout, interval=0.2, expired=expired)


def recovery_auto_conf(source: ClusterSpec, ref: wa.ArchiveRef, target: datetime) -> Callable[[Path, str], str]:
    """postgresql.auto.conf for a server (its cluster folder given) replaying one incarnation
    (`ref`) of `source`'s archive."""
    from pg_ops.platforms import local_archive
    from pg_ops.platforms.server_user import server_user

    def build(root: Path, current: str) -> str:
        command = local_archive.restore_command(source, ref, root, server_user())
        return archiving.auto_conf_for_recovery(current, archiving.recovery_settings(command, target))
    return build


@dataclass
class RecoverResult:
    cluster: str
    source: str
    target: str
    base_backup: str
    spec_path: str
    restore_seconds: float
    replay_seconds: float
    seconds: float
    members: list[str] = field(default_factory=list)
    timeline: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def recover(ctx: ClusterContext, target: datetime, as_name: str, store: BackupStore | None = None) -> RecoverResult:
    from pg_ops.platforms import platform_for

    started = time.monotonic()
    plan = validate_recover(ctx, target, as_name)
    store = store or ctx.store()
    new_spec = new_cluster_spec(ctx.spec, as_name)
    platform = platform_for(new_spec)  # a new cluster on the source's platform (check_recover passed)
    new_ctx = ClusterContext(new_spec, platform, ctx.log, ctx.alerts)
    holder = f"recover-{as_name}-{secrets.token_hex(3)}"
    ctx.log.info("recovering cluster %s to %s as %s from base backup %s", ctx.name, _t(target), as_name,
                 plan.base_backup.id)
    try:
        ref = archive_ref(ctx, store)
        with wa.hold_archive(store, ref, holder, "recovery", ttl_seconds=RECOVERY_HOLD_S):
            recover_into = _recover_local if new_spec.platform == "local" else _recover_in_pod
            restore_s, replay_s, result = recover_into(ctx, new_ctx, store, ref, plan)
    except ClusterExists:
        raise  # made by someone else meanwhile: nothing of it is ours to remove
    except BaseException:
        ctx.log.error("recovery of %s as %s failed: removing the half-made cluster %s", ctx.name, as_name, as_name)
        platform.discard_recovered()
        # What the half-made cluster archived (its own, new archive: the source's is never touched).
        with contextlib.suppress(PgOpsError):
            store.delete([o.key for o in store.list(f"{wa.archive_root(as_name)}/")])
        raise
    path = write_recovered_spec(new_spec, ctx.name, target, plan.base_backup.id)
    timeline = result.members[result.primary].timeline if result.primary in result.members else None
    out = RecoverResult(cluster=as_name, source=ctx.name, target=target.isoformat(), base_backup=plan.base_backup.id,
                        spec_path=str(path), restore_seconds=round(restore_s, 3), replay_seconds=round(replay_s, 3),
                        seconds=round(time.monotonic() - started, 3), members=sorted(result.members),
                        timeline=timeline)
    ctx.log.info("cluster %s recovered as %s to %s in %.1f s (restore %.1f s, replay %.1f s)", ctx.name, as_name,
                 _t(target), out.seconds, restore_s, replay_s)
    return out


def _recover_local(ctx: ClusterContext, new_ctx: ClusterContext, store: BackupStore, ref: wa.ArchiveRef,
                   plan: RecoveryPlan) -> tuple[float, float, DeployResult]:
    """Local: pg_ops restores the base backup into the first member's data dir, the member
    script starts it and PostgreSQL replays to the target and promotes; then deploy."""
    from pg_ops.operations.deploy import deploy
    from pg_ops.platforms import local_recovery
    from pg_ops.platforms.local import LocalPlatform

    platform = new_ctx.platform
    assert isinstance(platform, LocalPlatform)
    t0 = time.monotonic()
    member = local_recovery.bootstrap_recovered(platform, ctx.credentials(),
                                                base_backup_filler(ctx, store, plan.base_backup),
                                                recovery_auto_conf(ctx.spec, ref, plan.target))
    restore_s = time.monotonic() - t0
    with lease_kept(new_ctx):  # promoted, it has no standby until deploy has cloned them
        platform.start_member(member)
        replay_s = wait_promoted(platform, member, ctx.admin_password(), plan.target, ctx.log)
        new_ctx.sql(member, archiving.reset_recovery_settings, timeout=30)  # the source's passwords
        return restore_s, replay_s, deploy(new_ctx)


# The recovering member's own server until it promotes: no hot standby (so none of the source's
# max_* settings need matching), archiving off (recovery_server_conf); fsync stays on, unlike a
# drill's: these files become the new cluster's primary.
RECOVER_PARAMETERS = {"hot_standby": False, "max_wal_size": "4GB"}


def _recover_in_pod(ctx: ClusterContext, new_ctx: ClusterContext, store: BackupStore, ref: wa.ArchiveRef,
                    plan: RecoveryPlan) -> tuple[float, float, DeployResult]:
    """Kubernetes: the new cluster's first pod restores the base backup from S3 and replays to
    the target on its own data volume (member.sh's [recover] row runs recover_pod.sh), stops
    the promoted server cleanly and starts it as the primary; then the recovery's Secret is
    deleted, the record forgets the recovery, and deploy finishes the cluster (replicas cloned
    from it). The fetch and the replay are one step in the pod: restore_seconds is the time
    until the pod runs, replay_seconds the rest."""
    from pg_ops.operations.deploy import deploy
    from pg_ops.platforms.kubernetes import KubernetesPlatform
    from pg_ops.state import update_state

    platform = new_ctx.platform
    assert isinstance(platform, KubernetesPlatform)
    password = ctx.admin_password()
    t0 = time.monotonic()
    request = recovery_pod_request(ctx, store, ctx.spec, ref, plan, purpose="recover", parameters=RECOVER_PARAMETERS)
    member = platform.bootstrap_recovered(ctx.credentials(), request)
    ctx.log.info("recovery of %s as %s: pod %s restores base backup %s and replays to %s", ctx.name, new_ctx.name,
                 member, plan.base_backup.id, _t(plan.target))
    platform.start_member(member)  # its pod scheduled and running (a Pending one is reported)
    restore_s = time.monotonic() - t0
    with lease_kept(new_ctx):  # promoted, it has no standby until deploy has cloned them
        replay_s = wait_member_recovered(new_ctx, member, password, plan.target, ctx.log)
        platform.recovery_done()
        update_state(platform.state_store(), lambda s: s.model_copy(update={"recovery": ""}))
        return restore_s, replay_s, deploy(new_ctx)


def wait_member_recovered(ctx: ClusterContext, member: str, password: str, target: datetime, log,
                          timeout: float = RECOVERY_TIMEOUT_S) -> float:
    """Until the recovered member runs writable as the new cluster's primary; fails with the
    member's own refusal (recover_pod.sh's one line, kept by member.sh) as soon as it reports one."""
    def refused() -> str | None:
        return ctx.platform.member_report(member).refused

    return _wait_writable(member, lambda: ctx.platform.member_endpoints()[member], password, target, log,
                          refused, f"failed on {member}:", timeout)


def _wait_writable(name: str, endpoint: Callable[[], Endpoint], password: str, target: datetime, log,
                   stopped: Callable[[], str | None], says: str, timeout: float) -> float:
    """Until the server recovering to `target` at `endpoint()` takes the store's password and
    is writable; fails with `stopped()`'s reason ("recovery to T <says> <reason>") as soon as
    there is one. Progress is logged every PROGRESS_EVERY_S."""
    from pg_ops.postgres.topology import probe_members

    started = time.monotonic()
    next_report = started + PROGRESS_EVERY_S

    def attempt() -> float | None:
        nonlocal next_report
        probe = probe_members({name: endpoint()}, SUPERUSER, password, 3.0)[name]
        if probe.writable:
            return time.monotonic() - started
        reason = stopped()
        if reason is not None:
            raise PgOpsError(f"recovery to {_t(target)} {says} {reason}")
        if time.monotonic() >= next_report:
            log.info("recovery of %s to %s: %s", name, _t(target), probe.error or "replaying")
            next_report = time.monotonic() + PROGRESS_EVERY_S
        return None

    def expired() -> PgOpsError:
        return PgOpsError(f"recovery to {_t(target)} not finished on {name} after {timeout:g} s")

    return poll(attempt, timeout=timeout, interval=0.5, expired=expired)


# -- the point-in-time drill ---------------------------------------------------------------------------
@dataclass
class PitrDrillReport:
    cluster: str
    result: str = "failed"
    reason: str = ""
    target_time: str = ""
    base_backup: str = ""
    chosen_by: str = "drill"  # drill (markers) | operator (--point-in-time TIME)
    started_at: str = ""
    finished_at: str = ""
    restore_seconds: float = 0.0
    replay_seconds: float = 0.0
    verify_seconds: float = 0.0
    total_seconds: float = 0.0
    heartbeat_rows_before: int = 0
    heartbeat_rows_after: int = 0
    markers: dict = field(default_factory=dict)
    amcheck: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def seal_target(ctx: ClusterContext, store: BackupStore) -> tuple[datetime, dict]:
    """A target between two committed marker rows, then the segment holding both archived."""
    token = secrets.token_hex(4)
    before = record_marker(ctx, f"drill-before-{token}")
    time.sleep(MARKER_SPACING_S)
    target = datetime.now(UTC)
    time.sleep(MARKER_SPACING_S)
    after = record_marker(ctx, f"drill-after-{token}")
    switch_and_wait(ctx, store)
    return target, {"before": f"drill-before-{token}", "after": f"drill-after-{token}", "before_at": before,
                    "after_at": after}


HEARTBEATS_SQL = """
select count(*) filter (where at <= %(safe)s), count(*) filter (where at > %(target)s),
       array_agg(marker) filter (where marker is not null)
from heartbeat_history
"""


def _verify(endpoint, password: str, target: datetime, markers: dict, report: PitrDrillReport) -> list[str]:
    problems: list[str] = []
    safe = target - timedelta(seconds=MARKER_SPACING_S)  # a row's `at` precedes its commit

    def heartbeats(conn: psycopg.Connection):
        return conn.execute(HEARTBEATS_SQL, {"safe": safe, "target": target}).fetchone()

    before, after, found = with_connection(endpoint, SUPERUSER, password, heartbeats, dbname=PG_OPS_DATABASE,
                                           timeout=60, name="pitr-drill")
    report.heartbeat_rows_before, report.heartbeat_rows_after = before, after
    found = set(found or [])
    if after:
        problems.append(f"{after} heartbeat rows written after the target {_t(target)} are present")
    if markers:
        if markers["before"] not in found:
            problems.append(f"marker {markers['before']} (committed before the target) is missing")
        if markers["after"] in found:
            problems.append(f"marker {markers['after']} (committed after the target) is present")
    databases = with_connection(endpoint, SUPERUSER, password, dump.list_databases, timeout=30, name="pitr-drill")
    for db in databases:
        try:
            checked, index_problems = with_connection(endpoint, SUPERUSER, password, dump.amcheck_indexes, dbname=db,
                                                      timeout=3600, name=f"pitr-drill/{db}")
        except PgOpsError as exc:
            report.amcheck[db] = {"unavailable": str(exc)}
            continue
        if checked is None:
            report.amcheck[db] = {"unavailable": dump.AMCHECK_UNAVAILABLE}
            continue
        report.amcheck[db] = {"indexes_checked": checked, "problems": index_problems}
        problems += [f"{db}: {p}" for p in index_problems]
    return problems


def expected_rows_before(ctx: ClusterContext, target: datetime) -> int:
    """Heartbeat rows the source holds from before the target (what the recovery must have)."""
    safe = target - timedelta(seconds=MARKER_SPACING_S)
    return ctx.on_primary_endpoint(lambda conn: status_table.heartbeats_until(conn, safe), timeout=3)


def pitr_drill(ctx: ClusterContext, target: datetime | None = None, store: BackupStore | None = None,
               where: str = "primary") -> PitrDrillReport:
    """Recover the archive into a throw-away server and prove the target. Raises PgOpsError when
    the drill fails (after recording it) or cannot run. `where` "copy": from the second store
    (base backup, WAL and the drill's record there; its marker segment copied there first)."""
    from pg_ops.operations.copy import copy_backups, reading_copy
    from pg_ops.operations.drill import alert_drill

    ctx.platform.check_point_in_time("the point-in-time drill")
    source_spec = reading_copy(ctx.spec) if where == "copy" else ctx.spec
    store = ctx.copy_store() if where == "copy" else (store or ctx.store())
    started = time.monotonic()
    report = PitrDrillReport(cluster=ctx.name, started_at=datetime.now(UTC).isoformat())
    markers: dict = {}
    if target is None:
        target, markers = seal_target(ctx, ctx.store())
        if where == "copy":
            copy_backups(ctx, dst=store)  # the segment holding the markers, into the second store
    else:
        report.chosen_by = "operator"
    report.target_time, report.markers = target.isoformat(), markers
    plan = check_recovery(ctx, target, store)
    report.base_backup = plan.base_backup.id
    expected = expected_rows_before(ctx, target)
    try:
        ref = archive_ref(ctx, store)
        with wa.hold_archive(store, ref, f"pitr-drill-{secrets.token_hex(3)}", "drill", ttl_seconds=RECOVERY_HOLD_S):
            with _recovered_server(ctx, store, source_spec, ref, plan, report) as endpoint:
                t1 = time.monotonic()
                problems = _verify(endpoint, ctx.admin_password(), target, markers, report)
                if report.heartbeat_rows_before != expected:
                    problems.append(f"{report.heartbeat_rows_before} heartbeat rows from before the target "
                                    f"recovered, the source has {expected}")
                report.verify_seconds = round(time.monotonic() - t1, 3)
        report.result = "failed" if problems else "passed"
        report.reason = "; ".join(problems)
    except PgOpsError as exc:
        report.result, report.reason = "failed", str(exc)
    report.total_seconds = round(time.monotonic() - started, 3)
    report.finished_at = datetime.now(UTC).isoformat()
    store.put_bytes(wa.drill_key(archive_ref(ctx, store), datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")),
                    json.dumps(report.as_dict(), indent=1).encode())
    if report.result != "passed":
        alert_drill(ctx, f"point-in-time {_t(target)}", report.reason)
        raise PgOpsError(f"point-in-time drill of cluster {ctx.name} to {_t(target)} failed: {report.reason}")
    ctx.log.info("point-in-time drill of %s to %s passed: restore %.1f s, replay %.1f s, %d heartbeat rows, "
                 "markers %s", ctx.name, _t(target), report.restore_seconds, report.replay_seconds,
                 report.heartbeat_rows_before, "checked" if markers else "none")
    record_status(ctx, "pitr_drill_success", report.replay_seconds)
    return report


@contextlib.contextmanager
def _recovered_server(ctx: ClusterContext, store: BackupStore, source_spec: ClusterSpec, ref: wa.ArchiveRef,
                      plan: RecoveryPlan, report: PitrDrillReport) -> Iterator[Endpoint]:
    """A throw-away server recovered to the plan's target and promoted, its superuser's password
    the credentials store's; removed when the block ends. Local: a server on this machine (the
    base backup restored by pg_ops, then replay). Kubernetes: a recovery pod that fetches the base
    backup and replays in the pod (its replay_seconds include the fetch)."""
    from pg_ops.platforms import local_recovery

    t0 = time.monotonic()
    if ctx.spec.platform != "kubernetes":
        with local_recovery.drill_server(
                "pitr", ctx.credentials(), base_backup_filler(ctx, store, plan.base_backup),
                recovery_auto_conf(source_spec, ref, plan.target), version=source_spec.postgres.version) as server:
            member = server.spec.member_names[0]
            report.restore_seconds = round(time.monotonic() - t0, 3)
            report.replay_seconds = round(wait_promoted(server, member, ctx.admin_password(), plan.target,
                                                        ctx.log), 3)
            yield server.member_endpoints()[member]
        return
    with ctx.platform.recovery_pod(recovery_pod_request(ctx, store, source_spec, ref, plan)) as pod:
        report.restore_seconds = round(time.monotonic() - t0, 3)  # the pod scheduled and started
        ctx.log.info("point-in-time drill of %s: %s restores base backup %s and replays to %s", ctx.name, pod.name,
                     plan.base_backup.id, _t(plan.target))
        report.replay_seconds = round(wait_pod_promoted(pod, ctx.admin_password(), plan.target, ctx.log), 3)
        yield pod.endpoint


def recovery_pod_request(ctx: ClusterContext, store: BackupStore, source_spec: ClusterSpec, ref: wa.ArchiveRef,
                         plan: RecoveryPlan, purpose: str = "pitr",
                         parameters: dict[str, object] | None = None) -> RecoveryPodRequest:
    """What recover_pod.sh reads (a drill's recovery pod; the first pod of a recovered cluster):
    pg_ops's base backup tar in the S3 store (a barman-cloud-backup one is refused: the pod
    extracts pg_ops's tar), the restore_command of the cluster's image, the store's keys; the
    server's `parameters` (default: a drill's)."""
    from pg_ops.platforms.base import RecoveryPodRequest
    from pg_ops.platforms.local_recovery import DRILL_PARAMETERS
    from pg_ops.spec import S3StoreSpec
    from pg_ops.stores import s3_credentials
    from pg_ops.stores.s3 import S3Store

    store_spec = source_spec.backups.store
    if not isinstance(store_spec, S3StoreSpec) or not isinstance(store, S3Store):
        raise RecoveryRefused(f"cluster {ctx.name}: a recovery pod reads the archive from S3; "
                              f"{store.describe()} is not an S3 store")
    tar = next((k for k in plan.base_backup.keys if k.endswith("/data.tar.zst")), None)
    if tar is None:
        raise RecoveryRefused(f"cluster {ctx.name}: base backup {plan.base_backup.id} was made by "
                              f"barman-cloud-backup; a recovery pod restores pg_ops's own (take one: the "
                              f"base_backup job)")
    creds = s3_credentials(store_spec, ctx.platform.s3_credentials, where=store.describe())
    restore = barman.restore_command(wa.s3_target(source_spec, ref), "", None)
    return RecoveryPodRequest(
        purpose=purpose, bucket=store_spec.bucket, key=store.full_key(tar), endpoint_url=store_spec.endpoint_url,
        region=store_spec.region,
        config=archiving.recovery_server_conf(restore, plan.target, DRILL_PARAMETERS if parameters is None
                                              else parameters),
        superuser_statement=admin.offline_password_statement(SUPERUSER, ctx.admin_password()),
        access_key=creds.access_key if creds else None, secret_key=creds.secret_key if creds else None)


def wait_pod_promoted(pod: RecoveryPod, password: str, target: datetime, log,
                      timeout: float = RECOVERY_TIMEOUT_S) -> float:
    """Until the recovery pod's server is writable with the store's password; fails with the
    pod's own reason (its script's one line) as soon as it stopped."""
    return _wait_writable(pod.name, lambda: pod.endpoint, password, target, log,
                          lambda: f"{pod.name} {ended}" if (ended := pod.ended()) else None, "failed:", timeout)


DRILL_RECENT_DAYS = 8  # a weekly drill, a day of slack


def pitr_drill_status(ctx: ClusterContext, store: BackupStore | None = None) -> dict:
    """What the check "the latest recovery point was drilled" reads: the newest point-in-time
    drill passed, within DRILL_RECENT_DAYS (the drill is weekly, base backups nightly: the drilled
    base backup is usually not the newest one, and says so in `from_newest_base_backup`)."""
    store = store or ctx.store()
    ref = archive_ref(ctx, store)
    drills = wa.list_drills(store, ref)
    listing = wa.list_archive(store, ref)
    latest = drills[-1] if drills else None
    newest_base = listing.base_backups[-1].id if listing.base_backups else None
    age = None
    if latest and latest.get("finished_at"):
        age = (datetime.now(UTC) - datetime.fromisoformat(latest["finished_at"])).total_seconds() / 86400
    drill: dict = latest or {}
    passed = bool(drill) and drill.get("result") == "passed"
    return {"latest": latest, "newest_base_backup": newest_base, "age_days": age,
            "from_newest_base_backup": bool(drill) and drill.get("base_backup") == newest_base,
            "drilled": passed and age is not None and age <= DRILL_RECENT_DAYS}


def drills_point_in_time(spec: ClusterSpec) -> bool:
    """Whether a cluster gets the point-in-time drill (asset, check, weekly schedule): every local
    cluster (its server restored on this machine), a Kubernetes one whose archive is in S3 (its
    recovery pod reads it there; Platform.check_point_in_time refuses the rest)."""
    return spec.platform == "local" or spec.backups.store.type == "s3"


def nothing_to_pitr_drill(ctx: ClusterContext) -> str | None:
    """Why the weekly point-in-time drill has nothing to do on this cluster yet (no base backup),
    or None: its schedule skips with this reason instead of a run that would fail."""
    if pitr_drill_status(ctx)["newest_base_backup"]:
        return None
    return "no base backup to recover from yet (the first base backup has not run)"
