"""pg_ops's own activity, recorded in the cluster it operates: `status` in the `pg_ops`
database, one row per key, upserted by the operation that did the thing. postgres_exporter
reads it on every member (it replicates like everything else), so Prometheus can alert when
backups, drills or pg_ops's own health ticks stop: a dead man's switch for pg_ops itself."""

from __future__ import annotations

import psycopg
import psycopg.sql

STATUS_TABLE = "status"
STATUS_TABLE_DDL = """
create table if not exists status (
    key text primary key,
    at timestamptz not null,
    value double precision not null default 0)
"""
STATUS_KEYS = {
    "backup_complete": "last complete backup (value: its stored size in bytes)",
    "drill_success": "last successful restore drill (value: restored bytes)",
    "failover": "last failover or switchover (value: the new epoch)",
    "health_tick": "last tick of the cluster's health sensor, cluster_health_<cluster> (value: members reachable)",
    "base_backup_complete": "last complete base backup for point-in-time recovery (value: its size in bytes)",
    "pitr_drill_success": "last successful point-in-time drill (value: seconds of replay)",
}

# A history of heartbeats (one row per health tick), kept for a bounded age: a point-in-time
# recovery or drill proves its target with it (rows before the target present, none after).
HEARTBEAT_HISTORY_DDL = """
create table if not exists heartbeat_history (
    at timestamptz primary key default clock_timestamp(),
    value double precision not null default 0,
    marker text)
"""
HEARTBEAT_HISTORY_DAYS = 8  # a weekly drill finds a week of rows


def record_heartbeat(conn: psycopg.Connection, value: float, marker: str | None = None) -> str:
    """Append one row and trim what is older than HEARTBEAT_HISTORY_DAYS; returns its time."""
    at = conn.execute("insert into heartbeat_history (value, marker) values (%s, %s) returning at::text",
                      (value, marker)).fetchone()[0]
    conn.execute(f"delete from heartbeat_history where at < now() - interval '{HEARTBEAT_HISTORY_DAYS} days'")
    return at


def heartbeats_until(conn: psycopg.Connection, at: object) -> int:
    """How many heartbeat rows are from `at` or earlier."""
    return conn.execute("select count(*) from heartbeat_history where at <= %s", (at,)).fetchone()[0]


def grant_read(conn: psycopg.Connection, role: str) -> None:
    """The exporter's role reads the table (and nothing else of pg_ops's)."""
    conn.execute(psycopg.sql.SQL("grant select on {} to {}").format(
        psycopg.sql.Identifier(STATUS_TABLE), psycopg.sql.Identifier(role)))


def record(conn: psycopg.Connection, key: str, value: float) -> None:
    if key not in STATUS_KEYS:
        raise ValueError(f"unknown status key {key!r}")
    conn.execute("""insert into status (key, at, value) values (%s, now(), %s)
                    on conflict (key) do update set at = excluded.at, value = excluded.value""", (key, value))
