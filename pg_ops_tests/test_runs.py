"""Runs of the code location, without a deployment (issue 14): where `pg-ops` sends a run and
when it refuses, arguments refused before any run exists, the topology tags every launch path
gets, the cluster a run-failure alert names, specs the loaded code location does not know, the
checks evaluated by sensors (no run), observation retention, and one code location name.
The same paths through a real `dagster dev`: pg_ops_tests/test_runs_deployment.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import tomllib

import dagster as dg
import pytest
import yaml

from pg_ops import runs, settings
from pg_ops.cli import main as cli_main
from pg_ops.defs import health
from pg_ops.defs.partitions import CLUSTER_TAG, MAX_RUNTIME_TAG, TOPOLOGY_TAG
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations.health import Detection, SensorCursor
from pg_ops.runs import CODE_LOCATION
from pg_ops.spec import load_specs
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.dagster import dagster_storage_bytes
from pg_ops_tests.support.helpers import free_port, spec_from, write_spec

REPO = settings.REPO_ROOT
TOPOLOGY_JOBS = ("deploy_cluster", "failover", "switchover", "rebuild_member", "rolling_restart")


def defs_of(*specs):
    from pg_ops.definitions import build_defs

    return build_defs(list(specs))


# -- one code location name -----------------------------------------------------------------------
def test_one_code_location_name_everywhere():
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    values = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["location_name"] == CODE_LOCATION
    assert pyproject["tool"]["dagster"]["code_location_name"] == CODE_LOCATION
    assert values["dagster-user-deployments"]["deployments"][0]["name"] == CODE_LOCATION
    stale = [str(p.relative_to(REPO)) for p in [*REPO.glob("docs/**/*.md"), *REPO.glob("deploy/**/*.yaml"),
                                                REPO / "README.md"]
             if "locations/pg_ops" in p.read_text() or "location_name: pg_ops" in p.read_text()]
    assert stale == []


def test_a_specs_change_restarts_the_code_server():
    """The chart rolls the code server pod when its deployment's values change: the annotation
    carries the specs ConfigMap's checksum, so a spec change reaches the definitions."""
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((REPO / "deploy" / "dagster" /
                                                                   "pg-ops-config.yaml").read_text())}
    data = docs["pg-ops-cluster-specs"]["data"]
    expected = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    values = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
    annotations = values["dagster-user-deployments"]["deployments"][0]["annotations"]
    assert annotations["pg-ops.io/cluster-specs-sha256"] == expected, \
        f"deploy/dagster/values.yaml: set pg-ops.io/cluster-specs-sha256 to {expected}"


# -- topology tags on every launch path, a maximum runtime, monitoring on ---------------------------
def test_topology_runs_are_tagged_per_cluster_on_every_launch_path(pg_home):
    a, b = (spec_from(write_spec(pg_home / "specs", n)) for n in ("ta", "tb"))
    defs = defs_of(a, b)
    for name in TOPOLOGY_JOBS:
        job = defs.resolve_job_def(name)
        assert job.run_tags["dagster/max_retries"] == "0" and int(job.run_tags[MAX_RUNTIME_TAG]) > 0
        # What the UI's launchpad and a backfill give a run of partition "tb".
        tags = job.get_tags_for_partition_key("tb", None)
        assert tags[TOPOLOGY_TAG] == "tb" and tags[CLUSTER_TAG] == "tb" and tags["dagster/partition"] == "tb"
    # A sensor's run request resolves to the same tags.
    request = health._failover_request(health.health_ops.FailoverRequest(cluster="ta", incident="i1", detected_at=1.0))
    resolved = request.with_resolved_tags_and_config(defs.resolve_job_def("failover"), [], None)
    assert resolved.tags[TOPOLOGY_TAG] == "ta" and resolved.tags[CLUSTER_TAG] == "ta"
    for path in (REPO / "deploy" / "dagster" / "local" / "dagster.yaml", REPO / "deploy" / "dagster" / "dagster.yaml"):
        config = yaml.safe_load(path.read_text())
        assert config["run_monitoring"]["enabled"] is True and config["run_monitoring"]["max_resume_run_attempts"] == 0
        limit = config["run_coordinator"]["config"]["tag_concurrency_limits"][0]
        assert limit["key"] == TOPOLOGY_TAG and limit["value"] == {"applyLimitPerUniqueValue": True}


