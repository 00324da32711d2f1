"""A marker row written on the primary and read back from replicas: proof that what the
primary commits reaches every replica. It lives in pg_ops's own database."""

from __future__ import annotations

import uuid

import psycopg

KEEP_MARKERS = 100


def write_marker(conn: psycopg.Connection, writer: str) -> str:
    """Insert a new marker (in the `pg_ops` database); returns its token."""
    conn.execute("""create table if not exists consistency_marker (
                        token text primary key,
                        writer text not null,
                        written_at timestamptz not null default now())""")
    token = uuid.uuid4().hex
    conn.execute("insert into consistency_marker (token, writer) values (%s, %s)", (token, writer))
    # Bounded: keep the newest markers only.
    conn.execute("""delete from consistency_marker where token not in (
                        select token from consistency_marker order by written_at desc limit %s)""",
                 (KEEP_MARKERS,))
    return token


def marker_visible(conn: psycopg.Connection, token: str) -> bool:
    """True once the marker is readable here; False if not yet (or the table is not replayed yet)."""
    exists = conn.execute("select to_regclass('consistency_marker') is not null").fetchone()[0]
    if not exists:
        return False
    return conn.execute("select 1 from consistency_marker where token = %s", (token,)).fetchone() is not None
