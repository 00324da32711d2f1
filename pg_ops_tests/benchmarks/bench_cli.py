"""What a run of the deployment costs a `pg-ops` command: the same command (a `pg-ops` process,
wall time) run in process (`--in-process`, the baseline, measured in the same session) and
submitted to a real `dagster dev` (queue, dequeue, a run worker process that imports the code
location, status polling). Commands: backup, switchover (to the replica, back and forth).

    python -m pg_ops_tests.benchmarks bench_cli
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pg_ops import runs
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.support.dagster import dagster_daemon, prepared_instance
from pg_ops_tests.support.helpers import (
    free_port,
    home_environment,
    running_cluster,
    spec_from,
    wait_for,
    write_spec,
)

TRIALS = int(os.environ.get("BENCH_TRIALS", "3"))
PG_OPS = str(Path(sys.executable).with_name("pg-ops"))


def timed(argv: list[str], env: dict) -> float:
    started = time.monotonic()
    done = subprocess.run([PG_OPS, *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pg-ops {' '.join(argv)} failed: {done.stderr.strip()}")
    return time.monotonic() - started


def main() -> None:
    with home_environment() as home:
        spec = spec_from(write_spec(home / "specs", "bcli", postgres={"members": 2}, failover={"mode": "manual"}))
        prepared_instance(home).dispose()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with running_cluster(spec) as ctx, dagster_daemon(home, {}, webserver_port=port):
            deployment = runs.Deployment(url)
            wait_for(lambda: deployment.unusable_because() is None and "bcli" in deployment.partition_keys(
                runs.CLUSTERS_JOB), "dagster dev", timeout=240, interval=1)
            env = dict(os.environ)
            for command in ("backup", "switchover"):
                figures = {"in_process": [], "deployment": []}
                for _ in range(TRIALS):
                    for where, flag in (("in_process", ["--in-process"]), ("deployment", ["--dagster-url", url])):
                        argv = [command, "--cluster", "bcli", *flag]
                        if command == "switchover":
                            argv += ["--to", next(m for m in spec.member_names if m != ctx.state().primary)]
                        figures[where].append(timed(argv, env))
                ratio = statistics.median(figures["deployment"]) / statistics.median(figures["in_process"])
                emit("cli", {"command": command, "through_deployment_s": summary(figures["deployment"]),
                             "baseline_in_process_s": summary(figures["in_process"]), "ratio": round(ratio, 2),
                             "trials": TRIALS})


if __name__ == "__main__":
    main()
