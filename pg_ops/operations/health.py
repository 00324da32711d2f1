"""Health: the sensor's tick for one cluster, as plain Python.

A tick reads one ClusterView (operations/ha/observe.py: every member probed at once, the
primary re-probed and the replicas re-read when it does not answer), hands it to the HA state
machine (`ha.decide`), executes the decision (upkeep actions, a failover request) and assesses
the member-level alert conditions of the same snapshot (`assess`: lag, storage, connections,
members down). When the cluster is healthy the tick then watches the primary for the rest of
the daemon loop (`watch_seconds`), so a failure is seen within a second instead of at the next
tick; if the watch sees one, the tick reads and decides again at once.

The sensor (defs/health.py) loads its cursor (`SensorCursor`, defined here with the
`TickMemory` each cluster keeps in it), hands each cluster its memory, turns the result into
alerts, asset observations and a `failover` run request, and saves the cursor.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

from pg_ops.errors import PgOpsError, first_line
from pg_ops.operations import stored
from pg_ops.operations.activity import record_status
from pg_ops.operations.alert_model import Alert, condition_key
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha import act
from pg_ops.operations.ha.decide import decide
from pg_ops.operations.ha.model import ClusterView, Decision, FailoverRequest, HaMemory, Policy
from pg_ops.operations.ha.observe import read_view, watch_primary
from pg_ops.operations.pooling import pooler_status
from pg_ops.operations.status import (
    ClusterStatus,
    MemberStatus,
    build_status,
    cluster_status,
    per_member,
    storage_of,
)
from pg_ops.platforms.base import MemberReport
from pg_ops.spec import ClusterSpec

OBSERVE_EVERY_S = 60.0  # an unchanged member is observed at most once a minute
DETECTIONS_KEPT = 20
REPORTS_ALERTED_WITHIN_S = 3600.0
MEMBER_CONDITIONS = ("replication_lag", "replica_not_streaming", "connections")

__all__ = ["FailoverRequest", "SensorCursor", "TickMemory", "assess", "health_pass", "status_report",
           "watch_cluster", "watch_fleet"]


# -- what the sensor remembers between ticks: its cursor ------------------------------------------------
@dataclass
class Seen:
    """What was last observed or reported, as a signature, and when."""

    sig: str
    at: float


@dataclass
class Alerted:
    """What of a member's report was alerted already (each event is alerted once)."""

    discarded: int | None = None  # discarded.at of the rewind or re-clone alerted last
    isolated: float | None = None  # isolated.at of the isolation alerted last


@dataclass
class TickMemory:
    """What one cluster's health sensor remembers between ticks (its part of the cursor)."""

    ha: HaMemory = field(default_factory=HaMemory)  # the HA state machine's (decide)
    observed: dict[str, Seen] = field(default_factory=dict)  # member -> its last observation
    last_up: dict[str, float] = field(default_factory=dict)  # member -> the last tick that saw it up
    down: dict[str, float] = field(default_factory=dict)  # member -> the first tick that saw it down, while it is
    reported: dict[str, Alerted] = field(default_factory=dict)  # member -> its report's events alerted


@dataclass(frozen=True)
class Detection:
    """A member first seen down: `seconds` since it was last seen up bounds its detection time."""

    cluster: str
    member: str
    seen_down_at: float
    last_seen_up_at: float
    seconds: float


@dataclass
class SensorCursor:
    """The health sensor's cursor (a string Dagster stores; `to_json` / `from_json`, readable
    JSON). A cursor an older pg_ops wrote reads as it is: an upgrade keeps the sensor's memory."""

    alerts: dict[str, dict] = field(default_factory=dict)  # open alerts: key -> Alert as a dict (alerts.reconcile)
    clusters: dict[str, TickMemory] = field(default_factory=dict)
    ticks: list[float] = field(default_factory=list)  # the last TICKS_KEPT tick times
    detections: list[Detection] = field(default_factory=list)  # the last DETECTIONS_KEPT
    reported: dict[str, Seen] = field(default_factory=dict)  # cluster -> what cluster_health/<c> last reported
    probe_seconds: float = 0.0  # the slowest cluster's pass at the last tick

    def to_json(self) -> str:
        return json.dumps(stored.to_json_value(self))

    @classmethod
    def from_json(cls, raw: str | None) -> SensorCursor:
        """An empty or unreadable cursor is a fresh start, never a crash."""
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            return cls()
        return stored.from_json_value(cls, value) or cls()


# -- member-level alert conditions ----------------------------------------------------------------
@dataclass
class Assessment:
    alerts: list[Alert] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)  # condition keys this pass could not evaluate


