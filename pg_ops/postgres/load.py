"""Load pg_ops puts on a cluster to measure its service levels: many connections held at
once, and a short pgbench run in a scratch database (never in an application database).

pgbench gets the password through PGPASSWORD in its environment, never on its command line
(argv is world-readable in /proc).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_ops import settings
from pg_ops.errors import PgOpsError, first_line
from pg_ops.postgres.session import connect_dsn

SCRATCH_DATABASE = "pg_ops_scratch"


def with_dbname(dsn: str, dbname: str) -> str:
    return make_conninfo("", **{**conninfo_to_dict(dsn), "dbname": dbname})


@dataclass
class HeldConnections:
    wanted: int
    opened: int
    seen_by_server: int  # this run's sessions in pg_stat_activity while all were held
    seconds_to_open: float
    error: str | None = None


def hold_connections(dsn: str, password: str, count: int, timeout: float = 10.0) -> HeldConnections:
    """Open `count` sessions, then count them from the server's side while all are open."""
    tag = f"pg_ops-slo-{os.getpid()}-{time.monotonic_ns()}"
    conns: list[psycopg.Connection] = []
    errors: list[str] = []
    started = time.monotonic()

    def open_one(_: int) -> None:
        try:
            conns.append(connect_dsn(dsn, password, timeout=int(timeout), application_name=tag))
        except psycopg.Error as exc:
            errors.append(first_line(exc))

    try:
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="hold") as pool:
            list(pool.map(open_one, range(count)))
        seconds = time.monotonic() - started
        seen = 0
        if conns:
            row = conns[0].execute("select count(*) from pg_stat_activity where application_name = %s",
                                   (tag,)).fetchone()
            seen = int(row[0])
        return HeldConnections(wanted=count, opened=len(conns), seen_by_server=seen, seconds_to_open=seconds,
                               error=errors[0] if errors else None)
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


@contextlib.contextmanager
def scratch_database(dsn: str, password: str, name: str = SCRATCH_DATABASE) -> Iterator[str]:
    """A database that exists for the duration of the block (dropped even on failure)."""
    admin = connect_dsn(dsn, password, timeout=None)
    try:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        yield with_dbname(dsn, name)
    finally:
        with contextlib.suppress(psycopg.Error):
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.close()


@dataclass
class PgbenchResult:
    transactions: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    tps: float
    seconds: float
    clients: int


def _pgbench(args: list[str], password: str, cwd: Path, timeout: float) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": password, "LC_ALL": "C",
           "PGCONNECT_TIMEOUT": "5"}
    try:
        result = subprocess.run([str(settings.pg_bin() / "pgbench"), *args], env=env, cwd=cwd,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PgOpsError(f"pgbench {args[0]} did not finish within {timeout:g} s") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower() or "fatal" in line.lower()),
                      lines[-1] if lines else f"exit {result.returncode}")
        raise PgOpsError(f"pgbench failed: {reason.replace(password, '[redacted]')}")


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def run_pgbench(dsn: str, password: str, seconds: int = 5, clients: int = 4, scale: int = 1) -> PgbenchResult:
    """pgbench's built-in TPC-B-like script (a read-write transaction of 5 statements) in a
    scratch database; latencies come from its per-transaction log (pgbench itself reports
    only averages)."""
    with scratch_database(dsn, password) as scratch, tempfile.TemporaryDirectory(prefix="pgbench-") as tmp:
        _pgbench(["-i", "-q", "-s", str(scale), scratch], password, Path(tmp), timeout=120)
        started = time.monotonic()
        _pgbench(["-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-n",
                  "-l", f"--log-prefix={tmp}/tx", scratch], password, Path(tmp), timeout=seconds + 60)
        elapsed = time.monotonic() - started
        latencies = []
        for log in Path(tmp).glob("tx.*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    latencies.append(int(parts[2]) / 1000.0)
    if not latencies:
        raise PgOpsError("pgbench ran but logged no transaction")
    latencies.sort()
    return PgbenchResult(transactions=len(latencies), p50_ms=statistics.median(latencies),
                         p95_ms=_percentile(latencies, 0.95), max_ms=latencies[-1],
                         tps=len(latencies) / seconds, seconds=elapsed, clients=clients)
