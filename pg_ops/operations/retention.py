"""Retention (docs/architecture/interfaces.md): which backups to delete, and why.

`plan_retention` is a pure function over backup records, so every rule is testable without
a server; `prune` applies it to a store (or, with dry_run, only reports it). The rules, in
the order they are applied to each backup:

1. the newest backup attempt is incomplete (it failed, or it is still running): prune
   nothing tonight, not even old garbage;
2. an unexpired hold marker (a drill or restore is reading it): keep;
3. incomplete: delete once older than a day (a partial dump is never counted as good);
4. younger than `retention_days`: keep;
5. among the newest `min_keep` good (complete or verified) backups: keep, whatever its age;
6. the newest verified backup: keep, whatever its age;
7. otherwise: delete.

Stale uploads (S3 multipart uploads or partial files older than a day) are aborted too,
except on a night when nothing may be pruned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from pg_ops.operations.context import ClusterContext
from pg_ops.stores import BackupStore
from pg_ops.stores import catalog as cat

INCOMPLETE_GRACE = timedelta(days=1)
STALE_UPLOAD_AGE = timedelta(days=1)


@dataclass(frozen=True)
class Decision:
    id: str
    status: str
    keep: bool
    reason: str


@dataclass
class PruneResult:
    cluster: str
    dry_run: bool
    decisions: list[Decision]
    deleted: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    blocked: str | None = None  # why nothing was pruned, when that is the case

    @property
    def kept(self) -> list[str]:
        return [d.id for d in self.decisions if d.keep]

    @property
    def to_delete(self) -> list[str]:
        return [d.id for d in self.decisions if not d.keep]

    def as_dict(self) -> dict:
        return asdict(self)


def _age_text(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 48 else f"{hours:.0f} h"


def plan_retention(records: list[cat.BackupRecord], *, now: datetime, retention_days: int, min_keep: int
                   ) -> tuple[list[Decision], str | None]:
    """(one decision per record, newest first; the reason nothing may be pruned, or None)."""
    records = sorted(records, key=lambda r: r.id, reverse=True)
    if not records:
        return [], None
    newest = records[0]
    if newest.status == "incomplete":
        why = (f"the newest backup {newest.id} is incomplete (it failed or is still running): "
               f"pruning nothing until a backup completes")
        return [Decision(r.id, r.status, True, "kept: " + why) for r in records], why
    newest_good = [r.id for r in records if r.good][:min_keep]
    newest_verified = next((r.id for r in records if r.status == "verified"), None)
    now_ts = now.timestamp()
    window = timedelta(days=retention_days)
    decisions = []
    for r in records:
        age = now - r.started
        holds = r.active_holds(now_ts)
        if holds:
            who = ", ".join(f"{h.purpose} {h.holder}" for h in holds)
            decisions.append(Decision(r.id, r.status, True, f"held by {who}"))
        elif r.status == "incomplete":
            if age >= INCOMPLETE_GRACE:
                decisions.append(Decision(r.id, r.status, False, f"incomplete and {_age_text(age)} old"))
            else:
                decisions.append(Decision(r.id, r.status, True, "incomplete, less than a day old"))
        elif age < window:
            decisions.append(Decision(r.id, r.status, True, f"younger than {retention_days} days"))
        elif r.id in newest_good:
            decisions.append(Decision(r.id, r.status, True, f"one of the newest {min_keep} good backups"))
        elif r.id == newest_verified:
            decisions.append(Decision(r.id, r.status, True, "the newest verified backup"))
        else:
            decisions.append(Decision(r.id, r.status, False,
                                      f"{r.status}, {_age_text(age)} old: older than {retention_days} days "
                                      f"and not among the newest {min_keep} good backups"))
    return decisions, None


def prune(ctx: ClusterContext, store: BackupStore | None = None, *, dry_run: bool = False,
          now: datetime | None = None, retention_days: int | None = None, min_keep: int | None = None
          ) -> PruneResult:
    """`retention_days`, `min_keep`: another store's policy (the copy's); default the spec's."""
    store = store or ctx.store()
    now = now or datetime.now(UTC)
    records = cat.list_backups(store, ctx.name, with_manifests=False)
    policy = ctx.spec.backups
    decisions, blocked = plan_retention(records, now=now, retention_days=retention_days or policy.retention_days,
                                        min_keep=min_keep or policy.min_keep)
    result = PruneResult(ctx.name, dry_run, decisions, blocked=blocked)
    if blocked:
        ctx.log.warning("retention of cluster %s: %s", ctx.name, blocked)
        return result
    by_id = {r.id: r for r in records}
    for decision in decisions:
        if decision.keep:
            continue
        ctx.log.info("%s backup %s/%s: %s", "would delete" if dry_run else "deleting", ctx.name, decision.id,
                     decision.reason)
        if not dry_run:
            # Re-list right before deleting: a hold placed since the plan was made wins.
            current = store.list(cat.backup_prefix(ctx.name, decision.id))
            if any(o.key.rsplit("/", 1)[-1].startswith(cat.HOLD_PREFIX) for o in current):
                fresh = [r for r in cat.list_backups(store, ctx.name, with_manifests=False) if r.id == decision.id]
                if fresh and fresh[0].active_holds(now.timestamp()):
                    ctx.log.info("backup %s was held since the plan was made: kept", decision.id)
                    continue
            store.delete([o.key for o in current] or by_id[decision.id].keys)
        result.deleted.append(decision.id)
    for upload in store.pending_uploads(f"{ctx.name}/"):
        if now - upload.started >= STALE_UPLOAD_AGE:
            ctx.log.info("%s stale upload of %s (started %s)", "would abort" if dry_run else "aborting",
                         upload.key, upload.started.isoformat())
            if not dry_run:
                store.abort_upload(upload)
            result.aborted_uploads.append(upload.key)
    return result