def assess(spec: ClusterSpec, status: ClusterStatus) -> Assessment:
    """The alert conditions a status shows. Pure: no I/O."""
    out = Assessment()
    c = spec.name
    primary = status.designated_primary
    writable = status.writable_members
    fenced = set(status.fenced)
    primary_up = primary in writable

    def alert(severity, kind, summary, member=None, **details):
        if member:
            details = {"member": member, **details}
        out.alerts.append(Alert(cluster=c, severity=severity, kind=kind, summary=summary, details=details))

    if len(writable) > 1:
        alert("critical", "split_brain", f"cluster {c}: {len(writable)} members accept writes: {', '.join(writable)}",
              writable=writable, designated_primary=primary)
    for m in status.members:
        _assess_member(spec, status, m, primary_up, fenced, alert, out)
    if spec.pooler is not None:
        _assess_pooler(spec, status, alert, out)
    if primary_up and len(status.members) > 1:
        streaming = [m.name for m in status.members if m.name != primary and m.replication_state == "streaming"]
        if not streaming:
            strict = spec.postgres.replication != "async"
            alert("critical" if strict else "warning", "no_replica_streaming",
                  f"cluster {c}: no replica streams from {primary}"
                  + (f" ({spec.postgres.replication}: commits may wait or run unprotected)" if strict else ""),
                  replication=spec.postgres.replication)
    return out


POOLER_WAIT_ALERT_S = 1.0  # a client waiting this long for a server connection: the pool is too small


def _assess_pooler(spec: ClusterSpec, status: ClusterStatus, alert: Callable, out: Assessment) -> None:
    """pooler_down (critical: applications on pooled-uri cannot connect) and pooler_saturated
    (warning: clients wait for a server connection). While a topology change runs, neither can be
    judged (a switchover pauses the pooler on purpose)."""
    c, pooled = spec.name, status.pooler
    keys = {condition_key(c, k, "") for k in ("pooler_down", "pooler_saturated")}
    if pooled is None or status.lock is not None:
        out.unknown |= keys
        return
    if "error" in pooled:
        alert("critical", "pooler_down", f"cluster {c}: the pooler on {pooled.get('endpoint')} does not answer "
              f"({pooled['error']}); applications on pooled-uri cannot connect: `pg-ops deploy` starts it again",
              error=pooled["error"])
        return
    if pooled.get("clients_waiting") and pooled.get("max_wait_s", 0) >= POOLER_WAIT_ALERT_S:
        assert spec.pooler is not None
        alert("warning", "pooler_saturated", f"cluster {c}: {pooled['clients_waiting']} clients wait for a server "
              f"connection (the oldest {pooled['max_wait_s']:.1f} s); pooler.pool_size {spec.pooler.pool_size} "
              f"per database and user is in use", clients_waiting=pooled["clients_waiting"],
              max_wait_s=pooled["max_wait_s"], pool_size=spec.pooler.pool_size)


def _assess_member(spec: ClusterSpec, status: ClusterStatus, m: MemberStatus, primary_up: bool, fenced: set[str],
                   alert: Callable, out: Assessment) -> None:
    c, mon, primary, name = spec.name, spec.monitoring, status.designated_primary, m.name
    if m.storage_ratio is None:
        out.unknown.add(condition_key(c, "storage", name))
    elif m.storage_ratio > mon.storage_alert_ratio:
        alert("warning", "storage", f"{name}: data filesystem {m.storage_ratio:.0%} full "
              f"(alert above {mon.storage_alert_ratio:.0%})", name, used_bytes=m.data_dir_used_bytes,
              total_bytes=m.data_dir_total_bytes, ratio=m.storage_ratio)
    if not m.up:
        if name not in fenced:
            is_primary = name == primary
            alert("critical" if is_primary else "warning", "member_down",
                  f"{name} ({'primary' if is_primary else 'replica'}) does not answer: {m.error}",
                  name, role="primary" if is_primary else "replica", error=m.error)
        else:
            # Fenced by a failover and not running: the cluster is a replica short until it is
            # back, and any writes it acknowledged while cut off are counted only when it rejoins
            # (locally the tick starts it again; on Kubernetes its StatefulSet does).
            alert("warning", "member_fenced_down",
                  f"{name} was fenced by a failover and does not answer: the cluster runs one replica short until "
                  f"it rejoins by itself as a replica once it reaches the primary (the health sensor starts it "
                  f"again; on Kubernetes its StatefulSet; rewound, its discarded writes counted); if it stays "
                  f"down, its log says why (`pg-ops status`, `pg-ops rebuild {name}`)",
                  name, error=m.error)
        out.unknown |= {condition_key(c, k, name) for k in MEMBER_CONDITIONS}
        return
    if m.connections is not None and m.max_connections:
        used = m.connections / m.max_connections
        if used > mon.connections_alert_ratio:
            alert("warning", "connections", f"{name}: {m.connections} of {m.max_connections} "
                  f"connections in use ({used:.0%})", name, connections=m.connections,
                  max_connections=m.max_connections)
    if m.role != "replica":
        return
    if not primary_up:
        # Lag and streaming are relative to the primary: unknown while it is away.
        out.unknown |= {condition_key(c, k, name) for k in ("replication_lag", "replica_not_streaming")}
        return
    if not m.streaming or m.replication_state != "streaming":
        alert("warning", "replica_not_streaming",
              f"{name} is not streaming from {primary} (WAL receiver: {m.receiver_status or 'none'}, "
              f"on the primary: {m.replication_state or 'not connected'}); its lag is unknown",
              name, receiver_status=m.receiver_status, replication_state=m.replication_state, sender=m.sender)
        out.unknown.add(condition_key(c, "replication_lag", name))
        return
    lag_b, lag_s = m.lag_bytes or 0, m.lag_seconds or 0.0
    if lag_b > mon.lag_alert_bytes or lag_s > mon.lag_alert_seconds:
        alert("warning", "replication_lag", f"{name} lags {lag_b} bytes / {lag_s:.1f} s behind {primary} "
              f"(alert above {mon.lag_alert_bytes} bytes or {mon.lag_alert_seconds:g} s)",
              name, lag_bytes=lag_b, lag_seconds=lag_s)


