"""A snapshot of the code location's Dagster definitions, as Dagster's example projects keep one:
asset keys (group, partitions, tags, kinds, deps), asset checks, jobs (tags, selection),
schedules and sensors, summarised as sorted JSON and compared with the committed
pg_ops_tests/snapshots/definitions.json. A change to what the code location declares shows up
in review as a diff of that file, beside the code that caused it.

The definitions are built from the cluster specs (pg_ops/definitions.py: `load_specs()` reads
PG_OPS_CLUSTERS), so the test pins them: PG_OPS_CLUSTERS is the repository's own
deploy/clusters/ folder (the `local` cluster and the Kubernetes cluster `homelab`, so every area,
drift included, declares something), PG_OPS_HOME and DAGSTER_HOME are throw-away folders. The
module is run as workspace.yaml names it, in a fresh namespace: what is compared is the
`Definitions` object a code server would load, not one this process imported earlier.

After an intended change, rewrite the snapshot and commit it with the change:

    PG_OPS_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest pg_ops_tests/test_definitions_snapshot.py

Only Dagster's public surface is used: `Definitions` (`get_repository_def`, `resolve_asset_graph`,
`resolve_all_asset_specs`, `validate_loadable`), the repository definition's jobs, schedules,
sensors and asset/check definitions, and the attributes of those objects (an asset job's
`AssetSelection` resolved against the asset graph). Nothing is imported from dagster._core.
"""

from __future__ import annotations

import difflib
import json
import os
import runpy
import warnings
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pg_ops import settings

REPO = settings.REPO_ROOT
SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"
UPDATE_ENV = "PG_OPS_UPDATE_SNAPSHOTS"
PINNED_SPECS = REPO / "deploy" / "clusters"


def key_str(key: dg.AssetKey) -> str:
    return key.to_user_string()


def check_str(key: dg.AssetCheckKey) -> str:
    return f"{key_str(key.asset_key)}:{key.name}"


def partitions_summary(partitions_def) -> dict | None:
    """The kind of a partitions definition and what defines its keys (never today's keys)."""
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.StaticPartitionsDefinition):
        return {"kind": "static", "keys": sorted(partitions_def.get_partition_keys())}
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return {"kind": type(partitions_def).__name__, "cron": partitions_def.cron_schedule,
                "start": partitions_def.start.isoformat(), "timezone": partitions_def.timezone,
                "end_offset": partitions_def.end_offset, "format": partitions_def.fmt}
    return {"kind": type(partitions_def).__name__}


def enum_value(value) -> str:
    return getattr(value, "value", str(value))


def sensor_jobs(sensor: dg.SensorDefinition) -> list[str]:
    """The jobs a sensor targets: job definitions, or the one job it names (`job_name=`)."""
    if sensor.has_jobs:
        return sorted(job.name for job in sensor.jobs)
    try:
        return [sensor.job_name]
    except dg.DagsterInvalidDefinitionError:  # no job: the sensor reports events, it launches nothing
        return []


def summarise(defs: dg.Definitions) -> dict:
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()

    assets = {
        key_str(spec.key): {
            "group": spec.group_name,
            "partitions": partitions_summary(spec.partitions_def),
            "kinds": sorted(spec.kinds),
            "tags": dict(sorted(spec.tags.items())),
            "deps": sorted(key_str(dep.asset_key) for dep in spec.deps),
        }
        for spec in defs.resolve_all_asset_specs()
    }

    checks = {}
    for definition in [*repo.assets_defs_by_key.values(), *repo.asset_checks_defs_by_key.values()]:
        for spec in definition.check_specs:
            checks[f"{key_str(spec.asset_key)}:{spec.name}"] = {"asset": key_str(spec.asset_key),
                                                                  "name": spec.name, "blocking": spec.blocking}

    declared = {job.name: job for job in defs.jobs or []}
    jobs = {}
    for job in repo.get_all_jobs():
        if job.name.startswith("__"):  # Dagster's implicit asset jobs: not declared by pg_ops
            continue
        entry = {"tags": dict(sorted(job.tags.items())), "partitions": partitions_summary(job.partitions_def),
                 "executor": job.executor_def.name}
        if job.run_tags != job.tags:
            entry["run_tags"] = dict(sorted(job.run_tags.items()))
        selection = getattr(declared.get(job.name), "selection", None)
        if isinstance(selection, dg.AssetSelection):  # an asset job: what it materializes and checks
            entry["assets"] = sorted(key_str(k) for k in selection.resolve(graph))
            entry["checks"] = sorted(check_str(k) for k in selection.resolve_checks(graph))
        else:  # an op job
            entry["ops"] = sorted(node.name for node in job.graph.nodes)
        jobs[job.name] = entry

    schedules = {
        s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name,
                 "default_status": enum_value(s.default_status)}
        for s in repo.schedule_defs
    }

    sensors = {}
    for s in repo.sensor_defs:
        entry = {"type": type(s).__name__, "jobs": sensor_jobs(s),
                 "minimum_interval_seconds": s.minimum_interval_seconds,
                 "default_status": enum_value(s.default_status)}
        if isinstance(s, dg.AssetSensorDefinition):
            entry["asset"] = key_str(s.asset_key)
        sensors[s.name] = entry

    return {
        "assets": dict(sorted(assets.items())),
        "asset_checks": dict(sorted(checks.items())),
        "jobs": dict(sorted(jobs.items())),
        "schedules": dict(sorted(schedules.items())),
        "sensors": dict(sorted(sensors.items())),
        "resources": sorted(defs.resources or {}),
    }


