"""What a rollout costs the applications: the write pause seen through the primary endpoint
(pg_ops/operations/write_probe.py, a commit every 50 ms) during
  (a) a restart rollout (a new shared_buffers: every replica restarted, a switchover, the old
      primary restarted as a replica), against
  (b) a single switchover, the baseline measured in the same run on the same cluster;
  (c) a reload-only rollout (a new work_mem), which should cost nothing.
Target (issue 23): (a) at most 1.2x (b): the replicas' restarts cost the application nothing.
TRIALS trials of each, alternating, 3-member async cluster."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import yaml

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.failover import switchover
from pg_ops.operations.rollout import rollout
from pg_ops.operations.write_probe import WriteProbe
from pg_ops.spec import load_spec
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.support.helpers import home_environment, running_cluster, spec_from, write_spec

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "3"))
logging.basicConfig(level=logging.WARNING)


def with_parameters(path: Path, **parameters) -> ClusterContext:
    raw = yaml.safe_load(path.read_text())
    raw["postgres"]["parameters"] = {**raw["postgres"].get("parameters", {}), **parameters}
    path.write_text(yaml.safe_dump(raw))
    return ClusterContext.for_spec(load_spec(path))


def measured_switchover(ctx: ClusterContext) -> float:
    target = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
    with WriteProbe(ctx.platform.primary_dsn(SUPERUSER, PG_OPS_DATABASE), ctx.admin_password()) as probe:
        start = time.monotonic()
        switchover(ctx, to=target)
        end = time.monotonic()
    return probe.paused(start, end)


def main() -> None:
    with home_environment() as home:
        path = write_spec(home / "specs", "rollout", postgres={"members": 3, "replication": "async"})
        restarts, switchovers, reloads, steps = [], [], [], []
        with running_cluster(spec_from(path)) as ctx:
            for trial in range(TRIALS):
                switchovers.append(measured_switchover(ctx))
                changed = with_parameters(path, shared_buffers=f"{136 + 8 * trial}MB")
                result = rollout(changed)
                restarts.append(result.write_paused_s)
                steps.append(result.write_pauses)
                reloaded = rollout(with_parameters(path, work_mem=f"{8 + trial}MB"))
                reloads.append(reloaded.write_paused_s)
        rollout_median = summary(restarts).get("median")
        switchover_median = summary(switchovers).get("median")
        emit("rollout", {
            "trials": TRIALS,
            "restart_rollout_write_pause_s": summary(restarts),
            "baseline_switchover_write_pause_s": summary(switchovers),
            "reload_rollout_write_pause_s": summary(reloads),
            "restart_rollout_over_switchover": round(rollout_median / switchover_median, 2)
            if rollout_median and switchover_median else None,
            "target_restart_rollout_over_switchover": 1.2,
            "pauses_by_step": steps,
        })


if __name__ == "__main__":
    main()
