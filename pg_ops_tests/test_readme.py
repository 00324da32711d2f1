"""The README as a newcomer follows it (issue 29): `make run` on its defaults (the `local`
cluster of deploy/clusters/local.yaml on ports 25432-25434, the real webserver and daemon),
then the commands the README prints, in its order and exactly as printed, then point-in-time
recovery through the deployment and `make teardown`.

Only two things are this test's own: PG_OPS_HOME is a throw-away folder (so `.pg-ops/` in a
printed command is that folder, and a developer's own `make run` state is never touched), and
the UI listens on a free port (`make run PORT=…`, a documented Makefile variable)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pg_ops import runs
from pg_ops.settings import REPO_ROOT
from pg_ops_tests.support.helpers import free_port, temp_home, wait_for

pytestmark = pytest.mark.daemon
README = REPO_ROOT / "README.md"
DEFAULT_PORTS = (25432, 25433, 25434)
# The commands of the README's walkthrough, in its order (checked against the README below, so
# the test and the README cannot drift apart).
WALKTHROUGH = [
    ".venv/bin/pg-ops status",
    ".venv/bin/pg-ops status --json",
    ".venv/bin/pg-ops psql",
    "kill -9 -- -$(cat .pg-ops/clusters/local/pids/local-0.pid)",
    ".venv/bin/pg-ops status",
    ".venv/bin/pg-ops status",
]


def readme_commands() -> list[str]:
    """Every `.venv/bin/pg-ops …` and `kill …` line of the README's bash blocks, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() if not line.startswith("kill") else line.split("   #", 1)[0].strip()
             for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith((".venv/bin/pg-ops", "kill "))]


def test_the_walkthrough_is_the_readmes():
    assert readme_commands() == WALKTHROUGH


def listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Newcomer:
    """A shell in the repository with PG_OPS_HOME set, as after `make run` in another terminal."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PG_OPS_CLUSTERS", "DAGSTER_HOME", runs.URL_ENV, "PGPASSWORD")}
        self.env["PG_OPS_HOME"] = str(home)

    def sh(self, command: str, timeout: float = 240) -> subprocess.CompletedProcess:
        command = command.replace(".pg-ops/", f"{self.home}/")
        return subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def ok(self, command: str, timeout: float = 240) -> str:
        done = self.sh(command, timeout)
        assert done.returncode == 0, f"{command}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def status(self) -> dict:
        return json.loads(self.ok(".venv/bin/pg-ops status --json"))


@contextlib.contextmanager
def make_run(newcomer: Newcomer, port: int):
    log = open(newcomer.home / "make-run.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=REPO_ROOT, env=newcomer.env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    except BaseException:
        print((newcomer.home / "make-run.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_make_run_then_the_readme_then_recover_then_make_teardown():
    if any(listening(p) for p in DEFAULT_PORTS):
        pytest.skip("ports 25432-25434 are in use (a `make run` cluster?): this test runs the README on its defaults")
    with temp_home() as home:
        me = Newcomer(home)
        port = free_port()
        deployment = runs.Deployment(f"http://127.0.0.1:{port}")
        try:
            with make_run(me, port):
                wait_for(lambda: deployment.unusable_because() is None, "make run: the UI and its daemon",
                         timeout=300, interval=1)
                # -- the walkthrough, as printed --------------------------------------------------
                text = me.ok(WALKTHROUGH[0])
                assert "primary local-0" in text and "alerts: none" in text, text
                status = json.loads(me.ok(WALKTHROUGH[1]))
                assert status["designated_primary"] == "local-0" and status["alerts"] == []
                me.ok(WALKTHROUGH[2])  # an interactive psql; stdin at its end, it exits 0
                me.ok(WALKTHROUGH[3])  # local-0 is the primary: its node dies
                after = wait_for(lambda: (s := me.status())["designated_primary"] != "local-0"
                                 and s["designated_primary"] in s["writable_members"] and s,
                                 "the daemon's failover (README: 'a few seconds later: a new primary')", timeout=90)
                text = me.ok(WALKTHROUGH[4])
                assert f"primary {after['designated_primary']}" in text, text
                # "soon after: local-0 back, a replica": the daemon's health sensor starts it again,
                # nobody runs a command for it.
                wait_for(lambda: "local-0" in me.ok(WALKTHROUGH[5])
                         and {m["name"]: m for m in me.status()["members"]}["local-0"]["role"] == "replica",
                         "local-0 back as a replica by itself", timeout=120, interval=2)
                # -- point-in-time recovery through the deployment, on the defaults ------------------
                me.ok(".venv/bin/pg-ops base-backup")
                me.ok(".venv/bin/pg-ops psql --dbname app -- "
                      "-c 'create table kept (n int); insert into kept values (1)'")
                time.sleep(1.1)
                target = datetime.now(UTC)
                time.sleep(1.1)
                me.ok(".venv/bin/pg-ops psql --dbname app -- -c 'insert into kept values (2)' "
                      "-c 'select pg_switch_wal()'")
                wait_for(lambda: datetime.fromisoformat(me.status()["recovery_window"]["newest"]) > target,
                         "the archive to pass the target", timeout=120, interval=2)
                out = json.loads(me.ok(f".venv/bin/pg-ops recover --to {target.isoformat()} --as copy --json"))
                assert Path(out["spec_path"]) == home / "specs" / "copy.yaml"
                assert "copy" in deployment.partition_keys(runs.CLUSTERS_JOB)  # the UI watches it now
                kept = me.ok(".venv/bin/pg-ops psql --cluster copy --dbname app -- -XAtc 'select n from kept'")
                assert kept.split() == ["1"]
            # -- make teardown removes what make run and recover made ---------------------------------
            said = me.ok("make teardown")
            assert "cluster local torn down" in said and "cluster copy torn down" in said, said
            assert not (home / "specs" / "copy.yaml").exists() and not (home / "clusters" / "local").exists()
            assert not any(listening(p) for p in DEFAULT_PORTS)
        finally:
            me.sh("make teardown")  # whatever the test left, even after a failure
