"""The nightly backup: every application database and the globals of a cluster, dumped
from a streaming replica (or the primary), compressed in the pipe, streamed into the store,
the manifest written last.

Which databases: every database that allows connections (templates aside), found on the
server at backup time, so `postgres` and a database created by hand after the spec was written
are backed up too. Not backed up, and listed as excluded in the manifest, the log, the run's
metadata and `pg-ops backup(s)`: the names in `backups.exclude`, and pg_ops's own `pg_ops`
database, by one rule: it holds only what pg_ops regenerates (status rows, heartbeats, probe
writes), and restoring a stale copy would make the exporter's dead man's switch lie. (Point-in-
time recovery, being physical, brings it back as it was at the target time: that is how a
drill proves its target.)

Where from: `backups.source: replica` takes the streaming replica closest to the primary and
falls back to the primary when no replica streams, or when the replica cancels a dump to
replay WAL (a recovery conflict; `hot_standby_feedback` and `max_standby_streaming_delay`
make that rare). Any other dump failure (pg_dump killed, the store full or refusing) fails
the backup: no manifest is written, and the partial objects are aborted or left incomplete.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER, redact
from pg_ops.errors import PgOpsError, first_line
from pg_ops.operations.activity import record_status
from pg_ops.operations.cluster_alerts import cluster_secrets, send_alert
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres import dump
from pg_ops.postgres.session import with_connection
from pg_ops.postgres.topology import MemberProbe
from pg_ops.stores import BackupStore, StoreError
from pg_ops.stores import catalog as cat
from pg_ops.stores.pipe import compress_into

# Never dumped, whatever the spec says (see the module docstring).
ALWAYS_EXCLUDED = (PG_OPS_DATABASE,)


def excluded_databases(spec) -> list[str]:
    return sorted({*ALWAYS_EXCLUDED, *spec.backups.exclude})


class BackupFailed(PgOpsError):
    pass


@dataclass(frozen=True)
class Source:
    member: str
    role: Literal["primary", "replica"]
    probe: MemberProbe


def dump_sources(ctx: ClusterContext, probes: dict[str, MemberProbe]) -> list[Source]:
    """Members to dump from, best first: streaming replicas (least behind first), then the primary."""
    writable = [n for n, p in probes.items() if p.writable]
    if len(writable) > 1:
        raise BackupFailed(f"cluster {ctx.name}: {len(writable)} writable members ({', '.join(writable)}); "
                           f"not backing up a split cluster")
    sources = []
    if ctx.spec.backups.source == "replica":
        replicas = [p for n, p in probes.items() if n not in writable and p.streaming]
        replicas.sort(key=lambda p: -(p.replay_lsn or 0))
        sources += [Source(p.name, "replica", p) for p in replicas]
    sources += [Source(n, "primary", probes[n]) for n in writable]
    if not sources:
        down = "; ".join(f"{n}: {p.error or 'not streaming'}" for n, p in probes.items())
        raise BackupFailed(f"cluster {ctx.name}: no member to back up from ({down})")
    return sources


def unique_backup_id(store: BackupStore, cluster: str) -> str:
    for _ in range(5):
        backup_id = cat.new_backup_id()
        if not store.list(cat.backup_prefix(cluster, backup_id)):
            return backup_id
        time.sleep(1.0 - (time.time() % 1.0) + 0.01)
    raise BackupFailed(f"cluster {cluster}: could not pick a backup id that is not taken")


class _Runner:
    """One backup run: sources in order of preference, the objects written so far."""

    def __init__(self, ctx: ClusterContext, store: BackupStore, backup_id: str, sources: list[Source]):
        self.ctx = ctx
        self.store = store
        self.backup_id = backup_id
        self.sources = list(sources)
        self.password = ctx.admin_password()
        self.endpoints = ctx.endpoints()

    def key(self, name: str) -> str:
        return cat.object_key(self.ctx.name, self.backup_id, name)

    def with_fallback(self, what: str, fn):
        """Run fn(source); on a recovery conflict on a replica, drop it and use the next source."""
        while True:
            source = self.sources[0]
            try:
                return fn(source)
            except dump.RecoveryConflict as exc:
                primaries = [s for s in self.sources if s.role == "primary"]
                if source.role != "replica" or not primaries:
                    raise
                # Another replica replays the same WAL and would likely cancel too.
                self.sources = primaries
                self.ctx.log.warning("%s: replica %s cancelled the dump (%s); taking it from the primary %s "
                                     "instead", what, source.member, exc, primaries[0].member)

    def dump_globals(self, source: Source) -> cat.StoredObject:
        key = self.key(cat.GLOBALS)
        ep = self.endpoints[source.member]
        with self.store.open_writer(key, private=True) as writer:
            with dump.pg_dumpall_globals(ep, SUPERUSER, self.password, member=source.member) as out:
                stats = compress_into(out, writer, label=f"globals from {source.member}", log=self.ctx.log)
            writer.commit()
        return cat.StoredObject(key=key, raw_bytes=stats.raw_bytes, stored_bytes=stats.stored_bytes,
                                sha256=stats.sha256, seconds=round(stats.seconds, 3))

    def dump_database(self, name: str, source: Source) -> cat.DatabaseDump:
        key = self.key(cat.dump_name(name))
        ep = self.endpoints[source.member]
        with dump.exported_snapshot(ep, SUPERUSER, self.password, name) as snap:
            # Rows are counted in the exported snapshot while pg_dump streams the same snapshot.
            counts: Future = Future()
            if self.ctx.spec.backups.fingerprint == "counts":
                threading.Thread(target=_fill, args=(counts, snap.count_rows), daemon=True,
                                 name=f"count-{name}").start()
            else:
                counts.set_result(None)
            try:
                with self.store.open_writer(key) as writer:
                    with dump.pg_dump(ep, SUPERUSER, self.password, name, snapshot=snap.id,
                                      member=source.member) as out:
                        stats = compress_into(out, writer, label=f"{name} from {source.member}", log=self.ctx.log)
                    row_counts = _counted(counts, name, source.member)
                    writer.commit()
            except dump.DumpFailed as exc:
                count_error = _error_text(counts)
                if snap.in_recovery and not isinstance(exc, dump.RecoveryConflict):
                    conflict = count_error if _is_conflict(count_error) else snap.conflict_error()
                    if conflict:
                        raise dump.RecoveryConflict(f"{exc} (the standby ended our snapshot: {conflict})") from exc
                raise
        self.ctx.log.info("%s: %.1f MB -> %.1f MB stored in %.1f s (%.1f MB/s) from %s", name,
                          stats.raw_bytes / 1e6, stats.stored_bytes / 1e6, stats.seconds, stats.mb_per_s,
                          source.member)
        return cat.DatabaseDump(key=key, name=name, source=source.member, lsn=snap.lsn,
                                raw_bytes=stats.raw_bytes, stored_bytes=stats.stored_bytes, sha256=stats.sha256,
                                seconds=round(stats.seconds, 3), row_counts=row_counts)

    def databases_to_dump(self, source: Source) -> tuple[list[str], list[str]]:
        """(databases to dump, databases excluded): what the server has now, not what the spec
        listed when it was written."""
        present = with_connection(self.endpoints[source.member], SUPERUSER, self.password, dump.list_databases,
                                  timeout=10, name=source.member)
        wanted = {d.name for d in self.ctx.spec.databases}
        missing = sorted(wanted - set(present))
        if missing:
            raise BackupFailed(f"cluster {self.ctx.name}: database {', '.join(missing)} of the spec does not exist "
                               f"on {source.member}")
        excluded = excluded_databases(self.ctx.spec)
        return sorted(set(present) - set(excluded)), [d for d in excluded if d in present]


def _fill(future: Future, fn) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
        future.set_exception(exc)


def _error_text(future: Future) -> str | None:
    """The row-count thread's error, if any (waits for it: the snapshot session is shared)."""
    try:
        future.result(timeout=60)
    except Exception as exc:  # noqa: BLE001 - the dump's own failure is the one reported
        return str(exc).strip() or type(exc).__name__
    return None


