#!/usr/bin/env python3
"""Refresh the README's screenshots: the Dagster UI's asset graph of the `deployment` group, or
the alerts page of `make monitoring`'s Prometheus.

    .venv/bin/python scripts/screenshot-ui.py                      # its own cluster and UI
    .venv/bin/python scripts/screenshot-ui.py --url http://127.0.0.1:3000   # a UI already running
    make screenshot-alerts   # = scripts/screenshot-ui.py --page prometheus-alerts
    .venv/bin/python scripts/screenshot-ui.py --page prometheus-alerts --url http://127.0.0.1:9090

Without --url it deploys a throw-away copy of the `local` cluster (free ports, temporary
PG_OPS_HOME and DAGSTER_HOME, so a running `make run` is not touched) and starts what the page
needs on free ports: make run's UI (scripts/serve-ui.py), or `make monitoring`'s supervisor (exporters + Prometheus with
the real rules), after which it kills one replica's member and waits until PgOpsInstanceDown fires
(its `for` is a minute). Afterwards it stops everything it started by process group, and the
cluster with `pg-ops teardown`. The browser is Debian's headless Chromium (package chromium;
`make screenshot-alerts` installs it as root).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
PAGES = {  # page -> (default output, path on the server, default window size)
    "dagster-asset-graph": (REPO / "docs" / "images" / "dagster-asset-graph.png",
                            "/locations/pg-ops/asset-groups/deployment", "1800,640"),
    "prometheus-alerts": (REPO / "docs" / "images" / "prometheus-alerts.png", "/classic/alerts", "1400,690"),
}
FIRING_TIMEOUT_S = 180
# The flags Chromium needs on a machine with no outside network and no GPU, as root.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1.25"]


def free_port(count: int = 1, start: int = 20000) -> int:
    """A base port with `count` consecutive free loopback ports, below the ephemeral range."""
    for base in range(start, 32000 - count, 7):
        with contextlib.ExitStack() as stack:
            try:
                for i in range(count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", base + i))
                return base
            except OSError:
                continue
    sys.exit("screenshot-ui: no free port on 127.0.0.1")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        sys.exit("screenshot-ui: Chromium is not installed (apt-get install -y chromium)")
    return path


def wait_for_server(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return
        time.sleep(0.5)
    sys.exit(f"screenshot-ui: the Dagster UI at {url} did not answer within {timeout:.0f} s")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left (serve-ui's webserver, daemon and
    code servers are all in it)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return


@contextlib.contextmanager
def throwaway_cluster(work: Path) -> Iterator[dict]:
    """A deployed copy of the local cluster on free ports; yields the environment that points
    pg-ops at it (PG_OPS_CLUSTERS, PG_OPS_HOME, DAGSTER_HOME). Torn down afterwards."""
    home, dagster_home = work / "pg-ops-home", work / "dagster-home"
    home.mkdir()
    dagster_home.mkdir()
    os.chmod(work, 0o755)  # the unprivileged PostgreSQL user must reach the data dirs in it
    os.chmod(home, 0o755)
    # make run's instance config (it turns off the first-visit "join the community" dialog that
    # would cover the graph).
    shutil.copy(REPO / "deploy" / "dagster" / "local" / "dagster.yaml", dagster_home / "dagster.yaml")
    spec = yaml.safe_load((REPO / "deploy" / "clusters" / "local.yaml").read_text())
    members = spec["postgres"]["members"]
    spec["local"]["base_port"] = free_port(members)
    (work / "local.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "PG_OPS_CLUSTERS": str(work / "local.yaml"), "PG_OPS_HOME": str(home),
           "DAGSTER_HOME": str(dagster_home), "SCREENSHOT_FIRST_FREE_PORT": str(spec["local"]["base_port"] + members)}
    try:
        subprocess.run([str(VENV_BIN / "pg-ops"), "deploy"], env=env, cwd=REPO, check=True)
        yield env
    finally:
        subprocess.run([str(VENV_BIN / "pg-ops"), "teardown"], env=env, cwd=REPO, check=False,
                       stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def own_ui(work: Path) -> Iterator[str]:
    """A deployed copy of the local cluster and make run's UI (scripts/serve-ui.py: the webserver
    and the daemon) serving it; both removed after."""
    with throwaway_cluster(work) as env:
        port = free_port(start=int(env["SCREENSHOT_FIRST_FREE_PORT"]))  # not one the cluster will take
        with started(["python", str(REPO / "scripts" / "serve-ui.py"), "--host", "127.0.0.1", "--port", str(port)],
                     env, work / "serve-ui.log"):
            url = f"http://127.0.0.1:{port}"
            wait_for_server(url)
            yield url


@contextlib.contextmanager
def started(command: list[str], env: dict, log_path: Path) -> Iterator[subprocess.Popen]:
    """A venv command in its own session, stopped by process group afterwards."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = None
    try:
        # Own session and default signal handlers: started from a script, the UI would
        # otherwise inherit an ignored SIGINT and outlive us.
        proc = subprocess.Popen([str(VENV_BIN / command[0]), *command[1:]], env=env, cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        yield proc
    finally:
        if proc is not None:
            stop_group(proc)
        log.close()


def prometheus_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=5) as response:
        return json.load(response)["data"]["alerts"]


