"""Keep `synchronous_standby_names` right for the cluster's replication mode.

- async:        '' (commits never wait for a standby)
- sync:         ANY 1 over the replicas that stream; relaxed to '' while none streams (the
                caller raises an alert: RPO 0 is not true in that window)
- sync-strict:  ANY 1 over the replicas, never relaxed (writes block until a standby returns)
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_ops.credentials import SUPERUSER
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres import admin
from pg_ops.postgres.session import with_connection
from pg_ops.postgres.topology import MemberProbe


@dataclass(frozen=True)
class ModeDecision:
    value: str
    relaxed: bool  # sync mode running as async for lack of a standby


def decide(mode: str, primary: str, probes: dict[str, MemberProbe], members: list[str]) -> ModeDecision:
    replicas = [m for m in members if m != primary]
    if mode == "async":
        return ModeDecision("", False)
    if mode == "sync-strict":
        return ModeDecision(admin.synchronous_standby_names(mode, replicas), False)
    streaming = [m for m in replicas if m in probes and probes[m].streaming]
    if not streaming:
        return ModeDecision("", True)
    return ModeDecision(admin.synchronous_standby_names(mode, replicas), False)


def apply_mode(ctx: ClusterContext, primary: str, probes: dict[str, MemberProbe]) -> ModeDecision:
    decision = decide(ctx.spec.postgres.replication, primary, probes, ctx.spec.member_names)
    changed = with_connection(ctx.endpoints()[primary], SUPERUSER, ctx.admin_password(),
                              lambda c: admin.set_synchronous_standbys(c, decision.value), timeout=5, name=primary)
    if changed:
        ctx.log.info("synchronous_standby_names on %s = %r%s", primary, decision.value,
                     " (relaxed: no standby streaming)" if decision.relaxed else "")
    return decision