# -- where a run goes -------------------------------------------------------------------------------
def test_without_a_deployment_a_local_cluster_runs_here_and_says_so(pg_home, capsys, monkeypatch):
    monkeypatch.delenv(runs.URL_ENV, raising=False)
    (pg_home / "dagster" / runs.LOCAL_URL_FILE).write_text(f"http://127.0.0.1:{free_port()}\n")
    assert runs.choose_deployment(runs.Options(), "failover", "local", "c") is None
    err = capsys.readouterr().err
    assert "no Dagster webserver answers" in err and "run queue" in err and "desired-state lock still" in err


def test_without_a_deployment_a_kubernetes_cluster_is_refused(pg_home, monkeypatch):
    monkeypatch.delenv(runs.URL_ENV, raising=False)
    (pg_home / "dagster" / runs.LOCAL_URL_FILE).write_text(f"http://127.0.0.1:{free_port()}\n")
    with pytest.raises(runs.PgOpsError, match="runs on Kubernetes .* --dagster-url"):
        runs.choose_deployment(runs.Options(), "failover", "kubernetes", "homelab")
    assert runs.choose_deployment(runs.Options(in_process=True), "failover", "kubernetes", "homelab") is None


def test_a_named_deployment_that_does_not_answer_is_refused(pg_home, monkeypatch):
    with WebhookCapture() as not_dagster:  # an HTTP server, but not Dagster's
        for url in (f"http://127.0.0.1:{free_port()}", not_dagster.url.rsplit("/", 1)[0]):
            with pytest.raises(runs.PgOpsError, match="no Dagster webserver answers .* nothing was run"):
                runs.choose_deployment(runs.Options(dagster_url=url), "failover", "local", "c")
    monkeypatch.setenv(runs.URL_ENV, "ftp://dagster.example")
    with pytest.raises(runs.PgOpsError, match="not an http"):
        runs.choose_deployment(runs.Options(), "failover", "local", "c")


# -- bad arguments: one line, no run, no password stored ---------------------------------------------
def test_bad_arguments_are_refused_before_any_run_exists(make_spec, pg_home, capsys, monkeypatch):
    monkeypatch.delenv(runs.URL_ENV, raising=False)
    spec = make_spec("args")  # never deployed: nothing here needs a server
    password = "Sup3r-secret-never-stored"
    commands = {
        "rebuild": ["rebuild", "args-9"],
        "switchover": ["switchover", "--to", "nope"],
        "failover": ["failover", "--to", "args-7"],
        "restore-drill": ["restore-drill", "--backup", "20000101T000000Z"],
        "restore": ["restore", "--backup", "20000101T000000Z", "--confirm", spec.name,
                    "--target", f"host=127.0.0.1 port=1 dbname=copy user=x password={password}"],
    }
    reasons = {}
    for name, argv in commands.items():
        assert cli_main([*argv, "--cluster", spec.name]) == 1, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pg-ops {name}: "), captured.err
        assert password not in captured.err and password not in captured.out
        reasons[name] = lines[0]
    assert "no member 'args-9'" in reasons["rebuild"] and "no member 'nope'" in reasons["switchover"]
    assert "does not exist" in reasons["restore-drill"] and "carries a password" in reasons["restore"]
    with dg.DagsterInstance.from_config(str(pg_home / "dagster")) as instance:
        assert instance.get_runs_count() == 0
    assert password.encode() not in dagster_storage_bytes(pg_home / "dagster")


# -- run-failure alerts name the cluster -------------------------------------------------------------
def test_run_failure_alert_names_the_cluster_not_the_date(pg_home):
    specs = {s.name: s for s in (spec_from(write_spec(pg_home / "specs", n)) for n in ("ca", "cb"))}

    def alert_for(tags, assets=None):
        run = dg.DagsterRun(job_name="backup_cluster", run_id="0123456789ab", tags=tags,
                            asset_selection=frozenset(dg.AssetKey(a) for a in assets) if assets else None)
        return health.run_failure_alert_for(run, "disk full", specs)

    assert alert_for({"dagster/partition": "2026-08-23", CLUSTER_TAG: "cb"}).cluster == "cb"
    ui_launch = alert_for({"dagster/partition": "2026-08-23"}, [["backups", "ca", "nightly"]])
    assert ui_launch.cluster == "ca" and "2026-08-23" not in ui_launch.summary.split(" for ")[1]
    topology = alert_for({TOPOLOGY_TAG: "cb", "dagster/partition": "cb"})
    assert topology.cluster == "cb" and topology.severity == "critical"


