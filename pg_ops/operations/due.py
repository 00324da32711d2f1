"""When a scheduled duty (a nightly backup, a restore drill, a base backup, a point-in-time drill)
first falls due on a cluster, so that the checks that judge it say "not due yet" on a cluster too
young to owe it, instead of failing.

A cluster's birth is its PostgreSQL system identifier's creation time (initdb puts the seconds
since the epoch in its upper 32 bits), read from the desired-state record: a cluster torn down
and created again is a new cluster, with a new birth. A duty is due at its first scheduled time
after the birth (a drill: its first scheduled time after the first backup it could drill), plus
GRACE for the run itself; before that, there is nothing to judge yet. After it, a missing backup
or drill fails the check exactly as before.

The crons are the spec's five-field UTC crons, read with croniter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pg_ops.errors import PgOpsError

GRACE = timedelta(hours=2)  # what a nightly backup's freshness limit allows beyond a day (26 h)
DUTIES = ("backup", "restore_drill", "base_backup", "pitr_drill")


def next_tick(cron: str, after: datetime) -> datetime:
    """The first time strictly after `after` (UTC) that `cron` names."""
    from croniter import croniter

    try:
        return croniter(cron, after.astimezone(UTC)).get_next(datetime)
    except (ValueError, KeyError) as exc:
        raise PgOpsError(f"cron {cron!r}: {exc}") from None


def ticks(cron: str, start: datetime, end: datetime) -> list[datetime]:
    """Every time in (start, end] that `cron` names."""
    out: list[datetime] = []
    at = start
    while True:
        at = next_tick(cron, at)
        if at > end:
            return out
        out.append(at)


def born_at(system_identifier: str | int | None) -> datetime | None:
    """When the cluster with this system identifier was initialised (None: not known)."""
    try:
        value = int(system_identifier or 0)
    except ValueError:
        return None
    return datetime.fromtimestamp(value >> 32, UTC) if value else None


def first_due(spec, born: datetime, duty: str) -> datetime:
    """When `duty` first falls due on a cluster of `spec` born at `born` (its first scheduled
    run, plus GRACE)."""
    backup = next_tick(spec.backups.schedule, born)
    if duty == "backup":
        return backup + GRACE
    if duty == "restore_drill":
        drill = next_tick(spec.drills.schedule, backup)
        return min(drill, backup + GRACE) + GRACE if spec.drills.after_backup else drill + GRACE
    wal = spec.backups.wal
    base = next_tick(wal.base_backup_schedule, born)
    if duty == "base_backup":
        return base + GRACE
    if duty == "pitr_drill":
        return next_tick(wal.drill_schedule, base) + GRACE
    raise ValueError(f"unknown duty {duty!r} (one of {', '.join(DUTIES)})")


WHAT = {"backup": "nightly backup", "restore_drill": "restore drill", "base_backup": "base backup",
        "pitr_drill": "point-in-time drill"}


def not_due_yet(ctx, duty: str, now: datetime | None = None) -> str | None:
    """Why a missing `duty` is not a failure yet on this cluster (None: it is due, or the
    cluster's birth cannot be read, which counts as due: silence would read as 'fine')."""
    try:
        born = born_at(ctx.state().system_identifier)
    except PgOpsError:
        return None
    if born is None:
        return None
    due = first_due(ctx.spec, born, duty)
    now = now or datetime.now(UTC)
    if now >= due:
        return None
    return (f"not due yet: cluster {ctx.name} was created {born:%Y-%m-%d %H:%M} UTC; its first {WHAT[duty]} "
            f"is due by {due:%Y-%m-%d %H:%M} UTC (the schedule's first run after that, plus "
            f"{GRACE.total_seconds() / 3600:g} h), and this check fails from then on without one")
