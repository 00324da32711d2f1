"""Checks of rendered files: the validator tools (kubernetes-validate, checkov: `make tools`), YAML
documents, and the metric names of PromQL expressions against what the exporter produces."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pg_ops import settings

REPO = settings.REPO_ROOT
K8S_VERSION = "1.31.0"
# Metrics postgres_exporter produces without custom queries in every version we run (the sidecar's
# 0.17 and Debian's 0.11: its own pg_up and the default `database` collector) plus Prometheus's own
# per-target `up`. Not pg_replication_is_replica: 0.11 has no such metric.
EXPORTER_DEFAULT_METRICS = {"pg_up", "pg_database_size_bytes"}
PROMETHEUS_SYNTHETIC = {"up"}


# -- the validator tools (a separate venv: `make tools`) ----------------------------------------
def tool(name: str) -> Path:
    """A validator from .venv/tools, installed by `make tools` when missing; skip only when it
    cannot be installed."""
    path = REPO / ".venv" / "tools" / "bin" / name
    if not path.exists():
        done = subprocess.run(["make", "-s", "tools"], cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0 or not path.exists():
            pytest.skip(f"{name} cannot be installed (make tools): {done.stderr.strip()[-300:]}")
    return path


def kubernetes_validate(files: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool("kubernetes-validate")), "--strict", "-k", K8S_VERSION, "--quiet",
                           *map(str, files)], capture_output=True, text=True)


def checkov(folder: Path) -> dict:
    done = subprocess.run([str(tool("checkov")), "--framework", "kubernetes", "-d", str(folder),
                           "--skip-download", "-o", "json"], capture_output=True, text=True)
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    return report


def failed_checks(report: dict) -> list[str]:
    if "results" not in report:  # nothing scanned: an empty summary
        return []
    return [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label
    names inside {...} / by (...), range selectors, or string contents."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [6h]
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = match.group(), expr[match.end():].lstrip()
        if word in PROMQL_WORDS or rest.startswith("(") or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names
