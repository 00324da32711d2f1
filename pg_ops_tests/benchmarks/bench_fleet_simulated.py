"""Benchmark: the health sensor's watch and decision code for a fleet too large for this machine's
servers (issue 27: 50 clusters are 150 PostgreSQL servers). One real 3-member cluster is deployed
and its answers recorded (every member's probe, the record, the endpoints); the cluster is then
stopped and N simulated clusters replay those answers, each in its own thread, in one process, the
way the daemon evaluates one sensor per cluster in its threads and the code server runs them:
every 5 s loop each cluster's tick (`operations.health.watch_cluster`, with the sensor's watch)
runs the real probe reading, decision, assessment, watch and confirmation code. What is simulated:
the members' answers (a probe costs PROBE_COST_S of waiting, as a real one on loopback, and
nothing else), the lease renewals and the status row (accepted, or refused when the member is
down), the member reports and disk usage. What is not: PostgreSQL, the daemon and gRPC, the
member scripts (bench_fleet measures those with real servers up to 20 clusters).

Per fleet size: the healthy ticks' duration, and, after the victim's primary is killed at a
random moment of a loop (its probes refused, its replicas' WAL receivers gone, as when its
process dies), the time until the victim's tick returns its failover request (the moment the
sensor hands it to the daemon). The baseline, in the same run, is the fleet of one.
Target (the fleet's): failure to request with 50 clusters <= 1.2x one cluster's.

    make bench BENCH=fleet_simulated   (PG_OPS_BENCH_SIM_FLEETS=1,5,20,50 PG_OPS_BENCH_TRIALS=5)
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pg_ops.errors import ConflictError, MemberError  # noqa: E402
from pg_ops.operations import health  # noqa: E402
from pg_ops.operations.context import ClusterContext  # noqa: E402
from pg_ops.platforms.base import MemberReport  # noqa: E402
from pg_ops.postgres.topology import MemberProbe  # noqa: E402
from pg_ops_tests.benchmarks.common import emit, summary  # noqa: E402
from pg_ops_tests.support.helpers import running_cluster, spec_from, temp_home, write_spec  # noqa: E402

FLEETS = [int(n) for n in os.environ.get("PG_OPS_BENCH_SIM_FLEETS", "1,5,20,50").split(",")]
TRIALS = int(os.environ.get("PG_OPS_BENCH_TRIALS", "5"))
LOOP_S = 5.0          # the sensor daemon's loop (pg_ops/defs/health.py DAEMON_LOOP_S)
WATCH_S = 3.5         # the tick's watch within it (defs/health.sensor_timing)
PROBE_COST_S = 0.007  # a probe's round trip on loopback (a bare `select 1` on a new connection)
logging.basicConfig(level=logging.ERROR)


class SimulatedRecord:
    """The cluster's record in memory, compare-and-swap as the file and the ConfigMap are."""

    def __init__(self, record):
        self.record, self.lock = record, threading.Lock()

    def read(self):
        return self.record

    def write(self, new, expected_version):
        with self.lock:
            if self.record.version != expected_version:
                raise ConflictError("simulated record changed")
            self.record = new.model_copy(update={"version": expected_version + 1})
            return self.record


class SimulatedPlatform:
    """The platform calls a tick makes, answered from the recording."""

    kind = "local"

    def __init__(self, peers: dict, record):
        self.peers, self.store = peers, SimulatedRecord(record)

    def state_store(self) -> SimulatedRecord:
        return self.store

    def route_primary(self, member: str) -> None:
        pass

    def passfile(self):
        return None

    def member_report(self, name: str) -> MemberReport:
        return MemberReport()

    def data_dir_usage(self, name: str):
        return (1 << 30, 10 << 30)

    def peer_addresses(self) -> dict:
        return self.peers

    def stopped_for_good(self, name: str) -> bool:
        return False

    def primary_dsn(self, user: str, dbname: str) -> str:
        return "simulated"


