"""Deploy on real PostgreSQL processes: the foundation's behaviour and its faults.

The platform-neutral cases run on both platforms (`shared_any_cluster`, `any_cluster`): local
processes, and pods of the fake Kubernetes API with real members behind them. What only the
local platform has (teardown, ports, data dir ownership, the CLI on a local home) stays local."""

import json
import re
import subprocess

import psycopg
import pytest

from pg_ops.cli import main as cli_main
from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.errors import LockHeld, MemberError, PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy, teardown, wait_until
from pg_ops.operations.status import cluster_status
from pg_ops.postgres.session import with_connection
from pg_ops.render import names as names
from pg_ops.state import TopologyLock, update_state
from pg_ops_tests.support.helpers import fake_of, kill_member, running_cluster, stop_cluster, wait_for

# Read-only cases that only the local platform has: the shared cluster's local instance.
LOCAL_ONLY = pytest.mark.parametrize("shared_any_cluster", ["local"], indirect=True)


def sql(ctx, member, query, dbname="postgres"):
    ep = ctx.endpoints()[member]
    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None
    return with_connection(ep, "postgres", ctx.admin_password(), run, dbname=dbname, timeout=10)


def test_status_one_primary_two_streaming_replicas(shared_any_cluster):
    status = cluster_status(shared_any_cluster).to_dict()
    assert status["platform"] == shared_any_cluster.platform.kind
    roles = {m["name"]: m["role"] for m in status["members"]}
    assert sorted(roles.values()) == ["primary", "replica", "replica"]
    assert status["writable_members"] == [status["designated_primary"]]
    for m in status["members"]:
        assert {"name", "role", "host", "port", "timeline", "lsn", "lag_bytes", "lag_seconds", "sync_state"} <= set(m)
        if m["role"] == "replica":
            assert m["streaming"] is True and m["lag_bytes"] is not None and m["sync_state"] == "async"
    assert "password" not in status["primary_dsn"]
    if shared_any_cluster.platform.kind == "local":
        assert "target_session_attrs=read-write" in status["primary_dsn"]
        passfile = shared_any_cluster.platform.passfile()
        assert status["passfile"] == str(passfile) and (passfile.stat().st_mode & 0o777) == 0o600
    else:  # the primary Service: no passfile on disk, the password lives in the Secret
        assert "passfile" not in status


def test_write_on_primary_is_visible_on_both_replicas(shared_any_cluster):
    ctx = shared_any_cluster
    dsn = ctx.platform.primary_dsn("postgres", PG_OPS_DATABASE)
    with psycopg.connect(dsn, password=ctx.admin_password(), autocommit=True) as conn:
        assert conn.execute("select current_setting('cluster_name')").fetchone()[0] == ctx.state().primary
        conn.execute("create table if not exists visible (v text)")
        conn.execute("insert into visible values ('hello')")
    for replica in [m for m in ctx.spec.member_names if m != ctx.state().primary]:
        wait_for(lambda r=replica: sql(ctx, r, "select count(*) from visible where v = 'hello'",
                                       PG_OPS_DATABASE)[0][0] == 1, f"row visible on {replica}")


def test_password_is_required(shared_any_cluster):
    ep = shared_any_cluster.endpoints()[shared_any_cluster.state().primary]
    for password in ("", "wrong"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host=ep.host, port=ep.port, user="postgres", dbname="postgres",
                            password=password, connect_timeout=3, passfile="/dev/null")
    # The application role exists with its generated password and owns its database.
    creds = shared_any_cluster.credentials()
    with psycopg.connect(host=ep.host, port=ep.port, user="app", dbname="app", password=creds.password("app")) as c:
        assert c.execute("select current_user").fetchone()[0] == "app"


def test_members_report_their_boot_action(shared_any_cluster):
    """Platform.member_report on both platforms (a file locally, an exec into the pod on
    Kubernetes): the row of member.sh's boot table each member took."""
    ctx = shared_any_cluster
    for name in ctx.spec.member_names:
        report = ctx.platform.member_report(name)
        expected = ("initdb", "primary") if name == ctx.state().primary else ("clone", "standby")
        assert report.boot_action in expected, (name, report)
        assert report.boot_at is not None


