"""Member steps that deploy and the topology changes (failover, switchover, rebuild, rolling
restart) share: waiting until a member is ready, the isolation lease the record tells member
scripts about (and keeping it renewed while a change holds the topology lock), and the verified
write through the primary endpoint."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import psycopg

from pg_ops.errors import MemberError, PgOpsError, first_line
from pg_ops.operations.context import ClusterContext
from pg_ops.poll import poll
from pg_ops.postgres import admin
from pg_ops.postgres.topology import MemberProbe

READY_TIMEOUT_S = 60.0


def wait_until(ctx: ClusterContext, name: str, ready: Callable[[MemberProbe], bool], what: str,
               timeout: float | None = None) -> MemberProbe:
    """Poll a member until ready(probe); fail fast when its supervisor is gone."""
    timeout = timeout or READY_TIMEOUT_S
    seen: list[MemberProbe] = []

    def attempt() -> MemberProbe | None:
        probe = ctx.probe([name], timeout=2.0)[name]
        if ready(probe):
            return probe
        seen[:] = [probe]
        if not ctx.platform.member_running(name):
            raise MemberError(f"member {name} exited before it was {what}: {member_detail(ctx, name)}")
        return None

    def expired() -> MemberError:
        return MemberError(f"member {name} not {what} after {timeout:g} s: "
                           f"{member_detail(ctx, name, seen[0] if seen else None)}")

    return poll(attempt, timeout=timeout, interval=0.2, expired=expired)


def member_detail(ctx: ClusterContext, name: str, probe: MemberProbe | None = None) -> str:
    """Why a member is not what a run waits for, as its member script reported it (boot.action
    and boot.reason of Platform.member_report): a refusal and its reason, or what it waits for.
    Otherwise (it reported neither, or its report cannot be read) the tail of its log."""
    report = ctx.platform.member_report(name)
    action, reason = report.boot_action, report.boot_reason
    if action == "refused":
        return f"it refused to start: {reason}"
    if action == "wait":
        return f"it waits: {reason}"
    tail = " | ".join(line.strip() for line in ctx.platform.member_log_tail(name, 3).splitlines() if line.strip())
    return tail or (probe.error if probe and probe.error else "") or "no log output"


def lease_seconds(ctx: ClusterContext) -> float:
    """What the record tells the member scripts about isolation fencing (0: off). A single
    member has nothing to fail over to: fencing it would only turn a lost pg_ops into an outage."""
    failover = ctx.spec.failover
    return failover.lease_seconds if failover.isolation_fencing and ctx.spec.postgres.members > 1 else 0.0


@contextlib.contextmanager
def lease_kept(ctx: ClusterContext, every: float | None = None) -> Iterator[None]:
    """While a topology change holds the cluster's lock, renew the designated primary's isolation
    lease as the health tick does (the tick leaves a locked cluster to the change). Without it a
    primary that pg_ops's own change leaves without a streaming standby — a 2-member rebuild or
    rolling restart, a new or recovered cluster whose replicas are still cloning, a switchover
    waiting for the old primary to rejoin — would fence itself after lease_seconds (issue 20, M1).
    Only the record's designated primary, read afresh each time; a renewal that fails (not
    writable yet, not reachable) is simply tried again `every` seconds later."""
    seconds = lease_seconds(ctx)
    if seconds <= 0:
        yield
        return
    from pg_ops.operations.ha import act

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every or seconds / 4):
            with contextlib.suppress(Exception):  # noqa: SIM105 - any failure: try again next time
                state = ctx.state()
                act.renew_lease(ctx, state.primary, state.epoch, timeout=min(2.0, seconds / 4))

    thread = threading.Thread(target=renew, name=f"lease-{ctx.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# How long the primary endpoint may take to follow a promotion: on Kubernetes the Service moves
# once the EndpointSlice controller has seen the label and kube-proxy has reprogrammed its rules
# (at most about once a second; longer on a busy node, or through MetalLB); locally libpq's
# target_session_attrs=read-write finds the new primary at once.
ENDPOINT_ROUTE_TIMEOUT_S = 15.0


def write_through_primary_endpoint(ctx: ClusterContext, epoch: int, writer: str, designated: str,
                                   timeout: float = ENDPOINT_ROUTE_TIMEOUT_S) -> dict:
    """A heartbeat write through the endpoint clients use, once it reaches the `designated`
    primary, renewing that member's isolation lease. Tried again every quarter second for up to
    `timeout` while the endpoint refuses or reaches another member (the Service not moved yet):
    nothing is written through a connection that reached any other member, and a stray writable
    one never gets a fresh lease (the member script lets a fresh lease at the record's epoch
    outrank a lagging record file). The member reached is named by its cluster_name (the member
    script sets it on both platforms; ports and hosts differ behind Services and proxies)."""
    last: list[str] = []

    def attempt() -> dict | None:
        started = time.monotonic()

        def write(conn: psycopg.Connection) -> dict | None:
            connect_ms = (time.monotonic() - started) * 1000
            member = admin.member_name(conn)
            if member != designated:
                last[:] = [f"it reached {member}"]
                return None
            admin.renew_lease(conn, member, epoch)
            return {"member": member, "connect_ms": connect_ms, "lsn": admin.write_heartbeat(conn, epoch, writer)}
        try:
            return ctx.on_primary_endpoint(write, timeout=3,
                                           options="-c synchronous_commit=local -c statement_timeout=5000")
        except psycopg.Error as exc:
            last[:] = [first_line(exc)]
            return None

    def expired() -> PgOpsError:
        return PgOpsError(f"cluster {ctx.name}: the primary endpoint did not reach {designated} within {timeout:g} s "
                          f"({last[0] if last else 'no answer'})")

    return poll(attempt, timeout=timeout, interval=0.25, expired=expired)
