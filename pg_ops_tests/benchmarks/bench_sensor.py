"""Benchmark: one health-sensor evaluation (every member probed, alerts reconciled, cursor
written) for a healthy 3-member cluster, a cluster with one hung (SIGSTOPped) member, and a
fleet of 10 clusters (30 members). Targets: < 0.5 s, < probe deadline + 1 s, < 3 s.

Each result is one JSON line with its baseline measured in the same run: a bare `select 1`
on a new connection (what one member probe cannot beat), and for the hung case the probe
deadline it is bounded by. Lines go to stdout and bench-results/sensor.jsonl (benchmarks/common.py).

    make bench BENCH=sensor   (or: .venv/bin/python -m pg_ops_tests.benchmarks.bench_sensor)
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402

from pg_ops.credentials import SUPERUSER  # noqa: E402
from pg_ops.defs.health import AlertsResource, evaluate_health  # noqa: E402
from pg_ops.postgres.session import with_connection  # noqa: E402
from pg_ops_tests.benchmarks.common import emit, summary  # noqa: E402
from pg_ops_tests.support.faults import hung  # noqa: E402
from pg_ops_tests.support.helpers import running_cluster, spec_from, temp_home, write_spec  # noqa: E402

TICKS = 5


def sensor_ticks(contexts, ticks: int = TICKS) -> list[float]:
    cursor = None
    times = []
    for i in range(ticks + 1):
        context = dg.build_sensor_context(cursor=cursor)
        started = time.perf_counter()
        result = evaluate_health(context, contexts, AlertsResource())
        if i:  # the first tick writes every observation once: warm-up
            times.append(time.perf_counter() - started)
        cursor = result.cursor
    return times


def select_one(ctx, n: int = 20) -> float:
    ep = ctx.endpoints()[ctx.state().primary]
    password = ctx.admin_password()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        with_connection(ep, SUPERUSER, password, lambda c: c.execute("select 1").fetchone(), timeout=5)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def result(name: str, times: list[float], baseline_name: str, baseline: float, target: float, **extra) -> dict:
    median = statistics.median(times)
    return emit("sensor", {"case": name, "seconds": summary(times), "baseline": baseline_name,
                           "baseline_seconds": round(baseline, 4), "ratio_to_baseline": round(median / baseline, 2),
                           "target_seconds": target, "within_target": max(times) < target, **extra})


def main() -> None:
    with temp_home() as home:
        os.environ["PG_OPS_HOME"] = str(home)
        (home / "specs").mkdir()
        with running_cluster(spec_from(write_spec(home / "specs", "bench"))) as ctx:
            baseline = select_one(ctx)
            result("healthy_3_members", sensor_ticks([ctx]), "select_1_new_connection", baseline, 0.5)
            deadline = ctx.spec.monitoring.probe_timeout_seconds
            replica = [m for m in ctx.spec.member_names if m != ctx.state().primary][0]
            with hung(ctx, replica):
                times = sensor_ticks([ctx], ticks=3)
            result("one_hung_member", times, "probe_deadline", deadline, deadline + 1)
        with contextlib.ExitStack() as stack:  # every cluster is stopped, even on failure
            contexts = [stack.enter_context(running_cluster(spec_from(write_spec(home / "specs", f"fleet{i}"))))
                        for i in range(10)]
            result("fleet_10_clusters_30_members", sensor_ticks(contexts), "select_1_new_connection",
                 select_one(contexts[0]), 3.0, members=30)


if __name__ == "__main__":
    main()
