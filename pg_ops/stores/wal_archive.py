"""The WAL archive of a cluster inside its backup store, the same layout on S3 (barman-cloud's
own, the server name being the system identifier) and on a file store (pg_ops's copy script
writes the same names), one folder per incarnation of the cluster:

    <cluster>.wal/<sysid>/wals/<timeline+log>/<segment>[.zst]   archived segments (and .partial ones)
    <cluster>.wal/<sysid>/wals/<tl>.history                      timeline histories (one per failover)
    <cluster>.wal/<sysid>/base/<backup_id>/backup.info           a complete base backup (written last)
    <cluster>.wal/<sysid>/base/<backup_id>/data.tar[.lz4|.zst]   its data
    <cluster>.wal/<sysid>/holds/<holder>.json                    a recovery or drill is reading: prune nothing
    <cluster>.wal/<sysid>/drills/<stamp>.json                    a point-in-time drill's result

`<sysid>` is the system identifier of the cluster that wrote it (pg_control_system()): a cluster
torn down and deployed again under the same name is a new system and archives beside the old
one, never into it (segment names restart at timeline 1 and would clash). From one
incarnation's folder: the recovery window (oldest base backup's end .. newest archived segment),
the base backup a target time needs, and any segment or history file missing on the way (a
gap), following the timeline history through failovers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pg_ops.postgres import walfiles
from pg_ops.postgres.barman import S3Target
from pg_ops.spec import ClusterSpec, S3StoreSpec
from pg_ops.stores.base import BackupStore, ObjectInfo, StoreError

log = logging.getLogger("pg_ops")

ARCHIVE_SUFFIX = ".wal"
COMPRESSION_SUFFIXES = (".zst", ".gz", ".bz2", ".xz", ".snappy", ".lz4")
BACKUP_INFO = "backup.info"
HOLD_SECONDS = 6 * 3600


def archive_root(cluster: str) -> str:
    """Every incarnation's archive of `cluster` is under this folder."""
    return f"{cluster}{ARCHIVE_SUFFIX}"


@dataclass(frozen=True)
class ArchiveRef:
    """One incarnation's archive: the cluster name and the system identifier that wrote it."""

    cluster: str
    sysid: str

    @property
    def root(self) -> str:
        return f"{archive_root(self.cluster)}/{self.sysid}"

    def base_prefix(self, backup_id: str) -> str:
        """The folder of one base backup (no trailing slash)."""
        return f"{self.root}/base/{backup_id}"


def s3_target(spec: ClusterSpec, ref: ArchiveRef | None = None) -> S3Target:
    """barman-cloud's destination `<prefix>/<cluster>.wal` and server name `<sysid>`; without a
    ref the server name is the archiving server's own system identifier, read at run time."""
    store = spec.backups.store
    assert isinstance(store, S3StoreSpec), "called for clusters whose store is S3"
    prefix = "/".join(p for p in (store.prefix.strip("/"), archive_root(ref.cluster if ref else spec.name)) if p)
    return S3Target(bucket=store.bucket, prefix=prefix, server=ref.sysid if ref else None,
                    endpoint_url=store.endpoint_url, region=store.region, encryption=store.server_side_encryption)


@dataclass(frozen=True)
class Incarnation:
    sysid: str
    objects: int
    newest: datetime


def incarnations(store: BackupStore, cluster: str) -> list[Incarnation]:
    """The incarnations whose archives the store holds for `cluster`, oldest activity first.
    Objects of the layout before incarnations (`<cluster>.wal/wals/...`) count as "legacy"."""
    found: dict[str, list[ObjectInfo]] = {}
    for obj in store.list(f"{archive_root(cluster)}/"):
        first = obj.key[len(archive_root(cluster)) + 1:].split("/", 1)[0]
        found.setdefault(first if first.isdigit() else "legacy", []).append(obj)
    out = [Incarnation(sysid, len(objs), max(o.modified for o in objs)) for sysid, objs in found.items()]
    return sorted(out, key=lambda i: i.newest)


def wal_file_key(ref: ArchiveRef, name: str, zstd: bool = False) -> str:
    """Where the archive command puts a WAL file: a segment under its first 16 hex digits, a
    history file in wals/ itself (barman-cloud's layout; wal_file.sh writes the same)."""
    sub = "" if name.endswith(".history") else f"{name[:16]}/"
    return f"{ref.root}/wals/{sub}{name}" + (".zst" if zstd else "")


def _segment(name: str) -> walfiles.Segment:
    segment = walfiles.parse_segment(name)
    assert segment is not None, f"{name!r} is a WAL segment name (barman and pg_ops write them)"
    return segment


