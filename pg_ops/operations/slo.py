"""Service-level checks: the original plan's criteria, measured on the live cluster.

Each check returns a ServiceLevel with its measured figure, so the asset check records the
number, not just pass/fail. Everything pg_ops writes for them lives in the `pg_ops` database
or a scratch database that is dropped afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.errors import MemberError, PgOpsError, first_line
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.health import SensorCursor
from pg_ops.poll import poll
from pg_ops.postgres import admin, consistency, load

CONNECT_LIMIT_S = 5.0
CONCURRENT_CONNECTIONS = 100
P95_LIMIT_MS = 100.0
DETECTION_LIMIT_S = 30.0
CONSISTENCY_TIMEOUT_S = 10.0


@dataclass
class ServiceLevel:
    name: str
    passed: bool
    figure: float | None
    unit: str
    limit: float
    summary: str
    details: dict = field(default_factory=dict)


def connect_time(ctx: ClusterContext) -> ServiceLevel:
    """Time to connect through the primary endpoint and get an answer."""
    started = time.monotonic()
    try:
        # an answer from the member, not just a handshake
        ctx.on_primary_endpoint(admin.member_name, timeout=None)
    except psycopg.Error as exc:
        return ServiceLevel("connect_time", False, None, "s", CONNECT_LIMIT_S,
                            f"cannot connect to the primary endpoint: {first_line(exc)}")
    seconds = time.monotonic() - started
    return ServiceLevel("connect_time", seconds < CONNECT_LIMIT_S, round(seconds, 4), "s", CONNECT_LIMIT_S,
                        f"connected to the primary endpoint in {seconds * 1000:.1f} ms")


def concurrent_connections(ctx: ClusterContext, count: int = CONCURRENT_CONNECTIONS) -> ServiceLevel:
    dsn = ctx.platform.primary_dsn(SUPERUSER, PG_OPS_DATABASE)
    held = load.hold_connections(dsn, ctx.admin_password(), count)
    passed = held.seen_by_server >= count
    summary = (f"{held.seen_by_server} of {count} connections held at once (opened in {held.seconds_to_open:.2f} s)"
               + (f"; first error: {held.error}" if held.error else ""))
    return ServiceLevel("concurrent_connections", passed, held.seen_by_server, "connections", count, summary,
                        {"opened": held.opened, "seconds_to_open": round(held.seconds_to_open, 3)})


def data_consistency(ctx: ClusterContext, timeout: float = CONSISTENCY_TIMEOUT_S) -> ServiceLevel:
    """A marker written on the primary, read back from every replica (seconds until the
    slowest one shows it). One reading of the endpoints for the whole poll (a session)."""
    with ctx.session():
        return _data_consistency(ctx, timeout)


def _data_consistency(ctx: ClusterContext, timeout: float) -> ServiceLevel:
    state = ctx.state()
    try:
        token = ctx.sql(state.primary, lambda conn: consistency.write_marker(conn, "slo"), dbname=PG_OPS_DATABASE,
                        timeout=10, local_commit=False)
    except MemberError as exc:
        return ServiceLevel("data_consistency", False, None, "s", timeout, f"cannot write the marker: {exc}")
    written = time.monotonic()
    replicas = [n for n in ctx.spec.member_names if n != state.primary and n not in state.fenced]
    seen: dict[str, float] = {}
    last_error: dict[str, str] = {}

    def everywhere() -> bool | None:
        for name in replicas:
            if name in seen:
                continue
            try:
                if ctx.sql(name, lambda conn: consistency.marker_visible(conn, token), dbname=PG_OPS_DATABASE,
                           timeout=3, local_commit=False):
                    seen[name] = round(time.monotonic() - written, 4)
            except MemberError as exc:
                last_error[name] = str(exc)
        return len(seen) == len(replicas) or None

    poll(everywhere, timeout=timeout, interval=0.05)
    missing = [n for n in replicas if n not in seen]
    figure = max(seen.values()) if seen and not missing else None
    summary = (f"marker visible on {len(seen)} of {len(replicas)} replicas"
               + (f" after {figure:.3f} s" if figure is not None else "")
               + (f"; missing after {timeout:g} s: " + ", ".join(
                   f"{n} ({last_error[n]})" if n in last_error else n for n in missing) if missing else ""))
    return ServiceLevel("data_consistency", not missing, figure, "s", timeout, summary,
                        {"seconds_by_replica": seen, "missing": missing})


def query_latency(ctx: ClusterContext, seconds: int = 5, clients: int = 4) -> ServiceLevel:
    dsn = ctx.platform.primary_dsn(SUPERUSER, PG_OPS_DATABASE)
    try:
        result = load.run_pgbench(dsn, ctx.admin_password(), seconds=seconds, clients=clients)
    except (PgOpsError, psycopg.Error) as exc:
        return ServiceLevel("query_latency_p95", False, None, "ms", P95_LIMIT_MS, f"pgbench: {first_line(exc)}")
    return ServiceLevel(
        "query_latency_p95", result.p95_ms < P95_LIMIT_MS, round(result.p95_ms, 3), "ms", P95_LIMIT_MS,
        f"p95 {result.p95_ms:.2f} ms over {result.transactions} pgbench transactions "
        f"({clients} clients, {seconds} s, {result.tps:.0f} tps)",
        {"p50_ms": round(result.p50_ms, 3), "max_ms": round(result.max_ms, 3), "tps": round(result.tps, 1),
         "transactions": result.transactions, "clients": clients},
    )


def failed_member_detection(history: SensorCursor | None, cluster: str, now: float | None = None,
                            sensor_interval: float = 5.0) -> ServiceLevel:
    """From the health sensor's own record (its cursor): the worst time between a member last
    seen up and first seen down, and the bound the sensor's recent tick spacing gives for a
    failure that has not happened yet. No recent tick = the sensor is not watching: fail."""
    now = now or time.time()
    history = history or SensorCursor()
    ticks = sorted(history.ticks)
    detections = [d for d in history.detections if d.cluster == cluster]
    if not ticks or now - ticks[-1] > max(60.0, 6 * sensor_interval):
        when = f"{now - ticks[-1]:.0f} s ago" if ticks else "never"
        return ServiceLevel("failed_member_detection", False, None, "s", DETECTION_LIMIT_S,
                            f"the health sensor is not watching: its last tick was {when}")
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    bound = (max(gaps) if gaps else sensor_interval) + history.probe_seconds
    worst = max((d.seconds for d in detections), default=None)
    figure = max(bound, worst or 0.0)
    summary = (f"worst detection {worst:.1f} s over {len(detections)} recorded member failures; "
               if worst is not None else "no member failure recorded; ") + f"tick spacing bound {bound:.1f} s"
    return ServiceLevel("failed_member_detection", figure < DETECTION_LIMIT_S, round(figure, 3), "s",
                        DETECTION_LIMIT_S, summary,
                        {"recorded_failures": len(detections), "tick_bound_s": round(bound, 3),
                         "worst_recorded_s": worst})
