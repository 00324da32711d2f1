"""Major-version upgrades, rehearsed on a copy before they touch the cluster.

    pg-ops upgrade --to 18 --rehearse [--backup ID]

The rehearsal takes the newest complete backup (or a chosen one), restores it into a scratch
server of the cluster's own major and verifies it there exactly as a restore drill does (row
counts against the manifest, amcheck), then upgrades that server in place the way the real
upgrade will upgrade the primary (`Platform.upgrade_scratch`: clean stop, initdb of the new
major with the old locale and checksums, `pg_upgrade --check`, `pg_upgrade --link`, start), and
proves the result: every table's row count again against the manifest, amcheck on every B-tree
index under the new major, the same extensions present and updated to the new major's versions,
planner statistics rebuilt (`vacuumdb --analyze-in-stages`). Each step is timed: `pg_upgrade`'s
seconds are what the real upgrade's downtime window will mostly be on this data.

The result is `upgrade-<MAJOR>.json` beside the backup it rehearsed on (like drill.json), passed
or failed with the reason; `latest_rehearsal` reads the newest. A rehearsal that fails is a
finding, not a fault of pg_ops: it is recorded, and the run fails with that one line.

Refused before anything starts (one line): the same major or a downgrade, a major pg_ops does not
run, the new major's binaries not found, no complete backup. The cluster itself is only read
(its backup, and its major from the primary).
"""

from __future__ import annotations

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from pg_ops import settings
from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations import drill
from pg_ops.operations.context import ClusterContext
from pg_ops.platforms.base import ScratchTarget, UpgradeScratch
from pg_ops.postgres import dump
from pg_ops.postgres import upgrade as pgu
from pg_ops.postgres.session import with_connection
from pg_ops.stores import BackupStore
from pg_ops.stores import catalog as cat

HOLD_SECONDS = 6 * 3600


def rehearsal_file(to_major: int) -> str:
    return f"upgrade-{to_major}.json"


@dataclass
class RehearsalReport:
    cluster: str
    from_major: int
    to_major: int
    backup_id: str
    result: str = "failed"  # passed | failed
    reason: str = ""
    started_at: str = ""
    finished_at: str = ""
    restore_seconds: float = 0.0  # download and restore into the old major
    steps: dict[str, float] = field(default_factory=dict)  # stop, initdb, check, pg_upgrade, start
    verify_seconds: float = 0.0  # counts, amcheck and extensions under the new major
    analyze_seconds: float = 0.0
    total_seconds: float = 0.0
    restored_bytes: int = 0
    databases: dict[str, dict] = field(default_factory=dict)
    extensions_updated: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class RehearsalProblem(Exception):
    """The upgraded copy is not the backup's data (counts, indexes, extensions)."""


# -- before anything starts -------------------------------------------------------------------------
def cluster_major(ctx: ClusterContext) -> int:
    """The major the cluster's primary runs (what it answers, not what its spec says)."""
    primary = ctx.state().primary
    probe = ctx.probe([primary])[primary]
    if probe.server_version_num is None:
        raise PgOpsError(f"cluster {ctx.name}: cannot read the major of its primary {primary}: "
                         f"{probe.error or 'no answer'}")
    return probe.server_version_num // 10000


def check_rehearsal(ctx: ClusterContext, to_major: int) -> int:
    """The cluster's major, once `to_major` is an upgrade pg_ops can rehearse here; else one
    line (UpgradeRefused, Unsupported, or the missing binaries)."""
    from_major = cluster_major(ctx)
    pgu.check_pair(ctx.name, from_major, to_major)
    settings.pg_bin_for(to_major)  # the rehearsal's, and the statistics' rebuild after an upgrade
    return from_major


