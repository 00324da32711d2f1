"""`pg-ops` through a real deployment (issue 14): one `dagster dev` (webserver + daemon on free
ports, stopped by process group) for the module, one small cluster, a webhook capturing alerts.

A CLI backup is a run of the code location, re-executable the way the UI does it; a failing one
fires the run-failure alert naming its cluster; two topology runs of one cluster launched at
once from the CLI and from GraphQL never overlap; a spec added while the daemon runs is alerted
on, picked up by a reload and failed over; bad arguments create no run; no password reaches the
instance's storage."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from pg_ops import runs
from pg_ops.cli import main as cli_main
from pg_ops.defs.backups import today_partition
from pg_ops.defs.partitions import CLUSTER_TAG, TOPOLOGY_TAG
from pg_ops.operations.context import ClusterContext
from pg_ops.runs import CLUSTERS_JOB, CODE_LOCATION, REPOSITORY
from pg_ops.state import update_state
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.dagster import VENV_BIN, dagster_daemon, dagster_storage_bytes, prepared_instance
from pg_ops_tests.support.helpers import (
    free_port,
    home_environment,
    kill_member,
    running_cluster,
    spec_from,
    stop_cluster,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.daemon
# Not about archiving, and these tests count the runs they start: no WAL archive, so the archive
# sensor launches no first base backup beside them.
NO_ARCHIVING = {"wal": {"enabled": False}}
REFUSED_PASSWORD = "Refused-dsn-passw0rd"
REEXECUTE = """mutation($parent: String!) {
  launchRunReexecution(reexecutionParams: {parentRunId: $parent, strategy: ALL_STEPS}) { __typename
    ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }"""
ORIGIN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { repositoryOrigin { repositoryLocationName } } } }"""


@dataclass
class Deployed:
    home: Path
    url: str
    deployment: runs.Deployment
    ctx: ClusterContext
    hook: WebhookCapture
    instance: dg.DagsterInstance

    def finished(self, run_id: str, timeout: float = 180) -> dg.DagsterRun:
        return wait_for(lambda: (r := self.instance.get_run_by_id(run_id)) is not None and r.is_finished and r,
                        f"run {run_id} to finish", timeout=timeout, interval=0.5)


@pytest.fixture(scope="module")
def deployed():
    with home_environment() as home, WebhookCapture() as hook:
        spec = spec_from(write_spec(home / "specs", "e2e", postgres={"members": 2}, failover={"mode": "manual"},
                                   backups=NO_ARCHIVING))
        instance = prepared_instance(home)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        dagster_home = (home / "dagster").resolve()
        with running_cluster(spec) as ctx, \
                dagster_daemon(home, {"PG_OPS_ALERT_WEBHOOK": hook.url}, webserver_port=port):
            (dagster_home / runs.LOCAL_URL_FILE).write_text(url)  # what `make run` writes
            deployment = runs.Deployment(url)
            try:
                wait_for(lambda: deployment.unusable_because(dagster_home) is None
                         and "e2e" in deployment.partition_keys(CLUSTERS_JOB), "dagster dev, its daemon and pg-ops",
                         timeout=240, interval=1)
                yield Deployed(home, url, deployment, ctx, hook, instance)
            except BaseException:
                print((home / "daemon.log").read_text()[-4000:])
                raise
            finally:
                instance.dispose()


def test_a_cli_backup_is_a_run_of_the_code_location_and_can_be_re_executed(deployed, capsys):
    # No --dagster-url: the local deployment is found through DAGSTER_HOME (as after `make run`).
    assert cli_main(["backup", "--cluster", "e2e", "--json"]) == 0
    captured = capsys.readouterr()
    assert "in this process" not in captured.err
    out = json.loads(captured.out)
    assert out["status"] == "complete" and out["size"] > 0 and out["source"].startswith("e2e-")
    run = deployed.instance.get_run_by_id(out["run_id"])
    assert run.is_success and run.tags[CLUSTER_TAG] == "e2e" and run.tags["dagster/partition"] == today_partition()
    origin = deployed.deployment.query(ORIGIN, {"id": run.run_id})["runOrError"]["repositoryOrigin"]
    assert origin["repositoryLocationName"] == CODE_LOCATION  # what the UI and the failure sensor match on
    # Re-executed as the UI's "Re-execute all" does.
    launched = deployed.deployment.query(REEXECUTE, {"parent": run.run_id})["launchRunReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    again = deployed.finished(launched["run"]["runId"])
    assert again.is_success and again.parent_run_id == run.run_id and again.tags[CLUSTER_TAG] == "e2e"


def test_a_failing_cli_backup_fires_the_run_failure_alert_for_its_cluster(deployed, capsys):
    store = deployed.home / "backups" / "e2e"
    store.mkdir(parents=True, exist_ok=True)
    aside = store.with_name("e2e.aside")
    store.rename(aside)
    store.write_text("a file where the cluster's backup folder belongs")
    try:
        assert cli_main(["backup", "--cluster", "e2e"]) == 1
    finally:
        store.unlink()
        aside.rename(store)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pg-ops backup: backup_cluster on e2e failed (run "), lines
    failed = wait_for(lambda: [b for b in deployed.hook.bodies if b["kind"] == "run_failed"], "the run-failure alert",
                      timeout=120, interval=1)
    assert failed[0]["cluster"] == "e2e" and "backup_cluster" in failed[0]["summary"]  # not the partition's date
    passwords = deployed.ctx.platform.load_credentials().as_plain_dict().values()
    assert not any(p in json.dumps(deployed.hook.bodies) for p in passwords)


def test_two_topology_runs_of_one_cluster_from_the_cli_and_graphql_never_overlap(deployed):
    replica = next(m for m in deployed.ctx.spec.member_names if m != deployed.ctx.state().primary)
    before = {r.run_id for r in deployed.instance.get_runs()}
    cli = subprocess.Popen([str(VENV_BIN / "pg-ops"), "rebuild", replica, "--reclone", "--cluster", "e2e", "--json"],
                           env={**os.environ, runs.URL_ENV: deployed.url}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        (first,) = wait_for(lambda: [r for r in deployed.instance.get_runs() if r.run_id not in before],
                            "the CLI's run", timeout=120, interval=0.2)
        # Launched like the UI's launchpad: the partition's tags, from the deployment.
        tags = deployed.deployment.partition_tags("rebuild_member", "e2e")
        assert tags[TOPOLOGY_TAG] == "e2e"
        second_id = deployed.deployment.client.submit_job_execution(
            "rebuild_member", repository_location_name=CODE_LOCATION, repository_name=REPOSITORY,
            run_config={"ops": {"run_rebuild": {"config": {"member": replica, "reclone": False}}}}, tags=tags)
        out, err = cli.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cli.pid, signal.SIGKILL)
    assert cli.returncode == 0, err
    assert json.loads(out)["member"] == replica
    deployed.finished(second_id)
    records = sorted((deployed.instance.get_run_record_by_id(i) for i in (first.run_id, second_id)),
                     key=lambda r: r.start_time)
    assert all(r.dagster_run.is_success and r.dagster_run.tags[TOPOLOGY_TAG] == "e2e" for r in records)
    earlier, later = records
    assert later.create_timestamp.timestamp() < earlier.end_time  # both existed while the first ran...
    assert later.start_time >= earlier.end_time  # ...and the second waited for it to end


def test_a_spec_added_while_the_daemon_runs_is_picked_up_and_fails_over(deployed, capsys):
    late = spec_from(write_spec(deployed.home / "specs", "late", postgres={"members": 2}, failover={"mode": "manual"},
                              backups=NO_ARCHIVING))
    ctx = ClusterContext.for_spec(late)
    try:
        # Before a reload the health sensor skips it with an alert, and keeps watching the others.
        wait_for(lambda: ("cluster_not_loaded", "late") in deployed.hook.kinds(resolved=False),
                 "the cluster_not_loaded alert", timeout=120, interval=1)
        assert cli_main(["deploy", "--cluster", "late", "--dagster-url", deployed.url]) == 0
        assert "reloading it" in capsys.readouterr().err
        wait_for(lambda: ("cluster_not_loaded", "late") in deployed.hook.kinds(resolved=True),
                 "the alert's resolution once loaded", timeout=120, interval=1)
        old = ctx.state().primary
        kill_member(ctx.platform, old)
        assert cli_main(["failover", "--cluster", "late", "--json", "--dagster-url", deployed.url]) == 0
        meta = json.loads(capsys.readouterr().out)
        assert meta["old_primary"] == old and meta["new_primary"] == ctx.state().primary != old
        (run,) = deployed.instance.get_runs(filters=dg.RunsFilter(job_name="failover", tags={CLUSTER_TAG: "late"}))
        assert run.is_success and run.tags[TOPOLOGY_TAG] == "late"
    finally:
        (deployed.home / "specs" / "late.yaml").unlink()
        # The daemon outlives this cluster and its health sensor starts a fenced member again
        # (StartMember): nothing fenced left in the record first, so nothing is started after the stop.
        with contextlib.suppress(Exception):
            update_state(ctx.platform.state_store(), lambda s: s.model_copy(update={"fenced": ()}))
        stop_cluster(ctx)


def test_bad_arguments_create_no_run_and_no_password_reaches_the_storage(deployed, capsys):
    count = deployed.instance.get_runs_count()
    target = f"host=127.0.0.1 port=1 dbname=copy user=x password={REFUSED_PASSWORD}"
    for argv in (["rebuild", "e2e-9"], ["switchover", "--to", "nobody"],
                 ["restore-drill", "--backup", "20000101T000000Z"],
                 ["restore", "--backup", "20000101T000000Z", "--confirm", "e2e", "--target", target]):
        assert cli_main([*argv, "--cluster", "e2e", "--dagster-url", deployed.url]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pg-ops {argv[0]}: "), lines
    assert deployed.instance.get_runs_count() == count
    stored = dagster_storage_bytes(deployed.home / "dagster")
    assert b"backup_cluster" in stored and b"rebuild_member" in stored  # the runs above are in there
    passwords = deployed.ctx.platform.load_credentials().as_plain_dict().values()
    for secret in (REFUSED_PASSWORD, *passwords):
        assert secret.encode() not in stored
