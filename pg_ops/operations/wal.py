"""Continuous WAL archiving, as operations: base backups, the archiver's health, the recovery
window, and retention of base backups and WAL.

Where archiving runs: every member has `archive_mode = on`; only the primary archives, so
after a failover the promoted member carries on in the same archive (its history file and new
timeline). The archive is keyed by the cluster's system identifier (`archive_ref`): a cluster
made again under the same name archives beside the old one, and every figure here (window,
gaps, base backups, drills) is the current incarnation's. After every promotion
(`after_promotion`) and at every sensor tick that sees a gap, segments and history files the
archive lacks are copied from the pg_wal of any member that still has them; what none has is
a gap: a critical `wal_archive_gap` alert and a base backup request, until a base backup after
it exists. A switchover first lets the old primary's archiver drain (`drain_archiver`). Base
backups are taken from the primary on their own schedule (`backups.wal.base_backup_schedule`),
on every platform and store the same way: `pg_basebackup -Ft -X none` over the replication
protocol from wherever pg_ops runs, compressed straight into the store (ADR-003 says why).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from pg_ops import settings
from pg_ops.credentials import REPLICATION_USER
from pg_ops.errors import PgOpsError
from pg_ops.operations.activity import record_status
from pg_ops.operations.alert_model import Alert
from pg_ops.operations.context import ClusterContext
from pg_ops.poll import poll
from pg_ops.postgres import archiving, barman, walfiles
from pg_ops.postgres.basebackup import (
    BackupHistory,
    LabelTap,
    parse_backup_history,
    parse_backup_label,
    pg_basebackup_tar,
    standby_position,
)
from pg_ops.spec import S3StoreSpec
from pg_ops.stores import BackupStore, s3_credentials
from pg_ops.stores import wal_archive as wa
from pg_ops.stores.pipe import compress_into

ARCHIVED_WAIT_S = 120.0
DRAIN_FAILING_GRACE_S = 10.0  # a switchover stops waiting for an archiver failing this long without progress


class ArchivingError(PgOpsError):
    pass


def archive_ref(ctx: ClusterContext, store: BackupStore | None = None) -> wa.ArchiveRef:
    """The current incarnation's archive: the system identifier in the cluster's desired-state
    record; with no record (torn down), the incarnation the store saw last."""
    state = ctx.platform.state_store().read()
    if state is not None and state.system_identifier:
        return wa.ArchiveRef(ctx.name, state.system_identifier)
    store = store or ctx.store()
    found = [i for i in wa.incarnations(store, ctx.name) if i.sysid != "legacy"]
    if not found:
        raise ArchivingError(f"cluster {ctx.name}: no system identifier recorded (not deployed) and no archive "
                             f"of it in {store.describe()}")
    return wa.ArchiveRef(ctx.name, found[-1].sysid)


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


def switch_and_wait(ctx: ClusterContext, store: BackupStore | None = None, timeout: float = ARCHIVED_WAIT_S) -> str:
    """Close the current segment and wait until it is in the archive; returns its name."""
    store = store or ctx.store()
    name = ctx.sql(primary_member(ctx), archiving.switch_wal)
    wait_archived(ctx, store, name, timeout)
    return name


def wait_archived(ctx: ClusterContext, store: BackupStore, segment_name: str, timeout: float) -> None:
    wanted = walfiles.parse_segment(segment_name)
    assert wanted is not None, f"{segment_name!r} is a segment name (pg_switch_wal, a backup history)"

    ref = archive_ref(ctx, store)

    def archived() -> bool | None:
        listing = wa.list_archive(store, ref)
        return any(s.segment.segno == wanted.segno and s.segment.timeline == wanted.timeline
                   for s in listing.segments) or None

    def expired() -> ArchivingError:
        status = ctx.sql(primary_member(ctx), archiving.archiver_status)
        why = f"; last failure at {status.last_failed_wal}" if status.failing else ""
        return ArchivingError(f"cluster {ctx.name}: WAL segment {segment_name} is not in the archive after "
                              f"{timeout:g} s{why}")

    poll(archived, timeout=timeout, interval=0.5, expired=expired)


def adopt_legacy_archive(ctx: ClusterContext, store: BackupStore | None = None) -> int:
    """An archive written before incarnations (`<cluster>.wal/wals/...`, `base/...` directly):
    when its segments' page headers name the cluster's system identifier and the primary's
    archive command already writes the new layout, its files are moved into the current
    incarnation's folder, so an upgraded cluster keeps its recovery window. Another system's
    (a cluster torn down before the upgrade) stays where it is. Returns how many objects moved."""
    require_archiving(ctx)
    store = store or ctx.store()
    ref = archive_ref(ctx, store)
    root = wa.archive_root(ctx.name)
    legacy = [o for part in ("wals", "base", "holds", "drills") for o in store.list(f"{root}/{part}/")]
    segments = [(o, walfiles.parse_segment(wa.plain_name(o.key))) for o in legacy
                if o.key[len(root) + 1:].startswith("wals/")]
    full = [o for o, seg in segments if seg is not None and not seg.partial]
    if not full:
        return 0
    sysid = archiving.segment_system_identifier(wa.read_archived(store, full[0].key)[:32])
    if sysid != int(ref.sysid):
        ctx.log.info("WAL archive of %s: the files of the layout before incarnations in %s/%s/ are system %s's, "
                     "not this cluster's (%s): left where they are", ctx.name, store.describe(), root, sysid, ref.sysid)
        return 0
    command = ctx.sql(primary_member(ctx), lambda c: c.execute("show archive_command").fetchone()[0])
    if ctx.spec.backups.store.type == "s3" and '"$sysid"' not in command:
        ctx.log.warning("WAL archive of %s: its archive command still writes the layout before incarnations; the "
                        "archive is moved into %s/ after a restart (`pg-ops rolling-restart`)", ctx.name, ref.root)
        return 0
    for obj in legacy:
        with store.open_reader(obj.key) as reader, store.open_writer(f"{ref.root}/{obj.key[len(root) + 1:]}") as w:
            while chunk := reader.read(1 << 20):
                w.write(chunk)
            w.commit()
    store.delete([o.key for o in legacy])
    ctx.log.warning("WAL archive of %s: moved %d objects of the layout before incarnations into %s/", ctx.name,
                    len(legacy), ref.root)
    return len(legacy)


# -- base backups ---------------------------------------------------------------------------------
def base_backup(ctx: ClusterContext, store: BackupStore | None = None) -> wa.BaseBackup:
    """From where `backups.source` says, as the nightly dump: the most caught-up streaming
    replica (its I/O, not the primary's), the primary when none streams or the replica's backup
    fails (a replica promoted or lost mid-way, say)."""
    from pg_ops.operations.backup import dump_sources

    require_archiving(ctx)
    store = store or ctx.store()
    store.check()
    sources = dump_sources(ctx, ctx.probe())
    ref = archive_ref(ctx, store)
    before = {b.id for b in wa.list_archive(store, ref).base_backups}
    started = time.monotonic()
    source = sources[0]
    ctx.log.info("base backup of %s from the %s %s into %s", ctx.name, source.role, source.member, store.describe())
    try:
        _streamed_base_backup(ctx, store, ref, source.member, from_standby=source.role == "replica")
    except PgOpsError as exc:
        primary = next((s for s in sources if s.role == "primary"), None)
        if source.role != "replica" or primary is None:
            raise
        ctx.log.warning("base backup of %s from the replica %s failed (%s); taking it from the primary %s",
                        ctx.name, source.member, exc, primary.member)
        _streamed_base_backup(ctx, store, ref, primary.member, from_standby=False)
    new = [b for b in wa.list_archive(store, ref).base_backups if b.id not in before]
    if not new:
        raise ArchivingError(f"cluster {ctx.name}: the base backup finished but is not complete in the store")
    backup = new[-1]
    ctx.log.info("base backup %s of %s: %.1f MB in %.1f s (WAL %s .. %s)", backup.id, ctx.name, backup.size / 1e6,
                 time.monotonic() - started, backup.begin_wal, backup.end_wal)
    record_status(ctx, "base_backup_complete", backup.size)
    return backup


def _streamed_base_backup(ctx: ClusterContext, store: BackupStore, ref: wa.ArchiveRef, member: str,
                          from_standby: bool) -> None:
    """`pg_basebackup -Ft -X none` over the replication protocol, from wherever pg_ops runs (this
    machine, a run pod): nothing runs in the database's pod, and the tar is compressed straight
    into the store (S3: a multipart upload), never a full copy on local disk. Complete (its
    backup.info, written last) once its end segment is in the archive."""
    backup_id = claim_backup_id(store, ref)
    prefix = ref.base_prefix(backup_id)
    label = f"pg_ops {ctx.name} {backup_id}"
    password = ctx.credentials().password(REPLICATION_USER)
    probe = ctx.probe([member])[member]
    timeline_before = probe.timeline if from_standby else None
    # pg_basebackup refuses a server of a newer major: after an upgrade, that major's own.
    tools = settings.client_bin(probe.server_version_num // 10000 if probe.server_version_num else None)
    with store.open_writer(f"{prefix}/data.tar.zst", private=True) as writer:
        with pg_basebackup_tar(ctx.endpoints()[member], REPLICATION_USER, password, member, label, tools) as out:
            tap = LabelTap(out)
            stats = compress_into(tap, writer, label=f"base backup of {member}", log=ctx.log)
        if from_standby:
            history = _standby_backup_end(ctx, member, tap, timeline_before)
        writer.commit()
    if not from_standby:
        history = _backup_history(ctx, store, ref, label)
    # The backup is usable only with its WAL: wait for the end segment before calling it complete.
    wait_archived(ctx, store, history.stop_wal, ARCHIVED_WAIT_S)
    info = {"backup_id": backup_id, "status": "DONE", "begin_time": history.start_time.isoformat(sep=" "),
            # STOP TIME has whole seconds: +1 s so a target at end_time is never before consistency.
            "end_time": (history.stop_time + timedelta(seconds=1)).isoformat(sep=" "), "begin_wal": history.start_wal,
            "end_wal": history.stop_wal, "begin_xlog": history.start_lsn, "end_xlog": history.stop_lsn,
            "timeline": history.timeline, "size": stats.stored_bytes, "raw_size": stats.raw_bytes,
            "format": "pg_basebackup-tar-zst", "source": member,
            "source_role": "replica" if from_standby else "primary"}
    store.put_bytes(f"{prefix}/{wa.BACKUP_INFO}", wa.backup_info_text(info).encode())


CLAIM_TRIES = 10


def claim_backup_id(store: BackupStore, ref: wa.ArchiveRef, now=lambda: datetime.now(UTC)) -> str:
    """A base backup id (barman's: the second it began) no other backup uses. Two base backups
    of one cluster can start in the same second (the archive sensor's first one and a
    `pg-ops base-backup`, say); sharing a folder, one's tar would end up beside the other's
    backup.info. Each writes a claim into the folder and keeps it only if it is the folder's
    only object; otherwise it takes its claim back and tries the next second (both may: each
    then tries again, with a random pause)."""
    import random
    import uuid

    for _ in range(CLAIM_TRIES):
        backup_id = now().strftime("%Y%m%dT%H%M%S")
        prefix = ref.base_prefix(backup_id)
        claim = f"{prefix}/claim-{uuid.uuid4().hex}"
        store.put_bytes(claim, b"")
        if [o.key for o in store.list(f"{prefix}/")] == [claim]:
            return backup_id
        store.delete([claim])
        time.sleep(1.0 - now().microsecond / 1e6 + random.uniform(0.0, 0.5))
    raise ArchivingError(f"no base backup id free within {CLAIM_TRIES} tries in {store.describe()}")


def _standby_backup_end(ctx: ClusterContext, member: str, tap: LabelTap, timeline_before: int | None) -> BackupHistory:
    """A standby's backup leaves no history file. Its start is its backup_label's; its end is where
    the standby had replayed to once the backup ended, at or after the backup's own stop point
    (a later end only makes the window begin a moment later), on the same timeline (a promotion
    during the backup fails it: the primary is then the source). The primary closes that segment
    so that it reaches the archive now, not at archive_timeout."""
    try:
        start = parse_backup_label(tap.backup_label())
    except ValueError as exc:
        raise ArchivingError(f"cluster {ctx.name}: base backup of {member}: {exc}") from None
    end_lsn, end_time = ctx.sql(member, standby_position, timeout=10)
    timeline_after = ctx.probe([member])[member].timeline
    if not start.from_standby or end_lsn is None or end_time is None or timeline_after != timeline_before \
            or start.timeline != timeline_after:
        raise ArchivingError(f"cluster {ctx.name}: base backup of the replica {member}: it did not stay a standby on "
                             f"one timeline during the backup (timeline {timeline_before} before, {timeline_after} "
                             f"after, {start.timeline} in its backup_label)")
    ctx.sql(primary_member(ctx), archiving.switch_wal)
    end_wal = walfiles.segment_name(start.timeline, walfiles.lsn_segno(end_lsn))
    return BackupHistory(label=start.label, start_wal=start.start_wal, stop_wal=end_wal, start_lsn=start.start_lsn,
                         stop_lsn=end_lsn, start_time=start.start_time,
                         stop_time=end_time.astimezone(UTC).replace(microsecond=0), timeline=start.timeline)


def _backup_history(ctx: ClusterContext, store: BackupStore, ref: wa.ArchiveRef, label: str) -> BackupHistory:
    """The backup history file PostgreSQL archived when this backup ended (found by label)."""
    seen: set[str] = set()

    def archived() -> BackupHistory | None:
        for key in wa.list_archive(store, ref).backup_histories:
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
    window: RecoveryWindow | None = None  # None: the archive could not be listed

    @property
    def stale(self) -> bool:
        age = self.status.last_archived_age_seconds
        return age is None or age > self.stale_after_seconds

    def as_dict(self) -> dict:
        out = asdict(self)
        out["window"] = self.window.as_dict() if self.window else None
        out["last_archived_age_seconds"] = self.status.last_archived_age_seconds
        out["failing"] = self.status.failing
        out["stale"] = self.stale
        return out


def archive_health(ctx: ClusterContext, store: BackupStore | None = None) -> ArchiveHealth:
    require_archiving(ctx)
    member = primary_member(ctx)
    status = ctx.sql(member, archiving.archiver_status, timeout=10)
    usage = ctx.platform.data_dir_usage(member)
    wal = ctx.spec.backups.wal
    try:
        window: RecoveryWindow | None = recovery_window(ctx, store)
    except PgOpsError as exc:
        ctx.log.warning("WAL archive of %s: cannot read the recovery window: %s", ctx.name, exc)
        window = None
    return ArchiveHealth(cluster=ctx.name, primary=member, status=status,
                         stale_after_seconds=float(wal.archive_timeout_seconds + wal.stale_margin_seconds),
                         backlog_bytes=status.ready_segments * walfiles.SEGMENT_BYTES,
                         free_bytes=(usage[1] - usage[0]) if usage else None, window=window)


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
    window = health.window
    if window is not None and window.gap:
        remedy = "a base backup is requested"
        out.append(Alert(cluster=c, severity="critical", kind="wal_archive_gap",
                         summary=f"{window.gap}; recovery from the base backups before it "
                                 f"({window.oldest_text()} .. {window.newest_text()}) stops there; {remedy}",
                         details={
                                     "first_missing": window.first_missing, "gap": window.gap,
                                     "system_identifier": window.sysid,
                                     "window_oldest": window.oldest_text(), "window_newest": window.newest_text()}))
    return out


# -- the recovery window ------------------------------------------------------------------------------
@dataclass
class RecoveryWindow:
    cluster: str
    oldest: datetime | None  # end of the oldest base backup a recovery can go forward from without a gap
    newest: datetime | None  # when the newest segment was archived
    base_backups: int
    segments: int
    timeline: int | None
    gap: str | None  # what is missing after the newest base backup: no base backup recovers past it
    sysid: str = ""  # the incarnation (system identifier) these figures are of
    first_missing: str | None = None  # the first missing segment or history file of `gap`
    before_gap: str | None = None  # a gap older base backups stop at (a newer base backup is past it)
    newest_timeline: int = 1  # of any file in the archive (a history file is archived before any segment)

    def as_dict(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}

    def oldest_text(self) -> str:
        return self.oldest.isoformat(timespec="seconds") if self.oldest else "none"

    def newest_text(self) -> str:
        return self.newest.isoformat(timespec="seconds") if self.newest else "none"

    def text(self) -> str:
        if self.oldest is None or self.newest is None:
            return "recovery window: none yet (no base backup, or no archived WAL)"
        line = (f"recovery window: {self.oldest_text()} .. {self.newest_text()} ({self.base_backups} base backups, "
                f"{self.segments} segments, timeline {self.timeline}, system {self.sysid})")
        if self.gap:
            return line + f"; BROKEN: {self.gap}"
        return line + (f"; older base backups stop at: {self.before_gap}" if self.before_gap else "")


def archive_gaps(store: BackupStore, listing: wa.ArchiveListing) -> list[tuple[int, str, str]]:
    """What the archive lacks from its oldest base backup on, as (the segment number from which
    a base backup is past it, description, first missing file name), oldest first: runs of
    missing segments up to the newest timeline's start, and missing timeline history files."""
    if not listing.base_backups:
        return []
    starts = wa.timeline_starts(store, listing)
    last = wa.required_last_segno(listing, starts)
    out = []
    if last is not None:
        for gap in wa.find_gaps(listing, starts, listing.base_backups[0].begin_segno, last):
            after = walfiles.parse_segment(gap.last)
            assert after is not None, "find_gaps names segments"
            out.append((after.segno + 1, str(gap), gap.first))
    for tl in wa.missing_histories(store, listing):
        name = f"{tl:08X}.history"
        out.append((starts.get(tl, 0), f"timeline history file {name} is missing from the archive", name))
    return sorted(out)


def window_of(store: BackupStore, listing: wa.ArchiveListing) -> RecoveryWindow:
    newest = listing.newest_segment
    bases = listing.base_backups
    gaps = archive_gaps(store, listing) if newest is not None else []
    # Base backups that begin after every gap recover to the newest segment; older ones stop at a gap.
    past = [b for b in bases if all(b.begin_segno >= resume for resume, _, _ in gaps)]
    oldest: datetime | None
    if gaps and not past:
        oldest, gap, first, before = bases[0].end_time, gaps[0][1], gaps[0][2], None
    else:
        oldest = past[0].end_time if past else None
        gap, first, before = None, None, (gaps[-1][1] if gaps else None)
    return RecoveryWindow(
        cluster=listing.cluster, oldest=oldest, newest=newest.archived_at if newest else None,
        base_backups=len(bases), segments=len(listing.segments),
        timeline=newest.segment.timeline if newest else None, gap=gap, sysid=listing.sysid, first_missing=first,
        before_gap=before, newest_timeline=wa.newest_timeline(listing))


def recovery_window(ctx: ClusterContext, store: BackupStore | None = None) -> RecoveryWindow:
    store = store or ctx.store()
    return window_of(store, wa.list_archive(store, archive_ref(ctx, store)))


# -- continuity across promotions -----------------------------------------------------------------------
def ship_missing(ctx: ClusterContext, store: BackupStore | None = None) -> tuple[list[str], list[str]]:
    """Copy into the current incarnation's archive what it lacks and a member still has in its
    pg_wal: history files of every timeline up to the primary's, and segments missing between
    the oldest base backup and the newest timeline's start. A segment is taken only from a
    member whose WAL reached the segment's end (the new primary has everything before its
    timeline's start; a lagging standby's copy may be cut short) and only if its page header
    names this system. Returns (shipped, still missing) file names."""
    require_archiving(ctx)
    store = store or ctx.store()
    ref = archive_ref(ctx, store)
    probes = ctx.probe()
    primary = next((n for n, p in probes.items() if p.writable), None)
    members = sorted((n for n, p in probes.items() if p.reachable), key=lambda n: n != primary)

    def read(member: str, name: str) -> bytes | None:
        try:
            return ctx.sql(member, lambda c: archiving.wal_file(c, name), timeout=30)
        except PgOpsError as exc:
            ctx.log.warning("WAL archive of %s: cannot read %s from %s: %s", ctx.name, name, member, exc)
            return None

    shipped: list[str] = []
    listing = wa.list_archive(store, ref)
    top = (probes[primary].timeline if primary else None) or wa.newest_timeline(listing)
    for tl in range(2, top + 1):
        name = f"{tl:08X}.history"
        if tl not in listing.histories:
            data = next((d for m in members if (d := read(m, name)) is not None), None)
            if data is not None:
                _ship(ctx, store, ref, name, data)
                shipped.append(name)
    listing = wa.list_archive(store, ref) if shipped else listing
    starts = wa.timeline_starts(store, listing)
    last = wa.required_last_segno(listing, starts)
    gaps = wa.find_gaps(listing, starts, listing.base_backups[0].begin_segno, last) \
        if listing.base_backups and last is not None else []
    for gap in gaps:
        first, final = walfiles.parse_segment(gap.first), walfiles.parse_segment(gap.last)
        assert first is not None and final is not None, "find_gaps names segments"
        for segno in range(first.segno, final.segno + 1):
            name = walfiles.segment_name(wa.expected_timeline(starts, segno), segno)
            for member in members:
                if (probes[member].lsn or 0) < walfiles.segment_end(segno):
                    continue
                data = read(member, name)
                if data is None or len(data) != walfiles.SEGMENT_BYTES or \
                        archiving.segment_system_identifier(data) != int(ref.sysid):
                    continue
                _ship(ctx, store, ref, name, data)
                shipped.append(name)
                break
    remaining = [first for _, _, first in archive_gaps(store, wa.list_archive(store, ref))]
    if shipped:
        ctx.log.warning("WAL archive of %s: shipped %d file(s) the archive lacked from members' pg_wal: %s",
                        ctx.name, len(shipped), ", ".join(shipped))
    return shipped, remaining


def _ship(ctx: ClusterContext, store: BackupStore, ref: wa.ArchiveRef, name: str, data: bytes) -> None:
    """One WAL file into the archive under the name the archive command would have given it
    (S3: zstd-compressed, as barman-cloud-wal-archive --zstd writes it)."""
    compressed = ctx.spec.backups.store.type == "s3"
    if compressed:
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    store.put_bytes(wa.wal_file_key(ref, name, compressed), data)


def after_promotion(ctx: ClusterContext) -> list[str]:
    """Right after a promotion (failover, switchover): ship what the archive lacks from the
    members' pg_wal; what none has is left to the archive sensor, which alerts
    (`wal_archive_gap`) and requests a base backup. Never fails the change: returns notes."""
    if not ctx.spec.backups.wal.enabled:
        return []
    try:
        shipped, missing = ship_missing(ctx)
    except Exception as exc:  # noqa: BLE001 - the promotion is done; the archive sensor checks again
        ctx.log.warning("WAL archive of %s: continuity after the promotion not checked: %s", ctx.name, exc)
        return [f"WAL archive continuity not checked ({exc}); the archive sensor checks it"]
    notes = [f"shipped {len(shipped)} WAL file(s) the archive lacked from members' pg_wal"] if shipped else []
    if missing:
        ctx.log.error("WAL archive of %s: %s is missing and no member has it: the archive sensor alerts "
                      "(wal_archive_gap) and requests a base backup", ctx.name, missing[0])
        notes.append(f"WAL archive gap from {missing[0]}: no member has it (wal_archive_gap, base backup requested)")
    return notes


def drain_archiver(ctx: ClusterContext, member: str) -> str:
    """Before a switchover stops `member` (the primary): wait, at most
    `backups.wal.switchover_drain_seconds`, until its archiver has nothing waiting, so no
    finished segment is left only in its pg_wal; an archiver that fails without shipping
    anything for DRAIN_FAILING_GRACE_S is not waited for further (the store is down: waiting
    only delays the switchover). Returns a note; not drained is a warning (the check after the
    promotion ships what is missing or alerts)."""
    wal = ctx.spec.backups.wal
    try:
        require_archiving(ctx)
    except PgOpsError as exc:
        return f"archiver not drained: {exc}"

    def status() -> archiving.ArchiverStatus:
        return ctx.sql(member, archiving.archiver_status, timeout=10)

    started, first = time.monotonic(), None

    def attempt() -> str | None:
        nonlocal first
        now = status()
        first = first or now
        if now.ready_segments == 0:
            return "drained"
        # A failing archiver that shipped nothing for a while will not drain in time: go on.
        if now.failing and now.archived_count == first.archived_count and \
                time.monotonic() - started >= DRAIN_FAILING_GRACE_S:
            return "failing"
        return None

    try:
        outcome = poll(attempt, timeout=wal.switchover_drain_seconds, interval=0.5)
        left = status().ready_segments
    except PgOpsError as exc:
        ctx.log.warning("switchover: cannot read %s's archiver (%s); going on", member, exc)
        return f"archiver of {member} not read: {exc}"
    if outcome == "drained":
        return f"archiver of {member} drained"
    why = (f"failing with nothing archived for {DRAIN_FAILING_GRACE_S:g} s" if outcome == "failing"
           else f"after {wal.switchover_drain_seconds} s")
    ctx.log.warning("switchover: %d segment(s) still wait for %s's archiver (%s; "
                    "backups.wal.switchover_drain_seconds); going on", left, member, why)
    return f"archiver of {member} not drained {why} ({left} segment(s) waiting)"


def _timeline_of(segment_name: str) -> int:
    segment = walfiles.parse_segment(segment_name)
    return segment.timeline if segment else 1


def watch_archiving(contexts: list[ClusterContext], open_alerts: dict[str, dict],
                    now: float | None = None) -> tuple[dict[str, ArchiveHealth | str], dict[str, dict]]:
    """One sensor tick over every archiving cluster: fire and resolve the archiving alerts
    (through each cluster context's AlertDelivery); returns (health or the reason it
    could not be read, per cluster; the new open-alert state). A gap is first filled from the
    members' pg_wal if they still have it. While a cluster's archive has a gap, its open
    archiving alerts stay open (a failover must not resolve them while segments are missing)."""
    from pg_ops.operations import alerts as alert_ops
    from pg_ops.operations import cluster_alerts

    healths: dict[str, ArchiveHealth | str] = {}
    active, unknown, scope = [], set(), set()
    kinds = ("wal_archive_failing", "wal_archive_stale", "wal_archive_backlog", "wal_archive_gap")
    for ctx in contexts:
        try:
            health = archive_health(ctx)
            if health.window is not None and health.window.gap:
                try:
                    if ship_missing(ctx)[0]:
                        health = archive_health(ctx)
                except PgOpsError as exc:
                    ctx.log.warning("WAL archive of %s: cannot ship missing WAL from members: %s", ctx.name, exc)
        except PgOpsError as exc:
            healths[ctx.name] = str(exc)
            unknown |= {k for k in open_alerts if k.startswith(f"{ctx.name}/")}
            continue
        healths[ctx.name] = health
        scope.add(ctx.name)
        active += archive_alerts(ctx, health)
        held = {k: v for k, v in open_alerts.items() if k.startswith(f"{ctx.name}/") and v.get("kind") in kinds}
        if health.window is None or health.window.gap:
            unknown |= set(held)
        elif health.window.newest_timeline < _timeline_of(health.status.current_wal):
            # A promotion whose timeline is not in the archive yet: the former primary's alerts
            # wait until continuity can be judged (its history file archived, no gap).
            unknown |= {k for k, v in held.items() if (v.get("details") or {}).get("member") != health.primary}
    mine = {k: v for k, v in open_alerts.items() if v.get("kind") in kinds}
    to_send, state = alert_ops.reconcile(mine, active, unknown, scope, now)
    for ctx in contexts:
        batch = [a for a in to_send if a.cluster == ctx.name]
        if batch:
            ctx.alerts.send(batch, {ctx.name: ctx.spec}, cluster_alerts.cluster_secrets(ctx), ctx.log)
    return healths, state