# -- the rehearsal ----------------------------------------------------------------------------------
def rehearse_upgrade(ctx: ClusterContext, to_major: int, backup_id: str | None = None,
                     store: BackupStore | None = None) -> RehearsalReport:
    """Run a rehearsal; returns its report when it passes, raises pgu.UpgradeFailed (after
    recording it) when it does not, PgOpsError when it could not run."""
    from_major = check_rehearsal(ctx, to_major)
    store = store or ctx.store()
    record = drill.choose_backup(store, ctx.name, backup_id)
    report = RehearsalReport(ctx.name, from_major, to_major, record.id, started_at=datetime.now(UTC).isoformat())
    restore = drill.DrillReport(cluster=ctx.name, backup_id=record.id)
    started = time.monotonic()
    ctx.log.info("upgrade rehearsal of %s from PostgreSQL %d to %d on backup %s", ctx.name, from_major, to_major,
                 record.id)

    def upgrade_and_verify(scratch: ScratchTarget, manifest: cat.Manifest) -> None:
        assert isinstance(scratch, UpgradeScratch)
        report.restore_seconds = round(restore.download_seconds + restore.restore_seconds, 3)
        report.restored_bytes = manifest.raw_bytes
        before = {e.name: _extensions(scratch, e.name) for e in manifest.databases}
        report.steps = scratch.upgrade()
        ctx.log.info("%s upgraded to PostgreSQL %d: %s", scratch.name, to_major, report.steps)
        _verify_upgraded(scratch, manifest, before, to_major, report)

    try:
        with cat.hold_backup(store, ctx.name, record.id, f"upgrade-rehearsal-{secrets.token_hex(4)}",
                             "upgrade rehearsal", HOLD_SECONDS):
            drill._run(ctx, store, record, restore, target=lambda: ctx.platform.upgrade_scratch(from_major, to_major),
                       then=upgrade_and_verify)
        report.result = "passed"
    except drill.BackupFault as fault:
        report.reason = f"the backup did not restore on PostgreSQL {from_major}: {fault}"
    except (pgu.UpgradeFailed, RehearsalProblem) as exc:
        report.reason = str(exc)
    report.total_seconds = round(time.monotonic() - started, 3)
    report.finished_at = datetime.now(UTC).isoformat()
    store.put_bytes(cat.object_key(ctx.name, record.id, rehearsal_file(to_major)),
                    json.dumps(report.as_dict(), indent=1).encode())
    if report.result != "passed":
        ctx.log.error("upgrade rehearsal of %s to PostgreSQL %d FAILED: %s", ctx.name, to_major, report.reason)
        raise pgu.UpgradeFailed(f"upgrade rehearsal of cluster {ctx.name} to PostgreSQL {to_major} failed: "
                                f"{report.reason}")
    ctx.log.info("upgrade rehearsal of %s to PostgreSQL %d passed in %.1f s (pg_upgrade %.1f s)", ctx.name,
                 to_major, report.total_seconds, report.steps.get("pg_upgrade_seconds", 0.0))
    return report


def _extensions(scratch: ScratchTarget, database: str) -> dict[str, tuple[str, str | None]]:
    return with_connection(scratch.endpoint, SUPERUSER, scratch.password, pgu.installed_extensions,
                           dbname=database, timeout=60, name=f"{scratch.name}/{database}")


