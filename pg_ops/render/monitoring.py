"""Observability of a cluster, from one source: the postgres_exporter sidecar and its custom
queries, the ServiceMonitor that scrapes it, the PrometheusRule with the alerts (thresholds from the
spec), and the same queries and rules for `make monitoring`'s local Prometheus
(platforms/local_monitoring.py), whose configuration is rendered here too.

The exporter logs in as MONITORING_USER (a member of pg_monitor), never as the superuser. Its
queries use only what every supported exporter version runs (the sidecar's 0.17, Debian's 0.11
locally): the alerts depend on no exporter-version-specific default metric except pg_up.

pg_ops reports its own activity through a status table in the `pg_ops` database, which the
exporter reads on every member (it is replicated like everything else):

    status(key text primary key, at timestamptz, value double precision)

one row per STATUS_KEYS entry, upserted by the operation that did the thing. The alerts on these
rows are pg_ops's dead man's switch: if the health sensor stops ticking, Prometheus says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from pg_ops.credentials import MONITORING_USER, PG_OPS_DATABASE
from pg_ops.postgres.status_table import STATUS_KEYS, STATUS_TABLE
from pg_ops.postgres.topology import STREAMING_RECEIVERS_SQL
from pg_ops.render import names as k
from pg_ops.render.meta import metadata
from pg_ops.spec import ClusterSpec

EXPORTER_IMAGE = "quay.io/prometheuscommunity/postgres-exporter:v0.17.1"
QUERIES_MOUNT = "/etc/postgres-exporter/queries"
EXPORTER_SECRET_MOUNT = "/etc/postgres-exporter/secret"
# kube-prometheus-stack selects ServiceMonitors / PrometheusRules by its release label.
PROMETHEUS_SELECTOR = {"release": "kube-prometheus-stack"}
CLUSTER_LABEL = "pg_cluster"  # added to every scraped series from the pod's instance label
MEMBER_LABEL = "pod"  # the scraped member (the operator's pod label; set per target locally)
# pg_ops's own alert kinds that a Prometheus rule already sends to Alertmanager: pg_ops leaves
# them to Prometheus there, so no condition reaches Alertmanager twice (operations/alerts.py).
SENSOR_KINDS_COVERED = {
    "member_down": "PgOpsInstanceDown",
    "replica_not_streaming": "PgOpsReplicaNotStreaming",
    "replication_lag": "PgOpsReplicationLag",
    "storage": "PgOpsStorageNearlyFull",
    "connections": "PgOpsConnectionsNearLimit",
    "split_brain": "PgOpsMoreThanOnePrimary",
}


def exporter_queries() -> dict:
    """postgres_exporter custom queries (--extend.query-path). Metric = <query>_<column>."""
    return {
        "pg_ops_status": {
            "query": f"select key, extract(epoch from at) as timestamp_seconds, value from {STATUS_TABLE}",
            "metrics": [
                {"key": {"usage": "LABEL", "description": "what pg_ops did: " + ", ".join(STATUS_KEYS)}},
                {"timestamp_seconds": {"usage": "GAUGE", "description": "when pg_ops last did it (unix time)"}},
                {"value": {"usage": "GAUGE", "description": "a figure of that event (see pg_ops docs)"}},
            ],
        },
        # Lag as the primary sees it, per replica. replay_lag is NULL on an idle link: 0 then.
        "pg_ops_replication": {
            "query": ("select application_name as member, "
                      "coalesce(extract(epoch from replay_lag), 0) as replay_lag_seconds, "
                      "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0) as replay_lag_bytes "
                      "from pg_stat_replication where not pg_is_in_recovery()"),
            "metrics": [
                {"member": {"usage": "LABEL", "description": "replica (application_name)"}},
                {"replay_lag_seconds": {"usage": "GAUGE", "description": "pg_stat_replication.replay_lag"}},
                {"replay_lag_bytes": {"usage": "GAUGE", "description": "WAL bytes not yet replayed"}},
            ],
        },
        # Which members accept writes (split brain). Not the exporter's pg_replication_is_replica:
        # Debian's 0.11 does not produce it.
        "pg_ops_member": {
            "query": "select pg_is_in_recovery()::int as in_recovery",
            "metrics": [{"in_recovery": {"usage": "GAUGE", "description": "0 on a primary, 1 on a replica"}}],
        },
        # A replica whose WAL receiver is not streaming is lagging, whatever its lag reads.
        "pg_ops_wal_receiver": {
            "query": ("select case when not pg_is_in_recovery() then 1 else "
                      f"{STREAMING_RECEIVERS_SQL} end as streaming"),
            "metrics": [{"streaming": {"usage": "GAUGE",
                                       "description": "1 on the primary and on a streaming replica"}}],
        },
        "pg_ops_connections": {
            "query": ("select count(*) filter (where backend_type = 'client backend') as used, "
                      "current_setting('max_connections')::int as max from pg_stat_activity"),
            "metrics": [{"used": {"usage": "GAUGE", "description": "client connections"}},
                        {"max": {"usage": "GAUGE", "description": "max_connections"}}],
        },
        # Data + WAL: most of what fills the volume (not temp files or logs).
        "pg_ops_storage": {
            "query": ("select (select sum(pg_database_size(oid)) from pg_database) "
                      "+ (select coalesce(sum(size), 0) from pg_ls_waldir()) as used_bytes"),
            "metrics": [{"used_bytes": {"usage": "GAUGE", "description": "databases + WAL bytes"}}],
        },
    }


def produced_metrics() -> set[str]:
    """Every metric name the custom queries produce."""
    names = set()
    for query, body in exporter_queries().items():
        for metric in body["metrics"]:
            (column, meta), = metric.items()
            if meta["usage"] != "LABEL":
                names.add(f"{query}_{column}")
    return names


def queries_yaml() -> str:
    """The exporter's queries file: the sidecar's ConfigMap and `make monitoring` ship this text."""
    return yaml.safe_dump(exporter_queries(), sort_keys=False, width=1000)


def exporter_queries_configmap(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(spec, f"{spec.name}-exporter-queries", "monitoring"),
            "data": {"queries.yaml": queries_yaml()}}


def exporter_args(queries_file: str) -> list[str]:
    """The exporter's arguments, the sidecar's and the local exporters' alike."""
    return [f"--extend.query-path={queries_file}"]


