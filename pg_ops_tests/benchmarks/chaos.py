"""Chaos harness shared by the failover benchmark: a writer that commits numbered rows through
the primary endpoint and logs each acknowledgement and each failure with its time."""

from __future__ import annotations

import threading
import time

import psycopg

from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.operations.context import ClusterContext


class AckWriter:
    def __init__(self, ctx: ClusterContext, table: str = "chaos_writes"):
        self.ctx, self.table = ctx, table
        self.acks: list[tuple[int, float]] = []
        self.failures: list[float] = []
        self._stop = threading.Event()
        self._n = 0
        with self._connect() as conn:
            conn.execute(f"create table if not exists {table} (n bigint primary key, at timestamptz default now())")
            self._n = conn.execute(f"select coalesce(max(n), 0) from {table}").fetchone()[0]
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self):
        return psycopg.connect(self.ctx.platform.primary_dsn("postgres", PG_OPS_DATABASE),
                               password=self.ctx.admin_password(), autocommit=True, connect_timeout=2,
                               options="-c statement_timeout=3000")

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                n = self._n + 1
                conn.execute(f"insert into {self.table} (n) values (%s)", (n,))
                self._n = n
                self.acks.append((n, time.time()))
            except psycopg.Error:
                self.failures.append(time.time())
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
                time.sleep(0.02)
            time.sleep(0.005)

    def start(self) -> AckWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def wait_acks(self, count: int, timeout: float = 30) -> None:
        target = len(self.acks) + count
        deadline = time.time() + timeout
        while len(self.acks) < target and time.time() < deadline:
            time.sleep(0.01)
        if len(self.acks) < target:
            raise RuntimeError(f"writer made no progress ({len(self.acks)} acks)")

    def rto_after(self, killed_at: float) -> float | None:
        """From the kill to the first acknowledged commit after the writer's first failed
        attempt (a commit in flight can still be acknowledged just after the kill)."""
        first_fail = next((t for t in self.failures if t >= killed_at), None)
        if first_fail is None:
            return None
        first_ack = next((t for _, t in self.acks if t > first_fail), None)
        return None if first_ack is None else first_ack - killed_at

    def lost(self, ctx: ClusterContext, primary: str) -> int:
        from pg_ops.postgres.session import with_connection

        acked = {n for n, _ in self.acks}
        present = with_connection(ctx.endpoints()[primary], "postgres", ctx.admin_password(),
                                  lambda c: {r[0] for r in c.execute(f"select n from {self.table}")},
                                  dbname=PG_OPS_DATABASE, timeout=30)
        return len(acked - present)
