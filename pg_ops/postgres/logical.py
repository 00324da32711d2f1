"""Logical replication between two clusters, for a blue/green major-version upgrade
(operations/blue_green.py): what the source must offer, the publication and subscription, when
the subscription has caught up, sequences at the cut, a database made read-only, and the
fingerprint both sides are compared by. SQL only; the order of the steps is the operation's.
"""

from __future__ import annotations

import time

import psycopg
from psycopg import sql

# Tables whose UPDATE or DELETE a publication FOR ALL TABLES would make the source refuse
# ("cannot update table … because it does not have a replica identity"): no primary key and the
# default identity, or identity NOTHING. Tables an extension owns are the extension's business.
NO_REPLICA_IDENTITY_SQL = """
select format('%I.%I', n.nspname, c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and c.relpersistence = 'p' and not c.relispartition
  and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
  and (c.relreplident = 'n'
       or (c.relreplident = 'd' and not exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary)))
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                  and d.deptype = 'e')
order by 1
"""

USER_TABLES_SQL = """
select format('%I.%I', n.nspname, c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and c.relpersistence = 'p' and not c.relispartition
  and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                  and d.deptype = 'e')
order by 1
"""


def wal_level(conn: psycopg.Connection) -> str:
    return conn.execute("select current_setting('wal_level')").fetchone()[0]


def tables_without_replica_identity(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(NO_REPLICA_IDENTITY_SQL)]


def create_publication(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("create publication {} for all tables").format(sql.Identifier(name)))


def drop_publication(conn: psycopg.Connection, name: str) -> None:
    # In a database set_read_only made read-only: this session (pg_ops's own) may still write.
    conn.execute("set default_transaction_read_only = off")
    conn.execute(sql.SQL("drop publication if exists {}").format(sql.Identifier(name)))


def create_subscription(conn: psycopg.Connection, name: str, conninfo: str, publication: str) -> None:
    """Copies every table's rows, then streams changes; its slot on the source has its name.
    `conninfo` names a passfile, never a password (it is kept in pg_subscription)."""
    conn.execute(sql.SQL("create subscription {} connection {} publication {}").format(
        sql.Identifier(name), sql.Literal(conninfo), sql.Identifier(publication)))


def drop_subscription(conn: psycopg.Connection, name: str) -> None:
    """Drops its slot on the source too (the source must answer)."""
    conn.execute(sql.SQL("drop subscription if exists {}").format(sql.Identifier(name)))


def drop_slot(conn: psycopg.Connection, name: str, attempts: int = 50) -> None:
    """A subscription's slot on the source whose subscriber is gone or going: its walsender ended,
    then the slot dropped (an active slot cannot be)."""
    conn.execute("select pg_terminate_backend(active_pid) from pg_replication_slots "
                 "where slot_name = %s and active_pid is not null", (name,))
    for _ in range(attempts):
        row = conn.execute("select active from pg_replication_slots where slot_name = %s", (name,)).fetchone()
        if row is None:
            return
        if not row[0]:
            conn.execute("select pg_drop_replication_slot(%s)", (name,))
            return
        time.sleep(0.1)


def subscription_tables(conn: psycopg.Connection, name: str) -> tuple[int, int]:
    """(tables copied and streaming, tables of the subscription)."""
    row = conn.execute(
        "select count(*) filter (where r.srsubstate = 'r'), count(*) from pg_subscription_rel r "
        "join pg_subscription s on s.oid = r.srsubid where s.subname = %s", (name,)).fetchone()
    assert row is not None  # an aggregate returns a row
    return int(row[0]), int(row[1])


def current_lsn(conn: psycopg.Connection) -> str:
    return conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]


def slot_confirmed(conn: psycopg.Connection, slot: str, lsn: str) -> bool:
    """The subscriber has applied and confirmed everything up to `lsn` (on the source)."""
    row = conn.execute("select confirmed_flush_lsn >= %s::pg_lsn from pg_replication_slots where slot_name = %s",
                       (lsn, slot)).fetchone()
    return bool(row and row[0])


def sequence_values(conn: psycopg.Connection) -> list[tuple[str, int, bool]]:
    """(qualified name, value, is_called) of every sequence that was used (logical replication
    does not carry sequences: they are set on the subscriber at the cut)."""
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "select format('%I.%I', s.schemaname, s.sequencename), s.last_value, true from pg_sequences s "
        "where s.last_value is not null and s.schemaname not in ('pg_catalog', 'information_schema') order by 1")]


def set_sequences(conn: psycopg.Connection, values: list[tuple[str, int, bool]]) -> None:
    for name, value, called in values:
        conn.execute("select setval(%s::regclass, %s, %s)", (name, value, called))


def set_read_only(conn: psycopg.Connection, database: str, read_only: bool) -> int:
    """New sessions of `database` read-only (or writable again); with read_only, its open client
    sessions are ended, so no transaction that began before can still commit. Returns those
    ended. Run from another database (the session ending them must not be one of them)."""
    db = sql.Identifier(database)
    if read_only:
        conn.execute(sql.SQL("alter database {} set default_transaction_read_only = on").format(db))
        return conn.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = %s "
                            "and pid <> pg_backend_pid() and backend_type = 'client backend'",
                            (database,)).fetchone()[0]
    conn.execute(sql.SQL("alter database {} reset default_transaction_read_only").format(db))
    return 0


def read_only_databases(conn: psycopg.Connection) -> list[str]:
    """The databases set_read_only made read-only (a blue/green upgrade's source after its cut)."""
    return [r[0] for r in conn.execute(
        "select d.datname from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase "
        "where s.setrole = 0 and 'default_transaction_read_only=on' = any(s.setconfig) order by 1")]


def is_read_only(conn: psycopg.Connection, database: str) -> bool:
    return database in read_only_databases(conn)


def fingerprint(conn: psycopg.Connection) -> dict[str, tuple[int, str | None]]:
    """Per user table: (rows, md5 over every row's text in order): equal on both sides means the
    same rows (the text form of a row does not depend on the major for these types)."""
    out = {}
    for (table,) in conn.execute(USER_TABLES_SQL).fetchall():
        query = sql.SQL("select count(*), md5(string_agg(t::text, ',' order by t::text)) from only {} t").format(
            sql.SQL(table))
        row = conn.execute(query).fetchone()
        assert row is not None  # an aggregate returns a row
        out[table] = (int(row[0]), row[1])
    return out
