"""What a switchover costs the applications with and without the pooler (issue 26): two writers
(pg_ops_tests/app_writer.py, a commit every ~5 ms each) run side by side on one 3-member cluster
with `pooler`, one through PgBouncer (pooled-uri, no server-side prepared statements) and one
straight to the members (the multi-host primary DSN, the baseline in the same run), through
TRIALS switchovers. Per writer: failed statements, the longest wait between two
acknowledgements during the switchovers, and the p99 of those waits against the same writer's
p99 outside them (the added latency). Target: 0 failed statements through the pooler, added p99
below 2 s."""

from __future__ import annotations

import json
import logging
import os
import time

from pg_ops.operations.failover import switchover
from pg_ops_tests.app_writer import App
from pg_ops_tests.benchmarks.common import emit
from pg_ops_tests.support.helpers import (
    free_port_range,
    home_environment,
    running_cluster,
    spec_from,
    write_spec,
)

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "5"))
logging.basicConfig(level=logging.WARNING)


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4)


def figures(app: App, windows: list[tuple[float, float]]) -> dict:
    times = [t for _, t, _ in app.acks()]
    inside, outside = [], []
    for a, b in zip(times, times[1:], strict=False):
        (inside if any(s <= b and a <= e for s, e in windows) else outside).append(b - a)
    failed = sum(1 for line in app.lines if line.startswith("fail "))
    return {"failed_statements": failed, "acks": len(times), "longest_wait_s": round(max(inside, default=0.0), 4),
            "p99_during_s": p99(inside), "p99_outside_s": p99(outside),
            "added_p99_s": round((p99(inside) or 0) - (p99(outside) or 0), 4)}


def main() -> None:
    with home_environment() as home:
        spec = spec_from(write_spec(home / "specs", "poolbench", local={"base_port": free_port_range(4)},
                                    pooler={"mode": "transaction", "pool_size": 4}))
        with running_cluster(spec) as ctx:
            login = json.loads((ctx.platform.app_credentials_dir() / "app.json").read_text())
            ep = ctx.platform.pooler_endpoint()
            pooled_dsn = f"host={ep.host} port={ep.port} dbname=app user=app"
            windows: list[tuple[float, float]] = []
            with App(ctx, table="pooled_bench", dsn=pooled_dsn, password=login["password"], dbname="app",
                     prepared=False) as pooled, App(ctx, table="direct_bench") as direct:
                pooled.wait_acks(200)
                direct.wait_acks(200)
                for _ in range(TRIALS):
                    to = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
                    start = time.time()
                    switchover(ctx, to=to)
                    windows.append((start, time.time()))
                    pooled.wait_acks(200)
                    direct.wait_acks(200)
            emit("pooler", {"trials": TRIALS, "through_pooler": figures(pooled, windows),
                            "direct_baseline": figures(direct, windows),
                            "target_failed_statements_through_pooler": 0, "target_added_p99_s": 2.0})


if __name__ == "__main__":
    main()
