#!/usr/bin/env python3
"""Refresh the README's screenshot of the Dagster UI: the asset graph of the `deployment` group.

    .venv/bin/python scripts/screenshot-ui.py                      # its own cluster and UI
    .venv/bin/python scripts/screenshot-ui.py --url http://127.0.0.1:3000   # a UI already running

Without --url it deploys a throw-away copy of the `local` cluster (free ports, temporary
PG_OPS_HOME and DAGSTER_HOME, so a running `make run` is not touched), starts `dagster dev` on a
free port, and afterwards stops everything it started: the UI by process group, the cluster with
`pg-ops teardown`. The browser is Debian's headless Chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import contextlib
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
OUT = REPO / "docs" / "images" / "dagster-asset-graph.png"
GRAPH_PATH = "/locations/pg-ops/asset-groups/deployment"
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
    """SIGTERM the process group, then SIGKILL what is left (dagster dev's webserver, daemon and
    code servers are all in it)."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return


@contextlib.contextmanager
def own_ui(work: Path) -> Iterator[str]:
    """A deployed copy of the local cluster and `dagster dev` serving it; both removed after."""
    home, dagster_home = work / "pg-ops-home", work / "dagster-home"
    home.mkdir()
    dagster_home.mkdir()
    os.chmod(work, 0o755)  # the unprivileged PostgreSQL user must reach the data dirs in it
    os.chmod(home, 0o755)
    # The project's instance config, without the first-visit "join the community" dialog that
    # would cover the graph.
    instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump({**instance, "nux": {"enabled": False}}))
    spec = yaml.safe_load((REPO / "deploy" / "clusters" / "local.yaml").read_text())
    members = spec["postgres"]["members"]
    spec["local"]["base_port"] = free_port(members)
    (work / "local.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "PG_OPS_CLUSTERS": str(work / "local.yaml"), "PG_OPS_HOME": str(home),
           "DAGSTER_HOME": str(dagster_home)}
    port = free_port(start=spec["local"]["base_port"] + members)  # not one the cluster will take
    log = open(work / "dagster-dev.log", "wb")  # noqa: SIM115 - closed in finally
    ui = None
    try:
        subprocess.run([str(VENV_BIN / "pg-ops"), "deploy"], env=env, cwd=REPO, check=True)
        # Own session and default signal handlers: started from a script, dagster dev would
        # otherwise inherit an ignored SIGINT and outlive us.
        ui = subprocess.Popen([str(VENV_BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
                               "-w", str(REPO / "workspace.yaml")], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url)
        yield url
    finally:
        if ui is not None:
            stop_group(ui)
        log.close()
        subprocess.run([str(VENV_BIN / "pg-ops"), "teardown"], env=env, cwd=REPO, check=False,
                       stdout=subprocess.DEVNULL)


def screenshot(url: str, out: Path, size: str, budget_ms: int, work: Path) -> None:
    """Chromium in its own session (killed by group on timeout): the page is a JS app that
    loads the graph over GraphQL, so give it virtual time to settle."""
    profile = work / "chromium-profile"
    tmp_png = work / "shot.png"
    command = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={tmp_png}", url + GRAPH_PATH]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        sys.exit("screenshot-ui: Chromium did not finish within 120 s")
    finally:
        stop_group(proc)
    if not tmp_png.exists() or tmp_png.stat().st_size < 10_000:
        sys.exit(f"screenshot-ui: Chromium wrote no usable screenshot of {url + GRAPH_PATH}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(tmp_png, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a Dagster UI already serving pg_ops (default: start one)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--size", default="1800,640", help="window size W,H (CSS pixels; the PNG is 1.25x)")
    parser.add_argument("--budget-ms", type=int, default=20000, help="Chromium virtual time budget")
    args = parser.parse_args()
    chromium()
    with tempfile.TemporaryDirectory(prefix="pg-ops-screenshot-") as tmp:
        work = Path(tmp)
        with contextlib.nullcontext(args.url) if args.url else own_ui(work) as url:
            screenshot(url, args.out, args.size, args.budget_ms, work)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
