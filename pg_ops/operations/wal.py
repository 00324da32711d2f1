"""Continuous WAL archiving, as operations: base backups, the archiver's health, the recovery
window, and retention of base backups and WAL.

Where archiving runs: every member has `archive_mode = on`; only the primary archives, so
after a failover the promoted member carries on in the same archive (its history file and new
timeline). Base backups are taken from the primary on their own schedule
(`backups.wal.base_backup_schedule`): with S3 by barman-cloud-backup, with a file store by
`pg_basebackup -Ft -X none` compressed into the store (ADR-003 says why each).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from pg_ops.credentials import REPLICATION_USER, SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.activity import record_status
from pg_ops.operations.alerts import Alert
from pg_ops.operations.context import ClusterContext
from pg_ops.poll import poll
from pg_ops.postgres import archiving, barman, walfiles
from pg_ops.postgres.basebackup import BackupHistory, parse_backup_history, pg_basebackup_tar
from pg_ops.postgres.dump import temporary_passfile
from pg_ops.postgres.session import with_connection
from pg_ops.spec import S3StoreSpec
from pg_ops.stores import BackupStore, s3_credentials
from pg_ops.stores import wal_archive as wa
from pg_ops.stores.pipe import compress_into

ARCHIVED_WAIT_S = 120.0


class ArchivingError(PgOpsError):
    pass


def require_archiving(ctx: ClusterContext) -> None:
    if not ctx.spec.backups.wal.enabled:
        raise ArchivingError(f"cluster {ctx.name}: WAL archiving is off (backups.wal.enabled: false)")
    ctx.platform.check_archive_store(ctx.spec.backups.store.type)


def s3_keys_env(ctx: ClusterContext) -> dict[str, str]:
    store = ctx.spec.backups.store
    assert isinstance(store, S3StoreSpec), "called for clusters whose store is S3"
    creds = s3_credentials(store, ctx.platform.s3_credentials, where=f"s3://{store.bucket}")
    return barman.keys_env(creds.access_key if creds else None, creds.secret_key if creds else None)


def primary_member(ctx: ClusterContext) -> str:
    probes = ctx.probe()
    writable = [n for n, p in probes.items() if p.writable]
    if len(writable) != 1:
        raise ArchivingError(f"cluster {ctx.name}: {len(writable)} writable members; base backups and "
                             f"archiving checks need exactly one primary")
    return writable[0]


def _on_primary(ctx: ClusterContext, fn, timeout: float = 10.0):
    member = primary_member(ctx)
    return with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), fn, timeout=timeout,
                           name=member)


def switch_and_wait(ctx: ClusterContext, store: BackupStore | None = None, timeout: float = ARCHIVED_WAIT_S) -> str:
    """Close the current segment and wait until it is in the archive; returns its name."""
    store = store or ctx.store()
    name = _on_primary(ctx, archiving.switch_wal)
    wait_archived(ctx, store, name, timeout)
    return name


def wait_archived(ctx: ClusterContext, store: BackupStore, segment_name: str, timeout: float) -> None:
    wanted = walfiles.parse_segment(segment_name)
    assert wanted is not None, f"{segment_name!r} is a segment name (pg_switch_wal, a backup history)"

    def archived() -> bool | None:
        listing = wa.list_archive(store, ctx.name)
        return any(s.segment.segno == wanted.segno and s.segment.timeline == wanted.timeline
                   for s in listing.segments) or None

    def expired() -> ArchivingError:
        status = _on_primary(ctx, archiving.archiver_status)
        why = f"; last failure at {status.last_failed_wal}" if status.failing else ""
        return ArchivingError(f"cluster {ctx.name}: WAL segment {segment_name} is not in the archive after "
                              f"{timeout:g} s{why}")

    poll(archived, timeout=timeout, interval=0.5, expired=expired)


# -- base backups ---------------------------------------------------------------------------------
def base_backup(ctx: ClusterContext, store: BackupStore | None = None) -> wa.BaseBackup:
    require_archiving(ctx)
    ctx.platform.check_base_backups()
    store = store or ctx.store()
    store.check()
    member = primary_member(ctx)
    endpoint = ctx.endpoints()[member]
    before = {b.id for b in wa.list_archive(store, ctx.name).base_backups}
    started = time.monotonic()
    ctx.log.info("base backup of %s from %s into %s", ctx.name, member, store.describe())
    if ctx.spec.backups.store.type == "s3":
        with temporary_passfile(SUPERUSER, ctx.admin_password()) as passfile:
            barman.take_base_backup(wa.s3_target(ctx.spec), endpoint, SUPERUSER, passfile, s3_keys_env(ctx))
    else:
        _file_base_backup(ctx, store, member)
    new = [b for b in wa.list_archive(store, ctx.name).base_backups if b.id not in before]
    if not new:
        raise ArchivingError(f"cluster {ctx.name}: the base backup finished but is not complete in the store")
    backup = new[-1]
    ctx.log.info("base backup %s of %s: %.1f MB in %.1f s (WAL %s .. %s)", backup.id, ctx.name, backup.size / 1e6,
                 time.monotonic() - started, backup.begin_wal, backup.end_wal)
    record_status(ctx, "base_backup_complete", backup.size)
    return backup


def _file_base_backup(ctx: ClusterContext, store: BackupStore, member: str) -> None:
    backup_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = f"{wa.archive_root(ctx.name)}/base/{backup_id}"
    label = f"pg_ops {ctx.name} {backup_id}"
    password = ctx.credentials().password(REPLICATION_USER)
    with store.open_writer(f"{prefix}/data.tar.zst", private=True) as writer:
        with pg_basebackup_tar(ctx.endpoints()[member], REPLICATION_USER, password, member, label) as out:
            stats = compress_into(out, writer, label=f"base backup of {member}", log=ctx.log)
        writer.commit()
    history = _backup_history(ctx, store, label)
    # The backup is usable only with its WAL: wait for the end segment before calling it complete.
    wait_archived(ctx, store, history.stop_wal, ARCHIVED_WAIT_S)
    info = {"backup_id": backup_id, "status": "DONE", "begin_time": history.start_time.isoformat(sep=" "),
            # STOP TIME has whole seconds: +1 s so a target at end_time is never before consistency.
            "end_time": (history.stop_time + timedelta(seconds=1)).isoformat(sep=" "), "begin_wal": history.start_wal,
            "end_wal": history.stop_wal, "begin_xlog": history.start_lsn, "end_xlog": history.stop_lsn,
            "timeline": history.timeline, "size": stats.stored_bytes, "raw_size": stats.raw_bytes,
            "format": "pg_basebackup-tar-zst", "source": member}
    store.put_bytes(f"{prefix}/{wa.BACKUP_INFO}", wa.backup_info_text(info).encode())


def _backup_history(ctx: ClusterContext, store: BackupStore, label: str) -> BackupHistory:
    """The backup history file PostgreSQL archived when this backup ended (found by label)."""
    seen: set[str] = set()

    def archived() -> BackupHistory | None:
        for key in wa.list_archive(store, ctx.name).backup_histories:
            if key in seen:
                continue
            seen.add(key)
            history = parse_backup_history(wa.read_archived(store, key).decode(errors="replace"))
            if history.label == label:
                return history
        return None

    def expired() -> ArchivingError:
        return ArchivingError(f"cluster {ctx.name}: the backup history file of base backup {label!r} did not "
                              f"reach the archive within {ARCHIVED_WAIT_S:g} s")

    return poll(archived, timeout=ARCHIVED_WAIT_S, interval=0.5, expired=expired)


# -- health of archiving ----------------------------------------------------------------------------
@dataclass
class ArchiveHealth:
    cluster: str
    primary: str
    status: archiving.ArchiverStatus
    stale_after_seconds: float
    backlog_bytes: int
    free_bytes: int | None

    @property
    def stale(self) -> bool:
        age = self.status.last_archived_age_seconds
        return age is None or age > self.stale_after_seconds

    def as_dict(self) -> dict:
        out = asdict(self)
        out["last_archived_age_seconds"] = self.status.last_archived_age_seconds
        out["failing"] = self.status.failing
        out["stale"] = self.stale
        return out


def archive_health(ctx: ClusterContext) -> ArchiveHealth:
    require_archiving(ctx)
    member = primary_member(ctx)
    status = with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), archiving.archiver_status,
                             timeout=10, name=member)
    usage = ctx.platform.data_dir_usage(member)
    wal = ctx.spec.backups.wal
    return ArchiveHealth(cluster=ctx.name, primary=member, status=status,
                         stale_after_seconds=wal.archive_timeout_seconds + wal.stale_margin_seconds,
                         backlog_bytes=status.ready_segments * walfiles.SEGMENT_BYTES,
                         free_bytes=(usage[1] - usage[0]) if usage else None)


def archive_alerts(ctx: ClusterContext, health: ArchiveHealth) -> list[Alert]:
    """The archiving conditions active now (alerts.py's shape; the sensor de-duplicates)."""
    c, s, wal = ctx.name, health.status, ctx.spec.backups.wal
    out = []
    details = {"member": health.primary, "last_archived_wal": s.last_archived_wal,
               "last_archived_age_seconds": s.last_archived_age_seconds, "failed_count": s.failed_count,
               "last_failed_wal": s.last_failed_wal, "ready_segments": s.ready_segments}
    if s.failing:
        out.append(Alert(cluster=c, severity="critical", kind="wal_archive_failing",
                         summary=f"{health.primary}: archiving WAL fails (last failed segment {s.last_failed_wal}, "
                                 f"{s.failed_count} failures since {health.primary} started counting)",
                         details=details))
    if health.stale:
        age = s.last_archived_age_seconds
        out.append(Alert(cluster=c, severity="warning", kind="wal_archive_stale",
                         summary=f"{health.primary}: newest archived segment is "
                                 f"{'none' if age is None else f'{age:.0f} s old'} (archive_timeout "
                                 f"{wal.archive_timeout_seconds} s + margin {wal.stale_margin_seconds} s)",
                         details=details))
    free = health.free_bytes
    near_full = free is not None and health.backlog_bytes > 0 and health.backlog_bytes * 4 >= free
    if health.backlog_bytes >= wal.backlog_alert_bytes or near_full:
        out.append(Alert(cluster=c, severity="critical" if near_full else "warning", kind="wal_archive_backlog",
                         summary=f"{health.primary}: {health.backlog_bytes / 2**20:.0f} MiB of WAL waits for the "
                                 f"archiver (alert at {wal.backlog_alert_bytes / 2**20:.0f} MiB"
                                 + (f"; {free / 2**20:.0f} MiB free on the data disk" if free is not None else "")
                                 + ")", details={**details, "backlog_bytes": health.backlog_bytes,
                                                 "free_bytes": free}))
    return out


# -- the recovery window ------------------------------------------------------------------------------
@dataclass
class RecoveryWindow:
    cluster: str
    oldest: datetime | None  # end of the oldest complete base backup
    newest: datetime | None  # when the newest segment was archived
    base_backups: int
    segments: int
    timeline: int | None
    gap: str | None  # a missing segment between the oldest base backup and the newest segment

    def as_dict(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}

    def text(self) -> str:
        if self.oldest is None or self.newest is None:
            return "recovery window: none yet (no base backup, or no archived WAL)"
        line = (f"recovery window: {self.oldest.isoformat(timespec='seconds')} .. "
                f"{self.newest.isoformat(timespec='seconds')} ({self.base_backups} base backups, "
                f"{self.segments} segments, timeline {self.timeline})")
        return line + (f"; BROKEN: {self.gap}" if self.gap else "")


def window_of(store: BackupStore, listing: wa.ArchiveListing) -> RecoveryWindow:
    newest = listing.newest_segment
    gap = None
    if listing.base_backups and newest is not None:
        starts = wa.timeline_starts(store, listing)
        found = wa.find_gap(listing, starts, listing.base_backups[0].begin_segno, newest.segment.segno)
        gap = str(found) if found else None
    return RecoveryWindow(
        cluster=listing.cluster, oldest=listing.base_backups[0].end_time if listing.base_backups else None,
        newest=newest.archived_at if newest else None, base_backups=len(listing.base_backups),
        segments=len(listing.segments), timeline=newest.segment.timeline if newest else None, gap=gap)


def recovery_window(ctx: ClusterContext, store: BackupStore | None = None) -> RecoveryWindow:
    store = store or ctx.store()
    return window_of(store, wa.list_archive(store, ctx.name))


def watch_archiving(contexts: list[ClusterContext], open_alerts: dict[str, dict],
                    now: float | None = None) -> tuple[dict[str, ArchiveHealth | str], dict[str, dict]]:
    """One sensor tick over every archiving cluster: fire and resolve the archiving alerts
    (through each cluster context's AlertDelivery); returns (health or the reason it
    could not be read, per cluster; the new open-alert state)."""
    from pg_ops.operations import alerts as alert_ops

    healths: dict[str, ArchiveHealth | str] = {}
    active, unknown, scope = [], set(), set()
    kinds = ("wal_archive_failing", "wal_archive_stale", "wal_archive_backlog")
    for ctx in contexts:
        try:
            health = archive_health(ctx)
        except PgOpsError as exc:
            healths[ctx.name] = str(exc)
            unknown |= {k for k in open_alerts if k.startswith(f"{ctx.name}/")}
            continue
        healths[ctx.name] = health
        scope.add(ctx.name)
        active += archive_alerts(ctx, health)
    mine = {k: v for k, v in open_alerts.items() if v.get("kind") in kinds}
    to_send, state = alert_ops.reconcile(mine, active, unknown, scope, now)
    for ctx in contexts:
        batch = [a for a in to_send if a.cluster == ctx.name]
        if batch:
            ctx.alerts.send(batch, {ctx.name: ctx.spec}, alert_ops.cluster_secrets(ctx), ctx.log)
    return healths, state
