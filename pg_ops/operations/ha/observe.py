"""Reading a ClusterView: the one place the HA state machine does I/O before deciding.

`read_view` probes every member at once (each under a client-side deadline). When the
designated primary does not answer, it keeps looking before anyone decides: it probes the
primary again (`failover.probes` in all, `probe_interval_ms` apart) and re-reads every
replica's WAL receiver beside each probe, until `decide.primary_verdict` is settled or the
wait budget is spent. The budget covers the replicas' silence threshold, so a primary cut off
by the network (alive, silent) is confirmed from the replicas' `last_msg_receipt_time` within
seconds, instead of waiting for wal_receiver_timeout to end their connections.

`watch_primary` is the healthy tick's watch: it renews the primary's isolation lease every
`probe_interval_ms` for most of the daemon loop (each renewal is also a probe), so a failure
is noticed within a second of happening rather than at the next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pg_ops.errors import MemberError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.ha import act
from pg_ops.operations.ha.decide import primary_verdict
from pg_ops.operations.ha.model import ClusterView, Policy
from pg_ops.postgres.topology import MemberProbe
from pg_ops.state import DesiredState

# The primary's probes get a shorter deadline than the replicas': a cut-off primary (packets
# dropped) costs a full deadline per probe, and an unanswered probe alone never fails anything
# over (the replicas' view must agree). Our own deadline: libpq's connect_timeout has 2 s minimum.
PRIMARY_PROBE_TIMEOUT_S = 1.0


def member_addresses(ctx: ClusterContext, state: DesiredState) -> dict[str, frozenset[str]]:
    """Where a replica may stream each member from: pg_ops's endpoint for it, or the peer
    address in the record (on Kubernetes the pod's DNS name)."""
    endpoints = ctx.endpoints()
    peers = ctx.peer_addresses()
    out = {}
    for name, endpoint in endpoints.items():
        known = {str(endpoint)}
        peer = state.members.get(name) or peers.get(name)
        if peer:
            known.add(peer)
        out[name] = frozenset(known)
    return out


def fenced_itself(ctx: ClusterContext, name: str, probe: MemberProbe) -> frozenset[str]:
    """{name} when that member answers as a standby and its member script reports it fenced
    itself as an isolated primary (the report's isolated.at is cleared once pg_ops acted: a new
    epoch, or its promotion). Read only then: one file read, or one exec on Kubernetes."""
    if probe.reachable and probe.in_recovery and ctx.platform.member_report(name).isolated_at:
        return frozenset({name})
    return frozenset()


def _probe(ctx: ClusterContext, primary: str) -> dict[str, MemberProbe]:
    timeout = ctx.spec.monitoring.probe_timeout_seconds
    return ctx.probe(deadlines={primary: min(PRIMARY_PROBE_TIMEOUT_S, timeout)})


def read_view(ctx: ClusterContext, policy: Policy, *, confirm: bool = True, unless_locked: bool = False,
              missed_before: int = 0, sleep: Callable[[float], None] = time.sleep) -> ClusterView:
    """The cluster now. `confirm`: re-probe a primary that does not answer (see above);
    `unless_locked`: not while a topology change holds the lock (the tick: that change decides).
    `missed_before`: probes of the primary that already failed just before (the tick's watch)."""
    state = ctx.state()
    started, probe_began = time.time(), time.monotonic()
    probes = _probe(ctx, state.primary)
    missed = 0 if probes[state.primary].reachable else missed_before + 1
    view = ClusterView(record=state, members=probes, addresses=member_addresses(ctx, state), now=started,
                       primary_misses=missed, fenced_itself=fenced_itself(ctx, state.primary, probes[state.primary]),
                       stopped=frozenset(n for n in state.fenced
                                         if n in probes and not probes[n].reachable
                                         and ctx.platform.stopped_for_good(n)))
    busy = unless_locked and state.lock is not None and not state.lock.expired()
    if confirm and not view.primary.reachable and not busy:
        view = confirm_primary(ctx, view, policy, sleep, probe_began=probe_began)
    return view


def confirm_primary(ctx: ClusterContext, view: ClusterView, policy: Policy,
                    sleep: Callable[[float], None] = time.sleep, probe_began: float | None = None) -> ClusterView:
    """Probe the primary again and re-read the replicas until the verdict is settled: the
    primary answers, it is confirmed down, or nobody answers at all; or until the budget ends
    (then the last view stands: "alive but unreachable" or "unknown"). The primary's probes
    begin `probe_interval_s` apart: one that waited out its deadline (dropped packets) is not
    followed by a further pause."""
    deadline = time.monotonic() + max(policy.probes * policy.probe_interval_s, policy.silence_s) + 0.5
    while True:
        verdict = primary_verdict(view, policy)
        if verdict.settled or time.monotonic() >= deadline:
            return view
        if verdict.kind == "alive":
            # The primary missed every probe; only the replicas' silence can change the verdict:
            # read them (milliseconds) when the quietest would pass the threshold, not the primary
            # again (a cut-off primary costs a full probe deadline). A primary that is back shows
            # here too: its replicas hear from it again.
            # (Their silence was measured when the last probe began: it has grown since.)
            quietest = min(view.members[n].silence_seconds or 0.0 for n in verdict.witnesses)
            grown = time.monotonic() - probe_began if probe_began is not None else 0.0
            sleep(min(policy.probe_interval_s, max(0.05, policy.silence_s - quietest - grown + 0.05)))
            probe_began = time.monotonic()
            view = view.with_members(ctx.probe(view.replicas))
            continue
        since = time.monotonic() - probe_began if probe_began is not None else 0.0
        sleep(max(0.0, policy.probe_interval_s - since))
        probe_began = time.monotonic()
        fresh = _probe(ctx, view.designated)
        misses = 0 if fresh[view.designated].reachable else view.primary_misses + 1
        # `now` stays the moment the read began: when pg_ops first saw the primary fail.
        view = view.with_members(fresh, primary_misses=misses)


def watch_primary(ctx: ClusterContext, primary: str, epoch: int, seconds: float, every: float) -> str | None:
    """Renew the primary's lease every `every` s for `seconds` (each renewal is also the
    probe): None if it always answered, else why not."""
    if seconds <= 0:
        return None
    timeout = min(PRIMARY_PROBE_TIMEOUT_S, ctx.spec.monitoring.probe_timeout_seconds)
    end = time.monotonic() + seconds
    while time.monotonic() + every < end:
        time.sleep(every)
        try:
            act.renew_lease(ctx, primary, epoch, timeout=timeout)
        except MemberError as exc:
            return str(exc)
    return None
