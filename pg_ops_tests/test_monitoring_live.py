"""Monitoring on real parts: a local cluster, one postgres_exporter per member and a Prometheus
with the repo's rules, started by `make monitoring`'s own supervisor (scrape and evaluation every
second, every rule's `for` shortened to 2 s: the real `for`s are proven by promtool in
test_prometheus_rules.py), and a real Alertmanager that both Prometheus and pg_ops send to, whose
notifications land in a local webhook capture. One cluster and stack for the module; each test
leaves the cluster healthy again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_ops import settings
from pg_ops.credentials import MONITORING_USER, PG_OPS_DATABASE, SUPERUSER
from pg_ops.defs.health import AlertsResource, evaluate_health
from pg_ops.operations.activity import record_status
from pg_ops.postgres.status_table import STATUS_KEYS
from pg_ops.render import monitoring
from pg_ops_tests.monitoring_tools import alertmanager, monitoring_stack, notified, wait_until
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.helpers import home_environment, kill_member, running_cluster, spec_from, write_spec

CLUSTER = "mon"
DASHBOARD = settings.REPO_ROOT / "deploy" / "monitoring" / "grafana-dashboard-postgresql.json"
LAG_SECONDS = 3  # this cluster's lag limit: reached within seconds of paused replay under writes


class Live:
    def __init__(self, ctx, prometheus, manager, notifications: WebhookCapture, home: Path):
        self.ctx, self.prometheus, self.alertmanager, self.notifications, self.home = \
            ctx, prometheus, manager, notifications, home
        self.cursor = None

    def sql(self, member: str, query: str, dbname: str = "postgres", params=()):
        ep = self.ctx.endpoints()[member]
        with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, password=self.ctx.admin_password(),
                             dbname=dbname, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else None

    @property
    def primary(self) -> str:
        return self.ctx.state().primary

    @property
    def replicas(self) -> list[str]:
        return [m for m in self.ctx.spec.member_names if m != self.primary]

    def tick(self) -> dg.SensorResult:
        """One tick of the real health sensor's body (alerts to Alertmanager, the health_tick row)."""
        result = evaluate_health(dg.build_sensor_context(cursor=self.cursor), [self.ctx], AlertsResource())
        self.cursor = result.cursor
        return result

    def open_pg_ops_alerts(self) -> set[str]:
        return set(json.loads(self.cursor)["alerts"]) if self.cursor else set()

    def firing(self, alert: str, **labels) -> list[dict]:
        return [a for a in self.prometheus.alerts(alert, "firing")
                if all(a["labels"].get(k) == v for k, v in labels.items())]

    def pg_ops_deploy(self) -> None:
        """`pg-ops deploy` as a user runs it (a deploy_cluster run on this module's instance)."""
        done = subprocess.run([str(settings.REPO_ROOT / ".venv" / "bin" / "pg-ops"), "deploy", "--cluster", CLUSTER],
                              env=dict(os.environ), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def live():
    with contextlib.ExitStack() as stack:
        home = stack.enter_context(home_environment())
        capture = stack.enter_context(WebhookCapture())
        manager = stack.enter_context(alertmanager(home / "alertmanager", capture.url))
        # No sensor renews the primary's isolation lease here: with both replicas killed it would
        # (rightly) fence itself a lease after the test's last health tick, which is not what
        # these tests are about.
        spec = spec_from(write_spec(home / "specs", CLUSTER, failover={"isolation_fencing": False},
                                    monitoring={"lag_alert_seconds": LAG_SECONDS, "interval_seconds": 1},
                                    alerts={"alertmanager_url": manager.url,
                                            "webhook_url_env": "PG_OPS_TEST_MONITORING_WEBHOOK_UNSET"}))
        ctx = stack.enter_context(running_cluster(spec))
        prometheus = stack.enter_context(monitoring_stack(home / "monitoring", alertmanager=manager.address))
        yield Live(ctx, prometheus, manager, capture, home)


def test_exporters_run_the_sidecars_queries_as_the_monitoring_role(live):
    """Every member is scraped by its own exporter, logged in as postgres_exporter (a member of
    pg_monitor, not a superuser), and every custom query produces its series."""
    assert (live.home / "monitoring" / "queries.yaml").read_text() == monitoring.queries_yaml()
    for member in live.ctx.spec.member_names:
        sessions = live.sql(member, "select usename, rolsuper, pg_has_role(usename, 'pg_monitor', 'member') "
                                    "from pg_stat_activity join pg_roles on rolname = usename "
                                    "where datname = %s and backend_type = 'client backend'",
                            params=(PG_OPS_DATABASE,))
        assert (MONITORING_USER, False, True) in sessions, f"{member}: {sessions}"
    record_status(live.ctx, "health_tick", 3)
    pods = set(live.ctx.spec.member_names)
    wait_until(lambda: {s["metric"]["pod"] for s in live.prometheus.query(
        f'pg_ops_status_timestamp_seconds{{pg_cluster="{CLUSTER}", key="health_tick"}}')} == pods,
        "the status row scraped on every member (it replicates)")
    per_member = monitoring.produced_metrics() - {"pg_ops_replication_replay_lag_seconds",
                                                  "pg_ops_replication_replay_lag_bytes"}
    for metric in sorted(per_member) + ["pg_up"]:
        found = {s["metric"]["pod"]: float(s["value"][1]) for s in live.prometheus.query(
            f'{metric}{{pg_cluster="{CLUSTER}"}}')}
        assert set(found) == pods, f"{metric}: {found}"
    up = {s["metric"]["pod"]: s["value"][1] for s in live.prometheus.query(f'pg_up{{pg_cluster="{CLUSTER}"}}')}
    assert set(up.values()) == {"1"}, up
    lag = live.prometheus.query(f'pg_ops_replication_replay_lag_bytes{{pg_cluster="{CLUSTER}"}}')
    assert {(s["metric"]["pod"], s["metric"]["member"]) for s in lag} == {(live.primary, r) for r in live.replicas}


# -- the dashboard -------------------------------------------------------------------------------
def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"variable {variable['name']}",
                            re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", variable["definition"])))
    return queries


def grafana_expand(expr: str) -> str:
    """What Grafana sends Prometheus: its variables replaced (ranges of at least a few scrapes)."""
    expr = re.sub(r"\$\{?cluster\}?", CLUSTER, expr)
    return re.sub(r"\$__(rate_interval|interval|range)", "1m", expr)


def test_every_dashboard_query_returns_data(live):
    """Each panel's expressions return series from the live Prometheus (an `or vector(0)`
    fallback does not count: the expression before it must return data itself)."""
    for key in STATUS_KEYS:  # what backups, drills, failovers and the sensor record
        assert record_status(live.ctx, key, 1.0)
    queries = dashboard_queries()
    assert len(queries) > 20

    def missing() -> list[str]:
        empty = []
        for title, expr in queries:
            real = re.sub(r"\s+or\s+vector\(0\)\s*$", "", grafana_expand(expr))
            if not live.prometheus.query(real):
                empty.append(f"{title}: {real}")
        return empty

    wait_until(lambda: not missing(), "every dashboard query to return data")
    primaries = live.prometheus.query(grafana_expand(dict(queries)["Primaries"]))
    streaming = live.prometheus.query(grafana_expand(dict(queries)["Replicas streaming"]))
    assert [s["value"][1] for s in primaries] == ["1"] and [s["value"][1] for s in streaming] == ["2"]


# -- pg_ops's own activity: the status rows -----------------------------------------------------
def backdate(live: Live, key: str, seconds: int) -> None:
    """The status row as it is when pg_ops last wrote it `seconds` ago (on the primary; it replicates)."""
    live.sql(live.primary, "update status set at = now() - make_interval(secs => %s) where key = %s",
             PG_OPS_DATABASE, (seconds, key))


def status_age_alert(live: Live, alert: str) -> list[dict]:
    """The alert from the row's age (the absent() branch, no row at all, carries a `key` label)."""
    return [a for a in live.firing(alert, pg_cluster=CLUSTER) if "key" not in a["labels"]]


def test_stale_backup_status_row_fires_the_backup_age_alert(live):
    assert record_status(live.ctx, "backup_complete", 12345)
    wait_until(lambda: not live.firing("PgOpsBackupTooOld"), "no backup-age alert after a fresh backup row")
    backdate(live, "backup_complete", 27 * 3600)
    wait_until(lambda: status_age_alert(live, "PgOpsBackupTooOld"), "PgOpsBackupTooOld firing on a 27 h old row")
    assert record_status(live.ctx, "backup_complete", 12345)
    wait_until(lambda: not live.firing("PgOpsBackupTooOld"), "PgOpsBackupTooOld resolved by a new backup row")


def test_health_ticks_stopped_fire_the_dead_mans_switch(live):
    live.tick()  # the real sensor body writes the health_tick row
    wait_until(lambda: not live.firing("PgOpsHealthSensorSilent"), "no dead man's switch while the sensor ticks")
    # No tick since: the row is as old as the time without one (3 minutes, past the 2-minute limit).
    backdate(live, "health_tick", 180)
    wait_until(lambda: status_age_alert(live, "PgOpsHealthSensorSilent"), "PgOpsHealthSensorSilent firing")
    live.tick()
    wait_until(lambda: not live.firing("PgOpsHealthSensorSilent"), "PgOpsHealthSensorSilent resolved by a tick")


# -- members down: Prometheus's alert and pg_ops's own, one path, nothing twice ----------------
def test_killed_replicas_alert_once_from_each_source_and_resolve_after_deploy(live):
    """A replica's member killed: PgOpsInstanceDown fires in Prometheus. The second one killed
    too: pg_ops's sensor sees no replica streaming. Alertmanager gets Prometheus's instance-down
    alerts and pg_ops's no-replica alert, each fired once and resolved once after `pg-ops
    deploy`, and never pg_ops's own member_down (Prometheus covers it)."""
    first, second = live.replicas
    kill_member(live.ctx.platform, first)
    wait_until(lambda: live.firing("PgOpsInstanceDown", pod=first), f"PgOpsInstanceDown firing for {first}")
    assert not live.firing("PgOpsInstanceDown", pod=second)
    kill_member(live.ctx.platform, second)
    live.tick()
    assert {f"{CLUSTER}/member_down/{first}", f"{CLUSTER}/member_down/{second}",
            f"{CLUSTER}/no_replica_streaming/"} <= live.open_pg_ops_alerts()
    bodies = live.notifications.bodies
    wait_until(lambda: all(notified(bodies, "PgOpsInstanceDown", "firing", pod=m) for m in (first, second))
               and notified(bodies, "PgOpsNoReplicaStreaming", "firing"), "both sources' alerts notified")
    live.tick()  # still down: nothing new is sent

    live.pg_ops_deploy()
    live.tick()
    assert not any("/member_down/" in k or "/no_replica_streaming/" in k for k in live.open_pg_ops_alerts())
    wait_until(lambda: not live.firing("PgOpsInstanceDown"), "PgOpsInstanceDown resolved after pg-ops deploy")
    wait_until(lambda: all(notified(bodies, "PgOpsInstanceDown", "resolved", pod=m) for m in (first, second))
               and notified(bodies, "PgOpsNoReplicaStreaming", "resolved"), "both sources' resolutions notified")
    live.tick()
    with contextlib.suppress(AssertionError):  # give a duplicate every chance to arrive
        wait_until(lambda: len(notified(bodies, "PgOpsNoReplicaStreaming", "resolved")) > 1, "a duplicate", 5)
    for member in (first, second):
        assert len(notified(bodies, "PgOpsInstanceDown", "firing", pod=member)) == 1
        assert len(notified(bodies, "PgOpsInstanceDown", "resolved", pod=member)) == 1
    pg_ops_fired = notified(bodies, "PgOpsNoReplicaStreaming", "firing")
    assert len(pg_ops_fired) == 1 and pg_ops_fired[0]["labels"]["source"] == "pg_ops"
    assert len(notified(bodies, "PgOpsNoReplicaStreaming", "resolved")) == 1
    assert not notified(bodies, "PgOpsMemberDown", "firing"), "member_down reached Alertmanager twice"
    assert not any(a["labels"].get("source") == "pg_ops" and a["labels"]["alertname"] in
                   set(monitoring.SENSOR_KINDS_COVERED.values()) for body in bodies for a in body["alerts"])


# -- lag -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def writes(live: Live):
    """Small writes through the primary, every 0.2 s, until the block ends."""
    stop = threading.Event()
    live.sql(live.primary, "create table if not exists lag_probe (at timestamptz default now(), x text)", "app")

    def write():
        while not stop.wait(0.2):
            with contextlib.suppress(psycopg.Error):
                live.sql(live.primary, "insert into lag_probe (x) select md5(g::text) from generate_series(1, 200) g",
                         "app")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_paused_replay_under_writes_fires_the_lag_alert(live):
    replica = live.replicas[0]
    with writes(live):
        live.sql(replica, "select pg_wal_replay_pause()")
        try:
            wait_until(lambda: live.firing("PgOpsReplicationLag", member=replica),
                       f"PgOpsReplicationLag firing for {replica}")
            assert not live.firing("PgOpsReplicationLag", member=live.replicas[1])
        finally:
            live.sql(replica, "select pg_wal_replay_resume()")
        wait_until(lambda: not live.firing("PgOpsReplicationLag"), "PgOpsReplicationLag resolved after resume")


def test_an_operations_event_reaches_alertmanager_once_and_ends_by_itself(live):
    """A one-off alert (a failed backup: send_alert, as operations/backup.py sends it) fires once in
    Alertmanager and carries its own end, an hour later: nothing will ever resolve it."""
    from datetime import datetime

    from pg_ops.operations.alerts import EVENT_SECONDS
    from pg_ops.operations.cluster_alerts import send_alert

    alert = send_alert(live.ctx, "critical", "backup_failed", f"backup of cluster {CLUSTER} failed (test)",
                       backup_id="b-live")
    wait_until(lambda: notified(live.notifications.bodies, "PgOpsBackupFailed", "firing"),
               "the failed backup notified by Alertmanager")
    held = [x for x in live.alertmanager.alerts() if x["labels"]["alertname"] == "PgOpsBackupFailed"]
    assert len(held) == 1 and held[0]["labels"]["source"] == "pg_ops"
    ends = datetime.fromisoformat(held[0]["endsAt"].replace("Z", "+00:00")).timestamp()
    assert abs(ends - (alert.fired_at + EVENT_SECONDS)) < 2
    assert json.loads(held[0]["annotations"]["details"]) == {"backup_id": "b-live"}
    assert live.ctx.admin_password() not in json.dumps(held)
    assert len(notified(live.notifications.bodies, "PgOpsBackupFailed", "firing")) == 1


# -- make monitoring's supervisor ------------------------------------------------------------------
def test_make_monitoring_stop_stops_every_process_it_started(live):
    """`make monitoring-stop` (local_monitoring.stop) ends the supervisor, and with it every
    exporter and Prometheus it started; a second stop says nothing runs."""
    import sys

    from pg_ops.platforms import local_monitoring
    from pg_ops_tests.monitoring_tools import Prometheus, stop_group
    from pg_ops_tests.support.helpers import free_port, free_port_range

    workdir = live.home / "monitoring-2"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pg_ops.platforms.local_monitoring", "run", "--dir", str(workdir),
                             "--prometheus-port", str(port), "--exporter-port", str(free_port_range(3))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: Prometheus(f"http://127.0.0.1:{port}").targets_up(), "the second stack up")
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                   text=True).stdout.split()]
        assert len(children) == len(live.ctx.spec.member_names) + 1  # the exporters and Prometheus
        assert local_monitoring.stop(workdir) == f"stopped make monitoring (supervisor {proc.pid})"
        proc.wait(30)

        def gone(pid: int) -> bool:
            return not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

        wait_until(lambda: all(gone(pid) for pid in children), "every child of the supervisor gone", 30)
        assert local_monitoring.stop(workdir) == "make monitoring is not running"
        assert not (workdir / "supervisor.pid").exists()
    finally:
        stop_group(proc)


def test_make_monitoring_refuses_a_cluster_without_the_exporters_role(tmp_path, monkeypatch):
    from pg_ops.errors import PgOpsError
    from pg_ops.platforms import local_monitoring

    spec = spec_from(write_spec(tmp_path, "never"))
    monkeypatch.setenv("PG_OPS_HOME", str(tmp_path / "home"))
    with pytest.raises(PgOpsError, match=r"cluster never: no password for the exporter's role postgres_exporter yet: "
                                         r"run `pg-ops deploy --cluster never`"):
        local_monitoring.exporters_for([spec], 9187)
