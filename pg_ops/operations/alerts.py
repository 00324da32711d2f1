"""How alerts leave pg_ops: the one JSON shape (the value, operations/alert_model.py) fired once
and resolved once, always logged, POSTed to a webhook and, when the spec names one
(`alerts.alertmanager_url`), to an Alertmanager. From a ClusterContext: operations/cluster_alerts.py.

The de-duplication state is a plain dict (the sensor keeps it in its cursor): a condition
that is active now and was not open fires; an open one that is no longer active resolves; an
open one whose condition could not be evaluated this tick (its member did not answer) stays
open — silence is not recovery.

Secrets never leave: every payload is scrubbed of the cluster's passwords and of any value
of a secret-looking detail key before it is logged or sent, and the webhook URL (which often
carries a token itself) is never logged.

Alertmanager (its /api/v2/alerts) receives the same fire and resolve, once each, with one rule:
a kind a Prometheus rule already sends there (render/monitoring.py SENSOR_KINDS_COVERED: a member
down, lag, not streaming, storage, connections, split brain) is left to Prometheus, so no
condition reaches Alertmanager twice. A firing condition is posted with an end far ahead: it
stays firing until pg_ops posts its resolution (Alertmanager would otherwise resolve it by
itself after its resolve_timeout, as if the condition had cleared; silence is not recovery). A
one-off event (a failed run, backup or drill) never resolves: it ends EVENT_SECONDS after it
fired.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pg_ops.credentials import redact
from pg_ops.operations.alert_model import Alert
from pg_ops.spec import AlertsSpec, ClusterSpec

log = logging.getLogger("pg_ops.alerts")


# -- de-duplication --------------------------------------------------------------------------
def reconcile(open_alerts: dict[str, dict], active: Iterable[Alert], unknown: set[str] | None = None,
              scope: set[str] | None = None, now: float | None = None) -> tuple[list[Alert], dict[str, dict]]:
    """Compare the conditions active now with the alerts already open.

    `open_alerts`: key -> Alert as a dict (the cursor's state). `unknown`: keys whose condition
    could not be evaluated this time (kept as they are). `scope`: clusters evaluated this time
    (alerts of other clusters are kept as they are). Returns (alerts to send: newly fired and
    newly resolved, the new open state).
    """
    now = now or time.time()
    unknown = unknown or set()
    state = dict(open_alerts)
    to_send: list[Alert] = []
    active_keys = set()
    for alert in active:
        active_keys.add(alert.key)
        if alert.key in state:
            continue
        fired = alert.model_copy(update={"fired_at": now, "resolved_at": None})
        state[alert.key] = fired.model_dump()
        to_send.append(fired)
    for key, raw in list(state.items()):
        if key in active_keys or key in unknown:
            continue
        if scope is not None and raw["cluster"] not in scope:
            continue
        to_send.append(Alert.model_validate({**raw, "resolved_at": now}))
        del state[key]
    return to_send, state


# -- secrets ---------------------------------------------------------------------------------
def scrub(alert: Alert, secrets: Iterable[str] = ()) -> Alert:
    """The alert without any known secret value and without values of secret-looking keys
    (credentials.redact, the one scrubber)."""
    return Alert.model_validate(redact(alert.model_dump(), secrets))


# -- delivery ----------------------------------------------------------------------------------
def _post_json(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pg_ops-alerts"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator-set URL
        response.read()


@dataclass(frozen=True)
class SendLimits:
    """What one receiver may cost the caller: each POST's timeout, the retries after the first
    attempt (`backoff` × attempt seconds apart), and one deadline for the whole batch."""

    timeout: float = 2.0
    retries: int = 2
    deadline: float = 5.0
    backoff: float = 0.3


def _post_with_retries(url: str, body: bytes, limits: SendLimits) -> str:
    """'sent' or 'failed after N attempts (reason)'; never raises, never names the URL."""
    last = ""
    retries = limits.retries
    for attempt in range(retries + 1):
        try:
            _post_json(url, body, limits.timeout)
            return "sent"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except Exception as exc:  # noqa: BLE001 - a receiver must never break the sensor
            last = type(exc).__name__ + (f": {exc.reason}" if hasattr(exc, "reason") else "")
        if attempt < retries:
            time.sleep(limits.backoff * (attempt + 1))
    return f"failed after {retries + 1} attempts ({last})"


def _within_deadline(jobs: list[tuple[str, object]], deadline: float, name: str) -> dict[str, str]:
    """Run each (key, callable returning an outcome) in a daemon thread; one deadline for all."""
    results: dict[str, str] = {}

    def run(key, job):
        results[key] = job()

    threads = [threading.Thread(target=run, args=job, daemon=True, name=name) for job in jobs]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return {key: results.get(key, f"timed out after {deadline:g} s") for key, _ in jobs}


class WebhookSender:
    """POST each alert as JSON with a short timeout and a few retries; never raises.

    Each send runs in a daemon thread and the whole batch has one deadline, so a webhook that
    hangs costs the caller at most `limits.deadline` seconds, however many alerts there are.
    """

    def __init__(self, url: str | None, limits: SendLimits = SendLimits()):
        self.url = url
        self.limits = limits

    @classmethod
    def from_env(cls, env_name: str, limits: SendLimits = SendLimits()) -> WebhookSender:
        return cls(os.environ.get(env_name) or None, limits)

    def send(self, alerts: list[Alert]) -> dict[str, str]:
        """key -> 'sent' | 'failed …' | 'timed out' | 'not configured'."""
        if not alerts:
            return {}
        if not self.url:
            return {a.key: "not configured" for a in alerts}

        url = self.url

        def post(alert: Alert):
            body = json.dumps(alert.model_dump(), default=str).encode()
            return lambda: _post_with_retries(url, body, self.limits)

        return _within_deadline([(a.key, post(a)) for a in alerts], self.limits.deadline, "alert-webhook")


EVENT_SECONDS = 3600.0  # how long a one-off event stays firing in Alertmanager
HOLD_SECONDS = 365 * 86400.0  # a condition's end "far ahead": until pg_ops resolves it


def alertmanager_name(kind: str) -> str:
    """member_down -> PgOpsMemberDown (Prometheus's naming; no rule of ours has such a name)."""
    return "PgOps" + "".join(part.capitalize() for part in kind.split("_"))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def alertmanager_alert(alert: Alert, event: bool = False) -> dict:
    """The alert as Alertmanager's API v2 takes it. Its labels identify it (the resolution
    repeats them exactly); `source` tells it from the alerts Prometheus sends."""
    from pg_ops.render.monitoring import CLUSTER_LABEL

    labels = {"alertname": alertmanager_name(alert.kind), CLUSTER_LABEL: alert.cluster,
              "severity": alert.severity, "kind": alert.kind, "source": "pg_ops"}
    if alert.details.get("member"):
        labels["member"] = str(alert.details["member"])
    fired = alert.fired_at or time.time()
    if alert.resolved_at is not None:
        ends = alert.resolved_at
    else:
        ends = fired + (EVENT_SECONDS if event else HOLD_SECONDS)
    return {"labels": labels,
            "annotations": {"summary": alert.summary, "details": json.dumps(alert.details, default=str,
                                                                              sort_keys=True)},
            "startsAt": _iso(fired), "endsAt": _iso(ends)}


def covered_by_prometheus(kind: str) -> str | None:
    """The Prometheus rule that sends this condition to Alertmanager already, if any."""
    from pg_ops.render.monitoring import SENSOR_KINDS_COVERED

    return SENSOR_KINDS_COVERED.get(kind)


class AlertmanagerSender:
    """POST alerts to Alertmanager's /api/v2/alerts: one request per batch, retried, under one
    deadline; never raises. Kinds a Prometheus rule covers are not sent (see the module doc)."""

    def __init__(self, url: str | None, limits: SendLimits = SendLimits()):
        self.url = url.rstrip("/") + "/api/v2/alerts" if url else None
        self.limits = limits

    def send(self, alerts: list[Alert], events: bool = False) -> dict[str, str]:
        """key -> 'sent' | 'left to Prometheus (Rule)' | 'failed …' | 'timed out'. `events`:
        one-off alerts that never resolve."""
        if not self.url or not alerts:
            return {}
        outcome = {a.key: f"left to Prometheus ({covered_by_prometheus(a.kind)})"
                   for a in alerts if covered_by_prometheus(a.kind)}
        batch = [a for a in alerts if a.key not in outcome]
        if batch:
            url, body = self.url, json.dumps([alertmanager_alert(a, events) for a in batch]).encode()
            result = _within_deadline([("batch", lambda: _post_with_retries(url, body, self.limits))],
                                      self.limits.deadline, "alert-alertmanager")["batch"]
            outcome.update({a.key: result for a in batch})
        return outcome


def log_alert(alert: Alert, logger: logging.Logger | None = None) -> None:
    logger = logger or log
    state = "RESOLVED" if alert.resolved else alert.severity.upper()
    logger.log(logging.INFO if alert.resolved or alert.severity == "info" else logging.WARNING,
               "alert %s %s %s: %s %s", state, alert.cluster, alert.kind, alert.summary,
               json.dumps(alert.details, default=str, sort_keys=True))


def deliver(alerts: list[Alert], sender: WebhookSender, secrets: Iterable[str] = (),
            logger: logging.Logger | None = None, alertmanager: AlertmanagerSender | None = None,
            events: bool = False) -> dict[str, str]:
    """Scrub, log, POST to the webhook and to Alertmanager (`events`: one-off alerts that never
    resolve). Returns the webhook outcome per alert key (never raises); Alertmanager failures
    are logged."""
    secrets = list(secrets)
    clean = [scrub(a, secrets) for a in alerts]
    for alert in clean:
        log_alert(alert, logger)
    outcome = sender.send(clean)
    for key, result in outcome.items():
        if result not in ("sent", "not configured"):
            (logger or log).warning("alert webhook: %s: %s", key, result)
    if alertmanager is not None:
        for key, result in alertmanager.send(clean, events).items():
            if result != "sent" and not result.startswith("left to Prometheus"):
                (logger or log).warning("alertmanager: %s: %s", key, result)
    return outcome


@dataclass(frozen=True)
class AlertDelivery:
    """The one way alerts leave pg_ops, whoever raises them (the health and archiving sensors, a
    failed run, backup or drill): scrubbed, logged, POSTed to the webhook whose URL is in the env
    var the cluster's spec names (`alerts.webhook_url_env`; `webhook_url_env` here overrides
    every spec's), and to the spec's `alerts.alertmanager_url`, within these limits.
    defs/resources.py: AlertsResource configures it; a ClusterContext carries it."""

    webhook_url_env: str | None = None
    timeout_seconds: float = 2.0
    retries: int = 2
    deadline_seconds: float = 5.0

    def send(self, alerts: list[Alert], specs: dict[str, ClusterSpec], secrets: Iterable[str],
             logger: logging.Logger | None = None, events: bool = False) -> dict[str, str]:
        """Route each alert by its cluster's spec (AlertsSpec defaults for a cluster not in
        `specs`). `events`: one-off alerts that never resolve. Returns the webhook outcome per
        alert key; never raises."""
        secrets = list(secrets)
        by_route: dict[tuple[str, str | None], list[Alert]] = {}
        for alert in alerts:
            spec_alerts = specs[alert.cluster].alerts if alert.cluster in specs else AlertsSpec()
            route = (self.webhook_url_env or spec_alerts.webhook_url_env, spec_alerts.alertmanager_url)
            by_route.setdefault(route, []).append(alert)
        outcome: dict[str, str] = {}
        limits = SendLimits(timeout=self.timeout_seconds, retries=self.retries, deadline=self.deadline_seconds)
        for (env_name, alertmanager_url), batch in by_route.items():
            sender = WebhookSender.from_env(env_name, limits)
            alertmanager = AlertmanagerSender(alertmanager_url, limits) if alertmanager_url else None
            outcome.update(deliver(batch, sender, secrets, logger, alertmanager=alertmanager, events=events))
        return outcome
