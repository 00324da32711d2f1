"""End to end through the real Dagster daemon: the health sensor runs on its own, POSTs a
member-down alert when a replica stops and its resolution after the restart, and its record
(the cursor) holds the failed-member detection time the service-level check reads."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pg_ops import settings
from pg_ops.defs.health import health_sensor_cursor
from pg_ops.operations import slo
from pg_ops.runs import CODE_LOCATION
from pg_ops_tests.helpers import kill_member, running_cluster, wait_for
from pg_ops_tests.test_alerts import WebhookCapture

pytestmark = pytest.mark.daemon
VENV_BIN = Path(sys.executable).parent


def prepared_instance(home: Path) -> dg.DagsterInstance:
    """The instance the daemon will use, with its storage created before the daemon starts
    (two processes creating the SQLite tables at once collide)."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(settings.LOCAL_INSTANCE_CONFIG, dagster_home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    instance.get_runs(limit=1)
    instance.all_instigator_state()
    return instance


@contextlib.contextmanager
def dagster_daemon(home: Path, env: dict, webserver_port: int | None = None):
    """`dagster-daemon run` on the pg_ops code location (with `webserver_port`: `dagster dev`,
    the webserver on 127.0.0.1:port and the daemon sharing one code server), in its own
    session, stopped by process group (its code server and any run it launched go with it)."""
    dagster_home = home / "dagster"
    workspace = home / "workspace.yaml"
    workspace.write_text("load_from:\n  - python_module:\n      module_name: pg_ops.definitions\n"
                         f"      working_directory: {settings.REPO_ROOT}\n      location_name: {CODE_LOCATION}\n")
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 - closed in finally
    command = [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(workspace)]
    if webserver_port is not None:
        command = [str(VENV_BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(webserver_port), "-w", str(workspace)]
    proc = subprocess.Popen(command,
                            env={**os.environ, **env, "DAGSTER_HOME": str(dagster_home)}, cwd=settings.REPO_ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_daemon_alerts_on_a_stopped_replica_and_on_its_return(make_spec, pg_home):
    spec = make_spec("dmn", monitoring={"interval_seconds": 1})
    instance = prepared_instance(pg_home)
    with running_cluster(spec) as ctx, WebhookCapture() as hook, \
            dagster_daemon(pg_home, {"PG_OPS_ALERT_WEBHOOK": hook.url}):
        try:
            wait_for(lambda: len(health_sensor_cursor(instance, spec.name)["ticks"]) >= 2, "two health sensor ticks", timeout=120)
            victim = [m for m in spec.member_names if m != ctx.state().primary][0]
            ctx.platform.stop_member(victim)
            wait_for(lambda: ("member_down", victim) in hook.kinds(resolved=False), "member_down alert", timeout=60)
            ctx.platform.start_member(victim)
            wait_for(lambda: ("member_down", victim) in hook.kinds(resolved=True), "member_down resolved", timeout=90)
            history = health_sensor_cursor(instance, spec.name)
        except AssertionError:
            print((pg_home / "daemon.log").read_text()[-3000:])
            raise
        finally:
            instance.dispose()
    downs = [b for b in hook.bodies if b["kind"] == "member_down"]
    assert len(downs) == 2 and downs[0]["fired_at"] == downs[1]["fired_at"] and downs[1]["resolved_at"]
    password = ctx.admin_password()
    assert all(password not in str(b) for b in hook.bodies)
    detection = [d for d in history["detections"] if d["member"] == victim]
    assert detection and detection[-1]["cluster"] == "dmn"
    level = slo.failed_member_detection(history, "dmn", sensor_interval=1)
    assert level.figure is not None and level.details["recorded_failures"] >= 1
    print(f"\nfailed-member detection through the daemon: {detection[-1]['seconds']:.2f} s; level: {level.summary}")


def test_daemon_fails_over_a_lost_primary_and_it_rejoins(make_spec, pg_home):
    """The whole loop: the primary member is lost (supervisor and postgres SIGKILLed); the
    sensor confirms it and takes over in its own tick (fence, promote, route: failover.promote_in
    sensor, the default), then requests the failover run, which the daemon launches and which
    finishes and records the change; writes resume through the primary endpoint; `deploy` brings
    the old primary back as a replica on the new timeline."""
    import psycopg

    from pg_ops.credentials import PG_OPS_DATABASE
    from pg_ops.operations.deploy import deploy
    from pg_ops.operations.status import cluster_status

    spec = make_spec("dfo", monitoring={"interval_seconds": 1})
    instance = prepared_instance(pg_home)
    with running_cluster(spec) as ctx, WebhookCapture() as hook, \
            dagster_daemon(pg_home, {"PG_OPS_ALERT_WEBHOOK": hook.url}):
        try:
            wait_for(lambda: len(health_sensor_cursor(instance, spec.name)["ticks"]) >= 2, "two health sensor ticks", timeout=120)
            old = ctx.state().primary
            kill_member(ctx.platform, old)
            wait_for(lambda: ctx.state().epoch == 2 and ctx.state().lock is None, "the failover", timeout=120)
            runs = wait_for(lambda: instance.get_runs(filters=dg.RunsFilter(job_name="failover")), "the failover run",
                            timeout=60)
            wait_for(lambda: instance.get_run_by_id(runs[0].run_id).is_finished, "the run to finish", timeout=60)
            assert len(runs) == 1 and instance.get_run_by_id(runs[0].run_id).is_success
            assert runs[0].tags["dagster/run_key"].startswith("failover-dfo-")
            # The run recorded the whole change: the sensor's steps and its own.
            records = instance.fetch_observations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey(["deployment", "replication"]), asset_partitions=["dfo"]), limit=5).records
            change = next(r.asset_observation.metadata for r in records
                          if r.asset_observation.metadata.get("operation").value == "failover")
            steps = change["steps"].value
            assert "promote" in steps and "verify a write through the primary endpoint" in steps
            assert "the health sensor took over" in "; ".join(change["notes"].value)
            new = ctx.state().primary
            with psycopg.connect(ctx.platform.primary_dsn("postgres", PG_OPS_DATABASE),
                                 password=ctx.admin_password(), autocommit=True) as conn:
                conn.execute("create table after_failover (v int)")
                assert conn.execute("select current_setting('cluster_name')").fetchone()[0] == new
            deploy(ctx)
            status = cluster_status(ctx).to_dict()
            row = {m["name"]: m for m in status["members"]}
            assert row[old]["role"] == "replica" and row[old]["streaming"] and row[old]["timeline"] == 2
            assert status["writable_members"] == [new]
        except AssertionError:
            print((pg_home / "daemon.log").read_text()[-3000:])
            raise
        finally:
            instance.dispose()
    assert ("primary_down", old) in hook.kinds(resolved=False)
    assert len(instance.get_runs(filters=dg.RunsFilter(job_name="failover"))) == 1  # one incident, one run
