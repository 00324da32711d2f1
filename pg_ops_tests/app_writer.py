"""The application in partition tests: a separate process (so iptables can tell it from
pg_ops) that commits numbered rows through the primary endpoint and prints one line per
acknowledgement (`ack N UNIXTIME MEMBER`: the member that acknowledged it) and per failed
attempt (`fail UNIXTIME REASON`).

    python -m pg_ops_tests.app_writer DSN TABLE      (password in PGPASSWORD)

`App` runs it from a test or benchmark (in the partition harness's app cgroup when given one)
and reads what it printed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from pg_ops.credentials import PG_OPS_DATABASE

REPO = Path(__file__).parents[1]


def main() -> int:
    dsn, table = sys.argv[1], sys.argv[2]
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    n, conn, member = 0, None, ""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as setup:
        setup.execute(f"create table if not exists {table} (n bigint primary key, at timestamptz default now())")
        n = setup.execute(f"select coalesce(max(n), 0) from {table}").fetchone()[0]
    while not stop:
        try:
            if conn is None:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=2,
                                       options="-c statement_timeout=2000")
                if os.environ.get("PGOPS_APP_NO_PREPARE"):  # behind PgBouncer in transaction mode
                    conn.prepare_threshold = None
                member = conn.execute("select current_setting('cluster_name')").fetchone()[0]
            conn.execute(f"insert into {table} (n) values (%s)", (n + 1,))
            n += 1
            print(f"ack {n} {time.time():.4f} {member}", flush=True)
        except psycopg.errors.UniqueViolation:
            # The last attempt committed without its acknowledgement reaching us (the server
            # stopped while the commit waited for a synchronous standby): not acknowledged, so
            # not counted; the next number goes on.
            n += 1
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())[:200]
            print(f"fail {time.time():.4f} {reason}", flush=True)
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            conn = None
            time.sleep(0.05)
        time.sleep(0.005)
    return 0


class App:
    """pg_ops_tests.app_writer in a subprocess (in the partition harness's app cgroup when given)."""

    def __init__(self, ctx, parts=None, table: str = "chaos_writes", dsn: str | None = None,
                 password: str | None = None, dbname: str = PG_OPS_DATABASE, prepared: bool = True):
        """`dsn`: where the application connects (default: the cluster's primary endpoint), with
        `password` (default: the superuser's); `dbname`: the database it names; `prepared` False:
        no server-side prepared statements, as an application behind a transaction pooler needs."""
        self.ctx, self.parts, self.table, self.dbname = ctx, parts, table, dbname
        self.dsn = dsn or ctx.platform.primary_dsn("postgres", PG_OPS_DATABASE)
        self.password, self.prepared = password, prepared
        self.lines: list[str] = []
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> App:
        argv = [sys.executable, "-m", "pg_ops_tests.app_writer", self.dsn, self.table]
        env = {**os.environ, "PGPASSWORD": self.password or self.ctx.admin_password(), "PYTHONPATH": str(REPO),
               **({} if self.prepared else {"PGOPS_APP_NO_PREPARE": "1"})}
        kwargs = {"env": env, "stdout": subprocess.PIPE, "text": True, "cwd": REPO}
        if self.parts is not None:
            self.proc = self._stack.enter_context(self.parts.app_process(argv, **kwargs))
        else:
            self.proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
            self._stack.callback(self._stop_plain)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _stop_plain(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._reader.join(5)

    def acks(self) -> list[tuple[int, float, str]]:
        out = []
        for line in list(self.lines):
            if line.startswith("ack "):
                _, n, t, member = line.split(" ", 3)
                out.append((int(n), float(t), member))
        return out

    def wait_acks(self, count: int, timeout: float = 30.0, on: str | None = None) -> None:
        target = len([a for a in self.acks() if on is None or a[2] == on]) + count
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len([a for a in self.acks() if on is None or a[2] == on]) >= target:
                return
            time.sleep(0.02)
        raise RuntimeError(f"the application made no progress{' on ' + on if on else ''}")

    def first_ack_on(self, member: str, after: float) -> float | None:
        return next((t for _, t, m in self.acks() if m == member and t > after), None)

    def last_ack_on(self, member: str, after: float) -> float | None:
        times = [t for _, t, m in self.acks() if m == member and t > after]
        return max(times) if times else None

    def progressing(self, member: str | None = None, k: int = 5) -> bool:
        """At least k more acknowledgements (by `member`) within half a second."""
        before = len([a for a in self.acks() if member is None or a[2] == member])
        time.sleep(0.5)
        return len([a for a in self.acks() if member is None or a[2] == member]) >= before + k

    def lost(self, primary: str) -> set[int]:
        """Acknowledged rows that `primary` does not hold (acknowledgements read before the query,
        so rows acknowledged meanwhile are not counted as lost)."""
        from pg_ops.postgres.session import with_connection

        acked = {n for n, _, _ in self.acks()}
        present = with_connection(self.ctx.endpoints()[primary], "postgres", self.ctx.admin_password(),
                                  lambda c: {r[0] for r in c.execute(f"select n from {self.table}")},
                                  dbname=self.dbname, timeout=30)
        return acked - present



if __name__ == "__main__":
    sys.exit(main())
