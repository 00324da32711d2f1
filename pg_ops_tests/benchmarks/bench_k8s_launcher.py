"""What launching a run as a Kubernetes Job costs (issue 21): a failover of a Kubernetes cluster
(the real control plane, stand-in nodes) submitted with `pg-ops failover --dagster-url`, through
`dagster dev` with
  (a) dagster-k8s's K8sRunLauncher (production's launcher: a Job, its pod made by the real Job
      controller and placed by the real scheduler, `dagster api execute_run` run by a stand-in
      kubelet), against
  (b) the default launcher (the run as a child process of the webserver), the baseline measured
      in the same run on the same cluster.
Per trial the primary's node is lost (cordoned, its pod killed), the failover submitted and waited
for, then the node back and the old primary a replica again. Figures: submit -> run finished as
the CLI sees it, and the run's own start -> end (so the rest is the launch).
Then the path production runs (issue 27): `failover.mode: automatic`, the cluster's health sensor
in the real daemon, an application writing through the primary Service; the RTO (the failure ->
the application's first acknowledged write on the new primary) with each launcher when the
primary's node is lost, and with K8sRunLauncher when its container crashes on a node that is up;
and, in the same run, the same path on a local 2-member cluster (the laptop's figure, primary
killed and primary cut off): production's RTO over it.
TRIALS trials of each, 2-member async cluster."""

from __future__ import annotations

import logging
import os
import time
from contextlib import redirect_stdout
from io import StringIO

import dagster as dg

from pg_ops.cli import main as cli_main
from pg_ops.defs.partitions import CLUSTER_TAG
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.runs import CLUSTERS_JOB, Deployment
from pg_ops_tests.benchmarks.common import emit, summary
from pg_ops_tests.kube_cluster import k8s_launcher_instance
from pg_ops_tests.support.dagster import dagster_daemon, prepared_instance
from pg_ops_tests.support.helpers import (
    free_port,
    home_environment,
    kill_member,
    real_kubernetes,
    spec_from,
    wait_for,
    write_platform_spec,
)

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "3"))
logging.basicConfig(level=logging.WARNING)


