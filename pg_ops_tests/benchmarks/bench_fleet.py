"""Benchmark: failover through the real Dagster daemon with a fleet loaded (issue 27). One cluster
of 3 members is the victim; 0, 4 or 19 more clusters of 3 members each run beside it, all
watched by the same daemon, each by its own health sensor (pg_ops/defs/health.py). Per fleet
size, TRIALS kills of the victim's primary (supervisor and postgres SIGKILLed): the RTO (the
application's first acknowledged write on the new primary after the kill), the time from the
kill to the failover request (the sensor's `detected_at`, then the run enqueued), and the run's
own phases, as bench_failover measures them. The baseline, measured in the same run, is the
fleet of one. Target: RTO with 20 clusters loaded <= 1.2x one cluster's.

50 clusters (150 servers) are not run: at 20 the steady state already takes 1.2 of the 2 cores
(member scripts 0.37, the code server's sensors 0.36, PostgreSQL 0.27, the daemon 0.15).

    make bench BENCH=fleet   (PG_OPS_BENCH_FLEETS=1,5,20 PG_OPS_BENCH_TRIALS=3)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pg_ops_tests.benchmarks.bench_failover import _phase_summary, run_through_daemon  # noqa: E402
from pg_ops_tests.benchmarks.common import emit, summary  # noqa: E402
from pg_ops_tests.support.helpers import running_cluster, spec_from, temp_home, write_spec  # noqa: E402

FLEETS = [int(n) for n in os.environ.get("PG_OPS_BENCH_FLEETS", "1,5,20").split(",")]
TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "3"))
CODE_SERVER_THREADS = 40  # as scripts/serve-ui.py gives `make run`'s code server
logging.basicConfig(level=logging.WARNING)


def fleet_rto(size: int) -> dict:
    with temp_home() as home:
        specs = home / "specs"
        specs.mkdir()
        os.environ.update(PG_OPS_HOME=str(home), PG_OPS_CLUSTERS=str(specs),
                          DAGSTER_GRPC_MAX_WORKERS=str(CODE_SERVER_THREADS))
        # Every spec exists before the daemon loads the code location (a sensor per cluster).
        small = {"shared_buffers": "32MB"}
        # No WAL archiving: a fleet started at once takes every cluster's first base backup in
        # its first minutes (20 at a time at 20 clusters), which is the nightly base-backup
        # hour's load, not a fleet's steady state (measured apart: PG_OPS_BENCH_FLEET_WAL=1).
        no_wal = {} if os.environ.get("PG_OPS_BENCH_FLEET_WAL") == "1" else {
            "backups": {"store": {"type": "file", "path": "backups"}, "wal": {"enabled": False}}}
        victim = spec_from(write_spec(specs, "victim",
                                      postgres={"members": 3, "parameters": small, "max_connections": 50},
                                      monitoring={"interval_seconds": 1}, failover={"mode": "automatic"}, **no_wal))
        others = [spec_from(write_spec(specs, f"bystander-{i}", postgres={"members": 3, "parameters": small,
                                                                          "max_connections": 50},
                                       monitoring={"interval_seconds": 1}, **no_wal))
                  for i in range(size - 1)]
        with contextlib.ExitStack() as stack:
            for spec in others:
                stack.enter_context(running_cluster(spec))
            ctx = stack.enter_context(running_cluster(victim))
            trials = run_through_daemon(ctx, home, TRIALS, partition=False)
    rtos = [t["rto_s"] for t in trials if t.get("rto_s") is not None]
    return {"clusters": size, "servers": 3 * size, "trials": len(trials),
            "succeeded": sum(1 for t in trials if t["ok"]), "rto_s": summary(rtos),
            "kill_to_request_s": summary([(t.get("tick_wait_s") or 0) + (t.get("confirmation_s") or 0)
                                          for t in trials if t.get("confirmation_s") is not None]),
            "phases": _phase_summary(trials), "lost_rows": [t.get("lost") for t in trials]}


def main() -> None:
    results = {size: fleet_rto(size) for size in FLEETS}
    base = results.get(min(FLEETS), {}).get("rto_s", {}).get("median")
    for line in results.values():
        median = line["rto_s"].get("median")
        line["baseline_one_cluster_rto_s"] = base
        line["rto_over_one_cluster"] = round(median / base, 2) if median and base else None
        line["target_rto_over_one_cluster"] = 1.2
        emit("fleet", line)


if __name__ == "__main__":
    main()
