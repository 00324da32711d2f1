"""What PostgreSQL is told and asked about continuous WAL archiving and archive recovery.

Archiving: `archive_mode = on` on every member, so whichever member is primary archives (a
promoted standby archives its new timeline and the history file; `always` would make every
standby upload every segment too: three writers into one archive, three times the traffic, for
a backlog case pg_ops detects as a gap instead — docs/architecture/adr-003-wal-archiving.md).
`archive_timeout` makes an idle cluster still ship a segment. The archive command itself is
the platform's (barman-cloud-wal-archive for S3, a small copy script for file stores).

Recovery: a base backup restored into an empty data dir, `recovery.signal`, and in
postgresql.auto.conf the restore command, the target time, `recovery_target_action =
promote` and `recovery_target_timeline = latest` (follow failovers through history files).
Once promoted those settings are reset, before any replica clones the new primary (a
replica would inherit them through pg_basebackup and stop at the old target).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

RECOVERY_SIGNAL = "recovery.signal"
# Set for the recovery, reset after promotion; the source's replica settings go too.
RECOVERY_KEYS = ("restore_command", "recovery_target_time", "recovery_target_action", "recovery_target_timeline",
                 "recovery_target_inclusive")
INHERITED_KEYS = ("primary_conninfo", "primary_slot_name", "synchronous_standby_names")


def archive_settings(archive_command: str, archive_timeout_seconds: int) -> dict[str, object]:
    return {"archive_mode": "on", "archive_timeout": f"{archive_timeout_seconds}s",
            "archive_command": archive_command}


ARCHIVER_SQL = """
select archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
       last_failed_time, stats_reset,
       (select count(*) from pg_ls_archive_statusdir() where name like '%.ready')::int as ready_segments,
       pg_walfile_name(pg_current_wal_lsn()) as current_wal,
       current_setting('archive_mode') as archive_mode,
       current_setting('archive_timeout') as archive_timeout,
       now() as now
from pg_stat_archiver
"""


@dataclass(frozen=True)
class ArchiverStatus:
    """pg_stat_archiver of the primary, and how much WAL waits for the archiver."""

    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    ready_segments: int
    current_wal: str
    archive_mode: str
    now: datetime

    @property
    def failing(self) -> bool:
        """The last attempt failed (a later success clears it)."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time

    @property
    def last_archived_age_seconds(self) -> float | None:
        if self.last_archived_time is None:
            return None
        return (self.now - self.last_archived_time).total_seconds()


def archiver_status(conn: psycopg.Connection) -> ArchiverStatus:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(ARCHIVER_SQL).fetchone()
    return ArchiverStatus(**{k: row[k] for k in ArchiverStatus.__dataclass_fields__})


def wal_file(conn: psycopg.Connection, name: str) -> bytes | None:
    """A file of this server's pg_wal (a segment or a history file), None when it has none by
    that name (recycled, or never received)."""
    present = conn.execute("select 1 from pg_ls_waldir() where name = %s", (name,)).fetchone()
    if not present:
        return None
    try:
        return bytes(conn.execute("select pg_read_binary_file('pg_wal/' || %s)", (name,)).fetchone()[0])
    except psycopg.errors.UndefinedFile:  # removed between the two statements
        return None


def segment_system_identifier(data: bytes) -> int | None:
    """The system identifier in a segment's long page header (xlp_sysid, bytes 24..32)."""
    return int.from_bytes(data[24:32], "little") if len(data) >= 32 else None


def switch_wal(conn: psycopg.Connection) -> str:
    """Close the current segment so it is archived now; returns its name. A transaction id is
    taken first: its commit is WAL to switch away from (pg_switch_wal does nothing on an idle
    segment), and a commit after any earlier target time that recovery can stop at."""
    conn.execute("select pg_current_xact_id()")
    return conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()[0]


def recovery_settings(restore_command: str, target_time: datetime) -> dict[str, str]:
    return {"restore_command": restore_command,
            "recovery_target_time": target_time.isoformat(sep=" "),
            "recovery_target_action": "promote",
            "recovery_target_timeline": "latest",
            "recovery_target_inclusive": "on"}


def auto_conf_for_recovery(current: str, settings: dict[str, str]) -> str:
    """postgresql.auto.conf of a restored base backup, made ready for recovery: the source's
    replica and sync settings removed, the recovery settings added."""
    drop = set(RECOVERY_KEYS) | set(INHERITED_KEYS)
    kept = [line for line in current.splitlines() if line.split("=", 1)[0].strip() not in drop]
    added = [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in settings.items()]
    return "\n".join(kept + ["# pg_ops: point-in-time recovery (reset after promotion)"] + added) + "\n"


def recovery_server_conf(restore_command: str, target_time: datetime, parameters: dict[str, object]) -> str:
    """The whole postgresql.conf of a throw-away server recovering to `target_time` (a recovery
    pod): `parameters`, no archiving, the source's replica and sync settings emptied (its
    postgresql.auto.conf is not read: the pod deletes it), the recovery settings."""
    from pg_ops.postgres.config import conf_value

    settings: dict[str, object] = {**parameters, "archive_mode": "off", **dict.fromkeys(INHERITED_KEYS, ""),
                                   **recovery_settings(restore_command, target_time)}
    return "# pg_ops: point-in-time recovery pod\n" + "".join(f"{k} = {conf_value(v)}\n" for k, v in settings.items())


def reset_recovery_settings(conn: psycopg.Connection) -> None:
    """After promotion: nothing of the recovery or the source's replication stays configured."""
    for key in (*RECOVERY_KEYS, *INHERITED_KEYS):
        conn.execute(sql.SQL("alter system reset {}").format(sql.Identifier(key)))
    conn.execute("select pg_reload_conf()")


def recovery_state(conn: psycopg.Connection) -> tuple[bool, str | None]:
    """(in recovery, last replayed commit time as text)."""
    row = conn.execute("select pg_is_in_recovery(), pg_last_xact_replay_timestamp()::text").fetchone()
    return bool(row[0]), row[1]