def _verify_upgraded(scratch: ScratchTarget, manifest: cat.Manifest, before: dict[str, dict], to_major: int,
                     report: RehearsalReport) -> None:
    t0 = time.monotonic()
    major = with_connection(scratch.endpoint, SUPERUSER, scratch.password, pgu.server_major, timeout=30,
                            name=scratch.name)
    if major != to_major:
        raise RehearsalProblem(f"{scratch.name} runs PostgreSQL {major} after the upgrade, not {to_major}")
    problems: list[str] = []
    for entry in manifest.databases:
        report.extensions_updated[entry.name] = with_connection(
            scratch.endpoint, SUPERUSER, scratch.password, pgu.update_extensions, dbname=entry.name, timeout=600,
            name=f"{scratch.name}/{entry.name}")
        after = _extensions(scratch, entry.name)
        missing = sorted(set(before[entry.name]) - set(after))
        behind = sorted(name for name, (version, default) in after.items() if default and version != default)
        checks = drill.verify_database(scratch, entry)
        report.databases[entry.name] = {**checks, "extensions": {n: v for n, (v, _) in after.items()}}
        problems += [f"{entry.name}: {p}" for p in checks["count_problems"] + checks["index_problems"]]
        problems += [f"{entry.name}: extension {name} missing after the upgrade" for name in missing]
        problems += [f"{entry.name}: extension {name} not updated" for name in behind]
    report.verify_seconds = round(time.monotonic() - t0, 3)
    if problems:
        raise RehearsalProblem(problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    t1 = time.monotonic()
    analyzed = dump.analyze_in_stages(scratch.endpoint, SUPERUSER, scratch.password, settings.pg_bin_for(to_major))
    if not analyzed.ok:
        raise RehearsalProblem(f"vacuumdb --analyze-in-stages failed (exit {analyzed.returncode}): "
                               f"{'; '.join(analyzed.errors[:2])}")
    report.analyze_seconds = round(time.monotonic() - t1, 3)


# -- the upgrade itself -----------------------------------------------------------------------------
REHEARSAL_MAX_AGE_DAYS = 7  # a rehearsal older than a week of schema changes proves little
UPGRADE_LOCK_TTL_S = 60  # renewed while the upgrade runs (state.HeldLock), like every topology change


@dataclass
class UpgradeResult:
    cluster: str
    from_major: int
    to_major: int
    primary: str
    backup_id: str
    downtime_seconds: float  # the primary stopped -> the upgraded primary writable
    seconds: float
    system_identifier: str
    base_backup: str | None
    extensions_updated: dict[str, list[str]]
    steps: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def check_upgrade(ctx: ClusterContext, to_major: int, force: bool = False) -> int:
    """The cluster's major, once the upgrade may start; else one line naming what stops it."""
    from_major = check_rehearsal(ctx, to_major)
    asked = ctx.spec.postgres.version
    if asked != to_major:
        said = f"PostgreSQL {asked}" if asked else "the default binaries (postgres.version unset)"
        raise pgu.UpgradeRefused(f"cluster {ctx.name}: its spec asks for {said}; set postgres.version: {to_major} "
                                 f"first (the upgraded members start with the spec's binaries)")
    if not force:
        latest = latest_rehearsal(ctx, to_major)
        if not rehearsal_is_fresh(latest, from_major):
            raise pgu.UpgradeRefused(f"cluster {ctx.name}: {_not_rehearsed(latest, to_major)} (or --force)")
    state = ctx.state()
    probes = ctx.probe()
    if not probes[state.primary].writable:
        raise pgu.UpgradeRefused(f"cluster {ctx.name}: the primary {state.primary} is not writable")
    behind = [n for n, p in probes.items() if n != state.primary and not p.streaming]
    if behind:
        raise pgu.UpgradeRefused(f"cluster {ctx.name}: {', '.join(behind)} not streaming; repair it first (`pg-ops "
                                 f"deploy` or `pg-ops rebuild`)")
    return from_major


def upgrade(ctx: ClusterContext, to_major: int, force: bool = False) -> UpgradeResult:
    """In place, with pg_upgrade --link on the primary. The steps, each timed (StepLog):
    a backup; under the topology lock (the health sensor leaves a locked cluster alone), the
    primary stopped cleanly — the downtime window opens — then the replicas; `pg_upgrade --check`
    and `--link` of the primary's data dir; the record's system identifier set to the new one;
    the primary started on the new major — the window closes once it takes a write. Before that
    start, any failure gives the old major its data dir back and starts the old cluster again,
    untouched, and says so in one line. After it: the replicas re-cloned from the upgraded
    primary (their old data cannot follow pg_upgrade --link), slots and the replication mode as
    a deploy sets them, extensions updated, statistics rebuilt, and a base backup at once (the
    WAL archive continues under the new system identifier)."""
    from pg_ops.operations import pooling, wal
    from pg_ops.operations.backup import backup
    from pg_ops.operations.deploy import configure_primary, establish_replication
    from pg_ops.operations.failover import REBUILD_TIMEOUT_S
    from pg_ops.operations.members import lease_kept, wait_until
    from pg_ops.operations.steps import StepLog
    from pg_ops.state import topology_lock

    from_major = check_upgrade(ctx, to_major, force)
    steps = StepLog(ctx.log, f"upgrade to PostgreSQL {to_major}", ctx)
    with steps.step("backup"):
        manifest = backup(ctx)
    password = ctx.admin_password()
    with topology_lock(ctx.platform.state_store(), "upgrade", ttl_seconds=UPGRADE_LOCK_TTL_S) as lock, lease_kept(ctx):
        steps.guard = lock.check
        state = ctx.state()
        primary = state.primary
        replicas = [m for m in ctx.spec.member_names if m != primary]
        options = ctx.sql(primary, pgu.initdb_options, timeout=30, local_commit=False)
        member = ctx.platform.member_upgrade(primary, from_major, to_major, password)
        with steps.step(f"initdb of PostgreSQL {to_major}"):
            member.prepare(options)
        window = time.monotonic()
        # Applications through the pooler wait out the window instead of failing (as a one-member
        # restart does); without a pooler they see refused connections for its length.
        with pooling.paused(ctx):
            try:
                # The primary first: stopped after its standbys, a sync primary's commits would wait
                # for them and hold its clean shutdown. The replicas then, before the record names
                # the new system identifier (their member scripts would refuse their own data).
                with steps.step(f"stop the primary {primary}"):
                    ctx.platform.stop_member(primary)
                # They stop while pg_upgrade works (each stop is a checkpoint and a shutdown: not
                # the window's business), and must have stopped before the record changes.
                with ThreadPoolExecutor(max_workers=max(len(replicas), 1), thread_name_prefix="stop") as pool:
                    stopping = [pool.submit(ctx.platform.stop_member, name) for name in replicas]
                    with steps.step("pg_upgrade --check"):
                        member.check()
                    with steps.step("pg_upgrade --link"):
                        member.link()
                    with steps.step("the replicas stopped"):
                        for future in stopping:
                            future.result()
                sysid = member.system_identifier()
                lock.update(lambda s: s.model_copy(update={"system_identifier": sysid}))
            except BaseException as exc:
                _restore_old(ctx, member, primary, replicas, state.system_identifier, lock)
                raise pgu.UpgradeFailed(
                    f"upgrade of cluster {ctx.name} to PostgreSQL {to_major} failed before the point of no return: "
                    f"{exc}; the cluster runs PostgreSQL {from_major} again with its data untouched (set "
                    f"postgres.version back to {from_major}, or fix the cause and upgrade again)") from exc
            with steps.step(f"start {primary} on PostgreSQL {to_major}"):
                member.go()
                ctx.platform.start_member(primary)
                wait_until(ctx, primary, lambda p: p.writable, "writable on the new major",
                           timeout=REBUILD_TIMEOUT_S)
                ctx.platform.route_primary(primary)  # Kubernetes: its new pod labelled for the Service
            downtime = time.monotonic() - window
        member.finish()
        try:
            with steps.step("configure the primary"):
                configure_primary(ctx, primary)
            with steps.step("re-clone the replicas"):
                for name in replicas:
                    ctx.platform.wipe_member(name)
                    ctx.platform.start_member(name)
                for name in replicas:
                    wait_until(ctx, name, lambda p: p.streaming, "streaming from the upgraded primary",
                               timeout=REBUILD_TIMEOUT_S)
                establish_replication(ctx, lock)
        except PgOpsError as exc:
            raise PgOpsError(f"cluster {ctx.name} runs PostgreSQL {to_major} (its primary {primary} upgraded, "
                             f"downtime {downtime:.1f} s) but its replicas did not come back: {exc}; `pg-ops deploy` "
                             f"re-clones them") from exc
    updated: dict[str, list[str]] = {}
    with steps.step("update extensions"):
        for database in _databases(ctx, primary):
            updated[database] = ctx.sql(primary, pgu.update_extensions, dbname=database, timeout=600,
                                        local_commit=False, name=f"{primary}/{database}")
    with steps.step("analyze in stages"):
        analyzed = dump.analyze_in_stages(ctx.endpoints()[primary], SUPERUSER, password,
                                          settings.pg_bin_for(to_major))
        if not analyzed.ok:
            ctx.log.warning("vacuumdb --analyze-in-stages failed (exit %s): %s", analyzed.returncode,
                            "; ".join(analyzed.errors[:2]))
    base = None
    if ctx.spec.backups.wal.enabled:
        with steps.step("base backup"):
            try:
                base = wal.base_backup(ctx).id
            except PgOpsError as exc:  # the upgrade is done; the nightly base backup will come
                ctx.log.error("cluster %s upgraded, but its first base backup on PostgreSQL %d failed: %s "
                              "(`pg-ops base-backup` takes one; until then no point in time after the "
                              "upgrade can be recovered)", ctx.name, to_major, exc)
    result = UpgradeResult(cluster=ctx.name, from_major=from_major, to_major=to_major, primary=primary,
                           backup_id=manifest.id, downtime_seconds=round(downtime, 3),
                           seconds=round(steps.elapsed, 3), system_identifier=sysid, base_backup=base,
                           extensions_updated=updated, steps=steps.as_metadata())
    ctx.log.info("cluster %s upgraded from PostgreSQL %d to %d: downtime %.1f s, %.1f s in all", ctx.name,
                 from_major, to_major, result.downtime_seconds, result.seconds)
    return result


def _restore_old(ctx: ClusterContext, member, primary: str, replicas: list[str], sysid: str, lock) -> None:
    """Before the new server started: the old data dir back, the record's identifier back, the
    old cluster started again (primary first) and waited for."""
    from pg_ops.operations.members import wait_until

    ctx.platform.stop_member(primary)  # a primary that did stop is a no-op; one that did not, stops now
    member.undo()
    lock.update(lambda s: s.model_copy(update={"system_identifier": sysid}))
    member.start_old(primary)
    wait_until(ctx, primary, lambda p: p.writable, "writable again on the old major")
    ctx.platform.route_primary(primary)
    for name in replicas:
        if not ctx.platform.member_running(name):  # the window may have failed before it stopped them all
            member.start_old(name)
    for name in replicas:
        wait_until(ctx, name, lambda p: p.streaming, "streaming again on the old major")


def _databases(ctx: ClusterContext, primary: str) -> list[str]:
    return ctx.sql(primary, dump.list_databases, timeout=30, local_commit=False)


# -- reading it back --------------------------------------------------------------------------------
def rehearsal_is_fresh(latest: dict | None, from_major: int) -> bool:
    """A passed rehearsal from the major the cluster runs, within REHEARSAL_MAX_AGE_DAYS: what
    the upgrade requires (and the `upgrade_rehearsed` asset check reports)."""
    return latest is not None and latest.get("result") == "passed" and latest.get("from_major") == from_major \
        and datetime.fromisoformat(latest["finished_at"]) > datetime.now(UTC) - timedelta(days=REHEARSAL_MAX_AGE_DAYS)


def _not_rehearsed(latest: dict | None, to_major: int) -> str:
    said = f"the newest {latest['result']} on {latest['finished_at'][:16]}" if latest else "none yet"
    return (f"no passed upgrade rehearsal to PostgreSQL {to_major} within {REHEARSAL_MAX_AGE_DAYS} days ({said}): "
            f"`pg-ops upgrade --to {to_major} --rehearse` first")


@dataclass(frozen=True)
class RehearsalStanding:
    """Whether the upgrade a cluster's spec asks for is rehearsed (the `upgrade_rehearsed` check)."""

    passed: bool
    description: str
    latest: dict | None = None


def rehearsal_standing(ctx: ClusterContext) -> RehearsalStanding:
    """The spec's `postgres.version` against the major the primary runs: no upgrade pending
    passes; a pending one passes only with a fresh passed rehearsal (what `upgrade` requires)."""
    asked = ctx.spec.postgres.version
    if asked is None:
        return RehearsalStanding(True, "no major asked for (postgres.version unset): no upgrade pending")
    running = cluster_major(ctx)
    if running >= asked:  # a downgrade never gets here: the platform refuses the spec first
        return RehearsalStanding(True, f"runs PostgreSQL {running}, the major its spec asks for: no upgrade pending")
    latest = latest_rehearsal(ctx, asked)
    if latest is not None and rehearsal_is_fresh(latest, running):
        return RehearsalStanding(True, f"upgrade PostgreSQL {running} -> {asked} rehearsed on "
                                       f"{latest['finished_at'][:16]} (backup {latest.get('backup_id', '?')})", latest)
    return RehearsalStanding(False, f"spec asks for PostgreSQL {asked}, the cluster runs {running}: "
                                    f"{_not_rehearsed(latest, asked)}", latest)


def latest_rehearsal(ctx: ClusterContext, to_major: int, store: BackupStore | None = None) -> dict | None:
    """The last rehearsal for `to_major` to finish (passed or failed), whichever backup it
    rehearsed on (`--backup` may pick an older one), or None. A week of backups: a few reads."""
    store = store or ctx.store()
    suffix = f"/{rehearsal_file(to_major)}"
    found = []
    for key in (o.key for o in store.list(f"{ctx.name}/") if o.key.endswith(suffix)):
        try:
            found.append(json.loads(store.get_bytes(key)))
        except (PgOpsError, ValueError):
            continue
    return max(found, key=lambda r: r.get("finished_at", ""), default=None)


def rehearsal_text(report: dict) -> str:
    steps = report.get("steps") or {}
    line = (f"upgrade rehearsal of {report['cluster']} from PostgreSQL {report['from_major']} to "
            f"{report['to_major']} on backup {report['backup_id']}: {report['result'].upper()}")
    if report["result"] != "passed":
        return f"{line}: {report['reason']}"
    return (f"{line} in {report['total_seconds']:.1f} s (restore {report['restore_seconds']:.1f} s, pg_upgrade "
            f"{steps.get('pg_upgrade_seconds', 0):.1f} s, start {steps.get('start_seconds', 0):.1f} s, verify "
            f"{report['verify_seconds']:.1f} s, analyze {report['analyze_seconds']:.1f} s)")
