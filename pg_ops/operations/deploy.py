"""Deploy: make a cluster match its spec. Idempotent: a deployed cluster is left untouched,
a stopped member is started (and rejoins from its slot), an empty member is re-cloned.

One path: `deploy` runs the steps of the deploy_cluster job, in its order, and the job's assets
(defs/deployment.py) call the same functions, one asset each: credentials, desired state
(ensure_record), members (start_members), primary endpoint (verify_primary_endpoint),
replication (the invariants). The only difference: a cluster that breaks an invariant fails
`deploy`, while the job reports it as failed asset checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pg_ops.credentials import MONITORING_GRANT, MONITORING_USER, PG_OPS_DATABASE, REPLICATION_USER, SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations import catalog
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.failover import promote
from pg_ops.operations.ha import act
from pg_ops.operations.ha.decide import initial_sync_set, plan_failover, sync_names
from pg_ops.operations.ha.model import FailoverPlan, Policy, Refusal
from pg_ops.operations.ha.observe import read_view
from pg_ops.operations.members import lease_kept, lease_seconds, wait_until, write_through_primary_endpoint
from pg_ops.poll import poll
from pg_ops.postgres import admin, status_table
from pg_ops.postgres.session import with_connection
from pg_ops.postgres.topology import MemberProbe
from pg_ops.state import DesiredState, HeldLock, topology_lock, update_state


@dataclass
class DeployResult:
    cluster: str
    primary: str
    epoch: int
    system_identifier: str
    started: list[str] = field(default_factory=list)
    seconds: float = 0.0
    members: dict[str, MemberProbe] = field(default_factory=dict)
    catalog_changes: list[str] = field(default_factory=list)  # roles, databases…: catalog.reconcile


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


def configure_primary(ctx: ClusterContext, primary: str) -> None:
    """pg_ops's roles (the exporter's a member of pg_monitor), pg_ops's own database (the
    exporter may read its status table), slots for every replica, sync standbys. The spec's
    roles and databases: catalog.reconcile, the next step."""
    creds = ctx.credentials()
    ep = ctx.endpoints()[primary]
    replicas = [m for m in ctx.spec.member_names if m != primary]

    def setup(conn):
        admin.ensure_role(conn, SUPERUSER, creds.password(SUPERUSER))
        admin.ensure_role(conn, REPLICATION_USER, creds.password(REPLICATION_USER), replication=True)
        admin.ensure_role(conn, MONITORING_USER, creds.password(MONITORING_USER))
        admin.grant_role(conn, MONITORING_GRANT, MONITORING_USER)
        admin.ensure_database(conn, PG_OPS_DATABASE, SUPERUSER)
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
    with topology_lock(store, "deploy") as lock, lease_kept(ctx):
        ctx.platform.prepare(state)
        state = ctx.state()
        primary = state.primary
        if not ctx.platform.member_running(primary):
            ctx.log.info("starting primary %s", primary)
            ctx.platform.start_member(primary)
            started.append(primary)
        probe = wait_until(ctx, primary, lambda p: p.writable or (p.reachable and p.in_recovery is True
                                                                   and fenced_itself(ctx, primary)), "writable")
        if not probe.writable:
            probe = resume_in_place(ctx, primary)
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


def fenced_itself(ctx: ClusterContext, name: str) -> bool:
    """Its member script restarted it as a standby as an isolated primary (isolation fencing):
    it never promotes itself back, so waiting for it to become writable is pointless."""
    return bool(ctx.platform.member_report(name).isolated_at)


def resume_in_place(ctx: ClusterContext, primary: str) -> MemberProbe:
    """The designated primary fenced itself: promote it in place when the failover rules say it
    is the one (the last known primary, at least as far as every answering member), or refuse at
    once with their reason. Under deploy's topology lock."""
    policy = Policy.from_spec(ctx.spec)
    view = read_view(ctx, policy, confirm=False)
    plan = plan_failover(view, policy)
    if not (isinstance(plan, FailoverPlan) and plan.resume and plan.candidate == primary):
        why = plan.reason if isinstance(plan, Refusal) else f"the failover rules would promote {plan.candidate}"
        raise PgOpsError(f"cluster {ctx.name}: the designated primary {primary} fenced itself as an isolated primary "
                         f"and cannot be promoted in place: {why}; see `pg-ops status`, then "
                         f"`pg-ops failover --cluster {ctx.name}`")
    ctx.log.info("%s: the designated primary %s fenced itself while isolated; promoting it in place (epoch %d)",
                 ctx.name, primary, view.record.epoch)
    promote(ctx, primary, view.record.epoch)
    return wait_until(ctx, primary, lambda p: p.writable, "writable after its promotion in place", timeout=10)