def freshness(ctx: ClusterContext, store: BackupStore | None = None, now: datetime | None = None
              ) -> tuple[str | None, float | None]:
    """(id of the newest good backup, its age in hours), or (None, None) when there is none."""
    store = store or ctx.store()
    good = [r for r in cat.list_backups(store, ctx.name, with_manifests=False) if r.good]
    if not good:
        return None, None
    newest = good[-1]
    return newest.id, ((now or datetime.now(UTC)) - newest.started).total_seconds() / 3600


def backups_report(ctx: ClusterContext, store: BackupStore | None = None, now: datetime | None = None
                   ) -> list[dict]:
    """`pg-ops backups`: one row per backup, newest first."""
    store = store or ctx.store()
    now = now or datetime.now(UTC)
    records = cat.list_backups(store, ctx.name)
    decisions, _ = plan_retention(records, now=now, retention_days=ctx.spec.backups.retention_days,
                                  min_keep=ctx.spec.backups.min_keep)
    reasons = {d.id: d for d in decisions}
    rows = []
    for r in sorted(records, key=lambda r: r.id, reverse=True):
        m = r.manifest
        rows.append({
            "id": r.id,
            "started": r.started.isoformat(),
            "size": r.stored_bytes,
            "size_mb": round(r.stored_bytes / 1e6, 2),
            "duration": round(m.seconds, 1) if m else None,
            "status": r.status,
            "expires": (r.started + timedelta(days=ctx.spec.backups.retention_days)).isoformat(),
            "retention": ("keep: " if reasons[r.id].keep else "delete: ") + reasons[r.id].reason,
            "source": m.source if m else None,
            "databases": [d.name for d in m.databases] if m else None,
            "excluded": list(m.excluded_databases) if m else None,
            "error": r.error,
        })
    return rows


# -- the WAL archive: base backups and segments (point-in-time recovery) ---------------------------
# Joined to the rules above: the same retention_days and min_keep; the newest verified recovery
# point (the base backup of the newest passed point-in-time drill) is kept whatever its age, with
# all WAL after it; WAL older than the oldest kept base backup's first segment goes; nothing is
# pruned while a recovery or drill holds the archive.
@dataclass(frozen=True)
class BaseDecision:
    id: str
    keep: bool
    reason: str


@dataclass
class ArchivePlan:
    decisions: list[BaseDecision]
    wal_floor_segno: int | None  # delete segments below this number (None: delete no WAL)
    blocked: str | None = None


