"""Deploy: make a cluster match its spec. Idempotent: a deployed cluster is left untouched,
a stopped member is started (and rejoins from its slot), an empty member is re-cloned."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pg_ops.credentials import MONITORING_GRANT, MONITORING_USER, PG_OPS_DATABASE, REPLICATION_USER, SUPERUSER
from pg_ops.errors import MemberError, PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha import act
from pg_ops.operations.ha.decide import initial_sync_set, sync_names
from pg_ops.operations.ha.model import Policy
from pg_ops.operations.ha.observe import read_view
from pg_ops.postgres import admin, status_table
from pg_ops.postgres.session import with_connection
from pg_ops.postgres.topology import MemberProbe
from pg_ops.state import DesiredState, HeldLock, topology_lock, update_state

READY_TIMEOUT_S = 60.0


@dataclass
class DeployResult:
    cluster: str
    primary: str
    epoch: int
    system_identifier: str
    started: list[str] = field(default_factory=list)
    seconds: float = 0.0
    members: dict[str, MemberProbe] = field(default_factory=dict)


def lease_seconds(ctx: ClusterContext) -> float:
    """What the record tells the member scripts about isolation fencing (0: off). A single
    member has nothing to fail over to: fencing it would only turn a lost pg_ops into an outage."""
    failover = ctx.spec.failover
    return failover.lease_seconds if failover.isolation_fencing and ctx.spec.postgres.members > 1 else 0.0


def ensure_record(ctx: ClusterContext) -> DesiredState:
    store = ctx.platform.state_store()
    state = store.read()
    wanted: dict[str, Any] = {"members": ctx.platform.peer_addresses(), "lease_seconds": lease_seconds(ctx)}
    if state is None:
        state = DesiredState(cluster=ctx.name, primary=ctx.spec.member_names[0], epoch=1, bootstrap=True, **wanted)
        state = store.write(state, None)
        ctx.log.info("created the desired-state record: primary %s, epoch 1", state.primary)
    else:
        state = update_state(store, lambda s: s.model_copy(update=wanted))
    return state


def wait_until(ctx: ClusterContext, name: str, ready, what: str, timeout: float | None = None) -> MemberProbe:
    """Poll a member until ready(probe); fail fast when its supervisor is gone."""
    timeout = timeout or READY_TIMEOUT_S
    deadline = time.monotonic() + timeout
    probe = None
    while time.monotonic() < deadline:
        probe = ctx.probe([name], timeout=2.0)[name]
        if ready(probe):
            return probe
        if not ctx.platform.member_running(name):
            raise MemberError(f"member {name} exited before it was {what}: "
                              f"{_last_line(ctx.platform.member_log_tail(name, 20))}")
        time.sleep(0.2)
    reason = _last_line(ctx.platform.member_log_tail(name, 20)) or (probe.error if probe else "")
    raise MemberError(f"member {name} not {what} after {timeout:g} s: {reason}")


def _last_line(text: str) -> str:
    """The most telling line of a member's log tail: its last FATAL, else its last line."""
    lines = text.strip().splitlines()
    fatal = [line for line in lines if "FATAL" in line]
    return (fatal or lines or ["no log output"])[-1]


def configure_primary(ctx: ClusterContext, primary: str) -> None:
    """Roles (the exporter's a member of pg_monitor), databases, pg_ops's own database (the
    exporter may read its status table), slots for every replica, sync standbys."""
    creds = ctx.credentials()
    ep = ctx.endpoints()[primary]
    replicas = [m for m in ctx.spec.member_names if m != primary]

    def setup(conn):
        admin.ensure_role(conn, SUPERUSER, creds.password(SUPERUSER))
        admin.ensure_role(conn, REPLICATION_USER, creds.password(REPLICATION_USER), replication=True)
        admin.ensure_role(conn, MONITORING_USER, creds.password(MONITORING_USER))
        admin.grant_role(conn, MONITORING_GRANT, MONITORING_USER)
        for owner in sorted({d.owner for d in ctx.spec.databases}):
            admin.ensure_role(conn, owner, creds.password(owner))
        admin.ensure_database(conn, PG_OPS_DATABASE, SUPERUSER)
        for db in ctx.spec.databases:
            admin.ensure_database(conn, db.name, db.owner)
        created = admin.ensure_slots(conn, replicas)
        if created:
            ctx.log.info("created replication slots %s on %s", ", ".join(created), primary)

    # pg_ops's own configuration commits locally: in sync-strict mode with no standby yet,
    # it must not wait for one (it is re-applied idempotently by every deploy).
    local = {"options": "-c synchronous_commit=local"}
    with_connection(ep, SUPERUSER, creds.password(SUPERUSER), setup, timeout=30, name=primary, **local)
    def pg_ops_schema(conn):
        admin.ensure_pg_ops_schema(conn)
        status_table.grant_read(conn, MONITORING_USER)

    with_connection(ep, SUPERUSER, creds.password(SUPERUSER), pg_ops_schema,
                    dbname=PG_OPS_DATABASE, timeout=10, name=primary, **local)


