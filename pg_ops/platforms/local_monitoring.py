"""`make monitoring`: a postgres_exporter per member of every local cluster and a Prometheus with
the repo's rules, on 127.0.0.1, all children of one supervisor (this module's `run`).

    python -m pg_ops.platforms.local_monitoring run    # foreground; Ctrl-C stops everything
    python -m pg_ops.platforms.local_monitoring stop   # stops a `run` started elsewhere

The exporters run exactly the sidecar's queries (render/monitoring.py writes both) and log in as
the exporter's pg_monitor role with the cluster's passfile; Prometheus scrapes them with the labels
the ServiceMonitor gives pods (pg_cluster, pod) and evaluates the PrometheusRule's groups, so the
alerts and the Grafana dashboard read the same series as in production.

Stopping: the children share the supervisor's process group (Ctrl-C in the terminal reaches all of
them), each also dies with the supervisor (PR_SET_PDEATHSIG), and `stop` signals the supervisor
recorded in <dir>/supervisor.pid, which stops its children before it exits. Files live under
PG_OPS_HOME/monitoring/: prometheus.yml, rules/, queries.yaml, prometheus-data/, logs/.

Binaries: Debian's `prometheus` (2.42) and `prometheus-postgres-exporter` (0.11.1); the sidecar
runs exporter 0.17. Debian's 0.11 cannot read PostgreSQL 17+'s checkpointer statistics, so the
local exporters run without its `bgwriter` collector (no alert or panel uses it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pg_ops import settings
from pg_ops.credentials import MONITORING_USER
from pg_ops.errors import PgOpsError
from pg_ops.render import monitoring
from pg_ops.spec import ClusterSpec, load_specs

PROMETHEUS = "prometheus"
EXPORTER = "prometheus-postgres-exporter"
DEBIAN_PACKAGES = {PROMETHEUS: "prometheus", EXPORTER: "prometheus-postgres-exporter"}
# Debian's exporter 0.11 against PostgreSQL 17+: its bgwriter collector fails on every scrape.
LOCAL_EXPORTER_FLAGS = ["--no-collector.bgwriter", "--log.level=warn"]
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1


@dataclass
class Options:
    dir: Path
    prometheus_port: int = 9090
    exporter_port: int = 9187          # the first member's; the next ones count up
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    pending: str | None = None          # replaces every rule's `for` (tests)
    alertmanagers: list[str] = field(default_factory=list)  # host:port
    retention: str = "7d"


@dataclass
class Exporter:
    cluster: str
    member: str
    port: int          # the member's PostgreSQL port
    listen: int        # the exporter's HTTP port
    passfile: Path


def binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise PgOpsError(f"{name} is not installed (Debian package {DEBIAN_PACKAGES[name]}; "
                         f"`make monitoring` installs it when run as root)")
    return path


def port_free(port: int) -> bool:
    """Nobody listens there (connections of a stopped run in TIME_WAIT do not count: Prometheus
    and the exporters bind with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def local_specs() -> list[ClusterSpec]:
    specs = [s for s in load_specs() if s.platform == "local"]
    if not specs:
        raise PgOpsError(f"no local cluster in {settings.clusters_path()} (PG_OPS_CLUSTERS): nothing to monitor")
    return specs


def exporters_for(specs: list[ClusterSpec], first_port: int) -> list[Exporter]:
    """One exporter per member; a cluster must be deployed with the exporter's role."""
    from pg_ops.platforms.local import LocalPlatform

    found: list[Exporter] = []
    for spec in specs:
        platform = LocalPlatform(spec)
        creds = platform.load_credentials()
        passfile = platform.passfile()
        if creds is None or MONITORING_USER not in creds.passwords or not passfile.exists() \
                or f":{MONITORING_USER}:" not in passfile.read_text():
            raise PgOpsError(f"cluster {spec.name}: no password for the exporter's role {MONITORING_USER} yet: "
                             f"run `pg-ops deploy --cluster {spec.name}` (or `make run`) first")
        for member, endpoint in platform.member_endpoints().items():
            found.append(Exporter(spec.name, member, endpoint.port, first_port + len(found), passfile))
    return found


def write_files(opts: Options, specs: list[ClusterSpec], exporters: list[Exporter]) -> Path:
    """queries.yaml, one rule file per cluster, prometheus.yml; returns the config's path."""
    (opts.dir / "rules").mkdir(parents=True, exist_ok=True)
    (opts.dir / "logs").mkdir(exist_ok=True)
    (opts.dir / "queries.yaml").write_text(monitoring.queries_yaml())
    rule_files = []
    for spec in specs:
        path = opts.dir / "rules" / f"{spec.name}.yaml"
        path.write_text(monitoring.rules_file(spec, opts.pending))
        rule_files.append(str(path))
    targets: dict[str, dict[str, str]] = {}
    for e in exporters:
        targets.setdefault(e.cluster, {})[e.member] = f"127.0.0.1:{e.listen}"
    config = opts.dir / "prometheus.yml"
    config.write_text(monitoring.prometheus_config(
        targets, rule_files, scrape_interval=opts.scrape_interval, evaluation_interval=opts.evaluation_interval,
        alertmanagers=opts.alertmanagers))
    return config


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervisor dies, however it dies (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)


def exporter_command(opts: Options, e: Exporter) -> tuple[list[str], dict[str, str]]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **monitoring.exporter_data_source(e.port),
           "PGPASSFILE": str(e.passfile)}  # lib/pq reads the password from the cluster's passfile
    args = [binary(EXPORTER), *monitoring.exporter_args(str(opts.dir / "queries.yaml")),
            f"--web.listen-address=127.0.0.1:{e.listen}", *LOCAL_EXPORTER_FLAGS]
    return args, env


