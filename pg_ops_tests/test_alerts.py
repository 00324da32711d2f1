"""Alerts: fire once / resolve once, secrets never leave, a webhook never breaks the sensor."""

import json
import socket

import dagster as dg

from pg_ops.credentials import REDACTED
from pg_ops.defs.health import AlertsResource, deliver_run_failure
from pg_ops.errors import PgOpsError
from pg_ops.operations.alert_model import Alert
from pg_ops.operations.alerts import (
    EVENT_SECONDS,
    AlertmanagerSender,
    SendLimits,
    WebhookSender,
    alertmanager_alert,
    alertmanager_name,
    deliver,
    reconcile,
    scrub,
)
from pg_ops_tests.support.alerts import WebhookCapture

ALERT_FIELDS = {"cluster", "severity", "kind", "summary", "details", "fired_at", "resolved_at"}


def a(kind="member_down", member="c-1", cluster="c", **details):
    return Alert(cluster=cluster, severity="warning", kind=kind, summary=f"{kind} {member}",
                 details={"member": member, **details})


def test_alert_fires_once_and_resolves_once():
    sent, state = reconcile({}, [a()], now=100)
    assert [(x.kind, x.fired_at, x.resolved_at) for x in sent] == [("member_down", 100, None)]
    sent, state = reconcile(state, [a()], now=105)
    assert sent == [] and list(state) == ["c/member_down/c-1"]
    sent, state = reconcile(state, [], now=110)
    assert [(x.kind, x.fired_at, x.resolved_at) for x in sent] == [("member_down", 100, 110)]
    assert state == {}
    sent, state = reconcile(state, [], now=115)
    assert sent == []


def test_unknown_and_out_of_scope_alerts_stay_open():
    _, state = reconcile({}, [a(member="c-1"), a(kind="replication_lag", member="c-2"),
                              a(cluster="d", member="d-1")], now=1)
    sent, state = reconcile(state, [], unknown={"c/replication_lag/c-2"}, scope={"c"}, now=2)
    assert [(x.cluster, x.kind) for x in sent] == [("c", "member_down")]
    assert sorted(state) == ["c/replication_lag/c-2", "d/member_down/d-1"]


def test_scrub_removes_known_secrets_and_secret_looking_keys():
    secret = "s3cr3t-Passw0rd-xyz"
    alert = a(summary_extra=f"dsn password={secret}", password="plain", nested={"aws_secret_access_key": "k"})
    alert = alert.model_copy(update={"summary": f"connect failed for postgres:{secret}@host"})
    clean = scrub(alert, [secret])
    text = json.dumps(clean.model_dump())
    assert secret not in text and "plain" not in text and '"k"' not in text
    assert clean.details["password"] == REDACTED and REDACTED in clean.summary


def test_webhook_receives_the_alert_json():
    with WebhookCapture() as hook:
        outcome = WebhookSender(hook.url).send([a(), a(member="c-2")])
    assert outcome == {"c/member_down/c-1": "sent", "c/member_down/c-2": "sent"}
    assert sorted(b["details"]["member"] for b in hook.bodies) == ["c-1", "c-2"]
    assert all(set(b) == ALERT_FIELDS for b in hook.bodies)


def test_failing_webhook_is_retried_then_given_up_without_raising():
    with WebhookCapture("fail") as hook:
        outcome = WebhookSender(hook.url, SendLimits(retries=2, backoff=0.01)).send([a()])
    assert hook.attempts == 3
    assert outcome["c/member_down/c-1"].startswith("failed after 3 attempts (HTTP 500)")


def test_hanging_webhook_and_dead_webhook_never_raise():
    with WebhookCapture("hang") as hook:
        outcome = WebhookSender(hook.url, SendLimits(timeout=0.5, retries=5, deadline=1.0)).send([a(), a(member="c-2")])
    assert all(v.startswith(("timed out", "failed")) for v in outcome.values()), outcome
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = WebhookSender(f"http://127.0.0.1:{port}/", SendLimits(retries=1, backoff=0.01)).send([a()])
    assert outcome["c/member_down/c-1"].startswith("failed after 2 attempts")
    assert WebhookSender(None).send([a()]) == {"c/member_down/c-1": "not configured"}


def test_deliver_logs_every_alert_and_never_the_webhook_url(caplog):
    with WebhookCapture() as hook, caplog.at_level("INFO", logger="pg_ops.alerts"):
        deliver([a()], WebhookSender(hook.url + "?token=hook-token-123"), secrets=[])
    assert "member_down" in caplog.text and "hook-token-123" not in caplog.text