# -- specs the loaded code location does not know ------------------------------------------------------
def test_a_spec_added_after_loading_is_skipped_with_an_alert_not_a_broken_tick(pg_home, monkeypatch):
    loaded = spec_from(write_spec(pg_home / "specs", "old"))
    defs = defs_of(loaded)
    write_spec(pg_home / "specs", "new")  # written after the code location loaded
    specs_sensor = defs.get_sensor_def(health.SPECS_SENSOR_NAME)
    assert [s.name for s in defs.sensors if s.name.startswith(health.SENSOR_PREFIX)] == [health.sensor_name("old")]
    with WebhookCapture() as hook, dg.instance_for_test() as instance:
        monkeypatch.setenv("PG_OPS_ALERT_WEBHOOK", hook.url)
        resources = {"pg_ops": PgOpsResource(), "alerts": health.AlertsResource()}
        result = specs_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        assert not result.run_requests  # no request for "new": its partition does not exist here
        assert ("cluster_not_loaded", "new") in hook.kinds(resolved=False)
        body = next(b for b in hook.bodies if b["kind"] == "cluster_not_loaded")
        assert "cluster new " in body["summary"] and "reloaded" in body["summary"]
        # "old" is watched by its own sensor, which requests nothing for the other cluster.
        watched = defs.get_sensor_def(health.sensor_name("old"))(dg.build_sensor_context(
            instance=instance, resources=resources))
        assert list(json.loads(watched.cursor)["clusters"]) == ["old"]
        # Once the code location knows it (a reload builds the definitions again), it has its
        # own sensor and the alert resolves.
        reloaded = defs_of(*load_specs())
        result = reloaded.get_sensor_def(health.SPECS_SENSOR_NAME)(dg.build_sensor_context(
            instance=instance, resources=resources, cursor=result.cursor))
        assert ("cluster_not_loaded", "new") in hook.kinds(resolved=True)
        new = reloaded.get_sensor_def(health.sensor_name("new"))(dg.build_sensor_context(
            instance=instance, resources=resources))
        assert list(json.loads(new.cursor)["clusters"]) == ["new"]


def test_unreadable_specs_leave_the_loaded_ones_watched(pg_home):
    from pg_ops.errors import SpecError

    loaded = [spec_from(write_spec(pg_home / "specs", "kept"))]

    def broken():
        raise SpecError("specs/bad.yaml: field name: required")

    watched, (alerts, scope) = health.loaded_specs(broken, loaded)
    assert watched == loaded and [a.kind for a in alerts] == ["cluster_specs_unreadable"]
    assert "bad.yaml" in alerts[0].summary and health.SPECS_SCOPE in scope


# -- checks evaluated by sensors, no run ----------------------------------------------------------
def test_the_health_sensor_reports_failed_member_detection_on_a_new_failure_and_hourly(pg_home):
    spec = spec_from(write_spec(pg_home / "specs", "det"))
    hour = 3600 * 1000
    before = SensorCursor(ticks=[hour + 10.0], probe_seconds=0.1)
    after = SensorCursor(ticks=[hour + 10.0, hour + 15.0], probe_seconds=0.1)
    assert health.detection_checks(before, after, [spec], now=hour + 15.0) == []
    failed = dataclasses.replace(after, detections=[Detection(cluster="det", member="det-1", seen_down_at=hour + 14.0,
                                                              last_seen_up_at=hour + 9.8, seconds=4.2)])
    (check,) = health.detection_checks(after, failed, [spec], now=hour + 15.0)
    assert check.check_name == health.DETECTION_CHECK and check.asset_key == health.service_level_asset_key("det")
    assert check.passed and check.metadata["figure"].value == 5.1  # tick spacing 5 s + probes 0.1 s
    (hourly,) = health.detection_checks(failed, failed, [spec], now=2 * hour + 1.0)
    assert not hourly.passed and "not watching" in hourly.metadata["summary"].value  # its last tick: an hour ago