def prometheus_command(opts: Options, config: Path) -> list[str]:
    return [binary(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={opts.dir / 'prometheus-data'}",
            f"--storage.tsdb.retention.time={opts.retention}", f"--web.listen-address=127.0.0.1:{opts.prometheus_port}"]


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PgOpsError(f"{_program(proc)} exited ({proc.returncode}): {_last_line(log)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2):
                return
        time.sleep(0.2)
    raise PgOpsError(f"{url} did not answer within {READY_TIMEOUT_S:g} s: {_last_line(log)}")


def _program(proc: subprocess.Popen) -> str:
    """The program a child runs (_start runs an argv list)."""
    return str(cast(list, proc.args)[0])


def _last_line(log: Path) -> str:
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1]
    return "no output"


def stop_children(children: list[subprocess.Popen]) -> None:
    for proc in children:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(opts: Options) -> int:
    """Start everything, then supervise until a signal or a child's exit (then stop the rest)."""
    specs = local_specs()
    exporters = exporters_for(specs, opts.exporter_port)
    for name in (PROMETHEUS, EXPORTER):
        binary(name)  # before anything starts: one line naming the missing package
    ports = [opts.prometheus_port] + [e.listen for e in exporters]
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise PgOpsError(f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 already in use "
                         f"(another `make monitoring`? `make monitoring-stop` stops it)")
    opts.dir.mkdir(parents=True, exist_ok=True)
    config = write_files(opts, specs, exporters)
    pid_file = opts.dir / "supervisor.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    children: list[subprocess.Popen] = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (`&`)
    try:
        for e in exporters:
            command, env = exporter_command(opts, e)
            children.append(_start(command, env, opts.dir / "logs" / f"exporter-{e.member}.log"))
        prometheus_log = opts.dir / "logs" / "prometheus.log"
        prometheus = _start(prometheus_command(opts, config), dict(os.environ), prometheus_log)
        children.append(prometheus)
        url = f"http://127.0.0.1:{opts.prometheus_port}"
        wait_ready(f"{url}/-/ready", prometheus, prometheus_log)
        for e in exporters:
            print(f"exporter {e.member}: http://127.0.0.1:{e.listen}/metrics (as {MONITORING_USER})", flush=True)
        print(f"Prometheus: {url}  alerts: {url}/classic/alerts  (Ctrl-C or `make monitoring-stop` stops it all)",
              flush=True)
        while True:
            for proc in children:
                if proc.poll() is not None:
                    raise PgOpsError(f"{Path(_program(proc)).name} exited ({proc.returncode}); stopping the rest")
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_children(children)
        with contextlib.suppress(FileNotFoundError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()


def _is_supervisor(pid: int) -> bool:
    try:
        return b"local_monitoring" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop(directory: Path) -> str:
    pid_file = directory / "supervisor.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return "make monitoring is not running"
    if not _is_supervisor(pid):
        pid_file.unlink(missing_ok=True)
        return "make monitoring is not running (stale pid file removed)"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S + 5
    while _is_supervisor(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _is_supervisor(pid):
        os.kill(pid, signal.SIGKILL)  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
    pid_file.unlink(missing_ok=True)
    return f"stopped make monitoring (supervisor {pid})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pg_ops.platforms.local_monitoring",
                                     description="postgres_exporter + Prometheus for the local clusters")
    parser.add_argument("command", choices=["run", "stop"])
    parser.add_argument("--dir", type=Path, help="working folder (default PG_OPS_HOME/monitoring)")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--exporter-port", type=int, default=9187, help="the first exporter's port")
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--evaluation-interval", default="5s")
    parser.add_argument("--pending", help="replace every rule's `for` (tests)")
    parser.add_argument("--alertmanager", action="append", default=[], help="host:port (repeatable)")
    args = parser.parse_args(argv)
    directory = args.dir or settings.home() / "monitoring"
    try:
        if args.command == "stop":
            print(stop(directory))
            return 0
        return run(Options(dir=directory, prometheus_port=args.prometheus_port, exporter_port=args.exporter_port,
                           scrape_interval=args.scrape_interval, evaluation_interval=args.evaluation_interval,
                           pending=args.pending, alertmanagers=args.alertmanager))
    except PgOpsError as exc:
        print(f"make monitoring: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
