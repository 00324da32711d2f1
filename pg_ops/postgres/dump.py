"""The tools that move data out of and back into PostgreSQL: pg_dump and pg_dumpall (with
the exported snapshot a dump shares with its row counts), and pg_restore, psql and amcheck
for restore drills and restores.

A backup of one database is taken like this: a REPEATABLE READ, READ ONLY transaction
exports its snapshot (`pg_export_snapshot()`, which also works on a hot standby), counts the
rows of every table in that snapshot, and stays open while `pg_dump --snapshot=<id>` runs:
the counts describe exactly the data in the dump, and a restore drill can compare them.

The password never reaches argv or the environment of anything but the child: pg_dump reads
it from a temporary 0600 passfile that is deleted when the dump ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from pg_ops import settings
from pg_ops.errors import PgOpsError, first_line
from pg_ops.postgres import session
from pg_ops.postgres.conninfo import Endpoint, member_dsn

APPLICATION_NAME = "pg_ops-backup"
CONFLICT_MARKERS = ("conflict with recovery",)

# Tables whose rows pg_dump writes and a restore brings back: permanent, ordinary tables
# outside the system schemas, not owned by an extension. Unlogged tables are left out: on a
# hot standby they cannot be read and pg_dump skips their data.
TABLES_SQL = """
select n.nspname, c.relname
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'r' and c.relpersistence = 'p'
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
  and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass
                  and d.objid = c.oid and d.deptype = 'e')
