"""Network partitions on real local clusters, cut with real firewall rules
(pg_ops_tests/partition.py: members in cgroups, iptables on loopback), with the application
as a separate process that still reaches the primary. The isolation-fencing cases run without
the daemon (the member script fences itself; pg_ops only has to be cut off); the failover
cases run through the real Dagster daemon. Every rule and cgroup is removed when a test ends."""

from __future__ import annotations

import os
import time

import dagster as dg
import pytest

from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.operations.deploy import deploy
from pg_ops.operations.failover import failover
from pg_ops.operations.health import TickMemory, status_report, watch_cluster
from pg_ops.postgres.session import with_connection
from pg_ops_tests.app_writer import App
from pg_ops_tests.partition import APP, PG_OPS, Partitions, unavailable
from pg_ops_tests.support.alerts import WebhookCapture
from pg_ops_tests.support.dagster import dagster_daemon, prepared_instance
from pg_ops_tests.support.helpers import requested_run, running_cluster, wait_for

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"no partitions here: {unavailable()}")


def acks_on(app, member):
    return [(n, t) for n, t, who in app.acks() if who == member]


def in_recovery(ctx, member):
    return with_connection(ctx.endpoints()[member], "postgres", ctx.admin_password(),
                           lambda c: c.execute("select pg_is_in_recovery()").fetchone()[0], timeout=3)


def tick(ctx, memory):
    watch = watch_cluster(ctx, memory)
    vars(memory).update(vars(watch.memory))
    return watch


# -- isolation fencing: the member script, no daemon --------------------------------------------------
@pytest.mark.parametrize("replication", ["async", "sync", "sync-strict"])
def test_isolated_primary_stops_acknowledging_writes_and_is_resumed_when_reached_again(make_spec, replication):
    # Manual mode: nobody fails over, so only the primary's own fencing can end its write window.
    # In sync modes it is resumed in place too: it is the last known primary (issue 20, H2).
    spec = make_spec("iso", failover={"mode": "manual", "lease_seconds": 3},
                     postgres={"members": 3, "replication": replication})
    with running_cluster(spec) as ctx, Partitions(ctx) as parts, App(ctx, parts) as app:
        primary = ctx.state().primary
        wait_for(lambda: app.progressing(primary), "writes before the cut")
        parts.isolate(primary)  # pg_ops and the replicas cut off; the application still reaches it
        cut_at = time.time()
        # It restarts as a standby: reads still served (to the app), writes no longer acknowledged.
        wait_for(lambda: parts_read(ctx, parts, primary), "the isolated primary to fence itself", timeout=60)
        seen_standby = time.time()
        time.sleep(2)
        late = [t for _, t in acks_on(app, primary) if t > seen_standby]
        assert late == [], f"{len(late)} writes acknowledged after it fenced itself"
        assert acks_on(app, primary)
        if replication == "async":  # it did serve until then (in sync modes no standby acknowledges)
            assert max(t for _, t in acks_on(app, primary)) > cut_at
        assert ctx.state().primary == primary and ctx.state().epoch == 1  # no failover happened
        log = ctx.platform.member_log_tail(primary, 200)
        assert "ISOLATED: no lease renewal" in log
        assert next(m for m in status_report(ctx)["members"] if m["name"] == primary)["isolated_at"]
        parts.heal()
        # Reached again, and still the most advanced member: pg_ops promotes it in place (even
        # in manual mode: no topology changes); nothing was lost.
        memory = TickMemory()
        watch = wait_for(lambda: (w := tick(ctx, memory)) and w.decision.name == "primary_not_writable" and w,
                         "the tick to see the designated primary as a standby", timeout=30)
        assert watch.failover is not None
        assert [e.kind for e in watch.events if e.details["member"] == primary] == ["primary_isolated"]
        change = requested_run(ctx, watch.failover)
        assert change.new_primary == primary and change.epoch == 1
        assert not in_recovery(ctx, primary)
        wait_for(lambda: tick(ctx, memory) and app.progressing(primary), "writes on the same primary again",
                 timeout=30)
        assert app.lost(primary) == set()
        wait_for(lambda: next(m for m in status_report(ctx)["members"] if m["name"] == primary)["isolated_at"] is None,
                 "the isolation cleared from the member's report")


def parts_read(ctx, parts, member):
    """The member answers (to its own local port, which no rule cuts) as a standby."""
    import subprocess

    from pg_ops import settings

    out = subprocess.run([str(settings.pg_bin() / "psql"), "-X", "-At", "-h", "127.0.0.1", "-p",
                          str(ctx.endpoints()[member].port), "-U", "postgres", "-d", "postgres", "-c",
                          "select pg_is_in_recovery()"], capture_output=True, text=True,
                         env={**os.environ, "PGPASSWORD": ctx.admin_password(), "PGCONNECT_TIMEOUT": "2"},
                         preexec_fn=lambda: (parts.base / APP / "cgroup.procs").write_text(str(os.getpid())))
    return out.stdout.strip() == "t"