def plain_name(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class ArchivedSegment:
    segment: walfiles.Segment
    key: str
    archived_at: datetime
    size: int


@dataclass(frozen=True)
class BaseBackup:
    id: str
    begin_time: datetime
    end_time: datetime
    begin_wal: str
    end_wal: str
    timeline: int
    size: int
    keys: tuple[str, ...] = ()
    source: str = ""  # the member it was taken from ("" for barman-cloud-backup's, before pg_ops streamed them)
    source_role: str = ""  # "replica" (a standby's backup) or "primary"

    @property
    def begin_segno(self) -> int:
        return _segment(self.begin_wal).segno

    @property
    def end_segno(self) -> int:
        return _segment(self.end_wal).segno


def parse_backup_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def backup_info_text(fields: dict[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in fields.items())


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def _time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class ArchiveListing:
    """Everything the store holds for one cluster's archive, read in one pass."""

    cluster: str
    sysid: str = ""
    segments: list[ArchivedSegment] = field(default_factory=list)
    histories: dict[int, str] = field(default_factory=dict)  # timeline -> key of its history file
    base_backups: list[BaseBackup] = field(default_factory=list)  # complete ones, oldest first
    incomplete_base: list[str] = field(default_factory=list)  # base backup ids without backup.info / not DONE
    holds: list[dict] = field(default_factory=list)
    backup_histories: list[str] = field(default_factory=list)  # keys of <segment>.<offset>.backup files
    other_keys: list[str] = field(default_factory=list)

    @property
    def newest_segment(self) -> ArchivedSegment | None:
        full = [s for s in self.segments if not s.segment.partial]
        return max(full, key=lambda s: (s.archived_at, s.segment)) if full else None

    def active_holds(self, now: float | None = None) -> list[dict]:
        now = now or time.time()
        return [h for h in self.holds if h.get("expires_at", 0) > now]


def list_archive(store: BackupStore, ref: ArchiveRef) -> ArchiveListing:
    root = ref.root
    listing = ArchiveListing(ref.cluster, ref.sysid)
    base_objects: dict[str, list[ObjectInfo]] = {}
    for obj in store.list(f"{root}/"):
        rel = obj.key[len(root) + 1:]
        parts = rel.split("/")
        name = plain_name(obj.key)
        if parts[0] == "wals":
            segment = walfiles.parse_segment(name)
            if segment is not None:
                listing.segments.append(ArchivedSegment(segment, obj.key, obj.modified, obj.size))
            elif (tl := walfiles.history_timeline(name)) is not None:
                listing.histories[tl] = obj.key
            elif name.endswith(".backup"):
                listing.backup_histories.append(obj.key)
        elif parts[0] == "base" and len(parts) >= 3:
            base_objects.setdefault(parts[1], []).append(obj)
        elif parts[0] == "holds":
            with contextlib.suppress(StoreError, ValueError):
                listing.holds.append(json.loads(store.get_bytes(obj.key)))
        else:
            listing.other_keys.append(obj.key)
    for backup_id, objects in sorted(base_objects.items()):
        info_key = next((o.key for o in objects if o.key.endswith("/" + BACKUP_INFO)), None)
        info = parse_backup_info(store.get_bytes(info_key).decode()) if info_key else {}
        if info.get("status") != "DONE" or not info.get("end_time") or not info.get("begin_wal"):
            listing.incomplete_base.append(backup_id)
            continue
        listing.base_backups.append(BaseBackup(
            id=backup_id, begin_time=_time(info["begin_time"]), end_time=_time(info["end_time"]),
            begin_wal=info["begin_wal"], end_wal=info["end_wal"], timeline=int(info["timeline"]),
            size=_int(info.get("size")) or sum(o.size for o in objects), keys=tuple(o.key for o in objects),
            source=info.get("source", ""), source_role=info.get("source_role", "")))
    listing.segments.sort(key=lambda s: (s.segment.segno, s.segment.timeline))
    listing.base_backups.sort(key=lambda b: b.end_time)
    return listing


# -- timelines ----------------------------------------------------------------------------------
def timeline_starts(store: BackupStore, listing: ArchiveListing, timeline: int | None = None) -> dict[int, int]:
    """timeline -> the segment number it starts at, for the newest timeline (or `timeline`)
    and its ancestors, read from its history file. Timeline 1 starts at 0."""
    latest = timeline or max([*listing.histories, *(s.segment.timeline for s in listing.segments), 1])
    starts = {1: 0}
    if latest in listing.histories:
        raw = read_archived(store, listing.histories[latest])
        history = walfiles.parse_history(raw.decode(errors="replace"))
        for parent, switch_lsn in history:
            # The child of `parent` starts in the segment holding the switch point.
            child = next((h[0] for h in history if h[0] > parent), latest)
            starts[child] = walfiles.lsn_segno(switch_lsn)
        starts[latest] = walfiles.lsn_segno(history[-1][1]) if history else 0
    return starts


def read_archived(store: BackupStore, key: str) -> bytes:
    """An archived file's content, decompressed as its suffix says (barman-cloud compresses
    history and .backup files too)."""
    import bz2
    import gzip
    import lzma

    data = store.get_bytes(key)
    if key.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    openers = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}
    for suffix, decompress in openers.items():
        if key.endswith(suffix):
            return decompress(data)
    return data


def expected_timeline(starts: dict[int, int], segno: int) -> int:
    return max(tl for tl, start in starts.items() if start <= segno)


@dataclass(frozen=True)
class Gap:
    first: str  # first missing segment name
    last: str   # last missing segment name
    before: str | None  # newest archived segment before the gap
    after: str | None   # oldest archived segment after it

    def __str__(self) -> str:
        missing = self.first if self.first == self.last else f"{self.first} .. {self.last}"
        return (f"WAL segment {missing} is missing from the archive (between {self.before or 'the base backup'} "
                f"and {self.after or 'the newest segment'})")


def find_gaps(listing: ArchiveListing, starts: dict[int, int], first_segno: int, last_segno: int) -> list[Gap]:
    """Every run of segments missing between first_segno and last_segno (inclusive), each
    looked for on the timeline that owns it; oldest first."""
    present = {(s.segment.timeline, s.segment.segno) for s in listing.segments if not s.segment.partial}
    missing = [n for n in range(first_segno, last_segno + 1) if (expected_timeline(starts, n), n) not in present]
    name = lambda n: walfiles.segment_name(expected_timeline(starts, n), n)  # noqa: E731
    out: list[Gap] = []
    runs: list[tuple[int, int]] = []
    for n in missing:
        if runs and runs[-1][1] + 1 == n:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    for lo, hi in runs:
        out.append(Gap(name(lo), name(hi), name(lo - 1) if lo > first_segno else None,
                       name(hi + 1) if hi < last_segno else None))
    return out


def find_gap(listing: ArchiveListing, starts: dict[int, int], first_segno: int, last_segno: int) -> Gap | None:
    """The first run of segments missing between first_segno and last_segno (inclusive)."""
    gaps = find_gaps(listing, starts, first_segno, last_segno)
    return gaps[0] if gaps else None


def newest_timeline(listing: ArchiveListing) -> int:
    return max([*listing.histories, *(s.segment.timeline for s in listing.segments), 1])


def missing_histories(store: BackupStore, listing: ArchiveListing) -> list[int]:
    """Timelines whose history file recovery needs and the archive lacks: the newest one's and
    those of its ancestors above 1 (PostgreSQL's `recovery_target_timeline = latest` stops at the
    first history file it cannot fetch, so a base backup before it ends there)."""
    latest = newest_timeline(listing)
    if latest == 1:
        return []
    if latest not in listing.histories:
        return [latest]
    history = walfiles.parse_history(read_archived(store, listing.histories[latest]).decode(errors="replace"))
    return sorted({tl for tl, _ in history if tl > 1 and tl not in listing.histories})


def required_last_segno(listing: ArchiveListing, starts: dict[int, int]) -> int | None:
    """The last segment the archive must hold: the newest archived one, or the one before the
    newest timeline's start (its history file is archived at promotion, before any segment of
    it), so segments the old primary never shipped count as missing at once."""
    newest = listing.newest_segment
    latest = newest_timeline(listing)
    ends = [newest.segment.segno] if newest else []
    if latest > 1 and starts.get(latest):
        ends.append(starts[latest] - 1)
    return max(ends) if ends else None


# -- holds and drill records ---------------------------------------------------------------------
@contextlib.contextmanager
def hold_archive(store: BackupStore, ref: ArchiveRef, holder: str, purpose: str,
                 ttl_seconds: float = HOLD_SECONDS) -> Iterator[None]:
    """Retention prunes nothing of the archive while a recovery or drill reads it."""
    cluster = ref.cluster
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", holder)[:100]
    key = f"{ref.root}/holds/{safe}.json"
    expires_at = time.time() + ttl_seconds
    store.put_bytes(key, json.dumps({"holder": holder, "purpose": purpose, "expires_at": expires_at}).encode())
    try:
        yield
    finally:
        try:
            store.delete([key])
        except StoreError as exc:
            log.warning("WAL archive of %s: could not release the %s hold %s (retention prunes nothing until it "
                        "expires at %s): %s", cluster, purpose, holder,
                        datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="seconds"), exc)


def active_holds(store: BackupStore, ref: ArchiveRef, now: float | None = None) -> list[dict]:
    """The holds alone (a short listing), for the re-check right before deleting."""
    holds = []
    for obj in store.list(f"{ref.root}/holds/"):
        with contextlib.suppress(StoreError, ValueError):
            holds.append(json.loads(store.get_bytes(obj.key)))
    return [h for h in holds if h.get("expires_at", 0) > (now or time.time())]


def drill_key(ref: ArchiveRef, stamp: str) -> str:
    return f"{ref.root}/drills/{stamp}.json"


def list_drills(store: BackupStore, ref: ArchiveRef) -> list[dict]:
    """Point-in-time drill results, oldest first."""
    out = []
    for obj in store.list(f"{ref.root}/drills/"):
        with contextlib.suppress(StoreError, ValueError):
            out.append(json.loads(store.get_bytes(obj.key)))
    return sorted(out, key=lambda d: d.get("finished_at", ""))