def test_deploy_twice_is_a_no_op(shared_any_cluster):
    before = shared_any_cluster.state()
    result = deploy(shared_any_cluster)
    assert result.started == []
    after = shared_any_cluster.state()
    assert ((after.epoch, after.primary, after.system_identifier)
            == (before.epoch, before.primary, before.system_identifier))


@LOCAL_ONLY
def test_member_passwords_files_are_private(shared_any_cluster):
    platform = shared_any_cluster.platform
    assert (platform.root / "credentials.json").stat().st_mode & 0o777 == 0o600
    for name in shared_any_cluster.spec.member_names:
        assert (platform.member_dir(name) / "pgpass").stat().st_mode & 0o777 == 0o600
        assert platform.member_dir(name).stat().st_uid == platform.user.uid


def test_killed_replica_restarts_and_streams_from_its_slot(any_cluster):
    ctx = any_cluster
    replica = ctx.spec.member_names[1]
    kill_member(ctx.platform, replica)
    fake = fake_of(ctx)
    if fake is None:
        assert not ctx.platform.member_running(replica)
        assert deploy(ctx).started == [replica]
    else:
        # The StatefulSet recreates the pod by itself, without the role label the Services
        # select on; deploy waits for it and labels it again.
        wait_for(lambda: names.LABEL_ROLE not in fake.pod_labels(ctx.platform.namespace, replica), "pod recreated")
        assert deploy(ctx).started in ([], [replica])
        assert fake.pod_labels(ctx.platform.namespace, replica)[names.LABEL_ROLE] == names.ROLE_REPLICA
    slots = {r[0]: r[1] for r in sql(ctx, ctx.state().primary, "select slot_name, active from pg_replication_slots")}
    assert slots[replica.replace("-", "_")] is True
    assert cluster_status(ctx).to_dict()["members"][1]["streaming"] is True


def test_wiped_member_is_recloned_not_reinitialised(any_cluster):
    ctx = any_cluster
    primary = ctx.state().primary
    sql(ctx, primary, "create table keep (v int); insert into keep values (42)", PG_OPS_DATABASE)
    replica = ctx.spec.member_names[2]
    ctx.platform.stop_member(replica)
    ctx.platform.wipe_member(replica)
    deploy(ctx)
    assert (sql(ctx, replica, "select system_identifier::text from pg_control_system()")[0][0]
            == ctx.state().system_identifier)
    assert sql(ctx, replica, "select v from keep", PG_OPS_DATABASE) == [(42,)]
    assert ctx.platform.member_report(replica).boot_action == "clone"


def test_empty_designated_primary_is_never_reinitialised(cluster):
    ctx = cluster
    primary = ctx.state().primary
    stop_cluster(ctx)
    ctx.platform.wipe_member(primary)
    import pg_ops.operations.members as d  # wait_until reads it
    old = d.READY_TIMEOUT_S
    d.READY_TIMEOUT_S = 8
    try:
        # From the member script's report (boot.action=refused), not from its log.
        with pytest.raises(MemberError, match=f"member {primary} exited before it was writable: it refused to "
                                              "start: designated primary .* refusing initdb"):
            deploy(ctx)
    finally:
        d.READY_TIMEOUT_S = old
    assert not (ctx.platform.data_dir(primary) / "PG_VERSION").exists()
    assert ctx.platform.member_report(primary).boot_action == "refused"


def test_a_member_waiting_for_its_primary_says_so(cluster):
    """A wiped replica with no primary to clone from: the wait its member script reports is the
    reason deploy gives, not a line of its log."""
    ctx = cluster
    primary = ctx.state().primary
    replica = next(m for m in ctx.spec.member_names if m != primary)
    kill_member(ctx.platform, replica)
    ctx.platform.wipe_member(replica)
    kill_member(ctx.platform, primary)
    ctx.platform.start_member(replica)
    wait_for(lambda: ctx.platform.member_report(replica).boot_action == "wait", "the replica to wait")
    with pytest.raises(MemberError, match=f"member {replica} not streaming after 1 s: it waits: primary {primary} "
                                          "unreachable: nothing to clone from"):
        wait_until(ctx, replica, lambda p: p.streaming, "streaming", timeout=1)


