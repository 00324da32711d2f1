"""A cluster's alerts from its ClusterContext: the values every alert of the cluster is scrubbed
of, and an operation's one-off alert (a failed backup, copy or drill), sent through the context's
AlertDelivery (operations/alerts.py). Apart from alerts.py so that delivery knows nothing of the
context, which carries it."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from pg_ops.operations.alert_model import Alert, Severity

if TYPE_CHECKING:
    from pg_ops.operations.context import ClusterContext


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


def send_alert(ctx: ClusterContext, severity: Severity, kind: str, summary: str, **details) -> Alert:
    """One-off alert from an operation (a failed backup or drill), through the cluster
    context's AlertDelivery. Never raises."""
    alert = Alert(cluster=ctx.name, severity=severity, kind=kind, summary=summary, details=details,
                  fired_at=time.time())
    ctx.alerts.send([alert], {ctx.name: ctx.spec}, cluster_secrets(ctx), ctx.log, events=True)
    return alert
