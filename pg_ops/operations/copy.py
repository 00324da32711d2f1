"""The second store (`backups.copy_to`): every complete dump, base backup and WAL segment of the
backup store copied there, so losing the cluster and its backup store (in the homelab, MinIO in
the same K3s cluster) does not lose the backups. Drills and listings read it with `--from copy`.

- Only what is complete is copied: a dump folder once its manifest exists, a base backup once its
  backup.info says DONE, a WAL segment once it is in the archive (each is written whole). Inside
  a folder the completion marker is copied LAST, so the copy's own rules hold (no manifest, not
  counted), and an interrupted copy is finished by the next one (objects present with their
  size are not copied again).
- Holds, drill results and error notes are not copied: they are about the store they are in. A
  backup is "verified" in the copy once a drill from the copy passed.
- The copy has its own retention (`copy_to.retention_days`, `min_keep`), applied after each copy
  by the same rules as the backup store's (operations/retention.py); what it would delete again
  is not copied (older than its window), nor WAL older than the oldest base backup it keeps.
- Streamed object by object (`open_reader` into `open_writer`), nothing on local disk."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec
from pg_ops.stores import catalog as cat
from pg_ops.stores import wal_archive as wa
from pg_ops.stores.base import BackupStore, ObjectInfo

CHUNK = 8 << 20
NOT_COPIED = (cat.HOLD_PREFIX, cat.DRILL, cat.ERROR)  # file names about the store they are in


@dataclass
class CopyResult:
    cluster: str
    destination: str
    objects: int = 0
    bytes: int = 0
    dumps: list[str] = field(default_factory=list)          # backup ids completed in the copy by this run
    base_backups: list[str] = field(default_factory=list)
    segments: int = 0
    pruned_dumps: list[str] = field(default_factory=list)
    pruned_base_backups: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return (f"copied {self.objects} objects ({self.bytes} bytes) of {self.cluster} to {self.destination}: "
                f"{len(self.dumps)} dumps, {len(self.base_backups)} base backups, {self.segments} WAL files; "
                f"pruned there {len(self.pruned_dumps)} dumps, {len(self.pruned_base_backups)} base backups")


def copy_object(src: BackupStore, dst: BackupStore, obj: ObjectInfo, private: bool) -> int:
    """Stream one object; StoreError when either side fails or the sizes differ (nothing is
    committed then: the writer aborts)."""
    written = 0
    with src.open_reader(obj.key) as reader, dst.open_writer(obj.key, private=private) as writer:
        while chunk := reader.read(CHUNK):
            written += writer.write(chunk)
        if written != obj.size:
            raise PgOpsError(f"copy of {obj.key}: read {written} bytes, the store lists {obj.size}")
        writer.commit()
    return written


def _folder(src: BackupStore, dst: BackupStore, objects: list[ObjectInfo], marker: str, present: dict[str, int],
            result: CopyResult, private: bool) -> bool:
    """Copy a folder's objects, its completion marker last; False when it was complete there already."""
    todo = [o for o in objects if present.get(o.key) != o.size and not o.key.rsplit("/", 1)[-1].startswith(NOT_COPIED)]
    if not todo:
        return False
    todo.sort(key=lambda o: o.key.endswith("/" + marker))  # the marker last
    for obj in todo:
        result.bytes += copy_object(src, dst, obj, private)
        result.objects += 1
    return True


def copy_backups(ctx: ClusterContext, src: BackupStore | None = None, dst: BackupStore | None = None,
                 now: datetime | None = None) -> CopyResult:
    """Copy what is complete and missing, then apply the copy's retention. Raises PgOpsError
    (StoreError) when a store cannot be read or written; what was copied before stays."""
    copy_to = ctx.spec.backups.copy_to
    if copy_to is None:
        raise PgOpsError(f"cluster {ctx.name} has no second store (backups.copy_to is not set)")
    started = time.monotonic()
    src, dst = src or ctx.store(), dst or ctx.copy_store()
    now = now or datetime.now(UTC)
    oldest = now - timedelta(days=copy_to.retention_days)
    result = CopyResult(ctx.name, dst.describe())
    present = {o.key: o.size for o in dst.list(f"{ctx.name}/")}
    for record in cat.list_backups(src, ctx.name, with_manifests=False):
        if not record.good or record.started < oldest:
            continue
        objects = [o for o in src.list(cat.backup_prefix(ctx.name, record.id))]
        # Globals hold password hashes: private (0600, encrypted) in the copy as in the store.
        if _folder(src, dst, objects, cat.MANIFEST, present, result, private=True):
            result.dumps.append(record.id)
    if ctx.spec.backups.wal.enabled:
        _copy_archive(ctx, src, dst, oldest, result)
    from pg_ops.operations.retention import prune, prune_archive

    pruned = prune(ctx, dst, retention_days=copy_to.retention_days, min_keep=copy_to.min_keep, now=now)
    result.pruned_dumps = list(pruned.deleted)
    if ctx.spec.backups.wal.enabled:
        archive = prune_archive(ctx, dst, retention_days=copy_to.retention_days, min_keep=copy_to.min_keep, now=now)
        result.pruned_base_backups = list(archive.deleted_base_backups)
    result.seconds = round(time.monotonic() - started, 3)
    ctx.log.info("%s", result.text())
    return result