class SimulatedCluster(ClusterContext):
    """A cluster whose members answer as the recorded ones did, until its primary is killed."""

    def __init__(self, recorded: ClusterContext, probes: dict[str, MemberProbe], endpoints, peers, record):
        spec = recorded.spec.model_copy(update={"failover": recorded.spec.failover.model_copy(
            update={"promote_in": "run"})})  # the request is what is timed, not a take-over
        super().__init__(spec, SimulatedPlatform(peers, record), logging.getLogger("pg_ops.sim"))
        self._probes, self._endpoints, self._primary = probes, endpoints, record.primary
        self.killed_at: float | None = None

    def state(self):
        return self.platform.state_store().read()

    def endpoints(self):
        return self._endpoints

    def admin_password(self) -> str:
        return "simulated"

    def sql(self, member, fn, **_):
        """Lease renewals (the watch) and actions: answered by the simulation."""
        time.sleep(PROBE_COST_S)
        if self.is_down(member):
            raise MemberError(f"member {member}: connection refused")
        return True

    def is_down(self, member: str) -> bool:
        return self.killed_at is not None and member == self._primary

    def probe(self, names=None, timeout=None, deadlines=None) -> dict[str, MemberProbe]:
        time.sleep(PROBE_COST_S)  # every member at once: one round trip
        out = {}
        for name in names or list(self._probes):
            probe = self._probes[name]
            if self.is_down(name):
                probe = MemberProbe(name=name, host=probe.host, port=probe.port, reachable=False,
                                    error="connection refused")
            elif self.killed_at is not None and probe.in_recovery:
                probe = replace(probe, receiver_status=None, sender=None, silence_seconds=None)
            out[name] = probe
        return out


def record_cluster() -> tuple:
    with temp_home() as home:
        specs = home / "specs"
        specs.mkdir()
        os.environ.update(PG_OPS_HOME=str(home), PG_OPS_CLUSTERS=str(specs))
        spec = spec_from(write_spec(specs, "recorded", monitoring={"interval_seconds": 1},
                                    backups={"store": {"type": "file", "path": "backups"}, "wal": {"enabled": False}}))
        with running_cluster(spec) as ctx:
            watch = health.watch_cluster(ctx, health.TickMemory())
            assert watch.decision is not None and watch.decision.name == "healthy", watch.primary_verdict
            return ctx, ctx.probe(), ctx.endpoints(), ctx.platform.peer_addresses(), ctx.state()


def run_fleet(size: int, recording: tuple) -> dict:
    clusters = [SimulatedCluster(*recording) for _ in range(size)]
    victim = clusters[0]
    ticks: list[float] = []
    to_request: list[float] = []
    stop = threading.Event()
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    def daemon_worker(ctx: SimulatedCluster) -> None:
        memory = health.TickMemory()
        loop = 0
        while not stop.is_set():
            due = start + loop * LOOP_S
            time.sleep(max(0.0, due - time.monotonic()))
            began = time.monotonic()
            watch = health.watch_cluster(ctx, memory, watch_seconds=WATCH_S)
            ended = time.monotonic()
            memory = watch.memory
            with lock:
                if watch.failover is not None and ctx is victim and ctx.killed_at is not None:
                    to_request.append(ended - ctx.killed_at)
                    ctx.killed_at = None  # the cluster is "failed over": healthy again for the next trial
                    memory = health.TickMemory()
                elif ctx.killed_at is None:
                    ticks.append(ended - began)
            loop += 1

    threads = [threading.Thread(target=daemon_worker, args=(c,), daemon=True) for c in clusters]
    for t in threads:
        t.start()
    try:
        time.sleep(2 * LOOP_S)
        for _ in range(TRIALS):
            time.sleep(random.uniform(0, LOOP_S))
            before = len(to_request)
            victim.killed_at = time.monotonic()
            deadline = time.monotonic() + 60
            while len(to_request) == before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(LOOP_S)  # a healthy loop before the next kill
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    return {"clusters": size, "simulated_members": 3 * size, "trials": TRIALS, "requested": len(to_request),
            "healthy_tick_s": summary(ticks), "failure_to_request_s": summary(to_request)}


def main() -> None:
    recording = record_cluster()
    health.record_status = lambda ctx, key, value: True
    results = [run_fleet(size, recording) for size in FLEETS]
    base = results[0]["failure_to_request_s"].get("median") if results and results[0]["clusters"] == 1 else None
    for r in results:
        median = r["failure_to_request_s"].get("median")
        ratio = round(median / base, 2) if base and median is not None else None
        emit("fleet_simulated", {**r, "baseline_one_cluster_failure_to_request_s": base,
                                 "over_one_cluster": ratio, "target_over_one_cluster": 1.2})


if __name__ == "__main__":
    main()