def load_code_location_defs() -> dg.Definitions:
    """The Definitions of the module workspace.yaml names, run afresh (as a code server would
    import it) with the environment pinned by the caller."""
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    module = workspace["load_from"][0]["python_module"]["module_name"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module may be imported already
        namespace = runpy.run_module(module, run_name=f"{module}__snapshot")
    found = [value for value in namespace.values() if isinstance(value, dg.Definitions)]
    assert len(found) == 1, f"{module} defines {len(found)} Definitions objects at module scope"
    return found[0]


def render(value, depth: int = 0) -> str:
    """Indented JSON, with each asset's, job's... small fields on one line: a diff then names
    the entry and the field that changed."""
    inline = json.dumps(value)
    if not isinstance(value, dict | list) or not value or (depth >= 2 and len(inline) <= 100):
        return inline + ("\n" if depth == 0 else "")
    pad = "  " * (depth + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {render(v, depth + 1)}" for k, v in value.items()]
        text = "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    else:
        items = [f"{pad}{render(v, depth + 1)}" for v in value]
        text = "[\n" + ",\n".join(items) + "\n" + "  " * depth + "]"
    return text + ("\n" if depth == 0 else "")


@pytest.fixture
def pinned_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PG_OPS_CLUSTERS", str(PINNED_SPECS))
    monkeypatch.setenv("PG_OPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))


def test_definitions_match_the_snapshot(pinned_environment):
    defs = load_code_location_defs()
    dg.Definitions.validate_loadable(defs)
    actual = render(summarise(defs))
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(actual)
        return
    assert SNAPSHOT.exists(), (f"{SNAPSHOT.relative_to(REPO)} does not exist: create it with "
                               f"{UPDATE_ENV}=1 .venv/bin/python -m pytest {Path(__file__).relative_to(REPO)}")
    expected = SNAPSHOT.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                            fromfile=f"{SNAPSHOT.relative_to(REPO)} (committed)",
                                            tofile="definitions now", n=8))
        pytest.fail(f"The Dagster definitions differ from the committed snapshot:\n{diff}\n"
                    f"If the change is intended, rewrite the snapshot and commit it with the change:\n"
                    f"    {UPDATE_ENV}=1 .venv/bin/python -m pytest {Path(__file__).relative_to(REPO)}",
                    pytrace=False)


def test_the_summary_is_deterministic(pinned_environment):
    """Two loads give the same text: nothing in the summary depends on the clock (every set in
    it is sorted, so neither does it depend on hash order across processes)."""
    assert render(summarise(load_code_location_defs())) == render(summarise(load_code_location_defs()))


# Jobs whose first step asks the platform whether it can run them, and that question.
PLATFORM_CHECKS = {
    "pitr_drill": lambda platform, spec: platform.check_point_in_time("the point-in-time drill"),
    "base_backup": lambda platform, spec: platform.check_archive_store(spec.backups.store.type),
    "rollout": lambda platform, spec: platform.check_rollout(),
}


def test_no_schedule_or_sensor_of_a_committed_spec_launches_a_job_its_platform_refuses(pinned_environment):
    """Every job a committed spec gets a schedule or a sensor for passes its platform's own
    refusal check (the point-in-time drill only where its platform reads the archive): nothing is
    launched every night to fail. Rotation schedules ask about their role."""
    from pg_ops.errors import Unsupported
    from pg_ops.platforms import platform_for
    from pg_ops.spec import load_specs

    defs = load_code_location_defs()
    specs = load_specs(PINNED_SPECS)
    launched = {s.job_name for s in defs.schedules} | {j for s in defs.sensors for j in sensor_jobs(s)}
    refused = []
    for spec in specs:
        platform = platform_for(spec)
        for job, check in PLATFORM_CHECKS.items():
            if job not in launched:
                continue
            scheduled_for_it = job != "pitr_drill" or any(
                s.job_name == job and spec.name in (s.description or "") for s in defs.schedules)
            if not scheduled_for_it:
                continue
            try:
                check(platform, spec)
            except Unsupported as exc:
                refused.append(f"{spec.name}: {job}: {exc}")
        for role in (r for r in spec.roles if r.rotation_schedule):
            try:
                platform.check_rotation(role.name)
            except Unsupported as exc:
                refused.append(f"{spec.name}: rotate_password {role.name}: {exc}")
    assert refused == []
    assert {"local", "kubernetes"} == {s.platform for s in specs}  # both platforms are looked at
