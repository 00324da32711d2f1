"""The write unavailability an operation costs the applications, seen where they see it: a
thread commits a transaction that needs a transaction id (`select txid_current()`: a commit
record, so it waits for a synchronous standby like any write, and fails on a standby) through the
primary endpoint every PROBE_EVERY_S, reconnecting after a failure as a pooled application would.
A pause is the stretch between two commits beyond the probe's own interval; each step of a
StepLog is charged the pauses inside it, so a run's metadata says which step cost the writes."""

from __future__ import annotations

import threading
import time

import psycopg

from pg_ops.postgres import admin
from pg_ops.postgres.session import connect_dsn

PROBE_EVERY_S = 0.05
PAUSE_S = 0.2  # shorter gaps are a busy machine, not an outage


class WriteProbe:
    def __init__(self, dsn: str, password: str, every: float = PROBE_EVERY_S):
        self.dsn, self.password, self.every = dsn, password, every
        self.commits: list[float] = []  # monotonic times of acknowledged commits
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="write-probe", daemon=True)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = connect_dsn(self.dsn, self.password, timeout=2, options="-c statement_timeout=2000")
                admin.assign_transaction_id(conn)
                self.commits.append(time.monotonic())
            except psycopg.Error:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.every)
        if conn is not None:
            conn.close()

    def __enter__(self) -> WriteProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def paused(self, start: float, end: float) -> float:
        """Seconds of pauses (gaps between commits longer than the interval by PAUSE_S) that fall
        inside [start, end]; with no commit after the last one, the pause runs to `end`."""
        times = [*self.commits]
        if not times:
            return round(end - start, 3)
        total = 0.0
        for a, b in zip(times, [*times[1:], max(end, times[-1])], strict=True):
            if b - a - self.every > PAUSE_S:
                total += max(0.0, min(b, end) - max(a, start))
        return round(total, 3)

    def by_step(self, spans: list[tuple[str, float, float]]) -> dict[str, float]:
        """Step name -> seconds of write pauses inside it (only steps that had one)."""
        out = {}
        for name, start, end in spans:
            paused = self.paused(start, end)
            if paused:
                out[name] = paused
        return out