def test_primary_whose_standbys_still_stream_keeps_running_without_pg_ops(make_spec):
    spec = make_spec("nopg", failover={"lease_seconds": 3})
    with running_cluster(spec) as ctx, Partitions(ctx) as parts, App(ctx, parts) as app:
        primary = ctx.state().primary
        parts.cut(PG_OPS, primary)  # pg_ops (down or cut off) never renews the lease now
        time.sleep(3 * 3)
        assert app.progressing(primary)  # standbys stream: it is not isolated
        assert "ISOLATED" not in ctx.platform.member_log_tail(primary, 200)


# -- through the real daemon -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon_clusters():
    """Three clusters watched by one real daemon (specs written before it loads the code location)."""
    from pg_ops_tests.support.helpers import home_environment, spec_from, write_spec

    with home_environment() as home, WebhookCapture() as hook:
        specs = {name: spec_from(write_spec(home / "specs", name, monitoring={"interval_seconds": 1},
                                            postgres={"members": 3, "replication": mode}))
                 for name, mode in (("pa", "async"), ("ps", "sync"), ("pw", "async"))}
        instance = prepared_instance(home)
        with running_cluster(specs["pa"]) as pa, running_cluster(specs["ps"]) as ps, \
                running_cluster(specs["pw"]) as pw, \
                dagster_daemon(home, {"PG_OPS_ALERT_WEBHOOK": hook.url}):
            try:
                wait_for(lambda: _ticked(instance, list(specs)), "every health sensor's first ticks", timeout=120)
                yield {"async": pa, "sync": ps, "watch": pw, "hook": hook, "instance": instance, "home": home}
            except AssertionError:
                print((home / "daemon.log").read_text()[-3000:])
                raise
            finally:
                instance.dispose()


def _ticked(instance, clusters: list[str]) -> bool:
    from pg_ops.defs.health import health_sensor_cursor

    return all(len(health_sensor_cursor(instance, c).ticks) >= 2 for c in clusters)


def _failovers(instance, cluster):
    return [r for r in instance.get_runs(filters=dg.RunsFilter(job_name="failover"))
            if r.tags.get("dagster/partition") == cluster]


def test_isolated_primary_async_fails_over_and_every_discarded_write_is_reported(daemon_clusters):
    ctx, hook, instance = daemon_clusters["async"], daemon_clusters["hook"], daemon_clusters["instance"]
    old = ctx.state().primary
    with Partitions(ctx) as parts, App(ctx, parts) as app:
        wait_for(lambda: app.progressing(old), "writes before the cut")
        parts.isolate(old)
        wait_for(lambda: ctx.state().epoch == 2 and ctx.state().lock is None, "the failover run", timeout=90)
        new = ctx.state().primary
        wait_for(lambda: app.progressing(new), "writes on the new primary", timeout=60)
        parts.heal()
        # Nobody runs deploy: the health sensor started the fenced old primary again, and its member
        # script rewinds it once it reaches the new primary, counting what it throws away.
        wait_for(lambda: next(m for m in status_report(ctx)["members"] if m["name"] == old)["role"] == "replica",
                 f"{old} back as a replica by itself", timeout=120)
        lost = app.lost(new)
    down = next(b for b in hook.bodies if b["kind"] == "primary_down")
    assert f"if {old} is cut off rather than down, writes it acknowledged since are discarded" in down["summary"]
    report = next(m for m in status_report(ctx)["members"] if m["name"] == old)["discarded"]
    assert report is not None and report["transactions"] >= len(lost), (report, len(lost))
    assert (report["bytes"] > 0) == bool(lost)
    wait_for(lambda: any(b["kind"] == "writes_discarded" and b["details"]["member"] == old for b in hook.bodies),
             "the writes_discarded alert", timeout=60)
    alert = next(b for b in hook.bodies if b["kind"] == "writes_discarded")
    assert alert["details"]["transactions"] == report["transactions"] and alert["details"]["from_lsn"]
    assert len(_failovers(instance, ctx.name)) == 1


def test_isolated_primary_sync_loses_nothing(daemon_clusters):
    ctx, instance = daemon_clusters["sync"], daemon_clusters["instance"]
    old = ctx.state().primary
    with Partitions(ctx) as parts, App(ctx, parts) as app:
        wait_for(lambda: app.progressing(old), "sync writes before the cut")
        parts.isolate(old)
        wait_for(lambda: ctx.state().epoch == 2 and ctx.state().lock is None, "the failover run", timeout=90)
        new = ctx.state().primary
        wait_for(lambda: app.progressing(new), "writes on the new primary", timeout=60)
        parts.heal()
        deploy(ctx)
        assert app.lost(new) == set()
    assert len(_failovers(instance, ctx.name)) == 1