def test_lock_refuses_a_concurrent_change(shared_any_cluster):
    ctx = shared_any_cluster
    store = ctx.platform.state_store()
    foreign = TopologyLock(holder="failover@elsewhere:1", operation="failover", expires_at=9e9)
    update_state(store, lambda s: s.model_copy(update={"lock": foreign}))
    with pytest.raises(LockHeld, match="failover held by failover@elsewhere:1"):
        deploy(ctx)
    update_state(store, lambda s: s.model_copy(update={"lock": None}))
    deploy(ctx)


def test_teardown_then_deploy_gives_a_clean_cluster(cluster):
    ctx = cluster
    primary = ctx.state().primary
    sql(ctx, primary, "create table old_stuff (v int)", PG_OPS_DATABASE)
    old_id = ctx.state().system_identifier
    teardown(ctx)
    assert not ctx.platform.root.exists()
    deploy(ctx)
    assert ctx.state().system_identifier != old_id
    assert sql(ctx, ctx.state().primary, "select to_regclass('old_stuff')::text", PG_OPS_DATABASE) == [(None,)]


def test_port_already_taken_is_a_clear_error(make_spec):
    import socket
    spec = make_spec("busy")
    sock = socket.socket()
    sock.bind(("127.0.0.1", spec.local.base_port))
    sock.listen()
    ctx = ClusterContext.for_spec(spec)
    try:
        with pytest.raises(MemberError,
                           match=f"member busy-0: port {spec.local.base_port} on 127.0.0.1 is already in use"):
            deploy(ctx)
    finally:
        sock.close()
        stop_cluster(ctx)


def test_data_dir_of_another_cluster_is_refused(make_spec):
    with running_cluster(make_spec("one")) as one, running_cluster(make_spec("two")) as two:
        victim = one.spec.member_names[1]
        one.platform.stop_member(victim)
        two.platform.stop_member(two.spec.member_names[1])
        subprocess.run(["rm", "-rf", str(one.platform.data_dir(victim))], check=True)
        subprocess.run(["cp", "-a", str(two.platform.data_dir(two.spec.member_names[1])),
                        str(one.platform.data_dir(victim))], check=True)
        with pytest.raises(MemberError, match=f"member {victim} exited before it was streaming: it refused to "
                                              "start: data dir .* belongs to another cluster"):
            deploy(one)


def test_missing_binaries_are_a_clear_error(make_spec, monkeypatch):
    monkeypatch.setenv("PG_OPS_PG_BIN", "/nonexistent/bin")
    ctx = ClusterContext.for_spec(make_spec("nobin"))
    try:
        with pytest.raises(PgOpsError, match="PostgreSQL binaries not found: /nonexistent/bin/postgres"):
            deploy(ctx)
    finally:
        stop_cluster(ctx)