def establish_replication(ctx: ClusterContext, lock: HeldLock) -> None:
    """Every replica streams: none is fenced any more; in sync modes the synchronous set is
    every replica the primary reports streaming (recorded before the server setting names it)
    and the observed LSN and timeline are the primary's now (the lag guard's reference and the
    timeline candidates must be on, from the start)."""
    policy = Policy.from_spec(ctx.spec)
    view = read_view(ctx, policy, confirm=False)
    sync_set = initial_sync_set(policy, view)
    lock.update(lambda s: s.model_copy(update={
        "fenced": (), "sync_set": sync_set, "observed_lsn": str(view.primary.lsn or ""), "observed_at": view.now,
        "timeline": view.primary.timeline or s.timeline,
        "observed_standbys": tuple(sorted(r.name for r in view.primary.replication if r.streaming))}))
    if policy.sync:
        value = sync_names(policy, sync_set or [m for m in ctx.spec.member_names if m != view.designated])
    else:
        value = ""
    act.set_sync_names(ctx, view.designated, value)


def verify_primary_endpoint(ctx: ClusterContext) -> dict:
    """Route the primary endpoint and prove it with a write through it; with a pooler (spec
    `pooler`), run and aim it too, and prove it the same way."""
    from pg_ops.operations import pooling

    state = ctx.state()
    if ctx.spec.pooler is not None:
        pooling.ensure(ctx, state.primary)
    ctx.platform.route_primary(state.primary)
    result = write_through_primary_endpoint(ctx, state.epoch, "deploy", state.primary)
    if ctx.spec.pooler is not None:
        result["pooler_member"] = pooling.verify(ctx)
    return result


INVARIANTS_SETTLE_S = 20.0
REPLAY_WAIT_S = 30.0


def replayed_everywhere(ctx: ClusterContext) -> None:
    """Every reachable replica has replayed what the primary wrote so far: the roles and
    databases the catalog step just made exist on them before deploy returns (a backup, which
    reads from a replica, may start right after). Bounded; the invariants check follows."""
    primary = ctx.state().primary
    target = ctx.probe([primary])[primary].lsn or 0

    def caught_up() -> bool | None:
        probes = ctx.probe()
        behind = [n for n, p in probes.items() if n != primary and p.reachable and (p.replay_lsn or 0) < target]
        return None if behind else True

    poll(caught_up, timeout=REPLAY_WAIT_S, interval=0.2)


def deploy(ctx: ClusterContext) -> DeployResult:
    """The deploy_cluster job's steps, in its order (see the module doc), then the invariants."""
    started_at = time.monotonic()
    ctx.platform.ensure_credentials()  # deployment/credentials
    ensure_record(ctx)  # deployment/desired_state
    started = start_members(ctx)  # deployment/members
    changes = catalog.reconcile(ctx).changes  # deployment/roles_and_databases
    if changes:
        replayed_everywhere(ctx)
    verify_primary_endpoint(ctx)  # deployment/primary_endpoint
    adopt_legacy_archive(ctx)
    state = ctx.state()
    seen: list = []

    def settled() -> dict | None:  # deployment/replication
        # A replica may be reconnecting for a moment (a reload, a repoint, a role's new password
        # just set): the invariants are given a few seconds to hold before deploy calls it unhealthy.
        members = ctx.probe()
        seen[:] = [deployment_problems(ctx, members, state.primary)]
        return None if seen[0] else members

    members = poll(settled, timeout=INVARIANTS_SETTLE_S, interval=0.5, expired=lambda: PgOpsError(
        f"cluster {ctx.name} deployed but unhealthy: {'; '.join(seen[0])}"))
    seconds = time.monotonic() - started_at
    ctx.log.info("cluster %s deployed in %.2f s (started: %s)", ctx.name, seconds, ", ".join(started) or "none")
    return DeployResult(cluster=ctx.name, primary=state.primary, epoch=state.epoch,
                        system_identifier=state.system_identifier, started=started, seconds=seconds,
                        members=members, catalog_changes=changes)