def test_store_checks_are_reported_by_a_sensor_on_change_and_hourly(pg_home):
    from pg_ops.defs import store_checks

    spec = spec_from(write_spec(pg_home / "specs", "st"))  # its file store is empty: no backup, no drill
    sensor = defs_of(spec).get_sensor_def(store_checks.SENSOR_NAME)
    assert not any(s.name in ("backup_freshness_hourly", "restore_drill_checks_hourly")
                   for s in defs_of(spec).schedules)  # no run an hour any more
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"pg_ops": PgOpsResource()})
        result = sensor(context)
        reported = {e.check_name: e for e in result.asset_events}
        assert set(reported) == {"backup_is_fresh", "latest_backup_restores", "drill_is_recent", "upgrade_rehearsed"}
        assert not any(e.passed for name, e in reported.items() if name != "upgrade_rehearsed")
        assert reported["upgrade_rehearsed"].passed  # postgres.version unset: no upgrade pending
        assert reported["backup_is_fresh"].metadata["newest_good_backup"].value == "none"
        again = sensor(dg.build_sensor_context(instance=instance, resources={"pg_ops": PgOpsResource()},
                                               cursor=result.cursor))
        assert again.asset_events == [] and again.skip_reason  # unchanged: nothing reported
    results = store_checks.store_results(health.ClusterContext.for_spec(spec))
    events, memory = store_checks.evaluations_to_report(json.loads(result.cursor), results,
                                                         time.time() + store_checks.REPORT_AT_LEAST_EVERY)
    assert len(events) == 4  # an hour later: reported again, so the UI shows it is current


# -- observation retention --------------------------------------------------------------------
def test_member_observations_are_trimmed_once_the_oldest_is_too_old():
    old, recent = health.member_asset_key("c", "c-0"), health.member_asset_key("c", "c-1")
    with dg.instance_for_test() as instance:
        for key in (old, recent):
            instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, metadata={"lag_bytes": 1}))

        def count(key):
            return len(instance.fetch_observations(dg.AssetRecordsFilter(asset_key=key), limit=10).records)

        assert health.trim_observations(instance, [old, recent]) == []
        assert count(old) == count(recent) == 1
        later = time.time() + (health.OBSERVATIONS_KEPT_DAYS + 1) * 86400
        assert health.trim_observations(instance, [old], now=later) == [old]
        assert count(old) == 0 and count(recent) == 1


# -- reading a run's outcome -------------------------------------------------------------------------
def test_graphql_errors_and_metadata_read_as_pg_ops_prints_them():
    error = {"message": "dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing "
                        "op \"run_failover\":\n", "className": "DagsterExecutionStepExecutionError",
             "stack": ["  File x\n"],
             "errorChain": [{"error": {"message": "pg_ops.errors.PgOpsError: refusing failover: local-0 answers\n",
                                       "className": "PgOpsError", "stack": ["  File y\n"]}}]}
    events = [{"__typename": "ExecutionStepOutputEvent", "stepKey": "run_failover", "metadataEntries": [
                  {"__typename": "IntMetadataEntry", "label": "epoch", "intValue": None, "intRepr": "4294967297"},
                  {"__typename": "FloatMetadataEntry", "label": "seconds", "floatValue": 1.5, "floatRepr": "1.5"},
                  {"__typename": "JsonMetadataEntry", "label": "report", "jsonString": "{\"a\": [1]}"}]},
              {"__typename": "ExecutionStepFailureEvent", "stepKey": "run_failover", "error": error}]
    outcome = runs.outcome_of_events("r1", "FAILURE", "http://x", events)
    assert outcome.output_for_node("run_failover") == {"epoch": 4294967297, "seconds": 1.5, "report": {"a": [1]}}
    assert outcome.reason == "refusing failover: local-0 answers"
    assert "File y" in outcome.traceback and outcome.link == "http://x/runs/r1"
    canceled = runs.outcome_of_events("r2", "CANCELED", "http://x", [
        {"__typename": "RunCanceledEvent", "message": "Canceling due to exceeding maximum runtime of 600 seconds."}])
    assert canceled.reason == "Canceling due to exceeding maximum runtime of 600 seconds."