def test_cli_deploy_and_status_json(make_spec, capsys):
    spec = make_spec("cli")
    try:
        assert cli_main(["deploy", "--cluster", "cli"]) == 0
        capsys.readouterr()
        assert cli_main(["status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["cluster"] == "cli" and status["epoch"] == 1
        assert sorted(m["role"] for m in status["members"]) == ["primary", "replica", "replica"]
        assert cli_main(["status", "--cluster", "nope"]) == 1
        assert "cluster 'nope' is not defined" in capsys.readouterr().err
    finally:
        stop_cluster(ClusterContext.for_spec(spec))


def test_home_unreachable_by_the_server_user_is_refused(make_spec, monkeypatch):
    import tempfile
    from pathlib import Path

    private = Path(tempfile.mkdtemp(prefix="pg-ops-private-"))  # 0700, owned by us
    try:
        monkeypatch.setenv("PG_OPS_HOME", str(private / "home"))
        ctx = ClusterContext.for_spec(make_spec("priv"))
        if not ctx.platform.user.switch:
            pytest.skip("only meaningful when pg_ops runs as root and PostgreSQL as another user")
        with pytest.raises(PgOpsError, match=f"not reachable by the server user .*{private} does not let it through"):
            deploy(ctx)
        assert oct(private.stat().st_mode & 0o777) == "0o700"  # we never widen it
    finally:
        subprocess.run(["rm", "-rf", str(private)], check=False)


def test_data_dir_owned_by_someone_else_is_refused(make_spec):
    import os

    ctx = ClusterContext.for_spec(make_spec("owned"))
    if not ctx.platform.user.switch:
        pytest.skip("needs root to hand the data dir to another user")
    data = ctx.platform.data_dir("owned-1")
    data.mkdir(parents=True)
    os.chown(data, 65534, 65534)  # nobody
    try:
        with pytest.raises(MemberError,
                           match="member owned-1: data dir .* is owned by uid 65534, not by the server user"):
            deploy(ctx)
    finally:
        stop_cluster(ctx)


def test_role_passwords_never_reach_the_server_log(make_spec):
    """`log_statement: ddl` logs every CREATE / ALTER ROLE pg_ops runs: they carry a
    SCRAM-SHA-256 verifier hashed client-side, never a password, and logins still work; for
    pg_ops's roles and for every role the spec declares (test_roles.py: rotation too)."""
    spec = make_spec("pwlog", postgres={"parameters": {"log_statement": "ddl"}},
                     roles=[{"name": "app_writer"}, {"name": "app_reader", "in_roles": ["pg_read_all_data"]}])
    with running_cluster(spec) as ctx:
        deploy(ctx)  # the second deploy ALTERs pg_ops's roles the first one CREATEd
        passwords = ctx.credentials().as_plain_dict()
        assert set(passwords) == {"postgres", "replicator", "postgres_exporter", "app", "app_writer", "app_reader"}
        logs = {m: ctx.platform.log_path(m).read_text(errors="replace") for m in ctx.spec.member_names}
        primary = ctx.state().primary
        for member, text in logs.items():
            for role, password in passwords.items():
                assert password not in text, f"the {role} password is in {member}'s server log"
        # The statements were logged (else this test would prove nothing), with verifiers only.
        for role in ("app", "app_writer", "app_reader"):
            assert re.search(rf"statement: create role \"{role}\" with login .* password 'SCRAM-SHA-256\$\d+:",
                             logs[primary]), f"no logged create role for {role} on {primary}"
        assert re.search(r"statement: alter role \"postgres_exporter\" with login password 'SCRAM-SHA-256\$\d+:",
                         logs[primary]), f"no logged alter role on {primary}"
        ep = ctx.endpoints()[primary]
        for role, password in passwords.items():
            dbname = "app" if role.startswith("app") else "postgres"
            with psycopg.connect(host=ep.host, port=ep.port, user=role, dbname=dbname, password=password,
                                 connect_timeout=5, passfile="/dev/null") as conn:
                assert conn.execute("select current_user").fetchone()[0] == role
        stored = sql(ctx, primary, "select rolname, rolpassword from pg_authid where rolname = any(array"
                     "['postgres', 'replicator', 'postgres_exporter', 'app', 'app_writer', 'app_reader'])")
        assert len(stored) == 6 and all(verifier.startswith("SCRAM-SHA-256$") for _, verifier in stored)
        # The replicas log in as replicator with its password: both stream.
        wait_for(lambda: sql(ctx, primary, "select count(*) from pg_stat_replication "
                             "where usename = 'replicator' and state = 'streaming'") == [(2,)],
                 "both replicas streaming as replicator")


def test_a_wiped_member_leaves_no_shared_memory_segment(cluster):
    """A killed postmaster strands its System V segment; deleting its data dir would strand it
    for good (4096 of them and no initdb works on the machine). wipe_member releases it."""
    from pg_ops.platforms import shared_memory

    ctx = cluster
    replica = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
    shmid = int((ctx.platform.data_dir(replica) / "postmaster.pid").read_text().splitlines()[6].split()[1])
    assert shared_memory.segments()[shmid][1] > 0  # attached while it runs
    kill_member(ctx.platform, replica)
    wait_for(lambda: shared_memory.segments()[shmid][1] == 0, "the segment left unattached by the kill")
    ctx.platform.wipe_member(replica)
    assert shmid not in shared_memory.segments()
    deploy(ctx)  # it re-clones
    assert ctx.probe([replica])[replica].streaming
