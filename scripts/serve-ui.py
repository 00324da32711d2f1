#!/usr/bin/env python3
"""`make run`'s Dagster UI: `dagster-webserver` and `dagster-daemon run` on the pg-ops code location
(workspace.yaml), in the foreground, until Ctrl-C (or SIGTERM), which stops both.

This is what `dagster dev` starts, with the two commands Dagster supports for running them
(the official Helm chart runs the same two in production). `dagster dev` itself warns on every
start in the pinned Dagster (1.13): a SupersessionWarning ("Use 'dg dev' instead", `dg` being
another package with its own project layout) and, whenever the current folder holds a
dagster.yaml that is not DAGSTER_HOME's, that it will not be used. Neither command here warns;
the instance config lives in deploy/dagster/local/dagster.yaml, copied into DAGSTER_HOME by the
Makefile, so no dagster.yaml sits in the folder these run from.

The children stay in this process's group, with default signal handlers (even when this was
started with SIGINT ignored, as `cmd &` does): Ctrl-C reaches all three, and killing the group
(what the tests do) leaves nothing behind. If either child exits by itself, the other is stopped
and the exit status says which.

    .venv/bin/python scripts/serve-ui.py --host 127.0.0.1 --port 3000 [--workspace workspace.yaml]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STOP_GRACE_S = 15.0
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:  # the child gets SIGTERM if this supervisor dies without stopping it (SIGKILL)
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, preexec_fn=_child_setup)


def stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


CODE_SERVER_THREADS = 40  # the daemon's sensor workers (dagster.yaml: 32) and a few more


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="3000")
    parser.add_argument("--workspace", default=str(REPO / "workspace.yaml"))
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("serve-ui: DAGSTER_HOME is not set (make run sets it)", file=sys.stderr)
        return 2
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Every cluster's health sensor holds a code-server thread for most of each daemon loop
    # (pg_ops/defs/health.py): the code server the daemon starts for workspace.yaml gets enough
    # threads for a fleet (its default is the machine's CPUs + 4).
    os.environ.setdefault("DAGSTER_GRPC_MAX_WORKERS", str(CODE_SERVER_THREADS))
    daemon = start([str(VENV_BIN / "dagster-daemon"), "run", "-w", args.workspace])
    webserver = start([str(VENV_BIN / "dagster-webserver"), "-h", args.host, "-p", str(args.port),
                       "-w", args.workspace])
    children = [webserver, daemon]
    try:
        while not stopping:
            exited = [c for c in children if c.poll() is not None]
            if exited:
                name = "dagster-webserver" if exited[0] is webserver else "dagster-daemon"
                print(f"serve-ui: {name} exited with status {exited[0].returncode}; stopping the other",
                      file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
