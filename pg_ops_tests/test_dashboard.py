"""The Grafana dashboard (deploy/monitoring/): every query uses only metrics that are produced
(the same rule as the PrometheusRule, test_render.py), it shows every metric an alert fires on,
and it is a well-formed dashboard Grafana imports."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from pg_ops import settings
from pg_ops.render import manifests, monitoring
from pg_ops.spec import load_spec
from pg_ops_tests.support.manifest_checks import (
    EXPORTER_DEFAULT_METRICS,
    PROMETHEUS_SYNTHETIC,
    promql_metrics,
)

MONITORING = settings.REPO_ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard-postgresql.json"
HOMELAB = load_spec(settings.REPO_ROOT / "deploy" / "clusters" / "homelab.yaml")
PRODUCED = EXPORTER_DEFAULT_METRICS | PROMETHEUS_SYNTHETIC | monitoring.produced_metrics()
# Grafana's variables, replaced by what they expand to before PromQL is read.
GRAFANA_VARIABLES = {r"\$__(range|rate_interval|interval)": "5m", r"\$\{?cluster\}?": "homelab"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(metric, label): the metric is queried too
            exprs.append(re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", variable["definition"]))
    return exprs


def expand(expr: str) -> str:
    for pattern, value in GRAFANA_VARIABLES.items():
        expr = re.sub(pattern, value, expr)
    return re.sub(r"\[[^\]]*\]", "", expr)  # range selectors hold durations, never metrics


def test_every_dashboard_query_uses_only_produced_metrics(dashboard):
    for expr in expressions(dashboard):
        used = promql_metrics(expand(expr))
        assert used, f"no metric in {expr!r}"
        assert used <= PRODUCED, f"{expr!r} uses metrics nobody produces: {used - PRODUCED}"


def test_dashboard_shows_every_metric_an_alert_fires_on(dashboard):
    shown = set().union(*(promql_metrics(expand(e)) for e in expressions(dashboard)))
    rule = next(o for o in manifests(HOMELAB) if o["kind"] == "PrometheusRule")
    for alert in rule["spec"]["groups"][0]["rules"]:
        missing = promql_metrics(alert["expr"]) - shown
        assert not missing, f"{alert['alert']} fires on {missing}, which no panel shows"


def test_dashboard_covers_every_pg_ops_status_key(dashboard):
    keys = set(re.findall(r'key="([^"]+)"', " ".join(expressions(dashboard))))
    assert keys == set(monitoring.STATUS_KEYS)  # backups, drills, failovers, health tick


def test_dashboard_topics(dashboard):
    titles = " ".join(p["title"].lower() for p in panels(dashboard))
    for topic in ("replication lag", "storage", "connections", "up", "primaries", "backup", "drill",
                  "failover", "health tick"):
        assert topic in titles, f"no panel about {topic}"


def test_every_query_is_scoped_to_the_selected_cluster(dashboard):
    scoped = f'{monitoring.CLUSTER_LABEL}="$cluster"'
    for expr in expressions(dashboard)[:-1]:  # the last: the cluster variable's own query
        for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
            if match.group() in PRODUCED:
                selector = re.match(r"\{([^}]*)\}", expr[match.end():])
                assert selector and scoped in selector.group(1), f"{match.group()} unscoped in {expr!r}"


def test_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "cluster"} <= names
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], f"{panel['title']}: say what it shows and which alert watches it"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))


def test_the_sidecar_configmap_ships_this_file():
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    generator, = kustomization["configMapGenerator"]
    assert generator["files"] == [DASHBOARD.name]
    assert kustomization["generatorOptions"]["labels"] == {"grafana_dashboard": "1"}


def test_metric_check_catches_an_unknown_metric():
    assert promql_metrics(expand('rate(pg_stat_nonsense_total{pg_cluster="$cluster"}[$__rate_interval])')) \
        == {"pg_stat_nonsense_total"}
