"""Restore drill: prove a backup restores, and measure how long it takes (the cluster's
real recovery time).

The newest complete backup (or a chosen one) is held against retention, downloaded into a
seekable local copy (sha256 and sizes checked against the manifest while it streams), and
restored into a throw-away target that can never be production, which the platform makes and
always removes (`Platform.scratch_target`): locally a fresh one-member cluster on a free port
under PG_OPS_HOME; on Kubernetes a temporary pod of the cluster's image. Globals go in through
psql, each database through `pg_restore --create -j 2`. Then: pg_restore's exit status and every
error it printed (an error fails the drill unless a test proves that exact message harmless),
row counts per table equal to the manifest's, and amcheck on every restored B-tree index.

The result is `drill.json` beside the backup; `result: passed` makes it `verified`,
`failed` makes it `failed` for retention. A drill that could not run for a reason that is
not the backup's fault (the store unreachable, the scratch target not starting) writes no
drill.json: it fails the run and alerts, and the backup keeps its state.

Kubernetes: the target pod runs the cluster's own image (its PostgreSQL major), restored
into by pg_ops's client tools: those must be of that major too (docs/architecture/kubernetes.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pg_ops import settings
from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.activity import record_status
from pg_ops.operations.context import ClusterContext
from pg_ops.platforms.base import ScratchTarget
from pg_ops.postgres import admin, dump
from pg_ops.postgres.session import with_connection
from pg_ops.stores import BackupStore, StoreError
from pg_ops.stores import catalog as cat

HOLD_SECONDS = 6 * 3600
RESTORE_JOBS = 2
VERIFY_TIMEOUT_S = 3600.0


class DrillFailed(PgOpsError):
    """The backup did not restore, or restored to something else than it recorded."""


class BackupFault(Exception):
    """Raised inside the drill when the backup itself is at fault (corrupt, missing, wrong)."""


@dataclass
class DrillReport:
    cluster: str
    backup_id: str
    result: str = "failed"  # passed | failed
    reason: str = ""
    started_at: str = ""
    finished_at: str = ""
    download_seconds: float = 0.0
    restore_seconds: float = 0.0
    verify_seconds: float = 0.0
    total_seconds: float = 0.0
    restored_bytes: int = 0
    stored_bytes: int = 0
    databases: dict[str, dict] = field(default_factory=dict)
    ignored_errors: list[str] = field(default_factory=list)
    target: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# -- choosing and holding a backup ----------------------------------------------------------------
def choose_backup(store: BackupStore, cluster: str, backup_id: str | None) -> cat.BackupRecord:
    records = cat.list_backups(store, cluster, with_manifests=False)
    if backup_id is None:
        good = [r for r in records if r.status != "incomplete"]
        if not good:
            raise PgOpsError(f"cluster {cluster}: no complete backup in {store.describe()} to drill")
        return good[-1]
    found = next((r for r in records if r.id == backup_id), None)
    if found is None:
        raise PgOpsError(f"backup {backup_id} of cluster {cluster} does not exist in {store.describe()}")
    if found.status == "incomplete":
        raise PgOpsError(f"backup {backup_id} of cluster {cluster} is incomplete (no manifest): nothing to drill")
    return found


# -- download -----------------------------------------------------------------------------------------
def download(store: BackupStore, obj: cat.StoredObject, dest: Path) -> None:
    """Stream one object to `dest`, decompressed, checking what the manifest recorded. Reading
    and hashing run in one thread, decompressing and writing in this one (both release the
    GIL), so the download costs about the slower of the two, not their sum."""
    import queue

    import zstandard

    digest = hashlib.sha256()
    chunks: queue.Queue = queue.Queue(maxsize=8)
    done = object()
    box: dict = {"stored": 0}

    def read() -> None:
        try:
            for chunk in store.iter_chunks(obj.key, 4 << 20):
                digest.update(chunk)
                box["stored"] += len(chunk)
                chunks.put(chunk)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            chunks.put(done)

    reader = threading.Thread(target=read, name=f"download-{_name(obj.key)}", daemon=True)
    reader.start()
    try:
        with open(dest, "wb") as out:
            decompressor = zstandard.ZstdDecompressor().decompressobj()
            while (chunk := chunks.get()) is not done:
                out.write(decompressor.decompress(chunk))
            if "error" in box:
                raise box["error"]
            if not decompressor.eof:
                raise BackupFault(f"{_name(obj.key)}: truncated (the zstd frame does not end; "
                                  f"{box['stored']} of {obj.stored_bytes} bytes)")
    except zstandard.ZstdError as exc:
        raise BackupFault(f"{_name(obj.key)}: corrupt (zstd: {exc})") from exc
    except StoreError as exc:
        if "does not exist" in str(exc):
            raise BackupFault(f"{_name(obj.key)}: missing from the store") from None
        raise
    finally:
        while reader.is_alive():  # unblock the reader if we stopped early
            try:
                chunks.get_nowait()
            except queue.Empty:
                reader.join(0.05)
    stored = box["stored"]
    if stored != obj.stored_bytes:
        raise BackupFault(f"{_name(obj.key)}: {stored} bytes stored, the manifest says {obj.stored_bytes}")
    if digest.hexdigest() != obj.sha256:
        raise BackupFault(f"{_name(obj.key)}: sha256 {digest.hexdigest()[:12]}… does not match the manifest's "
                          f"{obj.sha256[:12]}…")
    raw = dest.stat().st_size
    if raw != obj.raw_bytes:
        raise BackupFault(f"{_name(obj.key)}: {raw} bytes after decompression, the manifest says {obj.raw_bytes}")


def _name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


# -- verification ---------------------------------------------------------------------------------
def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            problems.append(f"{table}: missing after restore ({expected[table]} rows expected)")
        elif table not in expected:
            problems.append(f"{table}: restored but not in the manifest")
        elif expected[table] != actual[table]:
            problems.append(f"{table}: {actual[table]} rows restored, the manifest says {expected[table]}")
    return problems


def verify_database(scratch: ScratchTarget, entry: cat.DatabaseDump) -> dict:
    """Row counts and amcheck, in parallel (two sessions)."""
    ep, password = scratch.endpoint, scratch.password
    results: dict = {}

    def run(name, fn):
        try:
            results[name] = with_connection(ep, SUPERUSER, password, fn, dbname=entry.name, timeout=VERIFY_TIMEOUT_S,
                                            name=f"scratch/{entry.name}")
        except PgOpsError as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=("counts", dump.count_rows), daemon=True),
               threading.Thread(target=run, args=("amcheck", dump.amcheck_indexes), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for value in results.values():
        if isinstance(value, Exception):
            raise BackupFault(f"{entry.name}: verification query failed: {value}")
    indexes, index_problems = results["amcheck"]
    out = {"indexes_checked": indexes, "index_problems": index_problems}
    if indexes is None:
        out["amcheck"] = dump.AMCHECK_UNAVAILABLE
    if entry.row_counts is not None:
        out["count_problems"] = compare_counts(entry.row_counts, results["counts"])
        out["tables_counted"] = len(results["counts"])
    else:
        out["count_problems"] = []
        out["tables_counted"] = None  # fingerprint: none
    return out


# -- the drill ------------------------------------------------------------------------------------
def drill(ctx: ClusterContext, backup_id: str | None = None, store: BackupStore | None = None,
          holder: str | None = None) -> DrillReport:
    """Run a drill; returns the report when it passes, raises DrillFailed (after recording
    drill.json and alerting) when the backup is at fault, PgOpsError when the drill could not run."""
    store = store or ctx.store()
    record = choose_backup(store, ctx.name, backup_id)
    holder = holder or f"drill-{secrets.token_hex(4)}"
    report = DrillReport(cluster=ctx.name, backup_id=record.id, started_at=datetime.now(UTC).isoformat())
    started = time.monotonic()
    ctx.log.info("restore drill of backup %s/%s from %s", ctx.name, record.id, store.describe())
    try:
        with cat.hold_backup(store, ctx.name, record.id, holder, "drill", HOLD_SECONDS):
            _run(ctx, store, record, report)
        report.result, report.reason = "passed", ""
    except BackupFault as fault:
        report.result, report.reason = "failed", str(fault)
    except PgOpsError as exc:
        alert_drill(ctx, record.id, f"the drill could not run: {exc}")
        raise PgOpsError(f"restore drill of backup {record.id} of cluster {ctx.name} could not run: {exc}") from exc
    report.total_seconds = round(time.monotonic() - started, 3)
    report.finished_at = datetime.now(UTC).isoformat()
    store.put_bytes(cat.object_key(ctx.name, record.id, cat.DRILL), json.dumps(report.as_dict(), indent=1).encode())
    if report.result != "passed":
        ctx.log.error("restore drill of %s/%s FAILED: %s", ctx.name, record.id, report.reason)
        alert_drill(ctx, record.id, report.reason)
        raise DrillFailed(f"restore drill of backup {record.id} of cluster {ctx.name} failed: {report.reason}")
    ctx.log.info("restore drill of %s/%s passed: %.1f MB restored in %.1f s (download %.1f s, restore %.1f s, "
                 "verify %.1f s)", ctx.name, record.id, report.restored_bytes / 1e6, report.total_seconds,
                 report.download_seconds, report.restore_seconds, report.verify_seconds)
    record_status(ctx, "drill_success", report.restored_bytes)
    return report


RAM_SCRATCH = Path("/dev/shm")


def drill_workdir(raw_bytes: int) -> Path:
    """Where the decompressed dumps go. They are scratch, read once by pg_restore: in RAM
    (/dev/shm) when they take under a quarter of its free space, so the download does not
    compete for the disk the restore target writes to; otherwise under PG_OPS_HOME."""
    try:
        free = shutil.disk_usage(RAM_SCRATCH).free
    except OSError:
        free = 0
    if raw_bytes * 4 < free and os.access(RAM_SCRATCH, os.W_OK):
        return RAM_SCRATCH / "pg-ops-drills"
    return settings.home() / "drills"


def _run(ctx: ClusterContext, store: BackupStore, record: cat.BackupRecord, report: DrillReport,
         target: Callable[[], AbstractContextManager[ScratchTarget]] | None = None,
         then: Callable[[ScratchTarget, cat.Manifest], None] | None = None) -> None:
    """Download, restore into a scratch target (`target`, default the platform's) and verify;
    `then` goes on with the restored server before it is removed (the upgrade rehearsal)."""
    target = target or (lambda: ctx.platform.scratch_target("drill"))
    try:
        manifest = cat.read_manifest(store, ctx.name, record.id)
    except StoreError as exc:
        raise BackupFault(str(exc)) from exc
    if manifest.id != record.id or manifest.cluster != ctx.name:
        raise BackupFault(f"manifest.json describes {manifest.cluster}/{manifest.id}, not {ctx.name}/{record.id}")
    workdir = drill_workdir(manifest.raw_bytes) / f"{ctx.name}-{record.id}-{secrets.token_hex(3)}"
    workdir.mkdir(parents=True, mode=0o700)
    try:
        # The scratch target starts while the objects download.
        with _in_background(target) as scratch_future:
            t0 = time.monotonic()
            files = {}
            for obj in [manifest.globals, *manifest.databases]:
                files[obj.key] = workdir / _name(obj.key).removesuffix(".zst")
                download(store, obj, files[obj.key])
            report.download_seconds = round(time.monotonic() - t0, 3)
            report.stored_bytes = manifest.stored_bytes
            report.restored_bytes = manifest.raw_bytes
            scratch = scratch_future()
            report.target = scratch.name
            _restore_and_verify(scratch, manifest, files, report)
            if then is not None:
                then(scratch, manifest)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def superuser_reset(scratch: ScratchTarget) -> str:
    """The statement that gives the scratch server's superuser its password back, hashed
    through a connection to that server (admin.password_clause): the script psql runs never
    holds the password itself."""
    return with_connection(scratch.endpoint, SUPERUSER, scratch.password,
                           lambda conn: admin.set_password_statement(conn, SUPERUSER, scratch.password),
                           timeout=30, name=scratch.name)


def _restore_and_verify(scratch: ScratchTarget, manifest: cat.Manifest, files: dict[str, Path],
                        report: DrillReport) -> None:
    ep, password = scratch.endpoint, scratch.password
    t0 = time.monotonic()
    # The globals carry the source's password hash for postgres: set the scratch one back
    # in the same psql session, so pg_restore can still connect.
    script = files[manifest.globals.key].read_bytes() + f"\n{superuser_reset(scratch)}\n".encode()
    globals_report = dump.psql_script(ep, SUPERUSER, password, "postgres", script,
                                      harmless=dump.HARMLESS_GLOBALS_ERRORS)
    report.ignored_errors += globals_report.ignored
    if not globals_report.ok:
        raise BackupFault(f"globals: psql {_tool_problem(globals_report)}")
    restores = {}
    for entry in manifest.databases:
        try:
            name = dump.dump_database_name(files[entry.key])
        except dump.DumpFailed as exc:
            raise BackupFault(str(exc)) from exc
        if name != entry.name:
            raise BackupFault(f"{_name(entry.key)} holds database {name}, the manifest says {entry.name}")
        restores[entry.name] = dump.pg_restore(ep, SUPERUSER, password, files[entry.key], jobs=RESTORE_JOBS,
                                                 database=entry.name)
        if not restores[entry.name].ok:
            raise BackupFault(f"{entry.name}: pg_restore {_tool_problem(restores[entry.name])}")
    report.restore_seconds = round(time.monotonic() - t0, 3)
    t1 = time.monotonic()
    for entry in manifest.databases:
        checks = verify_database(scratch, entry)
        report.databases[entry.name] = {"restore_seconds": round(restores[entry.name].seconds, 3), **checks}
        problems = checks["count_problems"] + checks["index_problems"]
        if problems:
            raise BackupFault(f"{entry.name}: {problems[0]}" + (f" (+{len(problems) - 1} more)"
                                                                 if len(problems) > 1 else ""))
    report.verify_seconds = round(time.monotonic() - t1, 3)


def _tool_problem(tool: dump.ToolReport) -> str:
    first = tool.errors[0] if tool.errors else "no error printed"
    return f"exit status {tool.returncode}, {len(tool.errors)} error(s); first: {first}"


@contextlib.contextmanager
def _in_background(factory, *args) -> Iterator:
    """Enter the context manager factory(*args) in a thread; yields a function that waits
    for it and returns its value. The thread exits it (teardown) when the caller's block ends,
    however it ends, and the caller waits for that."""
    box: dict = {}
    ready = threading.Event()
    release = threading.Event()

    def run():
        try:
            with factory(*args) as value:
                box["value"] = value
                ready.set()
                release.wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.setdefault("error", exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="scratch-target", daemon=True)
    thread.start()

    def result():
        ready.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    try:
        yield result
    finally:
        release.set()
        thread.join()
        if "error" in box and "value" in box:
            raise box["error"]


def alert_drill(ctx: ClusterContext, backup_id: str, reason: str) -> None:
    from pg_ops.operations.cluster_alerts import send_alert

    send_alert(ctx, "critical", "restore_drill_failed",
               f"restore drill of backup {backup_id} of cluster {ctx.name} failed", backup_id=backup_id, reason=reason)


def drill_status(ctx: ClusterContext, store: BackupStore | None = None) -> dict:
    """What the drill checks read: the newest drilled backup's drill.json, and how long ago
    a drill last passed (days)."""
    store = store or ctx.store()
    drilled = [r for r in cat.list_backups(store, ctx.name, with_manifests=False) if r.drill]
    latest = drilled[-1].drill if drilled else None
    passed = [d for d in (r.drill for r in drilled) if d and d.get("result") == "passed" and d.get("finished_at")]
    age = None
    if passed:
        last = max(datetime.fromisoformat(d["finished_at"]) for d in passed)
        age = (datetime.now(UTC) - last).total_seconds() / 86400
    return {"latest": latest, "last_passed_age_days": age}


def read_drill(ctx: ClusterContext, backup_id: str, store: BackupStore | None = None) -> dict:
    store = store or ctx.store()
    try:
        return json.loads(store.get_bytes(cat.object_key(ctx.name, backup_id, cat.DRILL)))
    except StoreError:
        raise PgOpsError(f"backup {backup_id} of cluster {ctx.name} has no drill result") from None


def drill_report_text(report: dict) -> str:
    lines = [f"restore drill of {report['cluster']}/{report['backup_id']}: {report['result'].upper()}"
             + (f" ({report['reason']})" if report.get("reason") else ""),
             f"  download {report['download_seconds']:.1f} s, restore {report['restore_seconds']:.1f} s, "
             f"verify {report['verify_seconds']:.1f} s, total {report['total_seconds']:.1f} s; "
             f"{report['restored_bytes'] / 1e6:.1f} MB restored into {report.get('target') or 'a scratch target'}"]
    for name, db in report.get("databases", {}).items():
        counted = "row counts not recorded" if db.get("tables_counted") is None else \
            f"{db['tables_counted']} tables counted"
        problems = db.get("count_problems", []) + db.get("index_problems", [])
        indexes = db.get("amcheck") or f"{db.get('indexes_checked') or 0} indexes checked"
        lines.append(f"  {name}: {counted}, {indexes}, "
                     + (f"problems: {'; '.join(problems)}" if problems else "no problems"))
    return "\n".join(lines)


def nothing_to_drill(ctx: ClusterContext) -> str | None:
    """Why the weekly drill has nothing to do on this cluster yet (no complete backup to
    restore), or None: its schedule skips with this reason instead of a run that would fail."""
    from pg_ops.operations.retention import freshness

    newest, _ = freshness(ctx)
    return None if newest else "no complete backup to drill yet (the first nightly backup has not run)"
