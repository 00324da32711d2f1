"""The connection pooler pg_ops drives (spec `pooler`, docs/architecture/design.md "The pooler").

- `ensure`: PgBouncer's login role, the auth_query function in every database it serves
  (postgres/pooler_auth.py), the process aimed at the primary, not left paused; deploy runs it.
- `paused`: a planned change of primary (switchover, the rolling restart's switchover) PAUSEs
  the pooler before the old primary stops: clients' new transactions wait instead of failing
  once the open ones have ended. The pause is bounded (`pooler.pause_timeout_seconds`): past it
  the pooler is resumed and the change goes on, and the run says so.
- `follow`: once the new primary is routed and the primary endpoint is proven to reach it (a
  Service follows its label only when kube-proxy has synced), RECONNECT closes the pooler's
  server connections to the old primary and RESUME lets the clients on. An unplanned failover
  does the same, which also resumes a pooler a dead run may have left paused.
- `move`: a blue/green cut hands the pooler to the new cluster (its primary, followed through its
  failovers from then on), the rollback takes it back; re-aimed, RECONNECT, RESUME.
- `verify`: a write through the pooler."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from pg_ops.credentials import POOLER_USER, SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres import admin, pooler_auth
from pg_ops.postgres.session import with_connection

NOT_PAUSED = "not paused"  # what RESUME answers a pooler that was not paused


def served_databases(ctx: ClusterContext) -> list[str]:
    return ["postgres", *(d.name for d in ctx.spec.databases if d.present)]


def ensure(ctx: ClusterContext, primary: str) -> bool:
    """Login role, lookup function in each database, process; True when it was started now."""
    creds = ctx.credentials()
    endpoint = ctx.endpoints()[primary]
    password = creds.password(SUPERUSER)
    with_connection(endpoint, SUPERUSER, password,
                    lambda c: admin.ensure_role(c, POOLER_USER, creds.password(POOLER_USER)), name=primary)
    for db in served_databases(ctx):
        with_connection(endpoint, SUPERUSER, password, functools.partial(_lookup, database=db),
                        dbname=db, timeout=10, name=primary)
    started = ctx.platform.start_pooler(primary)
    ctx.platform.route_primary(primary)
    resume(ctx)
    return started


def _lookup(conn: psycopg.Connection, database: str) -> None:
    pooler_auth.ensure_lookup(conn, database, POOLER_USER)


def resume(ctx: ClusterContext) -> bool:
    """RESUME; False when it was not paused, or does not answer (never raises: a pooler that is
    down must not stop a failover or a switchover; `pooler_down` alerts on it)."""
    try:
        ctx.platform.pooler_admin("RESUME")
    except (psycopg.Error, PgOpsError) as exc:
        if NOT_PAUSED not in str(exc).lower():
            ctx.log.warning("pooler of %s: RESUME failed: %s", ctx.name, str(exc).splitlines()[0])
        return False
    return True


def follow(ctx: ClusterContext) -> None:
    """After the primary endpoint reaches the new primary: RECONNECT (server connections to the
    old primary close once released: all of them while paused), then RESUME. Never raises (as
    `resume`); a pooler that cannot be told is logged, and `pooler_down` alerts on one that is down."""
    try:
        ctx.platform.pooler_admin("RECONNECT")
    except (psycopg.Error, PgOpsError) as exc:
        ctx.log.warning("pooler of %s: RECONNECT failed: %s", ctx.name, str(exc).splitlines()[0])
    resume(ctx)


@dataclass
class Pause:
    reached: bool = False
    note: str = ""


def _pause(ctx: ClusterContext, timeout: float) -> Pause:
    """PAUSE, waiting at most `timeout` for the open transactions to end (the console answers
    PAUSE only then); past it RESUME and say so."""
    outcome: dict = {}

    def send() -> None:
        try:
            ctx.platform.pooler_admin("PAUSE", timeout=timeout + 5)
            outcome["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    worker = threading.Thread(target=send, name="pooler-pause", daemon=True)
    worker.start()
    worker.join(timeout)
    if outcome.get("ok"):
        return Pause(reached=True)
    resume(ctx)
    why = f"failed: {outcome['error']}" if "error" in outcome else f"not reached within {timeout:g} s"
    note = f"pooler PAUSE {why}; resumed, the change went on without it (clients may see errors)"
    ctx.log.warning("%s: %s", ctx.name, note)
    return Pause(reached=False, note=note)


def pause(ctx: ClusterContext) -> Pause | None:
    """PAUSE within `pooler.pause_timeout_seconds` (None without a pooler). The caller RESUMEs,
    also when its change fails."""
    if ctx.spec.pooler is None or ctx.platform.pooler_endpoint() is None:
        return None
    return _pause(ctx, ctx.spec.pooler.pause_timeout_seconds)


@contextlib.contextmanager
def paused(ctx: ClusterContext) -> Iterator[Pause | None]:
    """Paused for the block, resumed on the way out (also on error)."""
    held = pause(ctx)
    try:
        yield held
    finally:
        if held is not None:
            resume(ctx)


def move(ctx: ClusterContext, cluster: str | None) -> bool:
    """The pooler (if the spec has one) aimed at `cluster`'s primary, or back at this cluster's
    (None); then RECONNECT and RESUME (`follow`). True when there was a pooler to move."""
    if ctx.spec.pooler is None:
        return False
    ctx.platform.move_pooler(cluster)
    follow(ctx)
    return True


def verify(ctx: ClusterContext) -> str:
    """A write through the pooler as an application makes it (the superuser is not served by
    it, so pg_ops's own login is used for the `postgres` database through auth_file): returns
    the member that took it."""
    endpoint = ctx.platform.pooler_endpoint()
    if endpoint is None:
        raise PgOpsError(f"cluster {ctx.name} has no pooler")
    password = ctx.credentials().password(POOLER_USER)

    def write(conn: psycopg.Connection) -> str:
        with conn.transaction():  # one transaction: one server connection in transaction pooling
            admin.assign_transaction_id(conn)  # fails on a standby
            return admin.member_name(conn)

    return with_connection(endpoint, POOLER_USER, password, write, timeout=10, name=f"pooler of {ctx.name}")


def pooler_status(ctx: ClusterContext) -> dict:
    """For `pg-ops status`: where it listens, its target, its clients and server connections."""
    endpoint = ctx.platform.pooler_endpoint()
    if endpoint is None:
        return {}
    try:
        pools = ctx.platform.pooler_admin("SHOW POOLS", timeout=3)
        databases = ctx.platform.pooler_admin("SHOW DATABASES", timeout=3)
    except (psycopg.Error, PgOpsError) as exc:
        return {"endpoint": str(endpoint), "error": str(exc).splitlines()[0]}
    target = next((row for row in databases if row.get("name") not in ("pgbouncer",)), None)
    real = [p for p in pools if p.get("database") != "pgbouncer"]
    return {"endpoint": str(endpoint), "target_port": target.get("port") if target else None,
            "clients_active": sum(int(p.get("cl_active") or 0) for p in real),
            "clients_waiting": sum(int(p.get("cl_waiting") or 0) for p in real),
            # how long the oldest waiting client has waited for a server connection, in seconds
            "max_wait_s": max((int(p.get("maxwait") or 0) + int(p.get("maxwait_us") or 0) / 1e6 for p in real),
                              default=0.0),
            "servers": sum(int(p.get("sv_active") or 0) + int(p.get("sv_idle") or 0) + int(p.get("sv_used") or 0)
                           for p in real)}