def exporter_data_source(port: int) -> dict[str, str]:
    """Where and as whom the exporter logs in (the password comes from a file, never argv)."""
    return {"DATA_SOURCE_URI": f"127.0.0.1:{port}/{PG_OPS_DATABASE}?sslmode=disable",
            "DATA_SOURCE_USER": MONITORING_USER}


def exporter_container(spec: ClusterSpec) -> dict:
    """The sidecar reaches its own member over loopback (pg_hba allows 127.0.0.1/32)."""
    env = [{"name": name, "value": value} for name, value in exporter_data_source(k.PORT).items()]
    env.append({"name": "DATA_SOURCE_PASS_FILE",
                "value": f"{EXPORTER_SECRET_MOUNT}/{k.password_key(MONITORING_USER)}"})
    return {
        "name": k.EXPORTER_CONTAINER,
        "image": EXPORTER_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": exporter_args(f"{QUERIES_MOUNT}/queries.yaml"),
        "env": env,
        "ports": [{"name": k.METRICS_PORT_NAME, "containerPort": k.METRICS_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "250m", "memory": "128Mi"}},
        "livenessProbe": {"httpGet": {"path": "/", "port": k.METRICS_PORT_NAME}, "periodSeconds": 30},
        "readinessProbe": {"httpGet": {"path": "/", "port": k.METRICS_PORT_NAME}, "periodSeconds": 30},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "exporter-queries", "mountPath": QUERIES_MOUNT, "readOnly": True},
                         {"name": "exporter-secret", "mountPath": EXPORTER_SECRET_MOUNT, "readOnly": True}],
    }


def exporter_volumes(spec: ClusterSpec) -> list[dict]:
    return [
        {"name": "exporter-queries", "configMap": {"name": f"{spec.name}-exporter-queries"}},
        {"name": "exporter-secret", "secret": {
            "secretName": k.credentials_secret(spec), "optional": False, "defaultMode": 0o440,
            "items": [{"key": k.password_key(MONITORING_USER), "path": k.password_key(MONITORING_USER)}]}},
    ]


