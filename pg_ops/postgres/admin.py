"""Changes pg_ops makes inside PostgreSQL: roles, databases, slots, sync standbys, promotion,
repointing. Every function takes an open autocommit connection and is idempotent."""

from __future__ import annotations

import psycopg
from psycopg import sql

from pg_ops.postgres import isolation
from pg_ops.postgres.status_table import HEARTBEAT_HISTORY_DDL, STATUS_TABLE_DDL


def slot_name(member: str) -> str:
    """Replication slot of a member (slot names allow [a-z0-9_] only)."""
    return member.replace("-", "_")


# The only kind of verifier pg_hba.conf accepts (config.pg_hba_conf: scram-sha-256 everywhere).
PASSWORD_ALGORITHM = "scram-sha-256"


def password_clause(conn: psycopg.Connection, role: str, password: str) -> sql.Composed:
    """`PASSWORD '<SCRAM-SHA-256$…>'` for CREATE / ALTER ROLE: the password hashed here, by
    libpq (PQencryptPasswordConn, with the server's scram_iterations), so the server only ever
    receives the verifier. Every role password pg_ops sets goes through this: a plaintext
    literal would be written to the server log by `log_statement: ddl` (or `all`, or
    log_min_error_statement when the statement fails), and could be seen in pg_stat_activity."""
    return sql.SQL("password {}").format(sql.Literal(_verifier(conn.pgconn, role, password)))


def _verifier(pgconn, role: str, password: str) -> str:
    return pgconn.encrypt_password(password.encode(), role.encode(), PASSWORD_ALGORITHM.encode()).decode()


def ensure_role(conn: psycopg.Connection, role: str, password: str, *, replication: bool = False) -> None:
    exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
    verb = "alter" if exists else "create"
    attrs = sql.SQL("login replication") if replication else sql.SQL("login")
    conn.execute(sql.SQL("{} role {} with {} {}").format(
        sql.SQL(verb), sql.Identifier(role), attrs, password_clause(conn, role, password)))


def offline_password_statement(role: str, password: str) -> str:
    """`ALTER ROLE … PASSWORD '<verifier>';` for a server no client can log in to yet (single-user
    mode): hashed by libpq as password_clause does, on a connection object that never connects
    (PQencryptPasswordConn needs one, and with the algorithm given it asks no server; libpq's
    default scram_iterations). Neither the role nor the verifier can hold a quote to escape (role
    names are DNS-like, verifiers base64), which is checked rather than assumed."""
    from psycopg import pq

    unconnected = pq.PGconn.connect_start(b"host=/nonexistent-pg-ops-socket-dir connect_timeout=1")
    try:
        verifier = _verifier(unconnected, role, password)
    finally:
        unconnected.finish()
    if any(c in role + verifier for c in "'\"\\\n"):
        raise ValueError(f"role {role!r}: cannot be written into a single-user statement")
    return f'alter role "{role}" with password \'{verifier}\';'


def set_password_statement(conn: psycopg.Connection, role: str, password: str) -> str:
    """`ALTER ROLE … PASSWORD '<verifier>';` as text, for a script another client runs (psql):
    hashed like ensure_role's, quoted for the server `conn` is connected to."""
    statement = sql.SQL("alter role {} with {};").format(sql.Identifier(role), password_clause(conn, role, password))
    return statement.as_string(conn)


def grant_role(conn: psycopg.Connection, granted: str, member: str) -> None:
    """Make `member` a member of `granted` (e.g. the predefined pg_monitor); idempotent."""
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(granted), sql.Identifier(member)))


def ensure_database(conn: psycopg.Connection, name: str, owner: str) -> None:
    if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
        conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(name), sql.Identifier(owner)))
    else:
        conn.execute(sql.SQL("alter database {} owner to {}").format(sql.Identifier(name), sql.Identifier(owner)))


def ensure_pg_ops_schema(conn: psycopg.Connection) -> None:
    """pg_ops's own objects, in its own database (never an application database)."""
    conn.execute(STATUS_TABLE_DDL)
    conn.execute(HEARTBEAT_HISTORY_DDL)
    conn.execute("""
        create table if not exists heartbeat (
            id int primary key default 1 check (id = 1),
            epoch bigint not null,
            written_at timestamptz not null default now(),
            writer text not null)
    """)
    conn.execute(LEASE_DDL)
    isolation.ensure_isolation_verdict(conn)  # member.sh's fencing rule, which reads the lease


def ensure_slots(conn: psycopg.Connection, members: list[str]) -> list[str]:
    """Create a physical slot per replica; drop inactive pg_ops slots of non-members.
    Returns the slots created."""
    wanted = {slot_name(m) for m in members}
    existing = {r[0]: r[1] for r in conn.execute(
        "select slot_name, active from pg_replication_slots where slot_type = 'physical'")}
    created = []
    for slot in sorted(wanted - set(existing)):
        conn.execute("select pg_create_physical_replication_slot(%s, true)", (slot,))
        created.append(slot)
    for slot, active in existing.items():
        if slot not in wanted and not active:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
    return created


