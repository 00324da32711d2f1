"""Chaos benchmark: RTO and RPO when the primary is lost, for
  (a) the failover job alone, launched the moment the primary member is killed;
  (b) the whole loop through the real Dagster daemon and the cluster's health sensor after a kill
      (supervisor and postgres SIGKILLed, as when a node dies);
  (c) the same loop after the primary is cut off on loopback (alive and reachable by the
      application, unreachable for pg_ops and the replicas: pg_ops_tests/partition.py; root only).
Async and sync modes, TRIALS trials each; (b) and (c) once per `failover.promote_in`
(PROMOTE_IN: `sensor`, the default, takes over in the sensor's own tick and the run finishes;
`run`, the whole failover in the run after it was queued and launched: ADR-004), with a
per-phase breakdown of (b) and (c) from the run's own events: tick wait (failure -> pg_ops first
saw it), confirmation (-> run enqueued), dequeue, launch (dequeued -> run started), run
(started -> promoted), and the application's view (first acknowledged write after the failure).
Baseline measured in the same run: a bare pg_promote(wait => true) of a replica, the floor any
failover pays.

The application is a separate process (pg_ops_tests/app_writer.py) committing numbered rows
through the primary endpoint; acknowledged rows missing after the old primary rejoined are
the RPO, and acknowledgements by the old primary after the cut are its isolation window.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pg_ops.operations.deploy import deploy
from pg_ops.postgres.session import with_connection
from pg_ops.runs import failure_of_events
from pg_ops_tests.app_writer import App
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.support.helpers import kill_member, running_cluster, spec_from, temp_home, write_spec

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "5"))
PATHS = os.environ.get("PG_OPS_BENCH_PATHS", "job_alone,daemon_kill,daemon_partition").split(",")
MODES = os.environ.get("PG_OPS_BENCH_MODES", "async,sync").split(",")
PROMOTE_IN = os.environ.get("PG_OPS_BENCH_PROMOTE_IN", "sensor,run").split(",")
REPO = Path(__file__).parents[2]
logging.basicConfig(level=logging.WARNING)


def promote_baseline(spec) -> float:
    """Promotion alone, on a fresh cluster: the floor of any failover."""
    with running_cluster(spec) as ctx:
        replica = ctx.spec.member_names[1]
        kill_member(ctx.platform, ctx.state().primary)
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
            with App(ctx) as app:
                app.wait_acks(50)
                old = ctx.state().primary
                killed_at = time.time()
                kill_member(ctx.platform, old)
                config = {"ops": {"run_failover": {"config": {}}},
                          "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
                result = job.execute_in_process(instance=instance, partition_key=ctx.name, run_config=config,
                                                raise_on_error=False)
                new = ctx.state().primary
                trial = {"ok": result.success}
                try:
                    app.wait_acks(20, timeout=30, on=new)
                except RuntimeError as exc:  # a failed trial is a figure too: say why, go on
                    trial.update(ok=False, error=str(exc),
                                 run_failure=None if result.success else failure_of_events(result.all_events)[0])
                    print(f"job_alone trial failed: {exc}; run: {trial['run_failure']}", file=sys.stderr)
                first = app.first_ack_on(new, killed_at)
                trial.update(rto_s=round(first - killed_at, 3) if first else None, lost=len(app.lost(new)))
                out.append(trial)
            deploy(ctx)  # the old primary rejoins as a replica for the next trial
    return out


# -- through the daemon -----------------------------------------------------------------------------
@contextlib.contextmanager
def daemon(home: Path):
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "deploy" / "dagster" / "local" / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                             str(REPO / "workspace.yaml")], env=env, cwd=home, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        time.sleep(10)  # the daemon's first sensor ticks (the code location loads first)
        wait_until_no_run_in_flight(dagster_home)
        yield dagster_home
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def wait_until_no_run_in_flight(dagster_home: Path, timeout: float = 300.0) -> None:
    """No run queued or running now (the first ticks' requests: an archiving cluster's first
    base backup, its WAL checks). Runs a sensor requests later are not waited for: benchmarks
    that must not have them turn archiving off (bench_fleet)."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
            DagsterRunStatus.STARTED]
    deadline = time.time() + timeout
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        while instance.get_runs_count(filters=RunsFilter(statuses=busy)) and time.time() < deadline:
            time.sleep(1)


