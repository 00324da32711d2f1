"""The command line as a newcomer types it (issue 29): global options before or after the
sub-command, a mistyped command, mistakes refused before any run exists (and never paged as
CRITICAL), what `status` shows after a failover, `psql`, and output piped into `head`."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from pg_ops import runs
from pg_ops.cli import main as cli_main
from pg_ops.cli import parse_args
from pg_ops.defs import health
from pg_ops.defs.partitions import TOPOLOGY_TAG
from pg_ops.settings import REPO_ROOT
from pg_ops_tests.support.helpers import kill_member, running_cluster, wait_for

GLOBAL = {  # option -> (argv words, the attribute and the value it must give)
    "--cluster": (["--cluster", "other"], "cluster", "other"),
    "--json": (["--json"], "json", True),
    "-v": (["-v"], "verbose", True),
    "--dagster-url": (["--dagster-url", "http://127.0.0.1:9"], "dagster_url", "http://127.0.0.1:9"),
    "--in-process": (["--in-process"], "in_process", True),
}


@pytest.mark.parametrize("option", list(GLOBAL))
@pytest.mark.parametrize("position", ["before", "after"])
def test_each_global_option_counts_before_and_after_the_sub_command(option, position):
    words, attr, value = GLOBAL[option]
    argv = [*words, "failover", "--force"] if position == "before" else ["failover", "--force", *words]
    args = parse_args(argv)
    assert getattr(args, attr) == value and args.force is True and args.command == "failover"
    # and the options not given keep their defaults in both positions
    others = {a: v for o, (_, a, v) in GLOBAL.items() if o != option}
    assert all(getattr(args, a) in (None, False) for a in others)


def test_an_option_given_twice_with_two_values_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--cluster", "a", "status", "--cluster", "b"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pg-ops: --cluster given twice, as 'a' and 'b'"]


def test_a_mistyped_command_gets_one_line_and_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        parse_args(["swichover", "--to", "x"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "pg-ops: unknown command 'swichover' (did you mean switchover?)"]


def test_an_unknown_cluster_before_the_sub_command_is_refused_not_ignored(make_spec, capsys, monkeypatch):
    monkeypatch.delenv(runs.URL_ENV, raising=False)
    make_spec("known")
    assert cli_main(["--cluster", "nosuch", "backups"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pg-ops backups: cluster 'nosuch' is not defined (known: known)"]


def test_mistakes_on_a_running_cluster_are_refused_before_any_run_and_page_nobody(make_spec, pg_home, capsys,
                                                                                 monkeypatch):
    monkeypatch.delenv(runs.URL_ENV, raising=False)
    with running_cluster(make_spec("oops")) as ctx:
        primary = ctx.state().primary
        for argv, expected in ((["rebuild", primary], f"{primary} is the primary; switch over first"),
                               (["failover"], f"primary {primary} answers and is writable")):
            assert cli_main([*argv, "--cluster", "oops"]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and expected in err[0], err
        with dg.DagsterInstance.from_config(str(pg_home / "dagster")) as instance:
            assert instance.get_runs_count() == 0
        # With --force the failover is not a mistake: it is not refused here (not run: no need).


def test_a_run_that_refused_is_never_a_critical_alert(make_spec):
    specs = {"c": make_spec("c")}
    run = dg.DagsterRun(job_name="rebuild_member", run_id="0123456789ab", tags={TOPOLOGY_TAG: "c"})
    assert health.run_failure_alert_for(run, "c-0 is the primary", specs, refused=True).severity == "warning"
    assert health.run_failure_alert_for(run, "promotion timed out", specs).severity == "critical"


def test_after_a_failover_status_names_the_fenced_member_and_says_it_rejoins_by_itself(
        make_spec, capsys, monkeypatch):
    from pg_ops.operations.failover import failover

    monkeypatch.delenv(runs.URL_ENV, raising=False)
    with running_cluster(make_spec("fo")) as ctx:
        old = ctx.state().primary
        kill_member(ctx.platform, old)
        wait_for(lambda: not ctx.probe([old])[old].reachable, "the old primary to be gone")
        failover(ctx)
        assert cli_main(["status", "--cluster", "fo"]) == 0
        out = capsys.readouterr().out
        assert f"ALERT warning member_fenced_down: {old} was fenced by a failover" in out
        assert "rejoins by itself as a replica once it reaches the primary" in out and "alerts: none" not in out


def test_psql_connects_with_the_passfile_and_refuses_an_unknown_member(make_spec, monkeypatch):
    monkeypatch.delenv(runs.URL_ENV, raising=False)
    with running_cluster(make_spec("ps")) as ctx:
        env = {**os.environ}
        env.pop("PGPASSWORD", None)
        pg_ops = [sys.executable, "-m", "pg_ops.cli"]
        done = subprocess.run([*pg_ops, "psql", "--cluster", "ps", "--", "-XAtc", "select not pg_is_in_recovery()"],
                              capture_output=True, text=True, env=env, timeout=60, cwd=REPO_ROOT)
        assert done.returncode == 0 and done.stdout.strip() == "t", done.stderr
        replica = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
        done = subprocess.run([*pg_ops, "psql", "--cluster", "ps", "--member", replica, "--", "-XAtc",
                               "select pg_is_in_recovery()"], capture_output=True, text=True, env=env, timeout=60,
                              cwd=REPO_ROOT)
        assert done.returncode == 0 and done.stdout.strip() == "t", done.stderr
        done = subprocess.run([*pg_ops, "psql", "--cluster", "ps", "--member", "ps-9"], capture_output=True,
                              text=True, env=env, timeout=60, cwd=REPO_ROOT)
        assert done.returncode == 1 and done.stderr.strip().startswith("pg-ops psql: cluster ps has no member")


def test_output_into_a_closed_pipe_is_not_a_traceback(make_spec):
    make_spec("pipe")
    proc = subprocess.Popen([sys.executable, "-m", "pg_ops.cli", "--json", "backups"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO_ROOT)
    proc.stdout.close()  # the reader is gone before pg-ops writes, as `| head -1` after its line
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode in (0, 141)


# -- recover on make run's defaults (PG_OPS_CLUSTERS a single file), and teardown --all -------------
def sql(ctx, query: str):
    import psycopg

    with psycopg.connect(ctx.platform.primary_dsn("postgres", "app"), password=ctx.admin_password(),
                         autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


def test_recover_works_on_the_defaults_and_teardown_all_removes_what_it_made(monkeypatch, capsys):
    import json
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    from pg_ops.definitions import build_defs
    from pg_ops.operations import wal
    from pg_ops.operations.context import ClusterContext
    from pg_ops.spec import load_specs
    from pg_ops_tests.support.helpers import spec_from, stop_cluster, temp_home, write_spec

    monkeypatch.delenv(runs.URL_ENV, raising=False)
    with temp_home() as home:
        (home / "dagster").mkdir()
        spec_file = write_spec(home, "dflt", postgres={"members": 1}, backups={"wal": {"archive_timeout_seconds": 5}})
        for name, value in (("PG_OPS_HOME", home), ("PG_OPS_CLUSTERS", spec_file), ("DAGSTER_HOME", home / "dagster")):
            monkeypatch.setenv(name, str(value))  # a spec FILE, as `make run`'s deploy/clusters/local.yaml
        copy = None
        with running_cluster(spec_from(spec_file)) as ctx:
            try:
                assert cli_main(["base-backup"]) == 0
                capsys.readouterr()
                sql(ctx, "create table kept (n int); insert into kept values (1)")
                time.sleep(1.1)
                target = datetime.now(UTC)
                time.sleep(1.1)
                sql(ctx, "insert into kept values (2)")
                wal.switch_and_wait(ctx)
                assert cli_main(["recover", "--to", target.isoformat(), "--as", "dflt-copy", "--json"]) == 0
                out = json.loads(capsys.readouterr().out)
                assert Path(out["spec_path"]) == home / "specs" / "dflt-copy.yaml"  # pg_ops's state, not git
                copy = ClusterContext.for_spec(spec_from(Path(out["spec_path"])))
                assert sql(copy, "select n from kept") == [(1,)]
                # Loaded with the defaults from now on: by the CLI and by the code location.
                assert [s.name for s in load_specs()] == ["dflt", "dflt-copy"]
                job = build_defs(load_specs()).resolve_job_def("deploy_cluster")
                assert "dflt-copy" in job.partitions_def.get_partition_keys()
                assert cli_main(["status", "--cluster", "dflt-copy"]) == 0
                capsys.readouterr()
                assert cli_main(["teardown", "--all"]) == 0
                said = capsys.readouterr().out.splitlines()
                assert said == ["cluster dflt torn down",
                                f"cluster dflt-copy torn down (its spec {home / 'specs' / 'dflt-copy.yaml'} removed)"]
                assert [s.name for s in load_specs()] == ["dflt"]
                assert not (home / "clusters" / "dflt-copy").exists() and not (home / "clusters" / "dflt").exists()
            finally:
                if copy is not None:
                    stop_cluster(copy)