def status_report(ctx: ClusterContext) -> dict:
    """`pg-ops status --json`: the status and the alert conditions active now: the health
    sensor's (`assess`) and, when the cluster archives WAL, the archiving sensor's (the same
    functions the sensors evaluate, so status and the sensors never disagree)."""
    status = cluster_status(ctx)
    active = assess(ctx.spec, status).alerts
    if ctx.spec.backups.wal.enabled:
        from pg_ops.operations.wal import archive_alerts, archive_health

        try:
            active += archive_alerts(ctx, archive_health(ctx))
        except PgOpsError as exc:
            active.append(Alert(cluster=ctx.name, severity="warning", kind="wal_archive_unknown",
                                summary=f"the WAL archive's health cannot be read: {exc}"))
    return {**status.to_dict(), "alerts": [a.model_dump(exclude={"fired_at", "resolved_at"}) for a in active]}


# -- one pass ---------------------------------------------------------------------------------------
@dataclass
class ClusterHealth:
    cluster: str
    checked_at: float
    seconds: float
    view: ClusterView
    status: ClusterStatus
    assessment: Assessment

    @property
    def primary(self) -> str:
        return self.view.designated


def health_pass(ctx: ClusterContext, *, confirm: bool = False, missed_before: int = 0,
                sleep: Callable[[float], None] = time.sleep) -> ClusterHealth:
    """Every member probed at once (and, with `confirm`, the primary re-probed when it does
    not answer), storage fetched beside the probes under its own deadline."""
    started = time.monotonic()
    with ctx.session(), ThreadPoolExecutor(max_workers=2, thread_name_prefix="storage") as pool:
        storage = pool.submit(storage_of, ctx)
        pooler = pool.submit(pooler_status, ctx) if ctx.spec.pooler is not None else None
        view = read_view(ctx, Policy.from_spec(ctx.spec), confirm=confirm, unless_locked=True,
                         missed_before=missed_before, sleep=sleep)
        status = build_status(ctx, view, storage.result())
        if pooler is not None:
            status = replace(status, pooler=pooler.result())
    return ClusterHealth(cluster=ctx.name, checked_at=time.time(), seconds=time.monotonic() - started,
                         view=view, status=status, assessment=assess(ctx.spec, status))


# -- the sensor's tick for one cluster -----------------------------------------------------------------
@dataclass
class ClusterWatch:
    cluster: str
    health: ClusterHealth | None
    alerts: list[Alert]
    unknown: set[str]
    memory: TickMemory
    decision: Decision | None = None
    failover: FailoverRequest | None = None
    observe: list[MemberStatus] = field(default_factory=list)  # members due for an observation
    detections: list[Detection] = field(default_factory=list)
    events: list[Alert] = field(default_factory=list)  # one-off alerts (discarded writes, an isolation)
    error: str | None = None

    @property
    def primary_verdict(self) -> str | None:
        return self.decision.summary if self.decision else None


def _observation_signature(member: MemberStatus, alerting: set[str | None]) -> str:
    return "|".join(str(x) for x in (member.role, member.streaming, member.timeline, member.name in alerting))