order by 1, 2
"""

POSITION_SQL = """
select current_setting('server_version') as server_version,
       pg_is_in_recovery() as in_recovery,
       (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text as lsn
"""


class DumpFailed(PgOpsError):
    """pg_dump / pg_dumpall did not produce a complete dump."""


class RecoveryConflict(DumpFailed):
    """A hot standby cancelled the dump to replay WAL; the primary can take it instead."""


def _binary(name: str) -> str:
    return str(settings.pg_bin() / name)


def tool_version(name: str = "pg_dump") -> str:
    out = subprocess.run([_binary(name), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().rsplit(" ", 1)[-1]


@contextlib.contextmanager
def temporary_passfile(user: str, password: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="pg-ops-pass-"))  # 0700
    path = folder / "pgpass"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"*:*:*:{user}:{password}\n")
    try:
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Snapshot:
    id: str
    server_version: str
    in_recovery: bool
    lsn: str
    conn: psycopg.Connection

    def count_rows(self) -> dict[str, int]:
        """Rows per table ("schema.table") in the exported snapshot."""
        return count_rows(self.conn)

    def conflict_error(self) -> str | None:
        """After a failed dump on a standby: did recovery cancel our snapshot too? Then the
        failure was a recovery conflict even when pg_dump only saw a closed connection."""
        try:
            self.conn.execute("select 1")
        except psycopg.Error as exc:
            text = str(exc)
            if any(m in text for m in CONFLICT_MARKERS) or self.conn.closed:
                return first_line(text) or "connection terminated"
        return None


@contextlib.contextmanager
def exported_snapshot(endpoint: Endpoint, user: str, password: str, dbname: str,
                      connect_timeout: int = 10) -> Iterator[Snapshot]:
    try:
        conn = session.connect(endpoint, user, password, dbname, timeout=connect_timeout, autocommit=False,
                               application_name=APPLICATION_NAME)
    except psycopg.Error as exc:
        raise DumpFailed(f"database {dbname} on {endpoint}: cannot connect: {first_line(exc)}") from exc
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        position = conn.execute(POSITION_SQL).fetchone()
        snapshot_id = conn.execute("select pg_export_snapshot()").fetchone()[0]
        yield Snapshot(snapshot_id, position[0], position[1], position[2], conn)
    except psycopg.Error as exc:
        if any(m in str(exc) for m in CONFLICT_MARKERS):
            raise RecoveryConflict(f"database {dbname} on {endpoint}: {first_line(exc)}") from exc
        raise DumpFailed(f"database {dbname} on {endpoint}: {first_line(exc)}") from exc
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {-returncode} ({signal.Signals(-returncode).name})"
        return f"was killed by signal {-returncode}"
    return f"failed with exit status {returncode}"


def _stderr_reason(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    return (errors or lines or [""])[0]


@contextlib.contextmanager
def _dump_process(argv: list[str], what: str, user: str, password: str,
                  stderr_sink: list[str] | None = None) -> Iterator[IO[bytes]]:
    """Run a dump tool; yield its stdout. On leaving, check how it ended: a dump that was
    killed or failed raises DumpFailed (RecoveryConflict when a standby cancelled it).
    `stderr_sink` receives the tool's log lines (pg_basebackup's WAL positions)."""
    with temporary_passfile(user, password) as passfile, tempfile.TemporaryFile() as stderr:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGPASSFILE": str(passfile),
               "PGAPPNAME": APPLICATION_NAME, "PGCONNECT_TIMEOUT": "10"}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                env=env, start_new_session=True)
        assert proc.stdout is not None  # stdout=PIPE
        try:
            yield proc.stdout
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        returncode = proc.wait()
        if stderr_sink is not None:
            stderr.seek(0)
            stderr_sink.extend(stderr.read().decode(errors="replace").splitlines())
        if returncode != 0:
            stderr.seek(0)
            text = stderr.read().decode(errors="replace")
            reason = _stderr_reason(text)
            message = f"{what} {_describe_exit(returncode)}" + (f": {reason}" if reason else "")
            if any(m in text for m in CONFLICT_MARKERS):
                raise RecoveryConflict(message)
            raise DumpFailed(message)


@contextlib.contextmanager
def pg_dump(endpoint: Endpoint, user: str, password: str, dbname: str, snapshot: str | None = None,
            member: str | None = None) -> Iterator[IO[bytes]]:
    """`pg_dump -Fc -Z 0` of one database: the caller compresses (zstd, in the pipe)."""
    argv = [_binary("pg_dump"), "--format=custom", "--compress=0", "--no-password",
            f"--dbname={member_dsn(endpoint, user, dbname)}"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    with _dump_process(argv, f"pg_dump of database {dbname} on {member or endpoint}", user, password) as out:
        yield out


@contextlib.contextmanager
def pg_dumpall_globals(endpoint: Endpoint, user: str, password: str, member: str | None = None
                       ) -> Iterator[IO[bytes]]:
    """Roles (with their password hashes) and tablespaces: restore it with psql."""
    argv = [_binary("pg_dumpall"), "--globals-only", "--no-password",
            f"--dbname={member_dsn(endpoint, user, 'postgres')}"]
    with _dump_process(argv, f"pg_dumpall --globals-only on {member or endpoint}", user, password) as out:
        yield out


def list_databases(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "select datname from pg_database where datallowconn and not datistemplate order by 1")]


# -- restoring ------------------------------------------------------------------------------------
# psql/pg_restore errors that are known harmless, each proven by a test (test_drill.py):
# restoring the globals into a fresh server meets the roles every pg_ops cluster has.
HARMLESS_GLOBALS_ERRORS = (
    re.compile(r'ERROR:\s+role "(postgres|replicator)" already exists'),
)


@dataclass
class ToolReport:
    """How a restore tool ended: exit status and every error line it printed."""

    tool: str
    returncode: int
    errors: list[str]
    ignored: list[str]  # known-harmless errors (see HARMLESS_GLOBALS_ERRORS)
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.errors


def _error_lines(text: str, tool: str) -> list[str]:
    marker = "pg_restore: error:" if tool == "pg_restore" else "ERROR:"
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if marker in line or "FATAL:" in line]


# Where libpq finds a password and TLS settings the caller chose (a restore target's).
PASSED_THROUGH_ENV = ("PGPASSFILE", "PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT", "PGSSLCERT", "PGSSLKEY", "HOME")


def _run_tool(argv: list[str], tool: str, user: str, password: str | None, stdin: bytes | None = None,
              harmless: tuple[re.Pattern, ...] = ()) -> ToolReport:
    """`password` None: the tool finds it itself (PGPASSFILE / PGPASSWORD of our environment)."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "PGAPPNAME": "pg_ops-restore",
               "PGCONNECT_TIMEOUT": "10"}
        if password is None:
            env.update({k: os.environ[k] for k in PASSED_THROUGH_ENV if k in os.environ})
        else:
            env["PGPASSFILE"] = str(stack.enter_context(temporary_passfile(user, password)))
        result = subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                capture_output=True, env=env)
    errors = _error_lines(result.stderr.decode(errors="replace"), tool)
    ignored = [e for e in errors if any(p.search(e) for p in harmless)]
    return ToolReport(tool, result.returncode, [e for e in errors if e not in ignored], ignored,
                      time.monotonic() - started)


def schema_script(endpoint: Endpoint, user: str, password: str, dbname: str, bin_dir: Path) -> bytes:
    """`pg_dump --schema-only --clean --if-exists` (plain SQL) of one database, with the tools of
    `bin_dir` (a newer major's pg_dump reads an older server): a new cluster's database, which
    holds only what its deploy created (the spec's schemas and extensions), takes it whole."""
    argv = [str(bin_dir / "pg_dump"), "--schema-only", "--clean", "--if-exists", "--no-password",
            f"--dbname={member_dsn(endpoint, user, dbname)}"]
    with _dump_process(argv, f"pg_dump --schema-only of database {dbname} on {endpoint}", user, password) as out:
        return out.read()


