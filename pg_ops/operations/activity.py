"""Record what pg_ops did in the cluster's `pg_ops.status` table (see postgres/status_table.py).
Best effort by design: a failure to record never fails the operation that did the work; it
is logged, and the missing row shows up as a stale metric (that is the point of the table)."""

from __future__ import annotations

import logging

import psycopg

from pg_ops.errors import PgOpsError, first_line
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres import status_table

log = logging.getLogger("pg_ops")


# Keys whose every record is also appended to pg_ops.heartbeat_history (the PITR proof rows).
HISTORY_KEYS = ("health_tick",)


def record_status(ctx: ClusterContext, key: str, value: float) -> bool:
    def write(conn: psycopg.Connection) -> None:
        status_table.record(conn, key, value)
        if key in HISTORY_KEYS:
            _append_history(ctx, conn, value)
    try:
        ctx.on_primary_endpoint(write, timeout=2, options="-c synchronous_commit=local -c statement_timeout=3000")
        return True
    except (psycopg.Error, PgOpsError) as exc:
        ctx.log.warning("could not record %s in pg_ops.status on %s: %s", key, ctx.name, first_line(exc))
        return False


def _append_history(ctx: ClusterContext, conn: psycopg.Connection, value: float) -> None:
    try:
        status_table.record_heartbeat(conn, value)
    except psycopg.errors.UndefinedTable:
        # A cluster deployed before the history existed: create it (deploy does too).
        conn.execute(status_table.HEARTBEAT_HISTORY_DDL)
        status_table.record_heartbeat(conn, value)


def record_marker(ctx: ClusterContext, marker: str) -> str:
    """One heartbeat row with a marker, committed on the primary; returns its time (a drill's
    proof that rows before its target are there and rows after it are not)."""
    def write(conn: psycopg.Connection) -> str:
        conn.execute(status_table.HEARTBEAT_HISTORY_DDL)
        return status_table.record_heartbeat(conn, -1, marker)
    return ctx.on_primary_endpoint(write, timeout=3, options="-c synchronous_commit=local -c statement_timeout=10000")
