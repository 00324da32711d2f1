"""The pooler pg_ops drives (spec `pooler`, pg_ops/operations/pooling.py), a real PgBouncer from
Debian's package in front of a real local cluster: an application writing through it sees no
failed statement across a switchover and a rolling restart and loses no row; after a failover
its new connections reach the new primary; its logins come from auth_query, with no password
file but PgBouncer's own line, and a wrong password or the superuser is refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import psycopg
import pytest

from pg_ops.credentials import POOLER_USER
from pg_ops.operations.failover import failover, rolling_restart, switchover
from pg_ops.operations.pooling import pooler_status
from pg_ops_tests.app_writer import App
from pg_ops_tests.support.helpers import (
    free_port_range,
    kill_member,
    running_cluster,
    spec_from,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer") is None and not os.access("/usr/sbin/pgbouncer", os.X_OK),
    reason="pgbouncer is not installed (Debian package pgbouncer: `make test` installs it as root)")


@pytest.fixture
def pooled(pg_home):
    spec = spec_from(write_spec(pg_home / "specs", "pool", postgres={"members": 2, "replication": "async"},
                                local={"base_port": free_port_range(3)},
                                pooler={"mode": "transaction", "pool_size": 4, "pause_timeout_seconds": 10}))
    with running_cluster(spec) as ctx:
        yield ctx


def app_login(ctx) -> dict:
    return json.loads((ctx.platform.app_credentials_dir() / "app.json").read_text())


def through_pooler(ctx, dbname: str = "app", user: str = "app", password: str | None = None):
    ep = ctx.platform.pooler_endpoint()
    return psycopg.connect(host=ep.host, port=ep.port, dbname=dbname, user=user, autocommit=True,
                           password=password if password is not None else app_login(ctx)["password"],
                           connect_timeout=3)


def failed_statements(app: App) -> int:
    return sum(1 for line in app.lines if line.startswith("fail "))


def test_an_application_through_the_pooler_fails_no_statement_across_a_switchover_and_a_rolling_restart(pooled):
    ctx = pooled
    login = app_login(ctx)
    ep = ctx.platform.pooler_endpoint()
    assert login["pooled-uri"].endswith(f"@{ep.host}:{ep.port}/app")
    dsn = f"host={ep.host} port={ep.port} dbname=app user=app"
    first = ctx.state().primary
    with App(ctx, table="pooled_writes", dsn=dsn, password=login["password"], dbname="app", prepared=False) as app:
        app.wait_acks(30)
        to = next(m for m in ctx.spec.member_names if m != first)
        change = switchover(ctx, to=to)
        # (The writer labels its acknowledgements with the member it saw at connect time: through
        # the pooler it never reconnects, so progress is counted, and where rows landed checked below.)
        app.wait_acks(30)
        steps = change.steps
        assert "pause the pooler" in steps and "resume the pooler on the new primary" in steps
        restarted = rolling_restart(ctx)
        app.wait_acks(30)
    assert failed_statements(app) == 0, [line for line in app.lines if line.startswith("fail")][:3]
    assert ctx.state().primary == restarted.primary != to
    assert app.lost(ctx.state().primary) == set()  # every acknowledged row is on the current primary
    status = pooler_status(ctx)
    assert status["target_port"] == ctx.endpoints()[ctx.state().primary].port and status["clients_waiting"] == 0


def test_after_a_failover_new_connections_through_the_pooler_reach_the_new_primary(pooled):
    ctx = pooled
    old = ctx.state().primary
    with through_pooler(ctx) as conn:
        assert conn.execute("select current_setting('cluster_name')").fetchone()[0] == old
    kill_member(ctx.platform, old)
    change = failover(ctx, force=True)

    def on_new_primary():
        with through_pooler(ctx) as conn:
            conn.execute("create table if not exists after_failover (n int)")
            conn.execute("insert into after_failover values (1)")
            return conn.execute("select current_setting('cluster_name')").fetchone()[0] == change.new_primary

    wait_for(on_new_primary, "a write through the pooler on the new primary", timeout=15)


def test_logins_come_from_auth_query_a_wrong_password_and_the_superuser_are_refused(pooled):
    ctx = pooled
    with through_pooler(ctx) as conn:  # the application's own password, looked up by PgBouncer
        assert conn.execute("select current_user").fetchone()[0] == "app"
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        through_pooler(ctx, password="not-the-password").close()
    with pytest.raises(psycopg.OperationalError):  # no superuser verifier ever leaves the server
        through_pooler(ctx, dbname="postgres", user="postgres", password=ctx.admin_password()).close()
    userlist = (ctx.platform.root / "pooler" / "userlist.txt").read_text().splitlines()
    assert len(userlist) == 1 and userlist[0].startswith(f'"{POOLER_USER}" ')  # PgBouncer's own login only
    assert oct((ctx.platform.root / "pooler" / "userlist.txt").stat().st_mode & 0o777) == "0o600"


def test_a_saturated_pool_and_a_stopped_pooler_alert(pg_home):
    import threading
    import time

    from pg_ops.operations.health import health_pass

    spec = spec_from(write_spec(pg_home / "specs", "sat", postgres={"members": 1},
                                local={"base_port": free_port_range(2)},
                                pooler={"mode": "transaction", "pool_size": 1}))
    with running_cluster(spec) as ctx:
        assert not [a for a in health_pass(ctx).assessment.alerts if a.kind.startswith("pooler")]
        holder = through_pooler(ctx)
        holder.execute("begin")
        holder.execute("select 1")  # the pool's only server connection, held by an open transaction
        done = threading.Event()

        def wait_for_a_server():
            with through_pooler(ctx) as waiter:
                waiter.execute("select 1")
            done.set()

        threading.Thread(target=wait_for_a_server, daemon=True).start()
        time.sleep(1.5)  # longer than the alert's wait (POOLER_WAIT_ALERT_S)
        health = health_pass(ctx)
        saturated = [a for a in health.assessment.alerts if a.kind == "pooler_saturated"]
        assert saturated and saturated[0].details["clients_waiting"] == 1
        from pg_ops.defs.deployment import health_observation  # what the UI plots on cluster_health/<c>

        observed = health_observation(ctx.name, health.status, []).metadata
        assert observed["pooler_clients_waiting"].value == 1 and observed["pooler_max_wait_s"].value >= 1
        holder.execute("commit")
        assert done.wait(10)  # the waiting client got the connection
        holder.close()
        ctx.platform.stop_pooler()
        down = [a for a in health_pass(ctx).assessment.alerts if a.kind == "pooler_down"]
        assert down and down[0].severity == "critical" and "pg-ops deploy" in down[0].summary


def test_a_dead_pooler_stops_no_switchover_and_deploy_brings_it_back(pooled):
    from pg_ops.operations.deploy import deploy

    ctx = pooled
    ctx.platform.stop_pooler()
    to = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
    change = switchover(ctx, to=to)
    assert ctx.state().primary == to and any("pooler PAUSE failed" in note for note in change.notes)
    deploy(ctx)  # starts it again, aimed at the new primary
    with through_pooler(ctx) as conn:
        assert conn.execute("select current_setting('cluster_name')").fetchone()[0] == to


# -- on Kubernetes: the rendered Deployment on the real control plane --------------------------------
def test_on_kubernetes_the_rendered_pooler_serves_applications_across_a_switchover_and_a_failover():
    """The Deployment, Service, budget and NetworkPolicy render/pooler.py renders, applied by
    deploy to the real API server; the stand-in nodes run its pods as Debian's PgBouncer (the
    rendered pgbouncer.ini bound to this machine's loopback). The real scheduler spreads the two
    pods, the real disruption controller lets one of them go; an application through the pooler
    Service fails no statement across a switchover, whose run PAUSEs and RESUMEs every pooler pod;
    after a failover new connections reach the new primary; the application's Secret carries the
    pooled uri, and a wrong password is refused."""
    import base64

    from pg_ops.operations import pooling
    from pg_ops.operations.context import ClusterContext
    from pg_ops.operations.deploy import deploy
    from pg_ops.operations.drift import check_drift
    from pg_ops.render import names as names
    from pg_ops_tests.support.helpers import home_environment, real_kubernetes

    with real_kubernetes() as kube, home_environment() as home:
        store = {"type": "s3", "bucket": "b", "endpoint_url": "http://127.0.0.1:1", "credentials_secret": "kube-s3"}
        spec = spec_from(write_spec(home / "specs", "kpool", platform="kubernetes", backups={"store": store},
                                    kubernetes={"namespace": "ns-kpool", "gitops": False},
                                    postgres={"members": 2, "parameters": {"shared_buffers": "128MB"}},
                                    pooler={"mode": "transaction", "pool_size": 4, "pause_timeout_seconds": 10}))
        kube.register_cluster(spec)
        ctx = ClusterContext.for_spec(spec)
        ns, name = spec.kubernetes.namespace, names.pooler_name(spec)
        try:
            deploy(ctx)  # proves a write through the pooler Service itself
            first = ctx.state().primary
            assert pooling.verify(ctx) == first

            pods = ctx.platform.ready_pooler_pods()
            assert len(pods) == 2 and len({p.spec.node_name for p in pods}) == 2  # spread over nodes
            wait_for(lambda: (kube.object("poddisruptionbudgets", ns, name, "policy/v1") or {})
                     .get("status", {}).get("disruptionsAllowed") == 1, "the pooler's budget lets one go", timeout=30)
            # What the API server defaults and the controllers add to them is no drift (the hourly check).
            drift = check_drift(ctx)
            assert f"Deployment/{name}" in drift.checked and drift.passed, drift.lines()
            secret = kube.admin_api().core.read_namespaced_secret(names.app_secret(spec, "app"), ns)
            pooled = base64.b64decode(secret.data["pooled-uri"]).decode()
            assert f"@{names.pooler_service(spec)}.{ns}.svc.cluster.local:5432/app" in pooled
            password = base64.b64decode(secret.data["password"]).decode()

            ep = ctx.platform.pooler_endpoint()
            dsn = f"host={ep.host} port={ep.port} dbname=app user=app"
            with App(ctx, table="pooled_writes", dsn=dsn, password=password, dbname="app", prepared=False) as app:
                app.wait_acks(30)
                to = next(m for m in spec.member_names if m != first)
                change = switchover(ctx, to=to)
                app.wait_acks(30)
            steps = change.steps
            assert "pause the pooler" in steps and "resume the pooler on the new primary" in steps
            assert failed_statements(app) == 0, [line for line in app.lines if line.startswith("fail")][:3]
            assert app.lost(to) == set()

            kill_member(ctx.platform, to)
            moved = failover(ctx, force=True)

            def on_new_primary() -> bool:
                with through_k8s_pooler(ep, password) as conn:
                    return conn.execute("select current_setting('cluster_name')").fetchone()[0] == moved.new_primary

            wait_for(on_new_primary, "a connection through the pooler on the new primary", timeout=30)
            with pytest.raises(psycopg.OperationalError, match="authentication failed"):
                through_k8s_pooler(ep, "not-the-password").close()
            status = pooler_status(ctx)
            assert status["clients_waiting"] == 0 and "error" not in status
        finally:  # the namespace goes with the test (RealKubernetes.stop); its members stop now
            with contextlib.suppress(Exception):
                kube.admin_api().apps.delete_namespaced_stateful_set(names.statefulset_name(spec), ns)


def through_k8s_pooler(ep, password: str):
    return psycopg.connect(host=ep.host, port=ep.port, dbname="app", user="app", password=password,
                           autocommit=True, connect_timeout=3)
