"""Every alert rule, exactly as rendered into the PrometheusRule (and `make monitoring`'s rule
files), checked by promtool and unit-tested by `promtool test rules`: it fires on the series that
should fire it (its `for` included), stays silent on the near miss, and resolves when the
condition clears. The series are written from the spec's thresholds, so a changed threshold is
tested as it is. promtool is Debian's (package prometheus, 2.42)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pg_ops import settings
from pg_ops.render import monitoring
from pg_ops.spec import ClusterSpec, load_spec
from pg_ops_tests.monitoring_tools import debian_binary

SPECS = {name: load_spec(settings.REPO_ROOT / "deploy" / "clusters" / f"{name}.yaml") for name in ("homelab", "local")}
H = 3600


@dataclass
class Case:
    """One promtool test group: input series, then (eval_time, expected alerts) checks. Each
    expected alert is its label set (without alertname); annotations are checked too."""
    alert: str
    what: str  # "fires" | "near miss" | "resolves"
    series: dict[str, str]  # series selector -> promtool values
    checks: list[tuple[str, list[dict[str, str]]]]
    interval: str = "1m"  # between input samples and between rule evaluations
    notes: list[str] = field(default_factory=list)


def sel(metric: str, **labels: str) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def cases(spec: ClusterSpec) -> list[Case]:
    c, m = spec.name, spec.monitoring
    p0, p1, p2 = (f"{c}-{i}" for i in range(3))

    def scraped(metric: str, pod: str, **labels: str) -> str:
        return sel(metric, pg_cluster=c, pod=pod, job=f"pg-ops-{c}", **labels)

    def member(pod: str, severity: str) -> dict:  # what a per-member alert keeps of its series
        return {"pg_cluster": c, "pod": pod, "job": f"pg-ops-{c}", "severity": severity}

    lag_s = scraped("pg_ops_replication_replay_lag_seconds", p0, member=p1)
    lag_b = scraped("pg_ops_replication_replay_lag_bytes", p0, member=p1)
    lagging = {"pg_cluster": c, "member": p1, "severity": "warning"}
    streaming = scraped("pg_ops_wal_receiver_streaming", p1)
    capacity = monitoring._storage_bytes(spec.kubernetes.storage)
    full = capacity * m.storage_alert_ratio
    storage = scraped("pg_ops_storage_used_bytes", p0)
    used, limit = scraped("pg_ops_connections_used", p0), scraped("pg_ops_connections_max", p0)
    max_conn = spec.postgres.max_connections
    busy = int(max_conn * m.connections_alert_ratio)  # exactly the ratio: not above it
    pg_up, up = scraped("pg_up", p1), scraped("up", p1)
    rec = {p: scraped("pg_ops_member_in_recovery", p) for p in (p0, p1, p2)}
    cluster_alert = {"pg_cluster": c, "severity": "critical"}
    silent_min = monitoring.health_silent_seconds(spec) // 60  # whole minutes at the shipped intervals

    def status(key: str) -> str:
        return scraped("pg_ops_status_timestamp_seconds", p0, key=key)

    def age_cases(alert: str, key: str, limit_s: int, for_min: int, severity: str, step: int) -> list[Case]:
        """A status row's age, sampled (and evaluated) every `step` minutes: a row written at t=0
        fires `for` after the limit; rows always one step younger than the limit never fire; a
        fresh row resolves; no row at all (never done) fires too."""
        limit_min = limit_s // 60
        n = (limit_min + for_min) // step + 4  # samples until it fires, with margin
        fires_at = f"{limit_min + for_min + 2 * step}m"
        fresh_at = limit_min + for_min + 3 * step  # minute of the fresh row
        labels = {"pg_cluster": c, "severity": severity}
        every = f"{step}m"
        return [
            Case(alert, "fires", {status(key): f"0x{n}"}, [(fires_at, [labels])], every),
            Case(alert, "fires", {pg_up: f"1x{n}"}, [(fires_at, [{**labels, "key": key}])], every,
                 ["no row at all: absent()"]),
            Case(alert, "near miss", {status(key): f"{-(limit_s - 60 * step)}+{60 * step}x{n}"},
                 [(f"{limit_min // 2}m", []), (fires_at, [])], every, [f"the newest row always {every} under"]),
            Case(alert, "near miss", {status(key): f"0x{n}"}, [(f"{limit_min + for_min - step}m", [])], every,
                 ["too old for less than `for`"]),
            Case(alert, "resolves", {status(key): f"0x{fresh_at // step - 1} {fresh_at * 60}x4"},
                 [(fires_at, [labels]), (f"{fresh_at + step}m", [])], every),
        ]

    def filling_cases() -> list[Case]:
        horizon = m.storage_forecast_days
        start, per_step = capacity * 0.5, capacity / 144  # 144 ten-minute steps a day: growth per step, per unit rate
        to_go = m.storage_alert_ratio - 0.5  # of the volume, until the threshold

        def series(rate: float, steps: int, then_flat: int = 0) -> str:
            inc = per_step * rate
            text = f"{start:.0f}+{inc:.0f}x{steps}"
            return text + (f" {start + inc * steps:.0f}x{then_flat}" if then_flat else "")

        fast, slow = 1.5 * to_go / horizon, 0.5 * to_go / horizon  # the threshold in 2/3 of the horizon / in 2x
        above = f"{capacity * (m.storage_alert_ratio + 0.01):.0f}+{per_step * fast:.0f}x60"
        warned = [member(p0, "warning")]
        return [
            Case("PgOpsStorageFillingUp", "fires", {storage: series(fast, 60)}, [("2h", warned)], "10m"),
            Case("PgOpsStorageFillingUp", "near miss", {storage: series(slow, 60)}, [("2h", []), ("9h", [])], "10m",
                 ["the threshold twice the horizon away"]),
            Case("PgOpsStorageFillingUp", "near miss", {storage: above}, [("2h", [])], "10m",
                 ["past the threshold: PgOpsStorageNearlyFull speaks"]),
            Case("PgOpsStorageFillingUp", "resolves", {storage: series(fast, 12, then_flat=72)},
                 [("2h", warned), ("12h", [])], "10m", ["growth stopped"]),
        ]

    return [
        Case("PgOpsReplicationLag", "fires", {lag_s: f"0 {m.lag_alert_seconds + 1:g}x5", lag_b: "0x6"},
             [("1m", []), ("3m", [lagging])], notes=["seconds over the limit"]),
        Case("PgOpsReplicationLag", "fires", {lag_s: "0x6", lag_b: f"0 {m.lag_alert_bytes + 1}x5"},
             [("3m", [lagging])], notes=["bytes over the limit"]),
        Case("PgOpsReplicationLag", "near miss",
             {lag_s: f"{m.lag_alert_seconds:g}x6", lag_b: f"{m.lag_alert_bytes}x6"}, [("5m", [])],
             notes=["exactly at both limits"]),
        Case("PgOpsReplicationLag", "near miss",
             {lag_s: f"0 {m.lag_alert_seconds + 1:g} 0 {m.lag_alert_seconds + 1:g} 0 0", lag_b: "0x6"},
             [("2m", []), ("4m", [])], notes=["over the limit at single evaluations only (for: 1m)"]),
        Case("PgOpsReplicationLag", "resolves", {lag_s: f"0 {m.lag_alert_seconds + 1:g}x3 0x4", lag_b: "0x8"},
             [("3m", [lagging]), ("6m", [])]),

        Case("PgOpsReplicaNotStreaming", "fires", {streaming: "1 0x5"}, [("3m", [member(p1, "warning")])]),
        Case("PgOpsReplicaNotStreaming", "near miss", {streaming: "1 1 0 1 0 1 1"}, [("2m", []), ("4m", [])]),
        Case("PgOpsReplicaNotStreaming", "resolves", {streaming: "1 0x3 1x4"},
             [("3m", [member(p1, "warning")]), ("6m", [])]),

        Case("PgOpsStorageNearlyFull", "fires", {storage: f"0 {full + 2**20:.0f}x10"},
             [("7m", [member(p0, "warning")])]),
        Case("PgOpsStorageNearlyFull", "near miss", {storage: f"{full - 2**20:.0f}x10"}, [("9m", [])],
             notes=["1 MiB under the ratio"]),
        Case("PgOpsStorageNearlyFull", "near miss", {storage: f"0 {full + 2**20:.0f}x4 0x5"}, [("5m", [])],
             notes=["over the ratio for 4 of the 5 minutes `for` asks"]),
        Case("PgOpsStorageNearlyFull", "resolves", {storage: f"0 {full + 2**20:.0f}x7 0x4"},
             [("7m", [member(p0, "warning")]), ("10m", [])]),

        Case("PgOpsConnectionsNearLimit", "fires", {used: f"0 {busy + 1}x10", limit: f"{max_conn}x11"},
             [("7m", [member(p0, "warning")])]),
        Case("PgOpsConnectionsNearLimit", "near miss", {used: f"{busy}x10", limit: f"{max_conn}x10"}, [("9m", [])],
             notes=["exactly at the ratio"]),
        Case("PgOpsConnectionsNearLimit", "resolves", {used: f"0 {busy + 1}x7 1x4", limit: f"{max_conn}x12"},
             [("7m", [member(p0, "warning")]), ("10m", [])]),

        Case("PgOpsInstanceDown", "fires", {pg_up: "1 0x5", up: "1x6"}, [("3m", [member(p1, "critical")])],
             notes=["the member is down (pg_up 0)"]),
        Case("PgOpsInstanceDown", "fires", {up: "1 0x5"}, [("3m", [member(p1, "critical")])],
             notes=["the exporter is down (up 0, no pg_up)"]),
        Case("PgOpsInstanceDown", "near miss", {pg_up: "1 0 1 0 1 1", up: "1x6"}, [("2m", []), ("4m", [])]),
        Case("PgOpsInstanceDown", "resolves", {pg_up: "1 0x3 1x4", up: "1x8"},
             [("3m", [member(p1, "critical")]), ("6m", [])]),

        Case("PgOpsMoreThanOnePrimary", "fires", {rec[p0]: "0x4", rec[p1]: "1 0x3", rec[p2]: "1x4"},
             [("0m", []), ("1m", [cluster_alert])]),
        Case("PgOpsMoreThanOnePrimary", "near miss", {rec[p0]: "0x4", rec[p1]: "1x4", rec[p2]: "1x4"},
             [("3m", [])], notes=["one primary"]),
        Case("PgOpsMoreThanOnePrimary", "resolves", {rec[p0]: "0x4", rec[p1]: "0 0 1 1", rec[p2]: "1x4"},
             [("1m", [cluster_alert]), ("2m", [])]),

        # Ten-minute samples of a filling disk: half full, growing by `rate` of the volume a day.
        *filling_cases(),

        # Coarser steps for limits of a day and more: promtool evaluates every rule at each step.
        *age_cases("PgOpsBackupTooOld", "backup_complete", 26 * H, 10, "critical", step=5),
        *age_cases("PgOpsDrillTooOld", "drill_success", 8 * 24 * H, 60, "warning", step=30),
        *(age_cases("PgOpsBaseBackupTooOld", "base_backup_complete", 26 * H, 10, "critical", step=5)
          + age_cases("PgOpsPitrDrillTooOld", "pitr_drill_success", 8 * 24 * H, 60, "warning", step=30)
          if spec.backups.wal.enabled else []),

        Case("PgOpsHealthSensorSilent", "fires", {status("health_tick"): f"0x{silent_min + 3}"},
             [(f"{silent_min + 1}m", [cluster_alert])], notes=["the last tick a minute more than the limit ago"]),
        Case("PgOpsHealthSensorSilent", "fires", {pg_up: "1x5"}, [("0m", [{**cluster_alert, "key": "health_tick"}])],
             notes=["no tick ever: absent()"]),
        Case("PgOpsHealthSensorSilent", "near miss", {status("health_tick"): f"0x{silent_min + 3}"},
             [(f"{silent_min}m", [])], notes=["exactly the limit since the last tick"]),
        Case("PgOpsHealthSensorSilent", "resolves",
             {status("health_tick"): f"0x{silent_min + 1} {(silent_min + 2) * 60} {(silent_min + 3) * 60}"},
             [(f"{silent_min + 1}m", [cluster_alert]), (f"{silent_min + 2}m", [])]),
    ]


def rule_annotations(spec: ClusterSpec) -> dict[str, str]:
    return {r["alert"]: r["annotations"]["summary"] for r in monitoring.alert_rules(spec)}


def render_summary(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), "<no value>"), template)


def promtool_tests(spec: ClusterSpec, rule_file: str, rules_spec: ClusterSpec | None = None) -> dict[str, dict]:
    """The cases written from `spec`'s thresholds, against rules rendered from `rules_spec`
    (default the same spec), whose summaries are expected: one test file per evaluation interval."""
    summaries = rule_annotations(rules_spec or spec)
    files: dict[str, dict] = {}
    for case in cases(spec):
        checks = [{"eval_time": at, "alertname": case.alert,
                   "exp_alerts": [{"exp_labels": labels,
                                   "exp_annotations": {"summary": render_summary(summaries[case.alert], labels)}}
                                  for labels in expected]}
                  for at, expected in case.checks]
        suite = files.setdefault(case.interval, {"rule_files": [rule_file], "evaluation_interval": case.interval,
                                                  "tests": []})
        suite["tests"].append({"name": f"{case.alert} {case.what} {' '.join(case.notes)}".strip(),
                               "interval": case.interval,
                               "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                               "alert_rule_test": checks})
    return files


def run_promtool_tests(promtool: str, folder: Path, suites: dict[str, dict]) -> subprocess.CompletedProcess:
    names = []
    for interval, suite in suites.items():
        names.append(f"tests-{interval}.yaml")
        (folder / names[-1]).write_text(yaml.safe_dump(suite, sort_keys=False, width=1000))
    return subprocess.run([promtool, "test", "rules", *names], cwd=folder, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_binary("promtool")


def write_rules(spec: ClusterSpec, folder: Path) -> Path:
    path = folder / f"{spec.name}-rules.yaml"
    path.write_text(monitoring.rules_file(spec))
    return path


@pytest.mark.parametrize("name", SPECS)
def test_promtool_checks_the_rendered_rules(promtool, tmp_path, name):
    rules = write_rules(SPECS[name], tmp_path)
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(monitoring.alert_rules(SPECS[name]))} rules found" in done.stdout + done.stderr


def test_the_rule_file_is_the_prometheusrule():
    """`make monitoring` loads the same groups the committed PrometheusRule holds."""
    spec = SPECS["homelab"]
    committed = yaml.safe_load((settings.REPO_ROOT / "deploy" / "kubernetes" / "homelab" / "prometheusrule.yaml")
                               .read_text())
    assert yaml.safe_load(monitoring.rules_file(spec))["groups"] == committed["spec"]["groups"]


def test_every_alert_has_a_firing_a_near_miss_and_a_resolving_case():
    for spec in SPECS.values():
        names = {r["alert"] for r in monitoring.alert_rules(spec)}
        for what in ("fires", "near miss", "resolves"):
            covered = {c.alert for c in cases(spec) if c.what == what}
            assert covered == names, f"{spec.name}: no '{what}' case for {sorted(names - covered)}"


@pytest.mark.parametrize("name", SPECS)
def test_promtool_unit_tests_for_every_alert(promtool, tmp_path, name):
    spec = SPECS[name]
    rules = write_rules(spec, tmp_path)
    done = run_promtool_tests(promtool, tmp_path, promtool_tests(spec, rules.name))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "SUCCESS" in done.stdout + done.stderr


def test_promtool_unit_tests_would_catch_a_wrong_threshold(promtool, tmp_path):
    """The unit tests are sharp: rules rendered with a lag limit one second higher than the
    cases were written for fail them."""
    spec = SPECS["homelab"]
    looser = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(
        update={"lag_alert_seconds": spec.monitoring.lag_alert_seconds + 1})})
    rules = write_rules(looser, tmp_path)
    suite = promtool_tests(spec, rules.name, rules_spec=looser)["1m"]
    suite["tests"] = [t for t in suite["tests"] if t["name"].startswith("PgOpsReplicationLag fires seconds")]
    assert len(suite["tests"]) == 1
    done = run_promtool_tests(promtool, tmp_path, {"1m": suite})
    assert done.returncode != 0 and "PgOpsReplicationLag" in done.stdout + done.stderr
    # the same case against the rules it was written for passes
    write_rules(spec, tmp_path)
    suite = promtool_tests(spec, rules.name)["1m"]
    suite["tests"] = [t for t in suite["tests"] if t["name"].startswith("PgOpsReplicationLag fires seconds")]
    assert run_promtool_tests(promtool, tmp_path, {"1m": suite}).returncode == 0


def test_the_dead_mans_switch_waits_longer_for_a_slower_sensor():
    """4 sensor intervals, never less than 2 minutes: a cluster ticked every 5 minutes is not
    declared silent between two ticks."""
    spec = SPECS["local"]
    slow = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"interval_seconds": 300})})
    expr = {r["alert"]: r["expr"] for r in monitoring.alert_rules(slow)}["PgOpsHealthSensorSilent"]
    assert "> 1200 or" in expr
    assert "> 120 or" in {r["alert"]: r["expr"] for r in monitoring.alert_rules(spec)}["PgOpsHealthSensorSilent"]
