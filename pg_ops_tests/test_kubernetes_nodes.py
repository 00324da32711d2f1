"""The nodes' side of Kubernetes with real members behind the pods, on the REAL control plane
(pg_ops_tests/kube_cluster.py: the real API server, scheduler, StatefulSet, disruption, node
lifecycle and persistent-volume controllers; stand-in kubelets running the member scripts), and
the production defects it brought out (issue 13), each failing before its fix:

- a drain could evict the primary (one budget, maxUnavailable 1)      -> primary-only PDB
  (the replica budget's `maxUnavailable: 1` that followed allowed NO eviction on a real cluster:
  the render has an integer minAvailable; the drain here goes through the real eviction API)
- hard anti-affinity left a member Pending with one node cordoned     -> preferred by default
- a replacement pod ran its boot actions on the volume while the old
  container was still stopping (force delete, ReadWriteOnce)          -> member.sh's lock
- (the RBAC ones are in test_kubernetes_platform.py and test_control_plane.py)

One cluster for the module; each test puts back what it changes. The stand-in kubelets' clock
runs five times faster than a real one (probe periods, grace periods); the node monitor grace
is the control plane's (20 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from kubernetes.client.exceptions import ApiException

from pg_ops.credentials import SUPERUSER
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.operations.failover import failover, rebuild, switchover
from pg_ops.operations.health import TickMemory, watch_cluster
from pg_ops.operations.status import storage_of
from pg_ops.platforms import kubernetes as kubernetes_platform
from pg_ops.render import names as names
from pg_ops.state import update_state
from pg_ops_tests.support.helpers import (
    home_environment,
    kill_member,
    real_kubernetes,
    spec_from,
    wait_for,
    write_platform_spec,
)


@pytest.fixture(scope="module")
def kube():
    with home_environment() as home, real_kubernetes() as fake:
        spec = spec_from(write_platform_spec(home / "specs", "kl", "kubernetes"))
        fake.register_cluster(spec)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        yield ctx, fake


def replicas(ctx) -> list[str]:
    return [m for m in ctx.spec.member_names if m != ctx.state().primary]


def sql(ctx, member: str, query: str):
    ep = ctx.endpoints()[member]
    with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, dbname="postgres", password=ctx.admin_password(),
                         autocommit=True, connect_timeout=3) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


def streaming(ctx, member: str) -> bool:
    return ctx.probe([member])[member].streaming


def ready(fake, ns: str, pod: str) -> bool:
    obj = fake.object("pods", ns, pod) or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def evict(fake, ns: str, pod: str) -> None:
    """What `kubectl drain` does for each pod (as an admin)."""
    fake.admin_api().core.create_namespaced_pod_eviction(pod, ns, {
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}})


def evicted(fake, ns: str, pod: str) -> bool:
    """An eviction the budgets allow now (429 while the disruption controller has not yet
    counted the pod back in: it writes budget status asynchronously)."""
    try:
        evict(fake, ns, pod)
        return True
    except ApiException as exc:
        if exc.status != 429:
            raise
        return False


def postmasters_on(data_dir: Path) -> list[int]:
    """Postmasters (`postgres -D <dir>`) using a data dir. A postmaster's child shows its parent's
    command line from fork() until it sets its own title, so a process whose parent is a postgres
    on the same data dir is that parent's child (a backend being born), not a second postmaster."""
    found: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"/postgres") and b"-D" in argv and \
                    argv[argv.index(b"-D") + 1] == str(data_dir).encode():
                stat = (proc / "stat").read_text()
                found[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid
    return sorted(pid for pid, parent in found.items() if parent not in found)


# -- the pods are the rendered pod spec, run --------------------------------------------------------
def test_member_pods_run_the_rendered_spec(kube):
    ctx, fake = kube
    ns = ctx.platform.namespace
    nodes = {m: fake.node_of(ns, m) for m in ctx.spec.member_names}
    assert len(set(nodes.values())) == 3, nodes  # preferred anti-affinity spreads them while it can
    for member in ctx.spec.member_names:
        # Ready comes from the readiness probe (probe.sh ready), at its next period after the
        # replica streams (deploy waits for streaming, not for the kubelet's probe).
        wait_for(lambda member=member: ready(fake, ns, member), f"{member} Ready", timeout=60)
        claim = fake.object("persistentvolumeclaims", ns, names.data_claim(member))
        assert claim["spec"]["storageClassName"] == "local-path"  # no class in the spec: K3s's default
        assert claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == nodes[member]
        container = fake.container(ns, member)
        env = container.env
        assert env["PGOPS_STOP_SECONDS"] == "170" and env["PGOPS_DATA"] == str(fake.data_dir(ns, member))
        status = dict(line.split("=", 1) for line in Path(env["PGOPS_RUN_DIR"], "member-status").read_text().split())
        assert status["phase"] == "running" and int(status["pid"]) == container.proc.pid


def test_readiness_follows_the_probe_and_moves_a_replica_out_of_the_read_service(kube):
    ctx, fake = kube
    ns, replica = ctx.platform.namespace, replicas(ctx)[0]
    read = fake.proxy(ns, names.replicas_service(ctx.spec))  # kube-proxy, from the real EndpointSlices
    ip = fake.object("pods", ns, replica)["status"]["podIP"]
    wait_for(lambda: ip in read.programmed, "the replica in the read Service's rules")
    conninfo = sql(ctx, replica, "show primary_conninfo")[0][0]
    sql(ctx, replica, "alter system set primary_conninfo = ''")
    sql(ctx, replica, "select pg_reload_conf()")
    try:
        wait_for(lambda: not ready(fake, ns, replica), "the disconnected replica to turn not ready")
        wait_for(lambda: ip not in read.programmed, "the replica out of the read Service's rules")
        assert any("replica is not streaming" in e["message"] for e in fake.events(ns, replica, "Unhealthy"))
    finally:
        sql(ctx, replica, f"alter system set primary_conninfo = '{conninfo}'")
        sql(ctx, replica, "select pg_reload_conf()")
    wait_for(lambda: ready(fake, ns, replica) and ip in read.programmed, "the replica back in the read Service")


# -- defect: a drain could evict the primary ---------------------------------------------------------
def test_a_drain_cannot_evict_the_primary_until_it_is_switched_over(kube):
    ctx, fake = kube
    ns, primary = ctx.platform.namespace, ctx.state().primary
    replica = replicas(ctx)[0]
    with pytest.raises(ApiException) as refused:
        evict(fake, ns, primary)
    body = json.loads(refused.value.body)
    assert (refused.value.status == 429
            and f"disruption budget {ctx.name}-primary" in body["details"]["causes"][0]["message"])
    assert sql(ctx, primary, "select pg_is_in_recovery()") == [(False,)]  # untouched
    # A replica may go (its budget, minAvailable members - 2, allows one at a time); the
    # StatefulSet brings it back.
    uid = fake.object("pods", ns, replica)["metadata"]["uid"]
    wait_for(lambda: evicted(fake, ns, replica), f"{replica} evicted (once the controller counted the budget)")
    wait_for(lambda: (fake.object("pods", ns, replica) or {"metadata": {"uid": uid}})["metadata"]["uid"] != uid,
             f"{replica} evicted and recreated")
    deploy(ctx)  # waits for it, labels it again
    # The documented procedure: switch over first, then the old primary is an ordinary replica.
    switchover(ctx, to=replica)
    wait_for(lambda: evicted(fake, ns, primary), f"{primary} evicted as a replica now")
    wait_for(lambda: ctx.platform.member_running(primary) and streaming(ctx, primary), f"{primary} back as a replica",
             timeout=90)
    deploy(ctx)
    assert ctx.state().primary == replica


# -- defect: hard anti-affinity left a member Pending with one node cordoned -------------------------
def test_a_cordoned_node_of_three_leaves_no_member_pending(kube):
    ctx, fake = kube
    ns, member = ctx.platform.namespace, replicas(ctx)[1]
    node = fake.node_of(ns, member)
    others = {fake.node_of(ns, m) for m in ctx.spec.member_names if m != member}
    fake.cordon(node)
    ctx.platform.pod_start_timeout = 30.0
    try:
        result = rebuild(ctx, member, reclone=True)  # a new, empty volume: it may go to any node
    finally:
        fake.cordon(node, False)
        ctx.platform.pod_start_timeout = kubernetes_platform.POD_START_TIMEOUT_S
    assert result.method == "re-clone"
    assert fake.node_of(ns, member) in others  # shares a node with another member rather than waiting
    assert streaming(ctx, member)
    deploy(ctx)


# -- defect: two instances of a member on one data directory -----------------------------------------
def test_a_replacement_pod_waits_for_the_old_container_on_the_same_volume(kube):
    """A force delete removes the pod at once; its kubelet kills the old container only when it
    notices (here 3 s later), and the StatefulSet's replacement lands on the same node (the
    local-path volume is pinned there) and mounts the same ReadWriteOnce volume. Without the
    lock its member script would rewind, re-clone or start postgres on a data directory a
    postmaster still uses."""
    ctx, fake = kube
    ns, member = ctx.platform.namespace, replicas(ctx)[0]
    old = fake.container(ns, member)
    data = fake.data_dir(ns, member)
    overlaps, crowded, stop = [], [], threading.Event()

    def watch():
        while not stop.is_set():
            new = fake.container(ns, member)
            if new is not None and new is not old and old.group_alive():
                log = new.log.read_text(errors="replace") if new.log.exists() else ""
                if "supervisor started" in log:
                    overlaps.append(log.splitlines()[-1])
            if len(postmasters_on(data)) > 1:
                crowded.append(postmasters_on(data))
            time.sleep(0.05)

    fake.set_force_kill_delay(3.0)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        kill_member(ctx.platform, member)
        wait_for(lambda: not old.group_alive(), "the old container killed")
        wait_for(lambda: streaming(ctx, member), f"{member} streaming again", timeout=60)
    finally:
        stop.set()
        watcher.join(5)
        fake.set_force_kill_delay(0.0)
    new = fake.container(ns, member)
    assert new is not old and new.node == old.node
    assert "another instance of this member still runs on this data directory" in new.log.read_text()
    assert overlaps == [], f"the new member script booted while the old container ran: {overlaps[0]}"
    assert crowded == []
    deploy(ctx)


# -- defect: a pod deletion was an immediate fast shutdown ----------------------------------------------
def test_deleting_the_primary_pod_checkpoints_then_lets_a_transaction_finish(kube):
    """What a drain, an eviction or a K3s upgrade does to the primary's pod: TERM, then SIGKILL
    at the grace period. member.sh checkpoints while still serving (the shutdown checkpoint is
    then short), stops smart while a transaction is in flight (no new sessions, the open ones may
    finish), then fast. Before: a fast shutdown at once, the transaction aborted."""
    ctx, fake = kube
    ns, primary = ctx.platform.namespace, ctx.state().primary
    sql(ctx, primary, "create table if not exists drained (v int)")
    ep = ctx.endpoints()[primary]
    with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, dbname="postgres",
                         password=ctx.admin_password(), connect_timeout=3) as conn:
        conn.execute("insert into drained values (1)")  # a transaction in flight
        old = fake.container(ns, primary)
        fake.admin_api().core.delete_namespaced_pod(primary, ns)  # graceful: the pod's grace period
        wait_for(lambda: "smart shutdown" in old.log.read_text(), "the member script to stop smart")
        conn.commit()  # the open session still may
    log = old.log.read_text()
    assert "stop requested: checkpoint done" in log
    assert log.index("checkpoint done") < log.index("smart shutdown")
    wait_for(lambda: ctx.probe([primary])[primary].writable, f"{primary} back as the primary", timeout=90)
    deploy(ctx)
    assert sql(ctx, primary, "select v from drained") == [(1,)]


