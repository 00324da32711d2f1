"""The resources: which cluster specs this code location operates (pg_ops), and how alerts
leave (alerts)."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from pg_ops.operations.alert_model import Alert
from pg_ops.operations.alerts import AlertDelivery
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec, load_specs, select_spec


class AlertsResource(dg.ConfigurableResource):
    """Alerts are always logged; POSTed as JSON to the URL in the env var the cluster's spec
    names (`alerts.webhook_url_env`, default PG_OPS_ALERT_WEBHOOK) when it is set, and to the
    spec's `alerts.alertmanager_url` when there is one (kinds a Prometheus rule covers excepted).
    Sensors deliver through it; assets whose operation may alert (a backup, a drill) hand its
    delivery() to their ClusterContext, so every alert takes the same path, overrides included."""

    webhook_url_env: str | None = None  # overrides every spec's env var name
    timeout_seconds: float = 2.0
    retries: int = 2
    deadline_seconds: float = 5.0

    def delivery(self) -> AlertDelivery:
        return AlertDelivery(webhook_url_env=self.webhook_url_env, timeout_seconds=self.timeout_seconds,
                             retries=self.retries, deadline_seconds=self.deadline_seconds)

    def deliver(self, alerts: list[Alert], specs: dict[str, ClusterSpec], secrets: list[str],
                logger=None, events: bool = False) -> dict[str, str]:
        """`events`: one-off alerts that never resolve (a failed run)."""
        return self.delivery().send(alerts, specs, secrets, logger, events=events)


# The one instance every area's Definitions carries (Definitions.merge accepts a resource key
# twice only for the same object): assets and sensors that alert declare `alerts: AlertsResource`.
ALERTS = AlertsResource()


class PgOpsResource(dg.ConfigurableResource):
    """Cluster specs come from PG_OPS_CLUSTERS (a file or a folder); `clusters_path` overrides."""

    clusters_path: str | None = None
    _specs: list[ClusterSpec] | None = PrivateAttr(default=None)

    def specs(self) -> list[ClusterSpec]:
        """PG_OPS_CLUSTERS and the specs pg_ops made (spec.load_specs), or `clusters_path` alone."""
        if self._specs is None:
            self._specs = load_specs(Path(self.clusters_path) if self.clusters_path else None)
        return self._specs

    def spec(self, cluster: str) -> ClusterSpec:
        return select_spec(self.specs(), cluster)

    def cluster(self, cluster: str, log: logging.Logger | None = None,
                alerts: AlertsResource | None = None) -> ClusterContext:
        """The cluster's context; `alerts`: how its operation's alerts leave (the default path
        when None)."""
        return ClusterContext.for_spec(self.spec(cluster), log, alerts.delivery() if alerts else None)