def start_members(ctx: ClusterContext) -> list[str]:
    """Start whatever is not running (primary first), bootstrap, configure the primary, and
    wait until every replica streams. Under the topology lock."""
    store = ctx.platform.state_store()
    state = ensure_record(ctx)
    started = []
    with topology_lock(store, "deploy") as lock:
        ctx.platform.prepare(state)
        state = ctx.state()
        primary = state.primary
        if not ctx.platform.member_running(primary):
            ctx.log.info("starting primary %s", primary)
            ctx.platform.start_member(primary)
            started.append(primary)
        probe = wait_until(ctx, primary, lambda p: p.writable, "writable")
        if state.bootstrap or not state.system_identifier:
            lock.update(lambda s: s.model_copy(
                update={"bootstrap": False, "system_identifier": probe.system_identifier}))
            ctx.log.info("cluster bootstrapped: system identifier %s", probe.system_identifier)
        elif probe.system_identifier != state.system_identifier:
            raise PgOpsError(f"member {primary}: system identifier {probe.system_identifier} differs from the "
                             f"cluster's {state.system_identifier}")
        configure_primary(ctx, primary)
        replicas = [m for m in ctx.spec.member_names if m != primary]
        for name in replicas:
            if not ctx.platform.member_running(name):
                ctx.log.info("starting replica %s", name)
                ctx.platform.start_member(name)
                started.append(name)
        for name in replicas:
            wait_until(ctx, name, lambda p: p.streaming, "streaming")
        establish_replication(ctx, lock)
    return started


def establish_replication(ctx: ClusterContext, lock: HeldLock) -> None:
    """Every replica streams: none is fenced any more; in sync modes the synchronous set is
    every replica the primary reports streaming (recorded before the server setting names it)
    and the observed LSN is the primary's now (the lag guard's reference from the start)."""
    policy = Policy.from_spec(ctx.spec)
    view = read_view(ctx, policy, confirm=False)
    sync_set = initial_sync_set(policy, view)
    lock.update(lambda s: s.model_copy(update={
        "fenced": (), "sync_set": sync_set, "observed_lsn": view.primary.lsn or "", "observed_at": view.now,
        "observed_standbys": tuple(sorted(r.name for r in view.primary.replication if r.streaming))}))
    if policy.sync:
        value = sync_names(policy, sync_set or [m for m in ctx.spec.member_names if m != view.designated])
    else:
        value = ""
    act.set_sync_names(ctx, view.designated, value)


def verify_primary_endpoint(ctx: ClusterContext) -> dict:
    """Route the primary endpoint and prove it with a write through it."""
    state = ctx.state()
    ctx.platform.route_primary(state.primary)
    result = write_through_primary_endpoint(ctx, state.epoch, "deploy")
    if result["member"] != state.primary:
        raise PgOpsError(f"cluster {ctx.name}: the primary endpoint reached {result['member']}, not the designated "
                         f"primary {state.primary}")
    return result


def write_through_primary_endpoint(ctx: ClusterContext, epoch: int, writer: str) -> dict:
    """A heartbeat write through the endpoint clients use, renewing the member's isolation
    lease. The member it reached is named by its cluster_name (the member script sets it on
    both platforms; ports and hosts differ behind Services and proxies)."""
    started = time.monotonic()
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, PG_OPS_DATABASE), password=ctx.admin_password(),
                         autocommit=True, connect_timeout=3,
                         options="-c synchronous_commit=local -c statement_timeout=5000") as conn:
        connect_ms = (time.monotonic() - started) * 1000
        member = admin.member_name(conn)
        admin.renew_lease(conn, member, epoch)
        lsn = admin.write_heartbeat(conn, epoch, writer)
    return {"member": member, "connect_ms": connect_ms, "lsn": lsn}


def deploy(ctx: ClusterContext) -> DeployResult:
    started_at = time.monotonic()
    ctx.platform.ensure_credentials()
    started = start_members(ctx)
    verify_primary_endpoint(ctx)
    state = ctx.state()
    members = ctx.probe()
    problems = deployment_problems(ctx, members, state.primary)
    if problems:
        raise PgOpsError(f"cluster {ctx.name} deployed but unhealthy: {'; '.join(problems)}")
    seconds = time.monotonic() - started_at
    ctx.log.info("cluster %s deployed in %.2f s (started: %s)", ctx.name, seconds, ", ".join(started) or "none")
    return DeployResult(cluster=ctx.name, primary=state.primary, epoch=state.epoch,
                        system_identifier=state.system_identifier, started=started, seconds=seconds,
                        members=members)


def deployment_problems(ctx: ClusterContext, members: dict[str, MemberProbe], primary: str) -> list[str]:
    """The invariants after any change: one writable member (the designated primary), every
    other member streaming from it, each with its slot."""
    problems = []
    writable = sorted(n for n, p in members.items() if p.writable)
    if writable != [primary]:
        problems.append(f"writable members {writable or 'none'}, expected only {primary}")
    slots = {s["slot_name"] for s in members[primary].slots} if members[primary].reachable else set()
    for name, probe in members.items():
        if name == primary:
            continue
        if not probe.streaming:
            problems.append(f"{name} is not streaming ({probe.error or probe.receiver_status or 'no WAL receiver'})")
        if admin.slot_name(name) not in slots:
            problems.append(f"slot {admin.slot_name(name)} missing on {primary}")
    return problems


def teardown(ctx: ClusterContext) -> None:
    if ctx.platform.kind != "local":
        raise PgOpsError(f"cluster {ctx.name}: teardown is for local clusters only (platform {ctx.platform.kind})")
    store = ctx.platform.state_store()
    if store.read() is not None:
        with topology_lock(store, "teardown"):
            ctx.platform.teardown()
    else:
        ctx.platform.teardown()
    ctx.log.info("cluster %s torn down", ctx.name)