def test_partial_cuts_never_fail_over_a_live_primary(daemon_clusters):
    ctx, hook, instance = daemon_clusters["watch"], daemon_clusters["hook"], daemon_clusters["instance"]
    primary = ctx.state().primary
    first, second = [m for m in ctx.spec.member_names if m != primary]
    with Partitions(ctx) as parts, App(ctx, parts) as app:
        # Only pg_ops is cut off from the primary: the replicas still stream from it.
        parts.cut(PG_OPS, primary)
        wait_for(lambda: any(b["kind"] == "primary_unreachable" and "still stream from it" in b["summary"]
                             for b in hook.bodies if b["cluster"] == ctx.name), "the primary_unreachable alert")
        time.sleep(5)
        parts.heal()
        # {primary, first} | {pg_ops, second}: first still streams (pg_ops cannot see it).
        parts.cut(PG_OPS, primary)
        parts.cut(PG_OPS, first)
        parts.cut(second, primary)
        time.sleep(15)
        parts.heal()
        # pg_ops cut off from one replica only.
        parts.cut(PG_OPS, second)
        wait_for(lambda: any(b["kind"] == "member_down" and b["details"].get("member") == second
                             for b in hook.bodies if b["cluster"] == ctx.name), "member_down for the cut replica")
        time.sleep(3)
        parts.heal()
        assert app.progressing(primary)
    assert ctx.state().primary == primary and ctx.state().epoch == 1
    assert _failovers(instance, ctx.name) == []


def test_a_flapping_link_fails_over_at_most_once(daemon_clusters):
    ctx, instance = daemon_clusters["watch"], daemon_clusters["instance"]
    epoch = ctx.state().epoch
    old = ctx.state().primary
    with Partitions(ctx) as parts, App(ctx, parts):
        deadline = time.time() + 36
        while time.time() < deadline:  # the primary's link goes down and up every few seconds: 6 times
            parts.isolate(old)
            time.sleep(3)
            parts.heal()
            time.sleep(3)
    wait_for(lambda: ctx.state().lock is None, "no change running")
    runs = _failovers(instance, ctx.name)
    assert len(runs) <= 1 and ctx.state().epoch <= epoch + 1
    deploy(ctx)
    status = status_report(ctx)
    assert status["writable_members"] == [ctx.state().primary]
    assert all(m["streaming"] for m in status["members"] if m["role"] == "replica")


# -- Kubernetes: a node cut off from the API server and from the other members ------------------------
def test_kubernetes_primary_on_a_cut_off_node_fences_itself_before_a_new_primary_takes_writes(pg_home):
    """The pod deletion never reaches that node's kubelet and its record never refreshes: only
    the lease stops the old primary. The failover cannot confirm the fence, so it waits for the
    lease to run out before promoting: the two never acknowledge writes at the same time."""
    from psycopg.conninfo import make_conninfo

    from pg_ops_tests.support.helpers import cluster_on, fake_of, spec_from, write_platform_spec

    spec = spec_from(write_platform_spec(pg_home / "specs", "kn", "kubernetes", failover={"lease_seconds": 3}))
    with cluster_on(spec) as ctx:
        fake, ns = fake_of(ctx), spec.kubernetes.namespace

        def pid_of(member):
            container = fake.container(ns, member)
            return container.proc.pid if container is not None and container.proc is not None else None

        old = ctx.state().primary
        port = ctx.endpoints()[old].port
        direct = make_conninfo(host="127.0.0.1", port=port, user="postgres", dbname=PG_OPS_DATABASE)
        with Partitions(ctx, pid_of=pid_of, port_of=lambda m: ctx.endpoints()[m].port) as parts, \
                App(ctx, parts, dsn=direct) as app:  # the application on the old primary's node
            wait_for(lambda: app.progressing(old), "writes before the cut")
            node = fake.node_of(ns, old)
            # The container on the cut-off node outlives its pod object (the force deletion lets
            # the StatefulSet make a new pod elsewhere), so keep hold of it for its log.
            old_container = fake.container(ns, old)
            cut_at = time.time()
            fake.partition_node(node)
            parts.seal(old)
            time.sleep(1)
            change = failover(ctx, detected_at=cut_at)
            assert change.new_primary != old
            assert any(k.startswith("wait until the old primary is confirmed stopped") for k in change.steps)
            # Its kubelet never completed the deletion: the lease, not a confirmation, ended the wait.
            assert any(n.startswith(f"waited for the isolation lease of {old}") for n in change.notes), change.notes
            old_acks = acks_on(app, old)
            assert old_acks, "the application wrote on the old primary"
            assert max(t for _, t in old_acks) < change.promoted_at  # never two primaries acknowledging
            wait_for(lambda: "ISOLATED" in old_container.log.read_text(errors="replace"),
                     "the old primary's isolation in its log", timeout=10)
            parts.heal()
            fake.heal_node(node)
        # Back: the deletion is carried out, the StatefulSet makes the pod again, it rejoins.
        wait_for(lambda: ctx.probe([old])[old].streaming, f"{old} rejoins as a replica", timeout=120)
        deploy(ctx)
        assert status_report(ctx)["writable_members"] == [change.new_primary]
