"""Dagster for the tests: the health sensor's body ticked in process (Sensor), and a real
dagster-daemon (or `dagster dev`) on the pg_ops code location with its instance prepared."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pg_ops import settings
from pg_ops.defs.health import AlertsResource, evaluate_health
from pg_ops.runs import CODE_LOCATION

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


class Sensor:
    """Evaluates the health sensor's body tick after tick, carrying its cursor."""

    def __init__(self, contexts, instance=None):
        self.contexts = contexts
        self.instance = instance
        self.cursor = None
        self.requests: list[dg.RunRequest] = []
        self.events = []

    def tick(self) -> dg.SensorResult:
        context = dg.build_sensor_context(cursor=self.cursor, instance=self.instance)
        result = evaluate_health(context, self.contexts, AlertsResource())
        self.cursor = result.cursor
        self.requests += result.run_requests or []
        self.events += result.asset_events or []
        return result

    @property
    def state(self) -> dict:
        return json.loads(self.cursor)

    def open_kinds(self) -> list[str]:
        return sorted(k.split("/", 2)[1] + ("/" + k.split("/", 2)[2] if k.split("/", 2)[2] else "")
                      for k in self.state["alerts"])


def dagster_storage_bytes(dagster_home: Path) -> bytes:
    """Everything the instance stored: run/event/schedule SQLite files, compute logs, artifacts."""
    return b"".join(p.read_bytes() for p in sorted(dagster_home.rglob("*")) if p.is_file())
