"""Health: one pass over every member of a cluster, the alert conditions it shows, and the
"primary down" decision (DESIGN.md, safety rules).

A pass probes every member at once, each under a client-side deadline, so a pass costs about
one probe deadline however many members hang. Only when the designated primary did not
answer does the pass spend more time: `confirm_primary_down` probes it again
(`failover.probes` probes `failover.probe_interval_ms` apart) and asks the replicas whether
their WAL receiver still streams from it. A primary that pg_ops cannot reach but a replica
still streams from is alive: alert, never fail over.

`watch_cluster` is the sensor's whole decision for one cluster, as plain Python: the sensor
(defs/health.py) hands it the cluster's memory from its cursor and turns the result into
alerts, asset observations and a `failover` run request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.activity import record_status
from pg_ops.operations.alerts import Alert, condition_key
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.replication_mode import apply_mode
from pg_ops.operations.status import cluster_status
from pg_ops.postgres.topology import MemberProbe, probe_members
from pg_ops.spec import ClusterSpec

OBSERVE_EVERY_S = 60.0  # an unchanged member is observed at most once a minute
DETECTIONS_KEPT = 20
MEMBER_CONDITIONS = ("replication_lag", "replica_not_streaming", "connections")


# -- assessing one pass ----------------------------------------------------------------------
@dataclass
class Assessment:
    alerts: list[Alert] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)  # condition keys this pass could not evaluate


def assess(spec: ClusterSpec, status: dict) -> Assessment:
    """The alert conditions a status (operations/status.py) shows. Pure: no I/O."""
    out = Assessment()
    c, mon = spec.name, spec.monitoring
    primary = status["designated_primary"]
    rows = {m["name"]: m for m in status["members"]}
    writable = status["writable_members"]
    fenced = set(status["fenced"])
    primary_up = primary in writable

    def alert(severity, kind, summary, member=None, **details):
        if member:
            details = {"member": member, **details}
        out.alerts.append(Alert(cluster=c, severity=severity, kind=kind, summary=summary, details=details))

    if len(writable) > 1:
        alert("critical", "split_brain", f"cluster {c}: {len(writable)} members accept writes: {', '.join(writable)}",
              writable=writable, designated_primary=primary)
    for name, m in rows.items():
        is_primary = name == primary
        ratio = m.get("storage_ratio")
        if ratio is None:
            out.unknown.add(condition_key(c, "storage", name))
        elif ratio > mon.storage_alert_ratio:
            alert("warning", "storage", f"{name}: data filesystem {ratio:.0%} full "
                  f"(alert above {mon.storage_alert_ratio:.0%})", name, used_bytes=m["data_dir_used_bytes"],
                  total_bytes=m["data_dir_total_bytes"], ratio=ratio)
        if m["role"] in ("down", "fenced"):
            if name not in fenced:
                alert("critical" if is_primary else "warning", "member_down",
                      f"{name} ({'primary' if is_primary else 'replica'}) does not answer: {m['error']}",
                      name, role="primary" if is_primary else "replica", error=m["error"])
            out.unknown |= {condition_key(c, k, name) for k in MEMBER_CONDITIONS}
            continue
        if m["connections"] is not None and m["max_connections"]:
            used = m["connections"] / m["max_connections"]
            if used > mon.connections_alert_ratio:
                alert("warning", "connections", f"{name}: {m['connections']} of {m['max_connections']} "
                      f"connections in use ({used:.0%})", name, connections=m["connections"],
                      max_connections=m["max_connections"])
        if m["role"] != "replica":
            continue
        if not primary_up:
            # Lag and streaming are relative to the primary: unknown while it is away.
            out.unknown |= {condition_key(c, k, name) for k in ("replication_lag", "replica_not_streaming")}
            continue
        if not m["streaming"] or m["replication_state"] != "streaming":
            alert("warning", "replica_not_streaming",
                  f"{name} is not streaming from {primary} (WAL receiver: {m['receiver_status'] or 'none'}, "
                  f"on the primary: {m['replication_state'] or 'not connected'}); its lag is unknown",
                  name, receiver_status=m["receiver_status"], replication_state=m["replication_state"],
                  sender=m["sender"])
            out.unknown.add(condition_key(c, "replication_lag", name))
            continue
        lag_b, lag_s = m["lag_bytes"] or 0, m["lag_seconds"] or 0.0
        if lag_b > mon.lag_alert_bytes or lag_s > mon.lag_alert_seconds:
            alert("warning", "replication_lag", f"{name} lags {lag_b} bytes / {lag_s:.1f} s behind {primary} "
                  f"(alert above {mon.lag_alert_bytes} bytes or {mon.lag_alert_seconds:g} s)",
                  name, lag_bytes=lag_b, lag_seconds=lag_s)
    if primary_up and len(rows) > 1:
        streaming = [n for n, m in rows.items() if n != primary and m.get("replication_state") == "streaming"]
        if not streaming:
            strict = spec.postgres.replication != "async"
            alert("critical" if strict else "warning", "no_replica_streaming",
                  f"cluster {c}: no replica streams from {primary}"
                  + (f" ({spec.postgres.replication}: commits may wait or run unprotected)" if strict else ""),
                  replication=spec.postgres.replication)
    return out


# -- one pass ----------------------------------------------------------------------------------
@dataclass
class ClusterHealth:
    cluster: str
    checked_at: float
    seconds: float
    status: dict
    probes: dict[str, MemberProbe]
    assessment: Assessment

    @property
    def primary(self) -> str:
        return self.status["designated_primary"]

    @property
    def primary_probe(self) -> MemberProbe:
        return self.probes[self.primary]


def health_pass(ctx: ClusterContext) -> ClusterHealth:
    started = time.monotonic()
    probes = ctx.probe()
    status = cluster_status(ctx, probes)
    return ClusterHealth(cluster=ctx.name, checked_at=time.time(), seconds=time.monotonic() - started,
                         status=status, probes=probes, assessment=assess(ctx.spec, status))


# -- primary down --------------------------------------------------------------------------------
def _primary_addresses(ctx: ClusterContext, primary: str) -> set[str]:
    """Where a replica may stream the primary from: pg_ops's endpoint, or the peer address
    in the desired-state record (on Kubernetes the pod's DNS name)."""
    addresses = {str(ctx.endpoints()[primary])}
    peer = ctx.state().members.get(primary) or ctx.platform.peer_addresses().get(primary)
    if peer:
        addresses.add(peer)
    return addresses


def confirm_primary_down(ctx: ClusterContext, first_probe: MemberProbe | None = None,
                         sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str]:
    """(True, reason) only if the designated primary missed `failover.probes` probes
    `probe_interval_ms` apart AND no reachable replica's WAL receiver still streams from it.

    `first_probe`: a probe of the primary already taken in this tick (it counts as one).
    Refuses (False) when no replica answers either: pg_ops is then more likely cut off itself,
    and no candidate could be promoted anyway.
    """
    confirmed, reason, _ = _confirm_primary_down(ctx, first_probe, sleep)
    return confirmed, reason


def _confirm_primary_down(ctx: ClusterContext, first_probe: MemberProbe | None,
                          sleep: Callable[[float], None]) -> tuple[bool, str, bool]:
    """confirm_primary_down, plus whether the primary answered after all."""
    state = ctx.state()
    primary = state.primary
    endpoints = ctx.endpoints()
    timeout = ctx.spec.monitoring.probe_timeout_seconds
    password = ctx.admin_password()
    needed = ctx.spec.failover.probes
    missed, last_error = 0, ""
    if first_probe is not None:
        if first_probe.reachable:
            return False, f"primary {primary} answers", True
        missed, last_error = 1, first_probe.error or ""
    while missed < needed:
        if missed:
            sleep(ctx.spec.failover.probe_interval_ms / 1000)
        probe = probe_members({primary: endpoints[primary]}, SUPERUSER, password, timeout)[primary]
        if probe.reachable:
            return False, f"primary {primary} answered probe {missed + 1} of {needed}", True
        missed, last_error = missed + 1, probe.error or ""
    replicas = {n: ep for n, ep in endpoints.items() if n != primary and n not in state.fenced}
    probes = probe_members(replicas, SUPERUSER, password, timeout)
    addresses = _primary_addresses(ctx, primary)
    alive_via = sorted(n for n, p in probes.items() if p.streaming and p.sender in addresses)
    if alive_via:
        return False, (f"primary {primary} unreachable from pg_ops but alive: {', '.join(alive_via)} "
                       f"still stream from it; no failover"), False
    if not any(p.reachable for p in probes.values()):
        return False, (f"primary {primary} unreachable and no replica answers either: pg_ops may be cut off "
                       f"itself; no failover ({last_error})"), False
    return True, f"primary {primary} missed {needed} probes ({last_error}) and no replica streams from it", False


# -- the sensor's decision for one cluster ---------------------------------------------------------
@dataclass
class FailoverRequest:
    cluster: str
    incident: str
    detected_at: float
    last_primary_lsn: str | None = None  # for the failover's lag guard

    @property
    def run_key(self) -> str:
        return f"failover-{self.cluster}-{self.incident}"


@dataclass
class ClusterWatch:
    cluster: str
    health: ClusterHealth | None
    alerts: list[Alert]
    unknown: set[str]
    memory: dict
    failover: FailoverRequest | None = None
    primary_verdict: str | None = None
    observe: list[dict] = field(default_factory=list)  # member rows due for an observation
    detections: list[dict] = field(default_factory=list)
    error: str | None = None


def _observation_signature(row: dict, alerting: set[str]) -> str:
    return "|".join(str(x) for x in (row["role"], row["streaming"], row["timeline"], row["name"] in alerting))


def due_observations(memory: dict, rows: list[dict], alerts: list[Alert], now: float) -> list[dict]:
    """Members whose state changed since their last observation, or last observed a minute ago."""
    seen = memory.setdefault("observed", {})
    alerting = {a.details.get("member") for a in alerts}
    due = []
    for row in rows:
        sig = _observation_signature(row, alerting)
        last = seen.get(row["name"])
        if last is None or last["sig"] != sig or now - last["at"] >= OBSERVE_EVERY_S:
            seen[row["name"]] = {"sig": sig, "at": now}
            due.append(row)
    return due


def _track_detections(memory: dict, rows: list[dict], fenced: set[str], now: float) -> list[dict]:
    """When a member is first seen down: how long since it was last seen up. The member failed
    somewhere in that window, so this is an upper bound of the detection time."""
    last_up = memory.setdefault("last_up", {})
    down = memory.setdefault("down", {})
    found = []
    for row in rows:
        name = row["name"]
        if row["role"] in ("primary", "replica"):
            last_up[name] = now
            down.pop(name, None)
        elif name not in down and name not in fenced:
            down[name] = now
            if name in last_up:
                found.append({"cluster": row.get("cluster"), "member": name, "seen_down_at": now,
                              "last_seen_up_at": last_up[name], "seconds": round(now - last_up[name], 3)})
    return found


def watch_cluster(ctx: ClusterContext, memory: dict, now: float | None = None,
                  failed_run: Callable[[str], bool] = lambda run_key: False,
                  sleep: Callable[[float], None] = time.sleep) -> ClusterWatch:
    """One sensor tick for one cluster. `memory` is this cluster's part of the cursor (changed
    in place and returned); `failed_run(run_key)` says whether a requested failover run failed
    (then a new incident may be requested)."""
    memory = dict(memory or {})
    health = health_pass(ctx)
    now = now or health.checked_at
    state_lock = health.status["lock"]
    alerts = list(health.assessment.alerts)
    unknown = set(health.assessment.unknown)
    watch = ClusterWatch(cluster=ctx.name, health=health, alerts=alerts, unknown=unknown, memory=memory)
    rows = [{**r, "cluster": ctx.name} for r in health.status["members"]]
    watch.detections = [{**d, "cluster": ctx.name} for d in _track_detections(memory, rows, set(health.status["fenced"]), now)]
    watch.observe = due_observations(memory, rows, alerts, now)
    primary = health.primary
    c = ctx.name

    def alert(severity, kind, summary, **details):
        alerts.append(Alert(cluster=c, severity=severity, kind=kind, summary=summary, details=details))

    if health.primary_probe.reachable:
        memory["primary_lsn"] = health.primary_probe.lsn
        memory.pop("primary_down_since", None)
        memory.pop("incident", None)
        if not state_lock:
            keep_replication_mode(ctx, health, alert)
        # The dead man's switch: Prometheus alerts when these rows stop moving.
        record_status(ctx, "health_tick", sum(1 for p in health.probes.values() if p.reachable))
        return watch
    since = memory.setdefault("primary_down_since", now)
    if state_lock:
        # A topology change (deploy, switchover, failover…) is under way: the primary may be
        # down on purpose. The run that holds the lock decides, not the sensor.
        watch.primary_verdict = f"topology change in progress ({state_lock['operation']} by {state_lock['holder']})"
        unknown |= {condition_key(c, k, primary) for k in ("primary_unreachable", "primary_down",
                                                           "manual_failover_needed")}
        return watch
    confirmed, reason, answered = _confirm_primary_down(ctx, health.primary_probe, sleep)
    watch.primary_verdict = reason
    if answered:  # a blip: nothing to decide, nothing to resolve either
        unknown |= {condition_key(c, k, primary) for k in ("primary_unreachable", "primary_down",
                                                           "manual_failover_needed")}
        return watch
    if not confirmed:
        alert("critical", "primary_unreachable", reason, member=primary)
        return watch
    if ctx.spec.failover.mode == "manual":
        alert("critical", "manual_failover_needed",
              f"{reason}; failover mode is manual: run `pg-ops failover --cluster {c}`",
              member=primary, command=f"pg-ops failover --cluster {c}", detected_at=since)
        return watch
    incident = memory.get("incident")
    if incident and failed_run(FailoverRequest(c, incident["id"], since).run_key):
        incident = None  # the requested failover failed: a new incident may be requested
    if incident is None:
        incident = {"id": f"{health.status['epoch']}-{int(now)}", "requested": False}
    if not incident["requested"]:
        watch.failover = FailoverRequest(c, incident["id"], since, memory.get("primary_lsn"))
        incident = {**incident, "requested": True}
    memory["incident"] = incident
    alert("critical", "primary_down", f"{reason}; failover requested (incident {incident['id']})",
          member=primary, incident=incident["id"], detected_at=since)
    return watch


def keep_replication_mode(ctx: ClusterContext, health: ClusterHealth, alert: Callable) -> None:
    """Sync mode relaxes to async while no standby streams and tightens again when one does;
    an alert stays open while it is relaxed (RPO 0 is not true then)."""
    if ctx.spec.postgres.replication == "async" or not health.primary_probe.writable:
        return
    try:
        decision = apply_mode(ctx, health.primary, health.probes)
    except PgOpsError as exc:
        alert("warning", "replication_mode", f"could not apply {ctx.spec.postgres.replication} mode: {exc}",
              member=health.primary)
        return
    if decision.relaxed:
        alert("warning", "sync_relaxed", f"no standby streams from {health.primary}: sync replication relaxed to "
                                         f"async until one does (acknowledged commits can be lost meanwhile)",
              member=health.primary)


def watch_failed(ctx: ClusterContext, exc: Exception, memory: dict) -> ClusterWatch:
    """A pass that could not run at all: say so, and keep every open alert as it was."""
    summary = f"cluster {ctx.name}: health check failed: {exc}"
    alert = Alert(cluster=ctx.name, severity="warning", kind="health_check_failed", summary=summary)
    return ClusterWatch(cluster=ctx.name, health=None, alerts=[alert], unknown=set(), memory=dict(memory or {}),
                        error=str(exc))


def watch_fleet(contexts: list[ClusterContext], memories: dict[str, dict], now: float | None = None,
                failed_run: Callable[[str], bool] = lambda run_key: False) -> list[ClusterWatch]:
    """Every cluster at once: the fleet costs about as much as its slowest cluster."""
    if not contexts:
        return []

    def one(ctx: ClusterContext) -> ClusterWatch:
        try:
            return watch_cluster(ctx, memories.get(ctx.name, {}), now, failed_run)
        except PgOpsError as exc:
            return watch_failed(ctx, exc, memories.get(ctx.name, {}))
        except Exception as exc:  # noqa: BLE001 - one cluster's bug must not blind the others
            return watch_failed(ctx, PgOpsError(f"{type(exc).__name__}: {exc}"), memories.get(ctx.name, {}))

    with ThreadPoolExecutor(max_workers=min(16, len(contexts)), thread_name_prefix="health") as pool:
        return list(pool.map(one, contexts))