def _is_conflict(text: str | None) -> bool:
    return text is not None and any(m in text for m in dump.CONFLICT_MARKERS)


def _counted(future: Future, database: str, member: str) -> dict[str, int] | None:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001
        text = first_line(exc)
        if _is_conflict(text):
            raise dump.RecoveryConflict(f"row counts of {database} on {member}: {text}") from exc
        raise dump.DumpFailed(f"row counts of {database} on {member}: {text}") from exc


def backup(ctx: ClusterContext, store: BackupStore | None = None) -> cat.Manifest:
    """Take one backup; returns its manifest. Raises BackupFailed/StoreError/DumpFailed
    with the reason; a failed backup has no manifest and is recorded in error.json."""
    backup_id = cat.new_backup_id()
    try:
        # Inside the try: an unreachable store or missing credentials is a failed backup too.
        store = store or ctx.store()
        store.check()
        backup_id = unique_backup_id(store, ctx.name)
        ctx.log.info("backup %s of cluster %s into %s", backup_id, ctx.name, store.describe())
        return _take(ctx, store, backup_id)
    except PgOpsError as exc:
        reason = redact(str(exc), cluster_secrets(ctx))
        record_failure(ctx, store, backup_id, reason)
        # from None: the cause is the unscrubbed text of `reason`
        raise BackupFailed(f"backup {backup_id} of cluster {ctx.name} failed: {reason}") from None