def psql_script(endpoint: Endpoint, user: str, password: str, dbname: str, script: bytes,
                harmless: tuple[re.Pattern, ...] = (), bin_dir: Path | None = None) -> ToolReport:
    """Run a SQL script (pg_dumpall's globals: psql, because of meta-commands like \\restrict)
    to its end, collecting every error instead of stopping at the first."""
    psql = str(bin_dir / "psql") if bin_dir else _binary("psql")
    argv = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=0", "--no-password",
            f"--dbname={member_dsn(endpoint, user, dbname)}", "-f", "-"]
    return _run_tool(argv, "psql", user, password, stdin=script, harmless=harmless)


def analyze_in_stages(endpoint: Endpoint, user: str, password: str, bin_dir: Path) -> ToolReport:
    """`vacuumdb --all --analyze-in-stages` with the tools of `bin_dir` (the server's major):
    planner statistics after pg_upgrade, which carries none before PostgreSQL 18."""
    argv = [str(bin_dir / "vacuumdb"), "--all", "--analyze-in-stages", "--no-password",
            f"--maintenance-db={member_dsn(endpoint, user, 'postgres')}"]
    return _run_tool(argv, "vacuumdb", user, password)


# Databases every server already has: restored into, not created (`--create` would fail).
EXISTING_ON_EVERY_SERVER = ("postgres",)


def pg_restore(endpoint: Endpoint, user: str, password: str, dump_file: Path, jobs: int = 2,
               database: str | None = None) -> ToolReport:
    """`pg_restore --create -j N`: creates the dump's database (name, owner, encoding) and
    restores into it; it needs a seekable file for -j. Errors are collected, not fatal. The
    `postgres` database exists on every server: its dump is restored into it instead."""
    if database in EXISTING_ON_EVERY_SERVER:
        argv = [_binary("pg_restore"), f"--jobs={jobs}", "--no-password",
                f"--dbname={member_dsn(endpoint, user, database)}", str(dump_file)]
    else:
        argv = [_binary("pg_restore"), "--create", f"--jobs={jobs}", "--no-password",
                f"--dbname={member_dsn(endpoint, user, 'postgres')}", str(dump_file)]
    return _run_tool(argv, "pg_restore", user, password)


def pg_restore_into(dsn: str, dump_file: Path, jobs: int = 2, keep_owners: bool = False) -> ToolReport:
    """Restore into the (existing, empty) database `dsn` names; the password comes from the
    caller's PGPASSFILE / PGPASSWORD, never from us. Without keep_owners, objects belong to
    the connecting role (the target may lack the source's roles)."""
    argv = [_binary("pg_restore"), f"--jobs={jobs}", "--no-password", f"--dbname={dsn}", str(dump_file)]
    if not keep_owners:
        argv[1:1] = ["--no-owner", "--no-privileges"]
    return _run_tool(argv, "pg_restore", "", None)


def dump_database_name(dump_file: Path) -> str:
    """The database a custom-format dump was taken from (its table of contents)."""
    out = subprocess.run([_binary("pg_restore"), "--list", str(dump_file)], capture_output=True, text=True)
    if out.returncode != 0:
        raise DumpFailed(f"{dump_file.name}: not a readable custom-format dump: {_stderr_reason(out.stderr)}")
    for line in out.stdout.splitlines():
        if line.startswith(";     dbname:"):
            return line.split(":", 1)[1].strip()
    raise DumpFailed(f"{dump_file.name}: the dump does not name its database")


def count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Rows per table, as Snapshot.count_rows counts them at backup time."""
    counts = {}
    for schema, table in conn.execute(TABLES_SQL).fetchall():
        query = sql.SQL("select count(*) from only {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


BTREE_INDEXES_SQL = """
select n.nspname, c.relname, c.oid
from pg_index i join pg_class c on c.oid = i.indexrelid
join pg_namespace n on n.oid = c.relnamespace join pg_am am on am.oid = c.relam
where am.amname = 'btree' and c.relpersistence = 'p' and i.indisvalid and i.indisready
  and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
order by 1, 2
"""


AMCHECK_UNAVAILABLE = "amcheck is not available on this server (PostgreSQL built without contrib)"


def amcheck_indexes(conn: psycopg.Connection) -> tuple[int | None, list[str]]:
    """(indexes checked, problems): bt_index_check on every B-tree index of the database.
    (None, []) when the server has no amcheck (a build without contrib, such as the PostgreSQL
    16 test binaries): the check is reported as skipped, never as passed."""
    if conn.execute("select 1 from pg_available_extensions where name = 'amcheck'").fetchone() is None:
        return None, []
    conn.execute("create extension if not exists amcheck")
    problems = []
    indexes = conn.execute(BTREE_INDEXES_SQL).fetchall()
    for schema, name, oid in indexes:
        try:
            conn.execute("select bt_index_check(%s::regclass, false)", (oid,))
        except psycopg.Error as exc:
            problems.append(f"{schema}.{name}: {first_line(exc)}")
    return len(indexes), problems
