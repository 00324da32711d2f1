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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

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
    return with_connection(ctx.endpoints()[primary], SUPERUSER, ctx.admin_password(), pgu.server_major,
                           timeout=10, name=primary)


def check_rehearsal(ctx: ClusterContext, to_major: int) -> int:
    """The cluster's major, once `to_major` is an upgrade pg_ops can rehearse here; else one
    line (UpgradeRefused, Unsupported, or the missing binaries)."""
    from_major = cluster_major(ctx)
    pgu.check_pair(ctx.name, from_major, to_major)
    if ctx.spec.platform == "local":
        settings.pg_bin_for(to_major)
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
            drill._run(ctx, store, record, restore, target=lambda: ctx.platform.upgrade_scratch(to_major),
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


# -- reading it back --------------------------------------------------------------------------------
def latest_rehearsal(ctx: ClusterContext, to_major: int, store: BackupStore | None = None) -> dict | None:
    """The newest recorded rehearsal for `to_major` (passed or failed), or None."""
    store = store or ctx.store()
    suffix = f"/{rehearsal_file(to_major)}"
    keys = sorted(o.key for o in store.list(f"{ctx.name}/") if o.key.endswith(suffix))
    for key in reversed(keys):
        try:
            return json.loads(store.get_bytes(key))
        except (PgOpsError, ValueError):
            continue
    return None


def rehearsal_text(report: dict) -> str:
    steps = report.get("steps") or {}
    line = (f"upgrade rehearsal of {report['cluster']} from PostgreSQL {report['from_major']} to "
            f"{report['to_major']} on backup {report['backup_id']}: {report['result'].upper()}")
    if report["result"] != "passed":
        return f"{line}: {report['reason']}"
    return (f"{line} in {report['total_seconds']:.1f} s (restore {report['restore_seconds']:.1f} s, pg_upgrade "
            f"{steps.get('pg_upgrade_seconds', 0):.1f} s, start {steps.get('start_seconds', 0):.1f} s, verify "
            f"{report['verify_seconds']:.1f} s, analyze {report['analyze_seconds']:.1f} s)")
