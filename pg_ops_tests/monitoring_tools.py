"""The real monitoring parts tests use: Debian's promtool / Prometheus / postgres_exporter /
Alertmanager binaries, the `make monitoring` supervisor started on free ports, Prometheus's HTTP
API, and an Alertmanager whose notifications land in a local webhook capture. Everything started
here is stopped by process group, also when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pg_ops_tests.support.helpers import free_port, wait_for

DEBIAN_PACKAGE = {"promtool": "prometheus", "prometheus": "prometheus",
                  "prometheus-postgres-exporter": "prometheus-postgres-exporter",
                  "prometheus-alertmanager": "prometheus-alertmanager"}


def debian_binary(name: str) -> str:
    """The binary's path. Missing: a one-line skip, except in CI (root: `make test` installs it
    with apt), where the test must run and so fails."""
    path = shutil.which(name)
    if path:
        return path
    reason = (f"{name} is not installed (Debian package {DEBIAN_PACKAGE[name]}; "
              f"`make test` installs it with apt when run as root)")
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


# -- Prometheus's HTTP API ---------------------------------------------------------------------
@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def alerts(self, name: str | None = None, state: str | None = None) -> list[dict]:
        return [a for a in self.get("/api/v1/alerts")["alerts"]
                if (name is None or a["labels"]["alertname"] == name) and (state is None or a["state"] == state)]

    def targets_up(self) -> bool:
        targets = self.get("/api/v1/targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)


@contextlib.contextmanager
def monitoring_stack(workdir: Path, alertmanager: str | None = None, pending: str = "2s",
                     interval: str = "1s") -> Iterator[Prometheus]:
    """`make monitoring`'s supervisor (python -m pg_ops.platforms.local_monitoring run) for the
    clusters in PG_OPS_CLUSTERS, on free ports, with short scrape/evaluation intervals and every
    rule's `for` replaced by `pending`; stopped by process group."""
    debian_binary("prometheus")
    debian_binary("prometheus-postgres-exporter")
    prometheus_port = free_port()
    exporter_port = free_port_after(prometheus_port)
    command = [sys.executable, "-m", "pg_ops.platforms.local_monitoring", "run", "--dir", str(workdir),
               "--prometheus-port", str(prometheus_port), "--exporter-port", str(exporter_port),
               "--scrape-interval", interval, "--evaluation-interval", interval, "--pending", pending]
    if alertmanager:
        command += ["--alertmanager", alertmanager]
    log = open(workdir.parent / f"{workdir.name}-supervisor.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        prometheus = Prometheus(f"http://127.0.0.1:{prometheus_port}")

        def ready():
            assert proc.poll() is None, f"the supervisor exited: {Path(log.name).read_text()[-500:]}"
            return prometheus.targets_up()

        wait_for(ready, "Prometheus and every exporter target up", timeout=90)
        yield prometheus
    finally:
        stop_group(proc)
        log.close()


def free_port_after(port: int, count: int = 9) -> int:
    """A base port for `count` exporters that is not `port` (free_port_range never returns a taken
    one, and Prometheus has bound its port by then only in theory: keep them apart)."""
    from pg_ops_tests.support.helpers import free_port_range

    for _ in range(50):
        base = free_port_range(count)
        if not base <= port < base + count:
            return base
    raise RuntimeError("no free exporter ports")


# -- Alertmanager --------------------------------------------------------------------------------
@dataclass
class Alertmanager:
    url: str
    address: str  # host:port, for Prometheus's alerting config

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?active=true&silenced=false&inhibited=false",
                                    timeout=10) as response:
            return json.load(response)


@contextlib.contextmanager
def alertmanager(workdir: Path, webhook_url: str) -> Iterator[Alertmanager]:
    """A real Alertmanager (Debian 0.25) that notifies `webhook_url`: every alert in one group
    per alert name and cluster, sent within a second, resolutions too, never repeated during a
    test. No HA cluster listener (it would bind a fixed port)."""
    binary = debian_binary("prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "route": {"receiver": "capture", "group_by": ["alertname", "pg_cluster", "pod", "member"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "24h"},
        "receivers": [{"name": "capture", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(workdir / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, f"--config.file={workdir / 'alertmanager.yml'}",
                             f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address=", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        manager = Alertmanager(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}")

        def ready():
            assert proc.poll() is None, f"alertmanager exited: {(workdir / 'alertmanager.log').read_text()[-500:]}"
            with urllib.request.urlopen(f"{manager.url}/-/ready", timeout=2):
                return True

        wait_for(ready, "Alertmanager ready", timeout=60)
        yield manager
    finally:
        stop_group(proc)
        log.close()


def notified(bodies: list[dict], alertname: str, status: str, **labels) -> list[dict]:
    """The alerts of that name and status in Alertmanager webhook notifications (one entry per
    notification that carried it)."""
    return [a for body in bodies for a in body.get("alerts", [])
            if a["labels"].get("alertname") == alertname and a["status"] == status
            and all(a["labels"].get(k) == v for k, v in labels.items())]


def wait_until(predicate, what: str, timeout: float = 90.0):
    """wait_for with the generous timeout a shared 2-core machine needs for scrape + evaluation."""
    return wait_for(predicate, what, timeout=timeout, interval=0.5)


def now() -> float:
    return time.time()
