"""Alerts: one JSON shape, fired once and resolved once, always logged, POSTed to a webhook.

The de-duplication state is a plain dict (the sensor keeps it in its cursor): a condition
that is active now and was not open fires; an open one that is no longer active resolves; an
open one whose condition could not be evaluated this tick (its member did not answer) stays
open — silence is not recovery.

Secrets never leave: every payload is scrubbed of the cluster's passwords and of any value
of a secret-looking detail key before it is logged or sent, and the webhook URL (which often
carries a token itself) is never logged.
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
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pg_ops.operations.context import ClusterContext

Severity = Literal["critical", "warning", "info"]
REDACTED = "[redacted]"
SECRET_KEY_MARKERS = ("password", "secret", "token", "passwd", "credential", "private_key")
log = logging.getLogger("pg_ops.alerts")


class Alert(BaseModel):
    """DESIGN.md's alert shape. `details` may carry `member` (the subject of a member alert)."""

    model_config = ConfigDict(frozen=True)
    cluster: str
    severity: Severity
    kind: str
    summary: str
    details: dict = {}
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def key(self) -> str:
        """One open alert per cluster, kind and member."""
        return f"{self.cluster}/{self.kind}/{self.details.get('member', '')}"

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None


def condition_key(cluster: str, kind: str, member: str | None = None) -> str:
    return f"{cluster}/{kind}/{member or ''}"


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
def _scrub(value, secrets: list[str]):
    if isinstance(value, dict):
        return {k: (REDACTED if any(m in str(k).lower() for m in SECRET_KEY_MARKERS) else _scrub(v, secrets))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    return value


def scrub(alert: Alert, secrets: Iterable[str] = ()) -> Alert:
    """The alert without any known secret value and without values of secret-looking keys."""
    known = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    return Alert.model_validate(_scrub(alert.model_dump(), known))


def payload(alert: Alert) -> dict:
    return alert.model_dump()


# -- delivery ----------------------------------------------------------------------------------
class WebhookSender:
    """POST each alert as JSON with a short timeout and a few retries; never raises.

    Each send runs in a daemon thread and the whole batch has one deadline, so a webhook that
    hangs costs the caller at most `deadline` seconds, however many alerts there are.
    """

    def __init__(self, url: str | None, timeout: float = 2.0, retries: int = 2, deadline: float = 5.0,
                 backoff: float = 0.3):
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.deadline = deadline
        self.backoff = backoff

    @classmethod
    def from_env(cls, env_name: str, **kwargs) -> WebhookSender:
        return cls(os.environ.get(env_name) or None, **kwargs)

    def _post_once(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "pg_ops-alerts"})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - operator-set URL
            response.read()

    def _post(self, alert: Alert, results: dict) -> None:
        body = json.dumps(payload(alert), default=str).encode()
        last = ""
        for attempt in range(self.retries + 1):
            try:
                self._post_once(body)
                results[alert.key] = "sent"
                return
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except Exception as exc:  # noqa: BLE001 - a webhook must never break the sensor
                last = type(exc).__name__ + (f": {exc.reason}" if hasattr(exc, "reason") else "")
            if attempt < self.retries:
                time.sleep(self.backoff * (attempt + 1))
        results[alert.key] = f"failed after {self.retries + 1} attempts ({last})"

    def send(self, alerts: list[Alert]) -> dict[str, str]:
        """key -> 'sent' | 'failed …' | 'timed out' | 'not configured'."""
        if not alerts:
            return {}
        if not self.url:
            return {a.key: "not configured" for a in alerts}
        results: dict[str, str] = {}
        threads = [threading.Thread(target=self._post, args=(a, results), daemon=True, name="alert-webhook")
                   for a in alerts]
        for thread in threads:
            thread.start()
        end = time.monotonic() + self.deadline
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        return {a.key: results.get(a.key, f"timed out after {self.deadline:g} s") for a in alerts}


def log_alert(alert: Alert, logger: logging.Logger | None = None) -> None:
    logger = logger or log
    state = "RESOLVED" if alert.resolved else alert.severity.upper()
    logger.log(logging.INFO if alert.resolved or alert.severity == "info" else logging.WARNING,
               "alert %s %s %s: %s %s", state, alert.cluster, alert.kind, alert.summary,
               json.dumps(alert.details, default=str, sort_keys=True))


def deliver(alerts: list[Alert], sender: WebhookSender, secrets: Iterable[str] = (),
            logger: logging.Logger | None = None) -> dict[str, str]:
    """Scrub, log, and POST. Returns the webhook outcome per alert key (never raises)."""
    secrets = list(secrets)
    clean = [scrub(a, secrets) for a in alerts]
    for alert in clean:
        log_alert(alert, logger)
    outcome = sender.send(clean)
    for key, result in outcome.items():
        if result not in ("sent", "not configured"):
            (logger or log).warning("alert webhook: %s: %s", key, result)
    return outcome


def cluster_secrets(ctx: ClusterContext) -> list[str]:
    """Values that must never appear in an alert: the cluster's passwords and the backup
    store's secret key (by the env var the spec names)."""
    values: list[str] = []
    try:
        creds = ctx.platform.load_credentials()
    except Exception:  # noqa: BLE001 - scrubbing must not fail the sensor
        creds = None
    if creds is not None:
        values += list(creds.as_plain_dict().values())
    store = ctx.spec.backups.store
    env = getattr(store, "credentials_env", None)
    if env is not None:
        values += [os.environ.get(env.secret_key, ""), os.environ.get(env.access_key, "")]
    return [v for v in values if v]


def send_alert(ctx: ClusterContext, severity: str, kind: str, summary: str, **details) -> Alert:
    """One-off alert from an operation (a failed backup or drill): logged, POSTed to the
    cluster's webhook when configured, secrets scrubbed. Never raises."""
    alert = Alert(cluster=ctx.name, severity=severity, kind=kind, summary=summary, details=details,
                  fired_at=time.time())
    deliver([alert], WebhookSender.from_env(ctx.spec.alerts.webhook_url_env), cluster_secrets(ctx), ctx.log)
    return alert
