"""The backup layout inside a store (docs/architecture/interfaces.md) and what it says
about each backup: its manifest, drill result, hold markers, and so its state.

    <cluster>/<backup_id>/globals.sql.zst
    <cluster>/<backup_id>/<database>.dump.zst
    <cluster>/<backup_id>/manifest.json      written LAST: its presence = complete
    <cluster>/<backup_id>/drill.json         written by a restore drill
    <cluster>/<backup_id>/error.json         why the backup run failed (best effort)
    <cluster>/<backup_id>/hold-<holder>.json a drill or restore is reading it: never prune

Backup ids are UTC timestamps (20261126T020000Z): they sort by time and name the start.
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
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pg_ops.errors import first_line
from pg_ops.stores.base import BackupStore, StoreError

log = logging.getLogger("pg_ops")

GLOBALS = "globals.sql.zst"
MANIFEST = "manifest.json"
DRILL = "drill.json"
ERROR = "error.json"
DUMP_SUFFIX = ".dump.zst"
HOLD_PREFIX = "hold-"
ID_FORMAT = "%Y%m%dT%H%M%SZ"
ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z$")

Status = Literal["complete", "verified", "failed", "incomplete"]
GOOD: tuple[str, ...] = ("complete", "verified")


def new_backup_id(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime(ID_FORMAT)


def backup_time(backup_id: str) -> datetime:
    return datetime.strptime(backup_id, ID_FORMAT).replace(tzinfo=UTC)


def backup_prefix(cluster: str, backup_id: str) -> str:
    return f"{cluster}/{backup_id}/"


def object_key(cluster: str, backup_id: str, name: str) -> str:
    return f"{cluster}/{backup_id}/{name}"


def dump_name(database: str) -> str:
    return f"{database}{DUMP_SUFFIX}"


class StoredObject(BaseModel):
    model_config = ConfigDict(frozen=True)
    key: str
    raw_bytes: int
    stored_bytes: int
    sha256: str  # of the stored object
    seconds: float


class DatabaseDump(StoredObject):
    name: str
    source: str  # the member it was dumped from
    lsn: str | None = None  # WAL position of the dump's snapshot on that member
    row_counts: dict[str, int] | None = None  # "schema.table" -> rows, in the dump's snapshot


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)
    format: int = 1
    id: str
    cluster: str
    started_at: datetime
    finished_at: datetime
    server_version: str
    pg_dump_version: str
    source: str
    source_role: Literal["primary", "replica"]
    timeline: int | None
    lsn: str | None
    fingerprint: Literal["counts", "none"]
    globals: StoredObject
    databases: list[DatabaseDump]
    # Databases on the server that this backup does not hold (backups.exclude, and pg_ops's own).
    excluded_databases: list[str] = []
    skipped_databases: list[str] = []  # format-1 manifests before every database was dumped

    @property
    def stored_bytes(self) -> int:
        return self.globals.stored_bytes + sum(d.stored_bytes for d in self.databases)

    @property
    def raw_bytes(self) -> int:
        return self.globals.raw_bytes + sum(d.raw_bytes for d in self.databases)

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class Hold(BaseModel):
    model_config = ConfigDict(frozen=True)
    holder: str
    purpose: str
    expires_at: float

    def active(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at


@dataclass
class BackupRecord:
    """One backup as the store shows it: what retention, `pg-ops backups` and drills read."""

    id: str
    status: Status
    started: datetime
    stored_bytes: int
    manifest: Manifest | None = None
    drill: dict | None = None
    error: str | None = None
    holds: list[Hold] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    @property
    def good(self) -> bool:
        return self.status in GOOD

    def active_holds(self, now: float | None = None) -> list[Hold]:
        return [h for h in self.holds if h.active(now)]


def _read_json(store: BackupStore, key: str) -> dict | None:
    try:
        return json.loads(store.get_bytes(key))
    except StoreError:
        return None
    except ValueError:
        return {"unreadable": True}


def read_manifest(store: BackupStore, cluster: str, backup_id: str) -> Manifest:
    raw = _read_json(store, object_key(cluster, backup_id, MANIFEST))
    if raw is None:
        raise StoreError(f"backup {cluster}/{backup_id}: no manifest in {store.describe()} "
                         f"(the backup does not exist or is incomplete)")
    try:
        return Manifest.model_validate(raw)
    except ValueError as exc:
        raise StoreError(f"backup {cluster}/{backup_id}: unreadable manifest ({first_line(exc)})") from exc


def status_of(has_manifest: bool, drill: dict | None) -> Status:
    if not has_manifest:
        return "incomplete"
    if drill and drill.get("result") == "passed":
        return "verified"
    if drill and drill.get("result") == "failed":
        return "failed"
    return "complete"


def list_backups(store: BackupStore, cluster: str, *, with_manifests: bool = True) -> list[BackupRecord]:
    """Every backup of a cluster, oldest first."""
    groups: dict[str, list] = {}
    for obj in store.list(f"{cluster}/"):
        parts = obj.key.split("/")
        if len(parts) == 3 and ID_PATTERN.match(parts[1]):
            groups.setdefault(parts[1], []).append(obj)
    records = []
    for backup_id in sorted(groups):
        objects = {o.key.split("/")[2]: o for o in groups[backup_id]}
        has_manifest = MANIFEST in objects
        drill = _read_json(store, object_key(cluster, backup_id, DRILL)) if DRILL in objects else None
        holds = []
        for name in objects:
            if name.startswith(HOLD_PREFIX):
                raw = _read_json(store, object_key(cluster, backup_id, name))
                with contextlib.suppress(ValueError, TypeError):
                    holds.append(Hold.model_validate(raw))
        manifest = None
        if has_manifest and with_manifests:
            with contextlib.suppress(StoreError):
                manifest = read_manifest(store, cluster, backup_id)
        error = None
        if not has_manifest and ERROR in objects:
            error = (_read_json(store, object_key(cluster, backup_id, ERROR)) or {}).get("reason")
        records.append(BackupRecord(
            id=backup_id, status=status_of(has_manifest, drill), started=backup_time(backup_id),
            stored_bytes=manifest.stored_bytes if manifest else sum(o.size for o in objects.values()),
            manifest=manifest, drill=drill, error=error, holds=holds,
            keys=sorted(o.key for o in groups[backup_id])))
    return records


def hold_key(cluster: str, backup_id: str, holder: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", holder)[:100]
    return object_key(cluster, backup_id, f"{HOLD_PREFIX}{safe}.json")


@contextlib.contextmanager
def hold_backup(store: BackupStore, cluster: str, backup_id: str, holder: str, purpose: str,
                ttl_seconds: float = 6 * 3600) -> Iterator[Hold]:
    """Mark a backup as being read (a drill, a restore): retention never deletes it while the
    hold is unexpired. The expiry covers a holder that dies without releasing it."""
    hold = Hold(holder=holder, purpose=purpose, expires_at=time.time() + ttl_seconds)
    key = hold_key(cluster, backup_id, holder)
    store.put_bytes(key, hold.model_dump_json().encode())
    try:
        yield hold
    finally:
        try:
            store.delete([key])
        except StoreError as exc:
            log.warning("backup %s/%s: could not release the %s hold %s (retention keeps the backup until it "
                        "expires at %s): %s", cluster, backup_id, purpose, holder,
                        datetime.fromtimestamp(hold.expires_at, UTC).isoformat(timespec="seconds"), exc)