@contextlib.contextmanager
def own_prometheus(work: Path) -> Iterator[str]:
    """A deployed copy of the local cluster watched by `make monitoring`'s supervisor (the real
    rules), one replica's member killed, until its PgOpsInstanceDown alert fires."""
    with throwaway_cluster(work) as env:
        prometheus_port = free_port(start=int(env["SCREENSHOT_FIRST_FREE_PORT"]))
        exporter_port = free_port(count=3, start=prometheus_port + 1)
        command = ["python", "-m", "pg_ops.platforms.local_monitoring", "run", "--dir", str(work / "monitoring"),
                   "--prometheus-port", str(prometheus_port), "--exporter-port", str(exporter_port)]
        with started(command, env, work / "monitoring.log") as supervisor:
            url = f"http://127.0.0.1:{prometheus_port}"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if supervisor.poll() is not None:
                    sys.exit(f"screenshot-ui: make monitoring's supervisor exited: "
                             f"{(work / 'monitoring.log').read_text()[-400:]}")
                with contextlib.suppress(OSError, ValueError):
                    if prometheus_alerts(url) is not None:
                        break
                time.sleep(0.5)
            home = Path(env["PG_OPS_HOME"])
            pid = int((home / "clusters" / "local" / "pids" / "local-2.pid").read_text())
            os.killpg(pid, signal.SIGKILL)  # local-2's supervisor and postgres, as a lost node
            deadline = time.monotonic() + FIRING_TIMEOUT_S
            while not any(a["labels"]["alertname"] == "PgOpsInstanceDown" and a["state"] == "firing"
                          for a in prometheus_alerts(url)):
                if time.monotonic() > deadline:
                    sys.exit(f"screenshot-ui: PgOpsInstanceDown did not fire within {FIRING_TIMEOUT_S} s")
                time.sleep(2)
            yield url


def screenshot(url: str, out: Path, size: str, budget_ms: int, work: Path) -> None:
    """Chromium in its own session (killed by group on timeout): the page is a JS app that
    loads the graph over GraphQL, so give it virtual time to settle."""
    profile = work / "chromium-profile"
    tmp_png = work / "shot.png"
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={tmp_png}", url]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        sys.exit("screenshot-ui: Chromium did not finish within 120 s")
    finally:
        stop_group(proc)
    if not tmp_png.exists() or tmp_png.stat().st_size < 10_000:
        sys.exit(f"screenshot-ui: Chromium wrote no usable screenshot of {url}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp_png, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", choices=sorted(PAGES), default="dagster-asset-graph")
    parser.add_argument("--url", help="a Dagster UI / Prometheus already serving (default: start one)")
    parser.add_argument("--out", type=Path, help="default docs/images/<page>.png")
    parser.add_argument("--size", help="window size W,H (CSS pixels; the PNG is 1.25x)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium virtual time budget")
    args = parser.parse_args()
    chromium()
    out, path, size = PAGES[args.page]
    own = own_ui if args.page == "dagster-asset-graph" else own_prometheus
    with tempfile.TemporaryDirectory(prefix="pg-ops-screenshot-") as tmp:
        work = Path(tmp)
        with contextlib.nullcontext(args.url) if args.url else own(work) as url:
            screenshot(url + path, args.out or out, args.size or size, args.budget_ms, work)
    print(f"wrote {args.out or out}")


if __name__ == "__main__":
    main()