def service_monitor(spec: ClusterSpec) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": {**metadata(spec, spec.name, "monitoring"),
                     "labels": {**metadata(spec, spec.name, "monitoring")["labels"], **PROMETHEUS_SELECTOR}},
        "spec": {
            # The headless Service publishes not-ready members too: a lagging replica is scraped.
            "selector": {"matchLabels": {**k.selector_labels(spec), k.LABEL_COMPONENT: "headless"}},
            "namespaceSelector": {"matchNames": [spec.kubernetes.namespace]},
            "endpoints": [{
                "port": k.METRICS_PORT_NAME, "interval": "30s", "scrapeTimeout": "10s",
                # The operator adds `pod` (the scraped member); `member` stays free for the
                # replica a pg_ops_replication series is about.
                "relabelings": [
                    {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                     "targetLabel": CLUSTER_LABEL},
                ],
            }],
        },
    }


def _storage_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for unit in sorted(units, key=len, reverse=True):
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * units[unit])
    return int(quantity)


def health_silent_seconds(spec: ClusterSpec) -> int:
    """How long without a health tick is an alert: 2 minutes, or 4 of the cluster's sensor
    intervals when those are longer (a 5-minute interval must not page every tick)."""
    return max(120, 4 * spec.monitoring.interval_seconds)


def alert_rules(spec: ClusterSpec, pending: str | None = None) -> list[dict]:
    """Each alert names the cluster; thresholds come from spec.monitoring. `pending` replaces
    every rule's `for` (live tests only: the real durations are proven by promtool's unit tests,
    pg_ops_tests/test_prometheus_rules.py)."""
    m = spec.monitoring
    sel = f'{CLUSTER_LABEL}="{spec.name}"'
    capacity = _storage_bytes(spec.kubernetes.storage)
    silent = health_silent_seconds(spec)

    def status_age(key: str) -> str:
        return f'time() - max(pg_ops_status_timestamp_seconds{{{sel}, key="{key}"}})'

    def never(key: str) -> str:
        return f'absent(pg_ops_status_timestamp_seconds{{{sel}, key="{key}"}})'

    def rule(name, expr, for_, severity, summary):
        return {"alert": name, "expr": expr, "for": pending or for_,
                "labels": {"severity": severity, CLUSTER_LABEL: spec.name},
                "annotations": {"summary": summary}}

    return [
        rule("PgOpsReplicationLag",
             f"max by (member) (pg_ops_replication_replay_lag_seconds{{{sel}}}) > {m.lag_alert_seconds:g}"
             f" or max by (member) (pg_ops_replication_replay_lag_bytes{{{sel}}}) > {m.lag_alert_bytes}",
             "1m", "warning", f"{spec.name}: replica {{{{ $labels.member }}}} replays more than "
             f"{m.lag_alert_seconds:g} s / {m.lag_alert_bytes} bytes behind the primary"),
        rule("PgOpsReplicaNotStreaming", f"pg_ops_wal_receiver_streaming{{{sel}}} == 0", "1m", "warning",
             f"{spec.name}: replica {{{{ $labels.pod }}}} is not streaming from the primary"),
        rule("PgOpsStorageNearlyFull",
             f"pg_ops_storage_used_bytes{{{sel}}} / {capacity} > {m.storage_alert_ratio:g}", "5m", "warning",
             f"{spec.name}: {{{{ $labels.pod }}}} uses more than {m.storage_alert_ratio:.0%} of its "
             f"{spec.kubernetes.storage} volume"),
        # The same forecast pg_ops's storage_forecast_sensor makes from its own observations:
        # the line through the last 6 h reaches the ratio within storage_forecast_days.
        rule("PgOpsStorageFillingUp",
             f"predict_linear(pg_ops_storage_used_bytes{{{sel}}}[6h], {m.storage_forecast_days * 86400:.0f}) / "
             f"{capacity} > {m.storage_alert_ratio:g} and pg_ops_storage_used_bytes{{{sel}}} / {capacity} <= "
             f"{m.storage_alert_ratio:g}", "30m", "warning",
             f"{spec.name}: {{{{ $labels.pod }}}} is forecast to use more than {m.storage_alert_ratio:.0%} of its "
             f"{spec.kubernetes.storage} volume within {m.storage_forecast_days:g} days: grow it first"),
        rule("PgOpsConnectionsNearLimit",
             f"pg_ops_connections_used{{{sel}}} / pg_ops_connections_max{{{sel}}} > {m.connections_alert_ratio:g}",
             "5m", "warning", f"{spec.name}: {{{{ $labels.pod }}}} uses more than "
             f"{m.connections_alert_ratio:.0%} of max_connections"),
        rule("PgOpsInstanceDown",
             f"pg_up{{{sel}}} == 0 or up{{{sel}}} == 0", "1m", "critical",
             f"{spec.name}: member {{{{ $labels.pod }}}} is down (or its exporter is)"),
        rule("PgOpsMoreThanOnePrimary",
             f"count(pg_ops_member_in_recovery{{{sel}}} == 0) > 1", "0s", "critical",
             f"{spec.name}: more than one member accepts writes (split brain): fence one now"),
        rule("PgOpsBackupTooOld",
             f"{status_age('backup_complete')} > {26 * 3600} or {never('backup_complete')}", "10m", "critical",
             f"{spec.name}: no complete backup for more than 26 h"),
        rule("PgOpsDrillTooOld",
             f"{status_age('drill_success')} > {8 * 86400} or {never('drill_success')}", "1h", "warning",
             f"{spec.name}: no successful restore drill for more than 8 days"),
        *([rule("PgOpsBaseBackupTooOld",
                f"{status_age('base_backup_complete')} > {26 * 3600} or {never('base_backup_complete')}", "10m",
                "critical", f"{spec.name}: no complete base backup for more than 26 h (point-in-time recovery)"),
           rule("PgOpsPitrDrillTooOld",
                f"{status_age('pitr_drill_success')} > {8 * 86400} or {never('pitr_drill_success')}", "1h",
                "warning", f"{spec.name}: no successful point-in-time drill for more than 8 days")]
          if spec.backups.wal.enabled else []),
        rule("PgOpsHealthSensorSilent",
             f"{status_age('health_tick')} > {silent} or {never('health_tick')}", "0s", "critical",
             f"{spec.name}: pg_ops's health sensor has not ticked for {silent} s (Dagster daemon down, "
             f"or no primary to record the tick?)"),
    ]