def due_observations(memory: TickMemory, members: list[MemberStatus], alerts: list[Alert],
                     now: float) -> list[MemberStatus]:
    """Members whose state changed since their last observation, or last observed a minute ago."""
    alerting = {a.details.get("member") for a in alerts}
    due = []
    for member in members:
        sig = _observation_signature(member, alerting)
        last = memory.observed.get(member.name)
        if last is None or last.sig != sig or now - last.at >= OBSERVE_EVERY_S:
            memory.observed[member.name] = Seen(sig, now)
            due.append(member)
    return due


def _track_detections(cluster: str, memory: TickMemory, members: list[MemberStatus], fenced: set[str],
                      now: float) -> list[Detection]:
    """When a member is first seen down: how long since it was last seen up. The member failed
    somewhere in that window, so this is an upper bound of the detection time."""
    last_up, down = memory.last_up, memory.down
    found = []
    for member in members:
        name = member.name
        if member.up:
            last_up[name] = now
            down.pop(name, None)
        elif name not in down and name not in fenced:
            down[name] = now
            if name in last_up:
                found.append(Detection(cluster=cluster, member=name, seen_down_at=now, last_seen_up_at=last_up[name],
                                       seconds=round(now - last_up[name], 3)))
    return found


def reported_events(ctx: ClusterContext, memory: TickMemory, names: list[str]) -> list[Alert]:
    """What the member scripts of `names` reported that was not alerted yet: writes a rewind or
    re-clone discarded, and isolations (each alerted once; the cursor remembers the times)."""
    if not names:
        return []
    reports: dict[str, MemberReport] = per_member(ctx, ctx.platform.member_report, MemberReport(), names=names)
    events = []
    for name, report in reports.items():
        mine = memory.reported.setdefault(name, Alerted())
        discarded = report.discarded
        if discarded and discarded.at != mine.discarded:
            mine.discarded = discarded.at
            if (discarded.at or 0) < time.time() - REPORTS_ALERTED_WITHIN_S:
                continue  # an old report seen for the first time (a new cursor): remembered, not alerted
            aside = f"; the old data dir is kept at {discarded.kept_aside}" if discarded.kept_aside else ""
            what = (f"what it held beyond the fork point could NOT be counted ({discarded.unknown}): writes it "
                    f"acknowledged may be lost" if discarded.unknown else
                    f"{discarded.transactions} transactions, {discarded.bytes} bytes of WAL "
                    f"({discarded.from_lsn} - {discarded.to_lsn} on timeline {discarded.timeline})")
            events.append(Alert(
                cluster=ctx.name, severity="critical", kind="writes_discarded",
                summary=f"{name} rejoined and discarded what it held beyond the fork point: {what}{aside}; "
                        f"see docs/runbooks/postgresql-failover.md, 'Discarded writes'",
                details={"member": name, **asdict(discarded)}, fired_at=time.time()))
        isolated = report.isolated_at
        if isolated and isolated != mine.isolated:
            mine.isolated = isolated
            events.append(Alert(
                cluster=ctx.name, severity="critical", kind="primary_isolated",
                summary=f"{name} fenced itself as an isolated primary ({report.isolated_reason}): "
                        f"it restarted as a standby and stopped acknowledging writes",
                details={"member": name, "at": isolated, "reason": report.isolated_reason},
                fired_at=time.time()))
    return events


def _decide_and_act(ctx: ClusterContext, memory: TickMemory, failed_run: Callable[[str], bool],
                    sleep: Callable[[float], None], missed_before: int = 0
                    ) -> tuple[ClusterHealth, Decision, list[Alert]]:
    with ctx.session():  # one reading of the platform for the pass and its upkeep (context.py)
        health = health_pass(ctx, confirm=True, missed_before=missed_before, sleep=sleep)
        incident = memory.ha.incident
        if incident is not None and incident.requested and not incident.run_failed:
            incident.run_failed = failed_run(FailoverRequest(ctx.name, incident.id, 0).run_key)
        decision = decide(health.view, memory.ha, Policy.from_spec(ctx.spec))
        failures = act.execute(ctx, health.view, decision.actions)
    memory.ha = decision.memory
    return health, decision, failures