@dataclass(frozen=True)
class Invariants:
    """The invariants after any change, as found in one probe of every member: exactly one
    writable member, the designated primary; every other member streaming from it, each with
    its replication slot (admin.slot_name) on the primary. `deploy` fails on a broken one; each is
    an asset check of cluster_health/<cluster> (defs/deployment.py), kept current by the health sensor."""

    primary: str
    writable: list[str]
    replicas: list[str]
    not_streaming: dict[str, str]  # replica -> why (its error, WAL receiver status)
    slots: list[str]  # the replication slots on the primary
    missing_slots: list[str]  # replicas whose slot is not there

    @property
    def one_primary(self) -> bool:
        return self.writable == [self.primary]

    def problems(self) -> list[str]:
        problems = []
        if not self.one_primary:
            problems.append(f"writable members {self.writable or 'none'}, expected only {self.primary}")
        for name in self.replicas:
            if name in self.not_streaming:
                problems.append(f"{name} is not streaming ({self.not_streaming[name]})")
            if name in self.missing_slots:
                problems.append(f"slot {admin.slot_name(name)} missing on {self.primary}")
        return problems


def invariants(members: dict[str, MemberProbe], primary: str) -> Invariants:
    """The invariants of one probe of every member, the designated primary being `primary`."""
    replicas = [n for n in members if n != primary]
    slots = sorted({s["slot_name"] for s in members[primary].slots}) if members[primary].reachable else []
    return Invariants(
        primary=primary, writable=sorted(n for n, p in members.items() if p.writable), replicas=replicas,
        not_streaming={n: members[n].error or members[n].receiver_status or "no WAL receiver"
                       for n in replicas if not members[n].streaming},
        slots=slots, missing_slots=[n for n in replicas if admin.slot_name(n) not in slots])


def deployment_problems(ctx: ClusterContext, members: dict[str, MemberProbe], primary: str) -> list[str]:
    """What breaks the invariants of cluster `ctx` in this probe of its members ([]: none)."""
    return invariants(members, primary).problems()


def teardown(ctx: ClusterContext) -> None:
    ctx.platform.check_teardown()
    store = ctx.platform.state_store()
    if store.read() is not None:
        with topology_lock(store, "teardown"):
            ctx.platform.teardown()
    else:
        ctx.platform.teardown()
    ctx.log.info("cluster %s torn down; %s", ctx.name, left_behind(ctx))


def adopt_legacy_archive(ctx: ClusterContext) -> None:
    """The WAL archive of the layout before incarnations, moved into this cluster's (ADR-003);
    never fails the deploy."""
    from pg_ops.operations import wal

    try:
        wal.require_archiving(ctx)
    except PgOpsError:
        return  # not archiving (or not into a store this platform can write): nothing to move
    try:
        wal.adopt_legacy_archive(ctx)
    except PgOpsError as exc:
        ctx.log.warning("cluster %s: the WAL archive of the layout before incarnations was not moved: %s",
                        ctx.name, exc)


def left_behind(ctx: ClusterContext) -> str:
    """One line: what a teardown keeps in the backup store (backups and WAL archives are never
    deleted by it), and that a cluster deployed again under this name archives apart."""
    from pg_ops.stores import wal_archive as wa

    try:
        backups = ctx.store()
        where = backups.describe()
        dumps = len(backups.list(f"{ctx.name}/"))
        archives = wa.incarnations(backups, ctx.name)
    except PgOpsError as exc:
        return f"the backup store could not be read to say what it keeps ({exc})"
    kept = [f"{dumps} logical backup object(s) in {where}/{ctx.name}/"] if dumps else []
    kept += [f"the WAL archive of system {i.sysid} ({i.objects} objects) in {where}/{wa.archive_root(ctx.name)}/"
             f"{i.sysid}/" for i in archives]
    if not kept:
        return "nothing kept in the backup store"
    return ("kept: " + ", ".join(kept) + "; a cluster deployed again as " + ctx.name
            + " is a new system and archives into a folder of its own")