def _take(ctx: ClusterContext, store: BackupStore, backup_id: str) -> cat.Manifest:
    started = datetime.now(UTC)
    probes = ctx.probe()
    runner = _Runner(ctx, store, backup_id, dump_sources(ctx, probes))
    first = runner.sources[0]
    if first.role == "primary" and ctx.spec.backups.source == "replica":
        ctx.log.warning("no streaming replica: backing up cluster %s from the primary %s", ctx.name, first.member)
    names, excluded = runner.with_fallback("databases", runner.databases_to_dump)
    ctx.log.info("backing up databases %s; excluded: %s", ", ".join(names), ", ".join(excluded) or "none")
    globals_obj = runner.with_fallback("globals", runner.dump_globals)
    databases = [runner.with_fallback(name, lambda s, n=name: runner.dump_database(n, s)) for name in names]
    manifest = cat.Manifest(
        id=backup_id, cluster=ctx.name, started_at=started, finished_at=datetime.now(UTC),
        server_version=_server_version(first.probe), pg_dump_version=dump.tool_version(),
        source=first.member, source_role=first.role, timeline=first.probe.timeline,
        lsn=databases[0].lsn if databases else (None if first.probe.lsn is None else str(first.probe.lsn)),
        fingerprint=ctx.spec.backups.fingerprint, globals=globals_obj, databases=databases,
        excluded_databases=excluded,
    )
    # Written last: its presence is what makes the backup complete.
    store.put_bytes(runner.key(cat.MANIFEST), manifest.model_dump_json(indent=1).encode())
    ctx.log.info("backup %s complete: %d databases, %.1f MB -> %.1f MB in %.1f s", backup_id, len(databases),
                 manifest.raw_bytes / 1e6, manifest.stored_bytes / 1e6, manifest.seconds)
    record_status(ctx, "backup_complete", manifest.stored_bytes)
    return manifest


def _server_version(probe: MemberProbe) -> str:
    num = probe.server_version_num or 0
    return f"{num // 10000}.{num % 10000}" if num else "unknown"


def record_failure(ctx: ClusterContext, store: BackupStore | None, backup_id: str, reason: str) -> None:
    """error.json beside the partial objects (best effort: the store may be what failed),
    a clear log line, and the alert."""
    ctx.log.error("backup %s of cluster %s FAILED: %s", backup_id, ctx.name, reason)
    try:
        if store is not None:
            store.put_bytes(cat.object_key(ctx.name, backup_id, cat.ERROR),
                            json.dumps({"reason": reason, "at": datetime.now(UTC).isoformat()}).encode())
    except StoreError:
        pass
    alert_backup_failed(ctx, backup_id, reason)


def alert_backup_failed(ctx: ClusterContext, backup_id: str, reason: str) -> None:
    send_alert(ctx, "critical", "backup_failed", f"backup {backup_id} of cluster {ctx.name} failed",
               backup_id=backup_id, reason=reason)