# -- the kubelet restarts a container whose liveness probe fails --------------------------------------
def test_a_failing_liveness_probe_restarts_the_container(kube):
    ctx, fake = kube
    ns, member = ctx.platform.namespace, replicas(ctx)[1]
    before = fake.container(ns, member)
    postmaster = int((fake.data_dir(ns, member) / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)  # hung: accepts TCP connections, answers nothing
    try:
        wait_for(lambda: fake.events(ns, member, "Killing"), "the kubelet to give up on the liveness probe", timeout=90)
    finally:
        os.kill(postmaster, signal.SIGCONT)  # let it shut down within the (scaled) grace period
    killing = fake.events(ns, member, "Killing")[0]
    assert killing["message"] == "Container postgres failed liveness probe, will be restarted"
    assert any(e["message"].startswith("Liveness probe failed: postgres is not accepting connections")
               for e in fake.events(ns, member, "Unhealthy"))
    wait_for(lambda: (fake.object("pods", ns, member)["status"]["containerStatuses"][0]["restartCount"] >= 1
                      and ready(fake, ns, member)), "the container restarted and ready", timeout=90)
    assert fake.object("pods", ns, member)["metadata"]["uid"] == before.uid  # the same pod, a new container
    wait_for(lambda: streaming(ctx, member), f"{member} streaming again", timeout=60)


# -- partition mode: the node's kubelet loses the API ----------------------------------------------------
def test_a_partitioned_node_keeps_serving_and_ignores_the_api(kube):
    ctx, fake = kube
    ns, member = ctx.platform.namespace, replicas(ctx)[0]
    node = fake.node_of(ns, member)
    container = fake.container(ns, member)
    state_file = Path(container.env["PGOPS_STATE"])
    # Earlier tests may have put two members on one node (the cordon test): reason per node.
    cut_off = {m for m in ctx.spec.member_names if fake.node_of(ns, m) == node}
    other = next(m for m in ctx.spec.member_names if m not in cut_off)
    other_state = Path(fake.container(ns, other).env["PGOPS_STATE"])
    fake.partition_node(node)
    try:
        # A deletion does not take effect: the pod stays Terminating, its member keeps serving.
        fake.admin_api().core.delete_namespaced_pod(member, ns)
        time.sleep(1)  # many kubelet rounds on the other nodes
        pod = fake.object("pods", ns, member)
        assert pod is not None and pod["metadata"]["deletionTimestamp"]
        assert sql(ctx, member, "select 1") == [(1,)] and streaming(ctx, member)
        # Volumes do not refresh there; they do elsewhere.
        before = state_file.read_text()
        update_state(ctx.platform.state_store(),  # a new version of the record (a no-op change writes nothing)
                     lambda s: s.model_copy(update={"observed_at": s.observed_at + 1}))
        wait_for(lambda: other_state.read_text() != before, "the record refreshed on a connected node")
        assert state_file.read_text() == before
        # Exec and logs hang until the client gives up: storage is unknown, and the member is not
        # asked again for a while (no health tick waits on it twice).
        assert ctx.platform.data_dir_usage(member) is None
        assert (ns, member) in kubernetes_platform._EXEC_SILENT
        usages = storage_of(ctx)  # all at once, in parallel (the health pass's reading)
        assert {m for m, usage in usages.items() if usage.used_bytes is None} == cut_off
        with pytest.raises(Exception, match="timed out"):
            ctx.platform.api.core.read_namespaced_pod_log(member, ns, container=names.CONTAINER, tail_lines=1,
                                                          _request_timeout=(2, 2))
        # After the node monitor grace the node controller takes its pods out of the Services.
        wait_for(lambda: not ready(fake, ns, member), "the partitioned node's pod marked not ready")
        node_obj = fake.object("nodes", "", node)
        assert node_obj["status"]["conditions"][0]["status"] == "Unknown"
        assert sql(ctx, member, "select 1") == [(1,)]  # still serving whoever reaches it
    finally:
        fake.heal_node(node)
        for m in cut_off:
            kubernetes_platform._EXEC_SILENT.pop((ns, m), None)
    # Back: its kubelet carries out the deletion, and the StatefulSet makes the pod again.
    wait_for(lambda: not container.group_alive(), "the deleted pod's container stopped once the node is back")
    wait_for(lambda: ctx.platform.member_running(member) and streaming(ctx, member), f"{member} back", timeout=90)
    deploy(ctx)


def test_a_crashed_primary_container_is_confirmed_stopped_by_its_kubelet_instead_of_waited_out(kube):
    """Issue 27: the primary's container crashed, its node is up. The failover's exec has nothing
    to reach (the container waits to restart), so the fence deletes the pod gracefully; its
    kubelet completes the deletion once the container is stopped, and that confirms the fence:
    the failover promotes without waiting for the isolation lease, and only one member is ever
    writable. (A node cut off from the API server never completes it: test_partitions, lease.)"""
    ctx, fake = kube
    ns, old = ctx.platform.namespace, ctx.state().primary
    uid = fake.object("pods", ns, old)["metadata"]["uid"]
    container = fake.container(ns, old)
    fake.crash_pod(ns, old, restart_after_s=10.0)  # a real kubelet's first back-off
    wait_for(lambda: not container.group_alive(), "the primary's container dead")
    change = failover(ctx, detected_at=time.time())
    assert any(n.startswith(f"{old} confirmed stopped by the platform") for n in change.notes), change.notes
    assert not any(n.startswith("waited for the isolation lease") for n in change.notes), change.notes
    pod = fake.object("pods", ns, old)
    assert pod is None or pod["metadata"]["uid"] != uid  # its kubelet removed it
    assert [m for m, p in ctx.probe().items() if p.writable] == [change.new_primary]
    wait_for(lambda: streaming(ctx, old), f"{old} back as a replica", timeout=120)
    deploy(ctx)


def test_a_replacement_pod_confirms_nothing_the_lease_is_waited_out(kube):
    """The primary's pod force-deleted (by a person, or for a node declared lost) and its node
    cordoned: the pod the fence finds is the StatefulSet's replacement (Pending), made after pg_ops
    last saw the primary writable. Its deletion says nothing about the old container, which may
    still run on a node nobody reaches: the failover waits for the lease."""
    ctx, fake = kube
    ns, old = ctx.platform.namespace, ctx.state().primary
    fake.hold_pending(ns, old)
    try:
        kill_member(ctx.platform, old)
        change = failover(ctx, detected_at=time.time())
        assert any(n.startswith(f"waited for the isolation lease of {old}") for n in change.notes), change.notes
        assert [m for m, p in ctx.probe().items() if p.writable] == [change.new_primary]
    finally:
        fake.release_pending(ns, old)
    wait_for(lambda: streaming(ctx, old), f"{old} back as a replica", timeout=120)
    deploy(ctx)


# -- the kubelet's ConfigMap refresh delay (slow: half a minute per test) ------------------------------
# A real kubelet refreshes a mounted ConfigMap at its next periodic pod sync (1 min) plus the
# cache's TTL. pg_ops must hold for any such delay; 30 s is longer than every topology change
# here takes (what these tests need: pods still reading the old record after the change ended)
# and keeps the three tests at half the time of a minute's delay.
KUBELET_SYNC_DELAY_S = 30.0


@pytest.fixture(scope="class")
def delayed():
    """Two members whose pods see a changed desired-state ConfigMap half a minute after the
    change, as on a real node (the rest of the suite runs with no delay)."""
    with home_environment() as home, real_kubernetes() as fake:
        spec = spec_from(write_platform_spec(home / "specs", "sd", "kubernetes", postgres={"members": 2}))
        fake.register_cluster(spec)
        fake.set_sync_delay(KUBELET_SYNC_DELAY_S)
        ctx = ClusterContext.for_spec(spec)
        deploy(ctx)
        yield ctx, fake


class TestKubeletSyncDelay:
    def test_running_pods_see_a_new_record_later_new_pods_at_once(self, delayed):
        ctx, fake = delayed
        ns = ctx.platform.namespace
        first, second = ctx.spec.member_names
        state_file = lambda m: Path(fake.container(ns, m).env["PGOPS_STATE"])  # noqa: E731
        before = state_file(first).read_text()
        update_state(ctx.platform.state_store(),  # a new version of the record (a no-op change writes nothing)
                     lambda s: s.model_copy(update={"observed_at": s.observed_at + 1}))
        kill_member(ctx.platform, second)  # a pod made now mounts the record of now
        wait_for(lambda: fake.container(ns, second) is not None
                 and state_file(second).read_text() != before, "the new pod's record")
        assert state_file(first).read_text() == before  # the running pod: not yet
        wait_for(lambda: state_file(first).read_text() != before, "the running pod's record",
                 timeout=KUBELET_SYNC_DELAY_S * 2)
        wait_for(lambda: streaming(ctx, second), f"{second} streaming again", timeout=60)
        deploy(ctx)

    def test_a_switchover_keeps_its_new_primary_while_the_pods_still_read_the_old_record(self, delayed):
        ctx, fake = delayed
        new = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
        switchover(ctx, to=new)
        epoch = ctx.state().epoch
        ns = ctx.platform.namespace
        record = lambda m: Path(fake.container(ns, m).env["PGOPS_STATE"]).read_text()  # noqa: E731
        deadline = time.monotonic() + KUBELET_SYNC_DELAY_S * 2
        while not all(f"\nepoch={epoch}\n" in record(m) for m in ctx.spec.member_names):  # until every pod has it
            probes = ctx.probe()
            assert [m for m, p in probes.items() if p.writable] == [new]
            assert time.monotonic() < deadline, "the pods never saw the new record"
            time.sleep(2)
        assert [m for m, p in ctx.probe().items() if p.writable] == [new]

    def test_a_fenced_primary_is_not_booted_again_from_its_stale_record(self, delayed):
        """M4 (issue 20): the failover's exec stops postgres at once, but the force-deleted pod's
        container runs on for a while (its kubelet notices late) and its record file still names
        it the primary (the delayed sync): its member script waits for the record to reach the
        fence's epoch instead of starting postgres again as the primary."""
        ctx, fake = delayed
        ns, old = ctx.platform.namespace, ctx.state().primary
        other = next(m for m in ctx.spec.member_names if m != old)
        container = fake.container(ns, old)
        fake.set_force_kill_delay(5.0)
        try:
            change = failover(ctx, to=other, force=True)
            wait_for(lambda: not container.group_alive(), "the old container killed", timeout=30)
        finally:
            fake.set_force_kill_delay(0.0)
        log = container.log.read_text(errors="replace")
        after_stop = log[log.rindex("postgres exited"):]
        assert f"fenced by pg_ops at epoch {change.epoch}; the record here is at epoch {change.epoch - 1}" in after_stop
        assert "as primary" not in after_stop, after_stop
        memory = TickMemory()  # pg_ops ticks meanwhile, as its sensor does (it renews the new primary's lease)
        wait_for(lambda: watch_cluster(ctx, memory) and streaming(ctx, old), f"{old} back as a replica of {other}",
                 timeout=90)
        deploy(ctx)