def synchronous_standby_names(mode: str, standbys: list[str]) -> str:
    """ANY 1 over the replicas: a commit waits for one of them. Empty in async mode."""
    if mode == "async" or not standbys:
        return ""
    return "ANY 1 (" + ", ".join(f'"{s}"' for s in sorted(standbys)) + ")"


def set_synchronous_standbys(conn: psycopg.Connection, value: str) -> bool:
    current = conn.execute("select current_setting('synchronous_standby_names')").fetchone()[0]
    if current == value:
        return False
    conn.execute(sql.SQL("alter system set synchronous_standby_names = {}").format(sql.Literal(value)))
    conn.execute("select pg_reload_conf()")
    return True


def promote(conn: psycopg.Connection, wait_seconds: int = 30) -> bool:
    return bool(conn.execute("select pg_promote(true, %s)", (wait_seconds,)).fetchone()[0])


def repoint(conn: psycopg.Connection, conninfo: str, slot: str) -> None:
    """Follow another primary without a restart (recovery_target_timeline=latest)."""
    conn.execute(sql.SQL("alter system set primary_conninfo = {}").format(sql.Literal(conninfo)))
    conn.execute(sql.SQL("alter system set primary_slot_name = {}").format(sql.Literal(slot)))
    conn.execute("select pg_reload_conf()")


def terminate_client_backends(conn: psycopg.Connection) -> int:
    row = conn.execute("""select count(pg_terminate_backend(pid)) from pg_stat_activity
                          where backend_type = 'client backend' and pid <> pg_backend_pid()""").fetchone()
    return int(row[0])


# The isolation lease: renewed by pg_ops whenever it reaches the designated primary, read by
# that primary's own member script through its local port, by asking isolation_verdict()
# (postgres/isolation.py). One row; `holder` is the member it was renewed on.
LEASE_DDL = """
create table if not exists lease (
    id int primary key default 1 check (id = 1),
    holder text not null,
    epoch bigint not null,
    renewed_at timestamptz not null)
"""


def renew_lease(conn: psycopg.Connection, holder: str, epoch: int) -> None:
    """The connection commits locally (synchronous_commit=local): the lease says that pg_ops
    reached this member, and must not wait for a standby in sync-strict mode. The same round trip
    says whether the member script's isolation verdict is installed: a cluster deployed by an
    older pg_ops gets it at the first renewal, without waiting for its next deploy (the script
    counts a verdict it cannot ask as no renewal)."""
    installed = conn.execute("""insert into lease (id, holder, epoch, renewed_at) values (1, %s, %s, now())
                    on conflict (id) do update set holder = excluded.holder, epoch = excluded.epoch,
                    renewed_at = excluded.renewed_at
                    returning to_regprocedure(%s) is not null""",
                             (holder, epoch, isolation.VERDICT_SIGNATURE)).fetchone()
    if not installed[0]:
        isolation.ensure_isolation_verdict(conn)


def write_heartbeat(conn: psycopg.Connection, epoch: int, writer: str) -> str:
    """A write through the primary endpoint; returns the LSN it committed at."""
    conn.execute("""insert into heartbeat (id, epoch, writer) values (1, %s, %s)
                    on conflict (id) do update set epoch = excluded.epoch, writer = excluded.writer,
                    written_at = now()""", (epoch, writer))
    return conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]


def assign_transaction_id(conn: psycopg.Connection) -> None:
    """The smallest write: a transaction id is assigned, so its commit writes a commit record
    (and waits for a synchronous standby like any write); on a standby it fails ("cannot assign
    TransactionIds during recovery")."""
    conn.execute("select txid_current()")


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None



def member_name(conn: psycopg.Connection) -> str:
    """Which member a connection reached: the member script sets cluster_name to it on both
    platforms (hosts and ports differ behind Services and proxies)."""
    return conn.execute("select current_setting('cluster_name')").fetchone()[0]


def system_identifier(conn: psycopg.Connection) -> str:
    return conn.execute("select system_identifier::text from pg_control_system()").fetchone()[0]


def primary_conninfo(conn: psycopg.Connection) -> str:
    return conn.execute("select current_setting('primary_conninfo')").fetchone()[0]


def checkpoint(conn: psycopg.Connection) -> str:
    """CHECKPOINT (a clean shutdown right after it is short); returns the LSN after it."""
    conn.execute("checkpoint")
    return conn.execute("select pg_current_wal_lsn()::text").fetchone()[0]


USER_OBJECTS_SQL = """
select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
  and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
"""


def user_object_count(conn: psycopg.Connection) -> int:
    """Tables, views, sequences… a database holds outside the system schemas."""
    return int(conn.execute(USER_OBJECTS_SQL).fetchone()[0])


def create_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def drop_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
