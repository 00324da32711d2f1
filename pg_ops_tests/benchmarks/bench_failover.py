"""Chaos benchmark: RTO and RPO when the primary member is lost (supervisor and postgres
SIGKILLed, as when a node dies), for
  (a) the failover job alone, launched the moment the primary dies, and
  (b) the whole loop: the real Dagster daemon, cluster_health_sensor, the queued run.
Async and sync modes, TRIALS trials each. Baseline measured in the same run: a bare
pg_promote(wait => true) of a replica (the floor any failover pays)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pg_ops.operations.deploy import deploy
from pg_ops.postgres.session import with_connection
from pg_ops_tests.benchmarks.chaos import AckWriter
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.helpers import running_cluster, spec_from, temp_home, write_spec

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "5"))
PATHS = os.environ.get("PG_OPS_BENCH_PATHS", "job_alone,daemon_loop").split(",")
MODES = os.environ.get("PG_OPS_BENCH_MODES", "async,sync").split(",")
logging.basicConfig(level=logging.WARNING)


def promote_baseline(spec) -> float:
    """Promotion alone, on a fresh cluster: the floor of any failover."""
    with running_cluster(spec) as ctx:
        replica = ctx.spec.member_names[1]
        ctx.platform.kill_member(ctx.state().primary)
        t0 = time.monotonic()
        with_connection(ctx.endpoints()[replica], "postgres", ctx.admin_password(),
                        lambda c: c.execute("select pg_promote(true, 30)").fetchone(), timeout=35)
        return time.monotonic() - t0


def run_job_alone(ctx, trials: int) -> list[dict]:
    from dagster import DagsterInstance

    from pg_ops.definitions import defs

    job = defs.resolve_job_def("failover")
    out = []
    with DagsterInstance.ephemeral() as instance:
        for _ in range(trials):
            writer = AckWriter(ctx).start()
            writer.wait_acks(50)
            old = ctx.state().primary
            killed_at = time.time()
            ctx.platform.kill_member(old)
            config = {"ops": {"run_failover": {"config": {}}},
                      "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
            result = job.execute_in_process(instance=instance, partition_key=ctx.name, run_config=config,
                                            raise_on_error=False)
            writer.wait_acks(20, timeout=30)
            writer.stop()
            new = ctx.state().primary
            out.append({"ok": result.success, "rto_s": writer.rto_after(killed_at), "lost": writer.lost(ctx, new)})
            deploy(ctx)  # the old primary rejoins as a replica for the next trial
    return out


def run_through_daemon(ctx, home: Path, trials: int) -> list[dict]:
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((Path(__file__).parents[2] / "dagster.yaml").read_text())
    workspace = Path(__file__).parents[2] / "workspace.yaml"
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    daemon = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
                              env=env, cwd=home, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(home / "daemon.log", "wb"))
    out = []
    try:
        time.sleep(8)  # the daemon's first sensor ticks (it waits for a healthy cluster)
        for _ in range(trials):
            writer = AckWriter(ctx).start()
            writer.wait_acks(50)
            old = ctx.state().primary
            epoch = ctx.state().epoch
            killed_at = time.time()
            ctx.platform.kill_member(old)
            deadline = time.time() + 90
            while ctx.state().epoch == epoch and time.time() < deadline:
                time.sleep(0.1)
            ok = ctx.state().epoch > epoch
            if ok:
                try:
                    writer.wait_acks(20, timeout=30)
                except RuntimeError:
                    ok = False
            writer.stop()
            if not ok:
                import json

                from pg_ops.operations.status import cluster_status

                tail = (home / "daemon.log").read_text(errors="replace").splitlines()[-25:]
                print("daemon loop trial failed; status:\n" + json.dumps(cluster_status(ctx).to_dict(), default=str)[:3000]
                      + "\ndaemon log tail:\n" + "\n".join(tail), file=sys.stderr)
            out.append({"ok": ok, "rto_s": writer.rto_after(killed_at) if ok else None,
                        "lost": writer.lost(ctx, ctx.state().primary) if ok else None})
            while ctx.state().lock is not None and time.time() < deadline:
                time.sleep(0.2)
            deploy(ctx)
            time.sleep(6)  # let the sensor see the healthy cluster (the incident resolves)
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
    return out


def main() -> None:
    with temp_home() as home:
        specs = home / "specs"
        specs.mkdir()
        os.environ["PG_OPS_HOME"] = str(home)
        os.environ["PG_OPS_CLUSTERS"] = str(specs)
        (home / "base").mkdir()
        baseline = promote_baseline(spec_from(write_spec(home / "base", "base")))
        # Both specs exist before the code location is loaded (its partitions are the clusters).
        modes = {mode: spec_from(write_spec(specs, f"chaos-{mode}", postgres={"members": 3, "replication": mode},
                                            failover={"mode": "automatic"})) for mode in MODES}
        for mode, spec in modes.items():
            with running_cluster(spec) as ctx:
                for label, runner in (("job_alone", lambda c: run_job_alone(c, TRIALS)),
                                      ("daemon_loop", lambda c: run_through_daemon(c, home, TRIALS))):
                    if label not in PATHS:
                        continue
                    trials = runner(ctx)
                    rtos = [t["rto_s"] for t in trials if t["rto_s"] is not None]
                    emit("failover", {
                        "path": label, "replication": mode, "trials": len(trials),
                        "succeeded": sum(1 for t in trials if t["ok"]),
                        "rto_s": summary(rtos),
                        "rpo_rows_lost": {"max": max((t["lost"] or 0) for t in trials),
                                          "per_trial": [t["lost"] for t in trials]},
                        "baseline_promote_s": round(baseline, 4),
                        "rto_median_over_promote": round(summary(rtos).get("median", 0) / baseline, 1) if rtos else None,
                        "target_median_rto_s": 2.0 if label == "job_alone" else 10.0,
                    })


if __name__ == "__main__":
    main()
