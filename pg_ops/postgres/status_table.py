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
    "health_tick": "last cluster_health_sensor tick (value: members reachable)",
}


def grant_read(conn: psycopg.Connection, role: str) -> None:
    """The exporter's role reads the table (and nothing else of pg_ops's)."""
    conn.execute(psycopg.sql.SQL("grant select on {} to {}").format(
        psycopg.sql.Identifier(STATUS_TABLE), psycopg.sql.Identifier(role)))


def record(conn: psycopg.Connection, key: str, value: float) -> None:
    if key not in STATUS_KEYS:
        raise ValueError(f"unknown status key {key!r}")
    conn.execute("""insert into status (key, at, value) values (%s, now(), %s)
                    on conflict (key) do update set at = excluded.at, value = excluded.value""", (key, value))