def watch_cluster(ctx: ClusterContext, memory: TickMemory, now: float | None = None,
                  failed_run: Callable[[str], bool] = lambda run_key: False,
                  sleep: Callable[[float], None] = time.sleep, watch_seconds: float = 0.0) -> ClusterWatch:
    """One sensor tick for one cluster. `memory` is this cluster's part of the cursor (a copy
    is changed and returned); `failed_run(run_key)` says whether a requested failover run
    failed. `watch_seconds`: how long to keep watching a healthy primary after deciding."""
    memory = copy.deepcopy(memory)
    started = time.monotonic()
    health, decision, failures = _decide_and_act(ctx, memory, failed_run, sleep)
    if decision.name == "healthy" and watch_seconds > 0:
        left = watch_seconds - (time.monotonic() - started)
        broke = watch_primary(ctx, health.primary, health.view.record.epoch, left,
                              Policy.from_spec(ctx.spec).probe_interval_s)
        if broke:
            ctx.log.warning("%s: the primary %s stopped answering during the watch: %s", ctx.name, health.primary,
                            broke)
            health, decision, failures = _decide_and_act(ctx, memory, failed_run, sleep, missed_before=1)
    request = decision.failover
    if request is not None and ctx.spec.failover.promote_in == "sensor":
        request = take_over_in_tick(ctx, request)
    now = now or health.checked_at
    alerts = [*health.assessment.alerts, *decision.alerts, *failures]
    unknown = set(health.assessment.unknown) | set(decision.unknown)
    watch = ClusterWatch(cluster=ctx.name, health=health, alerts=alerts, unknown=unknown, memory=memory,
                         decision=decision, failover=request)
    members = health.status.members
    watch.detections = _track_detections(ctx.name, memory, members, set(health.status.fenced), now)
    watch.observe = due_observations(memory, members, alerts, now)
    watch.events = reported_events(ctx, memory, [m.name for m in watch.observe if m.up])
    if decision.name == "healthy":
        # The dead man's switch: Prometheus alerts when these rows stop moving. It is written
        # through the primary endpoint, so it also proves the endpoint routes to the primary.
        reached = sum(1 for p in health.view.members.values() if p.reachable)
        if not record_status(ctx, "health_tick", reached):
            alerts.append(Alert(cluster=ctx.name, severity="critical", kind="primary_endpoint",
                                summary=f"{ctx.name}: the primary {health.primary} answers directly, but not "
                                        f"through the primary endpoint "
                                        f"({ctx.platform.primary_dsn('postgres', 'pg_ops')})",
                                details={"member": health.primary}))
    return watch


def take_over_in_tick(ctx: ClusterContext, request: FailoverRequest) -> FailoverRequest:
    """failover.promote_in: sensor: confirm, fence, promote and route now, in this tick, and
    request the run that finishes and records it. Whatever stops the take-over (a refusal, a
    held lock, an error) leaves the request as it was: the run then decides and acts on its own,
    and its failure alerts as any run's."""
    from pg_ops.operations.failover import take_over_now

    try:
        taken = take_over_now(ctx, detected_at=request.detected_at, last_primary_lsn=request.last_primary_lsn)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the run decides again and alerts if it fails
        ctx.log.warning("%s: the sensor did not take over (%s); the failover run decides", ctx.name, first_line(exc))
        return request
    return replace(request, taken_over=taken.to_json())


def watch_failed(ctx: ClusterContext, exc: Exception, memory: TickMemory) -> ClusterWatch:
    """A pass that could not run at all: say so, and keep every open alert as it was."""
    summary = f"cluster {ctx.name}: health check failed: {exc}"
    alert = Alert(cluster=ctx.name, severity="warning", kind="health_check_failed", summary=summary)
    return ClusterWatch(cluster=ctx.name, health=None, alerts=[alert], unknown=set(), memory=copy.deepcopy(memory),
                        error=str(exc))


def watch_fleet(contexts: list[ClusterContext], memories: dict[str, TickMemory], now: float | None = None,
                failed_run: Callable[[str], bool] = lambda run_key: False,
                watch_seconds: float = 0.0) -> list[ClusterWatch]:
    """Every cluster at once: the fleet costs about as much as its slowest cluster."""
    if not contexts:
        return []

    def one(ctx: ClusterContext) -> ClusterWatch:
        try:
            return watch_cluster(ctx, memories.get(ctx.name) or TickMemory(), now, failed_run,
                                 watch_seconds=watch_seconds)
        except PgOpsError as exc:
            return watch_failed(ctx, exc, memories.get(ctx.name) or TickMemory())
        except Exception as exc:  # noqa: BLE001 - one cluster's bug must not blind the others
            return watch_failed(ctx, PgOpsError(f"{type(exc).__name__}: {exc}"), memories.get(ctx.name) or TickMemory())

    with ThreadPoolExecutor(max_workers=min(16, len(contexts)), thread_name_prefix="health") as pool:
        return list(pool.map(one, contexts))