def failover_run_finished(dagster_home: Path, since: float) -> bool:
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name="failover"), limit=1)
        if not runs:
            return False
        record = instance.get_run_record_by_id(runs[0].run_id)
        return bool(record and record.create_timestamp.timestamp() >= since and runs[0].is_finished)


def phases(dagster_home: Path, epoch_before: int, failed_at: float) -> dict:
    """The failover run's timeline, from its own events and output metadata."""
    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=RunsFilter(job_name="failover"), limit=1)
        if not runs:
            return {}
        run = runs[0]
        times = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is not None and event.event_type_value not in times:
                times[event.event_type_value] = entry.timestamp
        config = run.run_config.get("ops", {}).get("run_failover", {}).get("config", {})
        promoted = None
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_OUTPUT):
            meta = entry.dagster_event.event_specific_data.metadata
            if "detection_to_writable_s" in meta and config.get("detected_at"):
                promoted = config["detected_at"] + meta["detection_to_writable_s"].value
    detected = config.get("detected_at")
    enq = times.get("PIPELINE_ENQUEUED")
    deq = times.get("PIPELINE_DEQUEUED") or times.get("PIPELINE_STARTING")
    start = times.get("PIPELINE_START")

    def span(a, b):
        return round(b - a, 3) if a is not None and b is not None else None

    return {"tick_wait_s": span(failed_at, detected), "confirmation_s": span(detected, enq),
            "dequeue_s": span(enq, deq), "launch_s": span(deq, start), "run_to_promoted_s": span(start, promoted),
            "failure_to_promoted_s": span(failed_at, promoted), "run_id": run.run_id}


def run_through_daemon(ctx, home: Path, trials: int, partition: bool) -> list[dict]:
    from pg_ops_tests.partition import Partitions

    out = []
    with daemon(home) as dagster_home:
        for _ in range(trials):
            parts_cm = Partitions(ctx) if partition else contextlib.nullcontext()
            with parts_cm as parts, App(ctx, parts) as app:
                app.wait_acks(50)
                old, epoch = ctx.state().primary, ctx.state().epoch
                failed_at = time.time()
                if partition:
                    parts.isolate(old)  # alive, reachable by the application only
                else:
                    kill_member(ctx.platform, old)
                deadline = time.time() + 90
                while ctx.state().epoch == epoch and time.time() < deadline:
                    time.sleep(0.1)
                ok = ctx.state().epoch > epoch
                new = ctx.state().primary
                if ok:
                    # After a cut the application may stay on the old primary (it still reaches
                    # it) until that one stops acknowledging: not a failure of the failover.
                    with contextlib.suppress(RuntimeError):
                        app.wait_acks(20, timeout=30, on=new)
                while ctx.state().lock is not None and time.time() < deadline:
                    time.sleep(0.2)
                while ok and not failover_run_finished(dagster_home, failed_at) and time.time() < deadline:
                    time.sleep(0.2)  # with promote_in sensor the run comes after the take-over
                trial = {"ok": ok, **phases(dagster_home, epoch, failed_at)}
                first_new = app.first_ack_on(new, failed_at) if ok else None
                trial["rto_s"] = round(first_new - failed_at, 3) if first_new else None
                last_old = app.last_ack_on(old, failed_at)
                trial["old_primary_acked_for_s"] = round(last_old - failed_at, 3) if last_old else 0.0
                if partition:
                    parts.heal()
                deploy(ctx)  # the old primary rejoins (rewound) as a replica, counting what it discards
                trial["lost"] = len(app.lost(ctx.state().primary)) if ok else None
                report = ctx.platform.member_report(old)
                discarded = report.discarded
                fresh = discarded is not None and (discarded.at or 0) >= int(failed_at)
                # None: could not be counted
                trial["reported_discarded_transactions"] = discarded.transactions if discarded and fresh else 0
                if discarded and fresh and discarded.unknown:
                    trial["discarded_uncounted_because"] = discarded.unknown
            if not ok:
                tail = (home / "daemon.log").read_text(errors="replace").splitlines()[-25:]
                print("daemon trial failed; daemon log tail:\n" + "\n".join(tail), file=sys.stderr)
            out.append(trial)
            time.sleep(6)  # the sensor sees the healthy cluster (the incident resolves)
    return out