def test_run_failure_alert_is_posted_without_secrets(monkeypatch, make_spec):
    spec = make_spec("rf")
    secret = "pw-that-must-not-leak-42"

    @dg.op
    def boom():
        raise PgOpsError(f"cannot reach rf-0 with password {secret}")

    @dg.job(tags={"pg_ops/topology": "rf"})
    def failing_job():
        boom()

    from pg_ops.operations import cluster_alerts
    monkeypatch.setattr(cluster_alerts, "cluster_secrets", lambda ctx: [secret])
    with dg.instance_for_test() as instance, WebhookCapture() as hook:
        monkeypatch.setenv("PG_OPS_ALERT_WEBHOOK", hook.url)
        result = failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                                tags={"dagster/partition": "rf"})
        event = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = dg.build_run_status_sensor_context(
            sensor_name="pg_ops_run_failure_alert", dagster_event=event, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(result.run_id)).for_run_failure()
        alert = deliver_run_failure(context, AlertsResource(), {"rf": spec})
    assert alert.kind == "run_failed" and alert.cluster == "rf" and alert.severity == "critical"
    assert len(hook.bodies) == 1
    body = json.dumps(hook.bodies[0])
    assert "cannot reach rf-0 with password" in body and secret not in body
    assert hook.bodies[0]["details"]["job"] == "failing_job"


# -- Alertmanager (the live path: test_monitoring_live.py) --------------------------------------
def test_alertmanager_alert_keeps_its_labels_from_fire_to_resolve():
    sent, state = reconcile({}, [a(kind="no_replica_streaming", member="")], now=1000)
    fired = alertmanager_alert(sent[0])
    resolved_alerts, _ = reconcile(state, [], now=1060)
    resolved = alertmanager_alert(resolved_alerts[0])
    assert fired["labels"] == resolved["labels"] == {
        "alertname": "PgOpsNoReplicaStreaming", "pg_cluster": "c", "severity": "warning",
        "kind": "no_replica_streaming", "source": "pg_ops"}
    assert fired["startsAt"] == resolved["startsAt"] == "1970-01-01T00:16:40Z"
    # Firing: an end far ahead (pg_ops resolves it); resolved: ends when pg_ops saw it clear.
    assert fired["endsAt"] == "1971-01-01T00:16:40Z" and resolved["endsAt"] == "1970-01-01T00:17:40Z"
    event = alertmanager_alert(a(kind="backup_failed").model_copy(update={"fired_at": 1000.0}), event=True)
    assert event["endsAt"] == alertmanager_alert(
        a().model_copy(update={"fired_at": 1000.0 + EVENT_SECONDS, "resolved_at": 1000.0 + EVENT_SECONDS}))["endsAt"]
    assert event["labels"]["member"] == "c-1" and event["annotations"]["summary"] == "backup_failed c-1"


def test_no_pg_ops_alert_name_is_a_prometheus_rule_name_and_covered_kinds_are_rules():
    from pg_ops.render.monitoring import SENSOR_KINDS_COVERED, alert_rules
    from pg_ops.spec import ClusterSpec

    rules = {r["alert"] for r in alert_rules(ClusterSpec(name="c"))}
    assert set(SENSOR_KINDS_COVERED.values()) <= rules
    for kind in ("member_down", "no_replica_streaming", "primary_down", "manual_failover_needed", "run_failed",
                 "backup_failed", "restore_drill_failed", "health_check_failed", "primary_unreachable"):
        assert alertmanager_name(kind) not in rules, kind


def test_alertmanager_sender_leaves_covered_kinds_to_prometheus_and_posts_the_rest():
    with WebhookCapture() as hook:  # stands in for Alertmanager's /api/v2/alerts here
        sender = AlertmanagerSender(hook.url.removesuffix("/alerts"))
        sender.url = hook.url  # the capture listens on /alerts
        outcome = sender.send([a(kind="member_down"), a(kind="no_replica_streaming", member="")])
    assert outcome == {"c/member_down/c-1": "left to Prometheus (PgOpsInstanceDown)",
                       "c/no_replica_streaming/": "sent"}
    assert [[x["labels"]["alertname"] for x in body] for body in hook.bodies] == [["PgOpsNoReplicaStreaming"]]
    assert AlertmanagerSender(None).send([a()]) == {}
