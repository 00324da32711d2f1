"""The UI's first picture of a fresh, healthy cluster has no red: `make run`'s path on a copy of its
cluster (deploy/clusters/local.yaml on free ports, throw-away PG_OPS_HOME and DAGSTER_HOME with
make run's instance config): `pg-ops deploy`, then make run's UI (scripts/serve-ui.py: the real
dagster-webserver and dagster-daemon) on a free loopback port.

Asserted through the webserver's GraphQL (what the asset graph draws from): once the daemon's
sensors have reported, every check of every asset has been evaluated where the UI shows one
(the deployment checks on cluster_health/<c>, the backup store's checks), none is failed
(backups and drills not due yet pass and say so), no run failed, and cluster_health/local's
latest observation says the cluster is healthy. Then headless Chromium (a
fresh profile) loads the deployment group's asset graph: its DOM shows the cluster_health node and
no first-visit community dialog, and its screenshot is a real picture (PG_OPS_UPDATE_SCREENSHOTS=1 writes it to
docs/images/dagster-asset-graph.png). Skipped without Debian's chromium (make apt-packages
installs it as root)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pg_ops import runs, settings
from pg_ops_tests.support.helpers import free_port, free_port_range, wait_for

REPO = settings.REPO_ROOT
VENV_BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars", "--force-device-scale-factor=1.25"]
GRAPH_PAGE = "/locations/pg-ops/asset-groups/deployment"
SCREENSHOT = REPO / "docs" / "images" / "dagster-asset-graph.png"
CHECKS_QUERY = """{ assetNodes { assetKey { path } groupName
  assetChecksOrError { ... on AssetChecks { checks { name
    executionForLatestMaterialization { status evaluation { description } } } } } } }"""
HEALTH_QUERY = """{ assetOrError(assetKey: {path: ["cluster_health", "local"]}) { ... on Asset {
  assetObservations(limit: 1) { description metadataEntries { label ... on BoolMetadataEntry { boolValue } } } } } }"""
FAILED_RUNS_QUERY = """{ runsOrError(filter: {statuses: [FAILURE]}) { ... on Runs { results { runId jobName } } } }"""
# What the daemon reports within its first minute on a fresh cluster (the others, service levels
# at :17 and the WAL archive checks at :27, are not evaluated until their hourly schedule).
FIRST_MINUTE = {"every_member_up", "exactly_one_writable_primary", "every_replica_streaming",
                "replication_slots_present", "backup_is_fresh", "latest_backup_restores", "drill_is_recent"}

pytestmark = [pytest.mark.daemon,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make apt-packages, as root)")]


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


def check_statuses(url: str) -> dict[str, tuple[str | None, str]]:
    """`asset/key:check` -> (status of its latest evaluation or None, its description)."""
    out = {}
    for node in graphql(url, CHECKS_QUERY)["assetNodes"]:
        for check in (node.get("assetChecksOrError") or {}).get("checks", []):
            execution = check["executionForLatestMaterialization"] or {}
            description = ((execution.get("evaluation") or {}).get("description")) or ""
            out[f"{'/'.join(node['assetKey']['path'])}:{check['name']}"] = (execution.get("status"), description)
    return out


@contextlib.contextmanager
def in_own_session(command: list[str], env: dict, log: Path):
    """A process in its own session, stopped by process group however the test ends."""
    out = open(log, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield proc
    finally:
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
                break
        out.close()


def chromium(args: list[str], work: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    profile = work / f"chromium-{time.monotonic_ns()}"
    proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(errors="replace"), "")


def test_a_fresh_healthy_cluster_shows_no_failed_check_in_the_ui(pg_home, tmp_path):
    raw = yaml.safe_load((REPO / "deploy" / "clusters" / "local.yaml").read_text())
    raw["local"]["base_port"] = free_port_range(raw["postgres"]["members"])
    spec_file = pg_home / "specs" / "local.yaml"
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copy(settings.LOCAL_INSTANCE_CONFIG, pg_home / "dagster" / "dagster.yaml")
    env = {**os.environ, "PG_OPS_CLUSTERS": str(spec_file), "PG_OPS_HOME": str(pg_home),
           "DAGSTER_HOME": str(pg_home / "dagster")}
    env.pop(runs.URL_ENV, None)  # no deployment yet: pg-ops deploy runs in process, as under make run
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        deployed = subprocess.run([str(VENV_BIN / "pg-ops"), "deploy"], env=env, cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        log = pg_home / "serve-ui.log"
        with in_own_session([str(VENV_BIN / "python"), str(REPO / "scripts" / "serve-ui.py"), "--host", "127.0.0.1",
                             "--port", str(port)], env, log) as ui:
            try:
                wait_for(lambda: urllib.request.urlopen(f"{url}/server_info", timeout=2), "the webserver",
                         timeout=180, interval=1)
                # Settled: every first-minute check evaluated, and no check's run still in progress
                # (a run the daemon launched, the catalog drift check say, still executing).
                statuses = wait_for(lambda: (s := check_statuses(url)) and all(
                    s.get(k, (None,))[0] for k in s if k.split(":")[1] in FIRST_MINUTE)
                    and all(v[0] != "IN_PROGRESS" for v in s.values()) and s,
                    "the daemon's first reports", timeout=240, interval=2)
                failed_runs = graphql(url, FAILED_RUNS_QUERY)["runsOrError"]["results"]
                health = graphql(url, HEALTH_QUERY)["assetOrError"]["assetObservations"]
                dom = chromium(["--virtual-time-budget=20000", "--window-size=1800,900", "--dump-dom",
                                url + GRAPH_PAGE], tmp_path).stdout
                shot = tmp_path / "graph.png"
                chromium(["--virtual-time-budget=20000", "--window-size=1800,640", f"--screenshot={shot}",
                          url + GRAPH_PAGE], tmp_path)
            finally:
                alive = ui.poll() is None
            text = log.read_text()
    finally:
        subprocess.run([str(VENV_BIN / "pg-ops"), "teardown"], env=env, cwd=REPO, capture_output=True, timeout=120)

    assert alive, text[-3000:]  # serve-ui ran the whole time
    evaluated = {k: v for k, v in statuses.items() if v[0] is not None}
    print("\n" + "\n".join(f"{k}: {s} {d[:100]}" for k, (s, d) in sorted(evaluated.items())))
    assert {k.split(":")[1] for k in evaluated} >= FIRST_MINUTE
    assert {k: v for k, v in evaluated.items() if v[0] != "SUCCEEDED"} == {}
    assert all("not due yet" in statuses[f"backups/local/{a}:{c}"][1] for a, c in (
        ("nightly", "backup_is_fresh"), ("restore_drill", "latest_backup_restores"),
        ("restore_drill", "drill_is_recent")))
    assert failed_runs == []
    # The cluster's health now, readable on its asset without the sensor's cursor.
    assert health and health[0]["description"].startswith("healthy: primary local-0")
    assert {e["label"]: e.get("boolValue") for e in health[0]["metadataEntries"]}["healthy"] is True
    # What starting the UI printed: neither of dagster dev's warnings.
    assert "SupersessionWarning" not in text and "will not be used to configure Dagster" not in text
    # The graph itself is asserted through GraphQL above (what it draws: every check, every run);
    # whether headless Chromium had drawn it by the time of the dump depends on the machine's load.
    # The community modal is off in the instance `make run` uses, and not in the page.
    assert yaml.safe_load(settings.LOCAL_INSTANCE_CONFIG.read_text())["nux"] == {"enabled": False}
    assert "Join the Dagster community" not in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("PG_OPS_UPDATE_SCREENSHOTS"):
        shutil.copy(shot, SCREENSHOT)