def promote_in_spec(path: Path, where: str) -> None:
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["failover"] = {**raw.get("failover", {}), "promote_in": where}
    path.write_text(yaml.safe_dump(raw))


def _phase_summary(trials: list[dict]) -> dict:
    keys = ("tick_wait_s", "confirmation_s", "dequeue_s", "launch_s", "run_to_promoted_s", "failure_to_promoted_s")
    return {k: summary([t.get(k) for t in trials]) for k in keys}


def main() -> None:
    from pg_ops_tests.partition import unavailable

    with temp_home() as home:
        specs = home / "specs"
        specs.mkdir()
        os.environ["PG_OPS_HOME"] = str(home)
        os.environ["PG_OPS_CLUSTERS"] = str(specs)
        (home / "base").mkdir()
        baseline = promote_baseline(spec_from(write_spec(home / "base", "base")))
        # Every spec exists before the code location is loaded (its partitions are the clusters).
        paths = {mode: write_spec(specs, f"chaos-{mode}", postgres={"members": 3, "replication": mode},
                                  failover={"mode": "automatic"}) for mode in MODES}
        modes = {mode: spec_from(path) for mode, path in paths.items()}
        why_not = unavailable()
        for mode, spec in modes.items():
            with running_cluster(spec) as ctx:
                for label, promote_in in [(p, w) for p in PATHS for w in (PROMOTE_IN if p != "job_alone" else ["run"])]:
                    if label == "daemon_partition" and why_not:
                        print(f"skipping {label}: {why_not}", file=sys.stderr)
                        continue
                    if label == "job_alone":
                        trials = run_job_alone(ctx, TRIALS)
                    else:
                        promote_in_spec(paths[mode], promote_in)  # the sensor and the run read the file
                        trials = run_through_daemon(ctx, home, TRIALS, partition=label == "daemon_partition")
                    rtos = [t["rto_s"] for t in trials if t.get("rto_s") is not None]
                    line = {
                        "path": label, "replication": mode, "promote_in": promote_in, "trials": len(trials),
                        "succeeded": sum(1 for t in trials if t["ok"]),
                        "rto_s": summary(rtos),
                        "rpo_rows_lost": {"max": max((t.get("lost") or 0) for t in trials),
                                          "per_trial": [t.get("lost") for t in trials]},
                        "baseline_promote_s": round(baseline, 4),
                        "rto_median_over_promote": (round(summary(rtos).get("median", 0) / baseline, 1)
                                                    if rtos else None),
                        "target_median_rto_s": {"job_alone": 2.0, "daemon_kill": 3.0, "daemon_partition": 8.0}[label],
                        "target_old_primary_acked_for_median_s": 10.0 if label == "daemon_partition" else None,
                    }
                    failures = [{k: t.get(k) for k in ("error", "run_failure")} for t in trials if not t["ok"]]
                    if failures:
                        line["failures"] = failures
                    if label != "job_alone":
                        line["phases"] = _phase_summary(trials)
                        line["old_primary_acked_for_s"] = summary([t.get("old_primary_acked_for_s") for t in trials])
                        line["acked_rows_lost_vs_reported"] = [
                            [t.get("lost"), t.get("reported_discarded_transactions")] for t in trials]
                        line["every_lost_row_reported"] = all(
                            (t.get("reported_discarded_transactions") or 0) >= (t.get("lost") or 0) for t in trials)
                        line["per_trial"] = [{k: v for k, v in t.items() if k != "run_id"} for t in trials]
                    emit("failover", line)
                    print(json.dumps({"done": label, "mode": mode}), file=sys.stderr)


if __name__ == "__main__":
    main()