def _copy_archive(ctx: ClusterContext, src: BackupStore, dst: BackupStore, oldest: datetime,
                  result: CopyResult) -> None:
    from pg_ops.operations.wal import archive_ref
    from pg_ops.postgres import walfiles

    ref = archive_ref(ctx, src)
    listing = wa.list_archive(src, ref)
    present = {o.key: o.size for o in dst.list(f"{ref.root}/")}
    wanted = [b for b in listing.base_backups if b.end_time >= oldest]
    kept_there = wa.list_archive(dst, ref).base_backups
    for base in wanted:
        objects = src.list(f"{ref.base_prefix(base.id)}/")
        if _folder(src, dst, objects, wa.BACKUP_INFO, present, result, private=True):
            result.base_backups.append(base.id)
    begins = [walfiles.parse_segment(b.begin_wal) for b in [*wanted, *kept_there]]
    floor = min((s.segno for s in begins if s is not None), default=None)
    if floor is None:
        return  # no base backup to replay it from, here or there: WAL alone recovers nothing
    wal_objects = {s.key: s for s in listing.segments if s.segment.segno >= floor}
    extra = [*listing.histories.values(), *listing.backup_histories]
    for obj in src.list(f"{ref.root}/wals/"):
        if (obj.key in wal_objects or obj.key in extra) and present.get(obj.key) != obj.size:
            result.bytes += copy_object(src, dst, obj, private=False)
            result.objects += 1
            result.segments += 1


def copy_after_backup(ctx: ClusterContext, what: str) -> dict:
    """The copy a backup run makes once its backup is complete: metadata for the run. A copy that
    fails does not fail the run (the backup itself is good); it alerts `backup_copy_failed`
    (warning), and the next copy (the archive sensor's, each minute, or the next run) finishes it."""
    from pg_ops.operations.cluster_alerts import send_alert

    if ctx.spec.backups.copy_to is None:
        return {}
    try:
        result = copy_backups(ctx)
    except PgOpsError as exc:
        ctx.log.error("copy of %s's backups to the second store failed after the %s: %s", ctx.name, what, exc)
        send_alert(ctx, "warning", "backup_copy_failed",
                   f"the {what} of {ctx.name} is not in the second store yet: {exc}")
        return {"copy": f"failed: {exc}"}
    return {"copy": result.text(), "copy_objects": result.objects, "copy_seconds": result.seconds}


def copy_catch_up(contexts: list[ClusterContext], open_alerts: dict[str, dict],
                  now: float | None = None) -> tuple[dict[str, CopyResult | str], dict[str, dict]]:
    """The archive sensor's tick over the clusters with a second store: copy what is complete and
    missing (new WAL each minute; a backup whose run could not copy it). `backup_copy_failing`
    (warning) fires once while a cluster's copy fails and resolves once it succeeds. Returns
    (result or reason per cluster, the new open-alert state)."""
    from pg_ops.operations import alerts as alert_ops
    from pg_ops.operations import cluster_alerts
    from pg_ops.operations.alert_model import Alert

    results: dict[str, CopyResult | str] = {}
    active = []
    for ctx in contexts:
        try:
            results[ctx.name] = copy_backups(ctx)
        except PgOpsError as exc:
            results[ctx.name] = str(exc)
            active.append(Alert(cluster=ctx.name, severity="warning", kind="backup_copy_failing",
                                summary=f"backups of {ctx.name} are not reaching the second store: {exc}"))
    mine = {k: v for k, v in open_alerts.items() if v.get("kind") == "backup_copy_failing"}
    to_send, state = alert_ops.reconcile(mine, active, None, {c.name for c in contexts}, now)
    for ctx in contexts:
        batch = [a for a in to_send if a.cluster == ctx.name]
        if batch:
            ctx.alerts.send(batch, {ctx.name: ctx.spec}, cluster_alerts.cluster_secrets(ctx), ctx.log)
    return results, state


def reading_copy(spec: ClusterSpec) -> ClusterSpec:
    """The spec as a server recovering from the second store sees it: `backups.store` is the
    copy's (its restore_command and keys follow from that)."""
    if spec.backups.copy_to is None:
        raise PgOpsError(f"cluster {spec.name} has no second store (backups.copy_to is not set)")
    backups = spec.backups.model_copy(update={"store": spec.backups.copy_to.store, "copy_to": None})
    return spec.model_copy(update={"backups": backups})