def plan_archive_retention(base_backups: list, *, now: datetime, retention_days: int, min_keep: int,
                           verified_base: str | None, holds: list[dict]) -> ArchivePlan:
    """`base_backups`: complete base backups (anything with id, end_time, begin_segno)."""
    backups = sorted(base_backups, key=lambda b: b.end_time, reverse=True)
    if holds:
        who = ", ".join(f"{h.get('purpose')} {h.get('holder')}" for h in holds)
        why = f"the archive is held by {who}: pruning nothing"
        return ArchivePlan([BaseDecision(b.id, True, why) for b in backups], None, why)
    window = timedelta(days=retention_days)
    newest_ids = [b.id for b in backups[:min_keep]]
    # The newest base backup older than the window is what recovers to its very start.
    covering = next((b.id for b in backups if now - b.end_time >= window), None)
    decisions = []
    for b in backups:
        age = now - b.end_time
        if age < window:
            decisions.append(BaseDecision(b.id, True, f"younger than {retention_days} days"))
        elif b.id in newest_ids:
            decisions.append(BaseDecision(b.id, True, f"one of the newest {min_keep} base backups"))
        elif b.id == verified_base:
            decisions.append(BaseDecision(b.id, True, "the newest verified recovery point (a drill passed)"))
        elif b.id == covering:
            decisions.append(BaseDecision(b.id, True, f"covers the start of the {retention_days}-day window"))
        else:
            decisions.append(BaseDecision(b.id, False, f"{_age_text(age)} old, not needed for the window"))
    kept = [b for b in backups if any(d.id == b.id and d.keep for d in decisions)]
    floor = min(b.begin_segno for b in kept) if kept else None
    return ArchivePlan(decisions, floor)


@dataclass
class ArchivePruneResult:
    cluster: str
    dry_run: bool
    decisions: list[BaseDecision]
    deleted_base_backups: list[str] = field(default_factory=list)
    deleted_segments: int = 0
    deleted_incomplete: list[str] = field(default_factory=list)
    blocked: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def prune_archive(ctx: ClusterContext, store: BackupStore | None = None, *, dry_run: bool = False,
                  now: datetime | None = None, retention_days: int | None = None, min_keep: int | None = None
                  ) -> ArchivePruneResult:
    from pg_ops.operations.wal import archive_ref
    from pg_ops.stores import wal_archive as wa

    store = store or ctx.store()
    now = now or datetime.now(UTC)
    ref = archive_ref(ctx, store)
    listing = wa.list_archive(store, ref)
    drills = [d for d in wa.list_drills(store, ref) if d.get("result") == "passed"]
    policy = ctx.spec.backups
    plan = plan_archive_retention(listing.base_backups, now=now, retention_days=retention_days or policy.retention_days,
                                  min_keep=min_keep or policy.min_keep,
                                  verified_base=drills[-1]["base_backup"] if drills else None,
                                  holds=listing.active_holds(now.timestamp()))
    result = ArchivePruneResult(ctx.name, dry_run, plan.decisions, blocked=plan.blocked)
    if plan.blocked:
        ctx.log.warning("archive retention of cluster %s: %s", ctx.name, plan.blocked)
        return result
    doomed: list[str] = []
    by_id = {b.id: b for b in listing.base_backups}
    for decision in plan.decisions:
        if not decision.keep:
            doomed += list(by_id[decision.id].keys)
            result.deleted_base_backups.append(decision.id)
    if plan.wal_floor_segno is not None:
        old = [s.key for s in listing.segments if s.segment.segno < plan.wal_floor_segno]
        doomed += old
        result.deleted_segments = len(old)
    # A base backup that never completed (no backup.info): garbage once a day old.
    for backup_id in listing.incomplete_base:
        objects = store.list(f"{ref.base_prefix(backup_id)}/")
        keys = [o.key for o in objects]
        if keys and all(now - o.modified >= INCOMPLETE_GRACE for o in objects):
            doomed += keys
            result.deleted_incomplete.append(backup_id)
    ctx.log.info("archive retention of %s: %s %d base backups, %d segments", ctx.name,
                 "would delete" if dry_run else "deleting", len(result.deleted_base_backups), result.deleted_segments)
    if doomed and not dry_run:
        if wa.active_holds(store, ref):  # a recovery or drill started since the plan was made
            result.blocked = "the archive was held since the plan was made: pruning nothing"
            return result
        store.delete(doomed)
    return result
