"""The application in partition tests: a separate process (so iptables can tell it from
pg_ops) that commits numbered rows through the primary endpoint and prints one line per
acknowledgement (`ack N UNIXTIME MEMBER`: the member that acknowledged it) and per failed
attempt (`fail UNIXTIME`).

    python -m pg_ops_tests.app_writer DSN TABLE      (password in PGPASSWORD)
"""

from __future__ import annotations

import signal
import sys
import time

import psycopg


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
                member = conn.execute("select current_setting('cluster_name')").fetchone()[0]
            conn.execute(f"insert into {table} (n) values (%s)", (n + 1,))
            n += 1
            print(f"ack {n} {time.time():.4f} {member}", flush=True)
        except psycopg.Error:
            print(f"fail {time.time():.4f}", flush=True)
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
            conn = None
            time.sleep(0.05)
        time.sleep(0.005)
    return 0


if __name__ == "__main__":
    sys.exit(main())
