"""What one Kubernetes failover costs the API server, with the context's session (issue 28) and
without it, in the same run: a 3-member cluster on the real control plane (stand-in nodes:
pg_ops_tests/kube_cluster.py), its primary's pod force-deleted (kill_member: a node lost), then
the failover operation (`failover(ctx, force=True)`, as test_kubernetes_platform's failover),
each trial on a fresh KubernetesPlatform whose KubernetesApi counts its requests by verb and kind
(`KubernetesApi.calls`).

`session`: ClusterContext as pg_ops builds it (each named step reads the pods and the Secret once).
`no_session`: the same context with sessions off, every probe and SQL call reading the platform
again: what pg_ops did before the session existed (the baseline).

Printed as JSON lines: per mode, the median API calls by kind and in total and the failover's
seconds; and one healthy health tick's calls (watch_cluster without the watch) beside it.
PG_OPS_BENCH_TRIALS (default 3) failovers per mode, alternating.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import Counter

from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.operations.failover import failover
from pg_ops.operations.health import TickMemory, watch_cluster
from pg_ops.platforms.kubernetes import KubernetesPlatform
from pg_ops_tests.benchmarks.common import emit
from pg_ops_tests.support.helpers import (
    home_environment,
    kill_member,
    real_kubernetes,
    spec_from,
    wait_for,
    write_platform_spec,
)

TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "3"))
MODES = {"session": True, "no_session": False}
logging.basicConfig(level=logging.WARNING)


def counted(spec, sessions: bool) -> ClusterContext:
    """A context on a platform of its own (a fresh API client: its counter starts at zero)."""
    return ClusterContext(spec, KubernetesPlatform(spec), logging.getLogger("pg_ops.bench"), sessions=sessions)


def all_streaming(ctx: ClusterContext) -> bool:
    state = ctx.state()
    probes = ctx.probe()
    return (not state.fenced and probes[state.primary].writable
            and all(p.streaming for n, p in probes.items() if n != state.primary))


def settle(ctx: ClusterContext) -> None:
    """Back to three members streaming: the old primary's pod, recreated by its StatefulSet,
    rejoins as a replica once deploy has unfenced it."""
    wait_for(lambda: all(ctx.platform.member_running(m) for m in ctx.spec.member_names), "every pod running",
             timeout=180)
    deploy(ctx)
    wait_for(lambda: all_streaming(ctx), "every replica streaming", timeout=180)


def one_failover(spec, sessions: bool) -> tuple[Counter[str], float, str, dict[str, float]]:
    ctx = counted(spec, sessions)
    old = ctx.state().primary
    kill_member(ctx.platform, old)
    ctx.platform.api.calls.clear()  # the failover's own calls, not the kill
    started = time.monotonic()
    change = failover(ctx, force=True)
    seconds = time.monotonic() - started
    assert change.new_primary != old
    return Counter(ctx.platform.api.calls), seconds, f"{old} -> {change.new_primary}", change.steps


def one_tick(spec, sessions: bool) -> Counter[str]:
    ctx = counted(spec, sessions)
    watch = watch_cluster(ctx, TickMemory())
    assert watch.decision is not None and watch.decision.name == "healthy", watch.decision
    return Counter(ctx.platform.api.calls)


def median_calls(runs: list[Counter[str]]) -> dict[str, float]:
    kinds = sorted({k for r in runs for k in r})
    return {k: statistics.median(r.get(k, 0) for r in runs) for k in kinds}


def main() -> None:
    with home_environment() as home, real_kubernetes() as kube:
        spec = spec_from(write_platform_spec(home / "specs", "k8sfo", "kubernetes", postgres={"members": 3}))
        kube.register_cluster(spec)
        deploy(ClusterContext.for_spec(spec))
        settle(ClusterContext.for_spec(spec))
        failovers: dict[str, list[tuple[Counter[str], float, str, dict[str, float]]]] = {m: [] for m in MODES}
        ticks: dict[str, list[Counter[str]]] = {m: [] for m in MODES}
        for _ in range(TRIALS):
            for mode, sessions in MODES.items():
                ticks[mode].append(one_tick(spec, sessions))
                failovers[mode].append(one_failover(spec, sessions))
                settle(ClusterContext.for_spec(spec))
    for mode in MODES:
        runs = [calls for calls, _, _, _ in failovers[mode]]
        emit("k8s_failover", {
            "mode": mode, "trials": len(runs), "members": 3,
            "api_calls": median_calls(runs), "api_calls_total": statistics.median(sum(r.values()) for r in runs),
            "api_calls_total_each": [sum(r.values()) for r in runs],
            "failover_s": round(statistics.median(s for _, s, _, _ in failovers[mode]), 3),
            "failover_s_each": [round(s, 3) for _, s, _, _ in failovers[mode]],
            "changes": [c for _, _, c, _ in failovers[mode]],
            "steps_s_each": [steps for _, _, _, steps in failovers[mode]],  # where the time goes
        })
        emit("k8s_healthy_tick", {
            "mode": mode, "trials": len(ticks[mode]), "api_calls": median_calls(ticks[mode]),
            "api_calls_total": statistics.median(sum(r.values()) for r in ticks[mode]),
        })


if __name__ == "__main__":
    main()
