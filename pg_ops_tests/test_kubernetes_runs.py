"""Runs as production launches them (issue 21): the Dagster webserver and daemon with
dagster-k8s's `K8sRunLauncher` against the real control plane. A failover of a Kubernetes
cluster submitted from the CLI becomes a Kubernetes Job in the `dagster` namespace; the real Job
controller makes its pod, the real scheduler places it, and a stand-in kubelet runs the pod's
`dagster api execute_run …` with the project's venv standing in for the user-code image (as the
Dagster user-code image runs it in production). The run reports to the instance, the Job
completes, and the cluster has a new primary.

What differs from production: the run pod's process runs as this machine's user and reaches the
API server with the kubeconfig named in its env (a real pod uses its ServiceAccount token), and
the instance is SQLite on this machine's disk (production's is PostgreSQL)."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from kubernetes import client as k8s

from pg_ops.cli import main as cli_main
from pg_ops.defs.partitions import CLUSTER_TAG
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.render import names as names
from pg_ops.runs import CLUSTERS_JOB, Deployment
from pg_ops_tests.kube_cluster import USER_CODE_IMAGE, k8s_launcher_instance
from pg_ops_tests.support.dagster import dagster_daemon
from pg_ops_tests.support.helpers import (
    free_port,
    home_environment,
    kill_member,
    real_kubernetes,
    spec_from,
    wait_for,
    write_platform_spec,
)

pytestmark = pytest.mark.daemon
def test_a_failover_run_is_a_kubernetes_job_whose_pod_runs_it(capsys):
    with home_environment() as home, real_kubernetes() as kube:
        spec = spec_from(write_platform_spec(home / "specs", "kr", "kubernetes", postgres={"members": 2},
                                             failover={"mode": "manual"}, backups={"wal": {"enabled": False}}))
        kube.register_cluster(spec)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        instance = k8s_launcher_instance(home, kube)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            with dagster_daemon(home, {}, webserver_port=port):
                deployment = Deployment(url)
                wait_for(lambda: "kr" in deployment.partition_keys(CLUSTERS_JOB), "dagster dev and pg-ops",
                         timeout=240, interval=1)
                old = ctx.state().primary
                kube.hold_pending(spec.kubernetes.namespace, old)  # its node is gone: the pod cannot come back
                kill_member(ctx.platform, old)
                assert cli_main(["failover", "--cluster", "kr", "--json", "--dagster-url", url]) == 0, \
                    (home / "daemon.log").read_text()[-3000:]
                meta = json.loads(capsys.readouterr().out)
                assert meta["old_primary"] == old and meta["new_primary"] == ctx.state().primary != old
                (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="failover", tags={CLUSTER_TAG: "kr"}))
                assert run.is_success
                # The run was a Job of the real Job controller, its pod run by a stand-in kubelet.
                batch = k8s.BatchV1Api(kube.admin_api().client)
                jobs = batch.list_namespaced_job(
                    names.PG_OPS_NAMESPACE, label_selector=f"dagster/run-id={run.run_id}").items
                assert len(jobs) == 1
                wait_for(lambda: (batch.read_namespaced_job(
                    jobs[0].metadata.name, names.PG_OPS_NAMESPACE).status.succeeded or 0) == 1,
                    "the Job complete")
                pods = kube.admin_api().core.list_namespaced_pod(
                    names.PG_OPS_NAMESPACE, label_selector=f"dagster/run-id={run.run_id}").items
                assert [p.status.phase for p in pods] == ["Succeeded"]
                assert pods[0].spec.containers[0].image == USER_CODE_IMAGE
        finally:
            instance.dispose()