def rule_groups(spec: ClusterSpec, pending: str | None = None) -> list[dict]:
    return [{"name": f"pg-ops-{spec.name}", "rules": alert_rules(spec, pending)}]


def prometheus_rule(spec: ClusterSpec) -> dict:
    meta = metadata(spec, spec.name, "monitoring")
    meta["labels"] = {**meta["labels"], **PROMETHEUS_SELECTOR}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta,
            "spec": {"groups": rule_groups(spec)}}


def rules_file(spec: ClusterSpec, pending: str | None = None) -> str:
    """The PrometheusRule's groups as a Prometheus rule file (`rule_files:`, promtool)."""
    return yaml.safe_dump({"groups": rule_groups(spec, pending)}, sort_keys=False, width=1000)


def prometheus_config(targets: dict[str, dict[str, str]], rule_files: list[str], *, scrape_interval: str,
                      evaluation_interval: str, alertmanagers: Sequence[str] = ()) -> str:
    """prometheus.yml for exporters outside Kubernetes: `targets` is cluster -> member -> host:port.
    Each target carries the labels the ServiceMonitor gives a pod's series (CLUSTER_LABEL and
    MEMBER_LABEL), so the same rules and dashboard apply."""
    config: dict = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": evaluation_interval},
        "rule_files": list(rule_files),
        "scrape_configs": [
            {"job_name": f"pg-ops-{cluster}",
             "static_configs": [{"targets": [address], "labels": {CLUSTER_LABEL: cluster, MEMBER_LABEL: member}}
                                for member, address in members.items()]}
            for cluster, members in targets.items()],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return yaml.safe_dump(config, sort_keys=False)