def trials(kube, ctx, home, instance, launcher: str) -> tuple[list[float], list[float]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    walls, runs_ = [], []
    ns = ctx.spec.kubernetes.namespace
    with dagster_daemon(home, {}, webserver_port=port):
        deployment = Deployment(url)
        wait_for(lambda: ctx.name in deployment.partition_keys(CLUSTERS_JOB), "dagster dev", timeout=240, interval=1)
        for _ in range(TRIALS):
            old = ctx.state().primary
            kube.hold_pending(ns, old)
            kill_member(ctx.platform, old)
            start = time.monotonic()
            with redirect_stdout(StringIO()):
                rc = cli_main(["failover", "--cluster", ctx.name, "--json", "--dagster-url", url])
            walls.append(time.monotonic() - start)
            if rc != 0:
                raise SystemExit(f"{launcher}: the failover run failed")
            run = instance.get_runs(filters=dg.RunsFilter(job_name="failover", tags={CLUSTER_TAG: ctx.name}),
                                    limit=1)[0]
            record = instance.get_run_record_by_id(run.run_id)
            runs_.append(record.end_time - record.start_time if record and record.start_time and record.end_time
                         else None)
            kube.release_pending(ns, old)
            wait_for(lambda o=old: ctx.probe([o])[o].streaming, f"{old} back as a replica", timeout=120)
            deploy(ctx)
    return walls, runs_


def sensor_trials(kube, ctx, home, instance, failure: str = "node") -> list[float]:
    """Kill -> the application's first write acknowledged by the new primary, with the daemon's
    health sensor deciding and launching the failover. `failure`: "node", the primary's node
    lost (its pod force-deleted, the node cordoned: nobody can confirm the old primary stopped,
    the isolation lease is waited out); "crash", the primary's container crashed on a node that
    is up (its kubelet restarts it after the real first back-off, 10 s; it confirms the graceful
    deletion the fence makes, so no lease wait)."""
    from pg_ops.defs.health import health_sensor_cursor
    from pg_ops_tests.app_writer import App

    rtos = []
    ns = ctx.spec.kubernetes.namespace
    with dagster_daemon(home, {}):
        wait_for(lambda: len(health_sensor_cursor(instance, ctx.name).ticks) >= 2, "two health sensor ticks",
                 timeout=240, interval=1)
        for _ in range(TRIALS):
            with App(ctx) as app:
                app.wait_acks(30, timeout=60)
                old, epoch = ctx.state().primary, ctx.state().epoch
                if failure == "node":
                    kube.hold_pending(ns, old)
                failed_at = time.time()
                if failure == "node":
                    kill_member(ctx.platform, old)
                else:
                    kube.crash_pod(ns, old, restart_after_s=10.0)
                wait_for(lambda e=epoch: ctx.state().epoch > e, "the sensor's failover", timeout=180, interval=0.2)
                new = ctx.state().primary
                app.wait_acks(10, timeout=60, on=new)
                first = app.first_ack_on(new, failed_at)
                rtos.append(round(first - failed_at, 3) if first else None)
            wait_for(lambda: ctx.state().lock is None, "the failover run to end", timeout=120)
            kube.release_pending(ns, old)
            wait_for(lambda o=old: ctx.probe([o])[o].streaming, f"{old} back as a replica", timeout=120)
            deploy(ctx)
            time.sleep(6)  # the sensor sees the healthy cluster (the incident resolves)
    return rtos


def local_sensor_trials() -> dict[str, list[float]]:
    """The same path on the local platform, in the same run (issue 27's baseline for "as fast in
    production as on the laptop"): a 2-member local cluster, `failover.mode: automatic`, the
    daemon's health sensor, the same application; the primary killed (pg_ops sees its processes
    gone: no lease to wait for), then cut off on loopback (alive, unreachable: the lease is waited
    out, as for a pod on a lost node, which nobody can confirm stopped); the failure -> first
    write acknowledged by the new primary."""
    import contextlib

    from pg_ops.defs.health import health_sensor_cursor
    from pg_ops_tests.app_writer import App
    from pg_ops_tests.partition import Partitions, unavailable
    from pg_ops_tests.support.helpers import running_cluster, write_spec

    rtos: dict[str, list[float]] = {"kill": [], "partition": []}
    with home_environment() as home:
        spec = spec_from(write_spec(home / "specs", "lbench", postgres={"members": 2},
                                    failover={"mode": "automatic"}, backups={"wal": {"enabled": False}}))
        with running_cluster(spec) as ctx:
            instance = prepared_instance(home)
            try:
                with dagster_daemon(home, {}):
                    wait_for(lambda: len(health_sensor_cursor(instance, ctx.name).ticks) >= 2,
                             "two health sensor ticks", timeout=240, interval=1)
                    for mode in ("kill", "partition"):
                        if mode == "partition" and unavailable():
                            continue
                        for _ in range(TRIALS):
                            parts_cm = Partitions(ctx) if mode == "partition" else contextlib.nullcontext()
                            with parts_cm as parts, App(ctx, parts) as app:
                                app.wait_acks(30, timeout=60)
                                old, epoch = ctx.state().primary, ctx.state().epoch
                                failed_at = time.time()
                                if parts is not None:
                                    parts.isolate(old)
                                else:
                                    kill_member(ctx.platform, old)
                                wait_for(lambda e=epoch: ctx.state().epoch > e, "the sensor's failover",
                                         timeout=180, interval=0.2)
                                new = ctx.state().primary
                                app.wait_acks(10, timeout=60, on=new)
                                first = app.first_ack_on(new, failed_at)
                                rtos[mode].append(round(first - failed_at, 3) if first else None)
                                if parts is not None:
                                    parts.heal()
                            wait_for(lambda: ctx.state().lock is None, "the failover run to end", timeout=120)
                            deploy(ctx)  # the old primary back as a replica
                            time.sleep(6)  # the sensor sees the healthy cluster (the incident resolves)
            finally:
                instance.dispose()
    return rtos


def failover_mode(path, mode: str) -> None:
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["failover"] = {**raw.get("failover", {}), "mode": mode}
    path.write_text(yaml.safe_dump(raw))


def main() -> None:
    with home_environment() as home, real_kubernetes() as kube:
        path = write_platform_spec(home / "specs", "kbench", "kubernetes", postgres={"members": 2},
                                   failover={"mode": "manual"}, backups={"wal": {"enabled": False}})
        spec = spec_from(path)
        kube.register_cluster(spec)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        results, sensor = {}, {}
        for launcher in ("local", "k8s"):
            instance = k8s_launcher_instance(home, kube) if launcher == "k8s" else prepared_instance(home)
            try:
                results[launcher] = trials(kube, ctx, home, instance, launcher)
                failover_mode(path, "automatic")  # the sensor reads the spec file at every tick
                try:
                    sensor[launcher] = sensor_trials(kube, ctx, home, instance)
                    if launcher == "k8s":
                        sensor["k8s_crash"] = sensor_trials(kube, ctx, home, instance, failure="crash")
                finally:
                    failover_mode(path, "manual")
            finally:
                instance.dispose()
                if launcher == "k8s":
                    kube.admin_api().core.delete_namespaced_config_map("dagster-instance", "dagster")
                    kube.config_maps.clear()
        local_platform = local_sensor_trials()
        local_wall, local_run = results["local"]
        k8s_wall, k8s_run = results["k8s"]
        ratio = summary(k8s_wall)["median"] / summary(local_wall)["median"]
        emit("k8s_launcher", {
            "failover_submit_to_finished_s": {"k8s_run_launcher": summary(k8s_wall),
                                              "local_launcher": summary(local_wall)},
            "failover_run_start_to_end_s": {"k8s_run_launcher": summary(k8s_run), "local_launcher": summary(local_run)},
            "k8s_over_local": round(ratio, 2),
            "sensor_kill_rto_s": {"k8s_run_launcher": summary(sensor["k8s"]),
                                  "local_launcher": summary(sensor["local"])},
            "sensor_rto_k8s_over_local": round(
                summary(sensor["k8s"])["median"] / summary(sensor["local"])["median"], 2),
            "local_platform_sensor_kill_rto_s": summary(local_platform["kill"]),
            "local_platform_sensor_partition_rto_s": summary(local_platform["partition"]),
            # A pod on a lost node is like a partitioned local primary (the lease waited out); a
            # killed local primary is confirmed stopped at once, as a crashed container is by its
            # kubelet (the like-for-like pair: production's crash against the local kill).
            "production_crash_rto_s": summary(sensor["k8s_crash"]),
            "production_crash_over_local_kill": round(summary(sensor["k8s_crash"])["median"]
                                                      / summary(local_platform["kill"])["median"], 2),
            "production_over_local_kill": round(summary(sensor["k8s"])["median"]
                                                / summary(local_platform["kill"])["median"], 2),
            "production_over_local_partition": round(summary(sensor["k8s"])["median"]
                                                     / summary(local_platform["partition"])["median"], 2)
            if local_platform["partition"] else None,
            "target_production_over_local": 1.5,
            "target_sensor_rto_k8s_over_local": 1.5})


if __name__ == "__main__":
    main()
