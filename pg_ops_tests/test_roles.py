"""Roles, databases, schemas and extensions declared in the spec (issue 24): reconciled by deploy,
checked for drift, credentials delivered, passwords rotated. Real PostgreSQL (the embedded
wheel's server has pg_trgm and citext)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

import psycopg
import pytest
import yaml

from pg_ops.credentials import MONITORING_USER, REPLICATION_USER, SUPERUSER
from pg_ops.errors import PgOpsError, Refused
from pg_ops.operations import catalog
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy
from pg_ops.operations.failover import failover, switchover
from pg_ops.postgres.session import with_connection
from pg_ops.spec import ClusterSpec, load_spec
from pg_ops_tests.support.helpers import (
    home_environment,
    kill_member,
    running_cluster,
    spec_from,
    wait_for,
    write_spec,
)

ROLES = [
    {"name": "app_writer"},
    {"name": "app_reader", "valid_until": "2099-01-01 00:00:00"},  # no zone: UTC
    {"name": "reporting", "in_roles": ["pg_read_all_data"], "connection_limit": 5, "database": "analytics"},
    {"name": "migrator", "login": False, "password": "none"},
]
DATABASES = [
    {"name": "app", "owner": "app",
     "extensions": [{"name": "pg_trgm"}, {"name": "citext"}],
     "schemas": [{"name": "sales", "owner": "app_writer"}],
     "default_privileges": {"readers": ["app_reader"], "writers": ["app_writer"]}},
    {"name": "analytics", "owner": "app"},
]


def sql(ctx, query, params=None, dbname="postgres"):
    ep = ctx.endpoints()[ctx.state().primary]

    def run(conn):
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None
    return with_connection(ep, SUPERUSER, ctx.admin_password(), run, dbname=dbname, timeout=10)


def login(ctx, role, password, dbname, member=None):
    ep = ctx.endpoints()[member or ctx.state().primary]
    return psycopg.connect(host=ep.host, port=ep.port, user=role, dbname=dbname, password=password,
                           connect_timeout=5, passfile="/dev/null", autocommit=True)


def respec(ctx: ClusterContext, **changes) -> ClusterContext:
    """The same cluster with a changed spec (its file rewritten: the CLI and runs read it)."""
    path = ctx.spec_path  # type: ignore[attr-defined]
    raw = yaml.safe_load(path.read_text())
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    new = ClusterContext.for_spec(load_spec(path))
    new.spec_path = path  # type: ignore[attr-defined]
    return new


@pytest.fixture(scope="module")
def roles_cluster():
    with home_environment() as home:
        path = write_spec(home / "specs", "roles", postgres={"members": 2, "replication": "async"},
                          roles=ROLES, databases=DATABASES)
        with running_cluster(spec_from(path)) as ctx:
            ctx.spec_path = path  # type: ignore[attr-defined]
            yield ctx


# -- the spec, at load -----------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"roles": [{"name": "postgres_exporter"}]}, "roles.0.name", "reserved by pg_ops"),
    ({"roles": [{"name": "pg_app"}]}, "roles.0.name", "reserved by PostgreSQL"),
    ({"roles": [{"name": "a", "in_roles": ["pg_read_everything"]}]}, "roles.0.in_roles", "not a predefined role"),
    ({"roles": [{"name": "a", "in_roles": ["nobody"]}]}, "roles[0].in_roles", "'nobody' is not a role of this spec"),
    ({"roles": [{"name": "a"}, {"name": "a"}]}, "roles", "a listed more than once"),
    ({"roles": [{"name": "a", "secret_namespaces": ["Apps"]}]}, "roles.0.secret_namespaces", "DNS-1123"),
    ({"databases": [{"name": "d", "owner": "o", "schemas": [{"name": "pg_x"}]}]}, "databases.0.schemas.0.name",
     "reserved by PostgreSQL"),
    ({"databases": [{"name": "d", "owner": "o", "extensions": [{"name": "x"}, {"name": "x"}]}]}, "databases.0",
     "extensions: x listed more than once"),
    ({"databases": [{"name": "d", "owner": "o", "default_privileges": {"readers": ["ghost"]}}]},
     "databases[0].default_privileges.readers", "'ghost' is not a role of this spec"),
    ({"roles": [{"name": "gone", "ensure": "absent"}],
      "databases": [{"name": "d", "owner": "o", "schemas": [{"name": "s", "owner": "gone"}]}]},
     "databases[0].schemas.s.owner", "ensure: absent"),
])
def test_spec_refuses_bad_roles_in_one_line(tmp_path, change, field, reason):
    path = write_spec(tmp_path, "bad", **change)
    with pytest.raises(PgOpsError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: field {field}: "), message
    assert reason in message, message


def test_spec_roles_and_their_passwords(tmp_path):
    spec = spec_from(write_spec(tmp_path, "ok", roles=ROLES, databases=DATABASES))
    assert spec.password_roles() == ["app", "app_reader", "app_writer", "reporting"]  # not migrator: no password
    assert spec.role_database("app_reader") == "app" and spec.role_database("reporting") == "analytics"


# -- deploy: exactly these objects, and a second deploy changes nothing ----------------------------
def test_deploy_makes_exactly_the_declared_objects(roles_cluster):
    ctx = roles_cluster
    roles = dict(sql(ctx, "select rolname, rolcanlogin from pg_roles where rolname not like 'pg\\_%'"))
    assert roles == {"postgres": True, "replicator": True, "postgres_exporter": True, "app": True,
                     "app_writer": True, "app_reader": True, "reporting": True, "migrator": False}
    assert sql(ctx, "select rolconnlimit from pg_roles where rolname = 'reporting'") == [(5,)]
    assert sql(ctx, "select rolvaliduntil = '2099-01-01 00:00:00+00' from pg_roles where rolname = 'app_reader'") == \
        [(True,)]
    assert sql(ctx, "select rolpassword from pg_authid where rolname = 'migrator'") == [(None,)]
    members = sql(ctx, """select g.rolname from pg_auth_members a join pg_roles g on g.oid = a.roleid
                          join pg_roles m on m.oid = a.member where m.rolname = 'reporting'""")
    assert members == [("pg_read_all_data",)]
    dbs = dict(sql(ctx, "select datname, pg_get_userbyid(datdba) from pg_database where not datistemplate"))
    assert dbs == {"postgres": "postgres", "pg_ops": "postgres", "app": "app", "analytics": "app"}
    assert sorted(sql(ctx, "select extname from pg_extension", dbname="app")) == [("citext",), ("pg_trgm",),
                                                                                   ("plpgsql",)]
    assert sql(ctx, "select extname from pg_extension", dbname="analytics") == [("plpgsql",)]
    schemas = sql(ctx, "select nspname, pg_get_userbyid(nspowner) from pg_namespace where nspname not like 'pg\\_%' "
                       "and nspname <> 'information_schema' order by 1", dbname="app")
    assert schemas == [("public", "pg_database_owner"), ("sales", "app_writer")]


def test_a_second_deploy_changes_nothing(roles_cluster):
    ctx = roles_cluster
    before = {f.name: f.read_text() for f in ctx.platform.app_credentials_dir().iterdir()}
    result = deploy(ctx)
    assert result.catalog_changes == []
    again = catalog.reconcile(ctx)
    assert again.changes == [] and again.delivered == []
    assert {f.name: f.read_text() for f in ctx.platform.app_credentials_dir().iterdir()} == before
    assert catalog.check_catalog(ctx).passed


def test_reader_reads_and_writer_writes(roles_cluster):
    ctx = roles_cluster
    creds = ctx.credentials()
    with login(ctx, "app_writer", creds.password("app_writer"), "app") as writer:
        writer.execute("create table if not exists sales.orders (id int, note citext)")
        writer.execute("insert into sales.orders values (1, 'Hello')")
    # a table the database owner makes in public later: the default privileges cover it too
    with login(ctx, "app", creds.password("app"), "app") as owner:
        owner.execute("create table if not exists public.items (id int)")
    with login(ctx, "app_writer", creds.password("app_writer"), "app") as writer:
        writer.execute("insert into public.items values (1)")
    with login(ctx, "app_reader", creds.password("app_reader"), "app") as reader:
        assert reader.execute("select note from sales.orders where note = 'HELLO'").fetchall() == [("Hello",)]
        assert reader.execute("select count(*) from public.items").fetchone()[0] >= 1
        for statement in ("insert into sales.orders values (2, 'no')", "delete from public.items",
                          "create table sales.nope (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(statement)
    with login(ctx, "reporting", creds.password("reporting"), "app") as reporting:  # pg_read_all_data
        assert reporting.execute("select count(*) from sales.orders").fetchone()[0] >= 1
    sql(ctx, "drop table sales.orders; drop table public.items", dbname="app")


def test_delivered_credentials_connect(roles_cluster):
    ctx = roles_cluster
    folder = ctx.platform.app_credentials_dir()
    assert sorted(f.name for f in folder.iterdir()) == sorted(
        f"{r}{s}.json" for r in ("app", "app_reader", "app_writer", "reporting") for s in ("", "-read"))
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    entry = json.loads((folder / "app_writer.json").read_text())
    assert set(entry) == {"username", "password", "host", "port", "dbname", "uri", "jdbc-uri"}
    assert entry["username"] == "app_writer" and entry["dbname"] == "app"
    assert "target_session_attrs=read-write" in entry["uri"]
    assert entry["jdbc-uri"].startswith("jdbc:postgresql://127.0.0.1:")
    with psycopg.connect(entry["uri"], passfile="/dev/null") as conn:
        assert conn.execute("select current_user, pg_is_in_recovery()").fetchone() == ("app_writer", False)
    read = json.loads((folder / "reporting-read.json").read_text())
    assert read["dbname"] == "analytics"
    with psycopg.connect(read["uri"], passfile="/dev/null") as conn:
        assert conn.execute("select current_user, pg_is_in_recovery()").fetchone() == ("reporting", True)


def test_drift_names_a_hand_made_role_and_a_missing_extension(roles_cluster):
    ctx = roles_cluster
    sql(ctx, "create role handmade login")
    sql(ctx, "drop extension citext", dbname="app")
    try:
        report = catalog.check_catalog(ctx)
        assert not report.passed
        assert "role handmade: exists, not in the spec (made by hand?)" in report.differences
        assert "database app: extension citext missing" in report.differences
        assert len(report.differences) == 2, report.differences
        evaluation = run_catalog_check(ctx)  # the asset check of the hourly drift job says the same
        assert evaluation.passed is False and evaluation.metadata["differences"].value == 2
        assert "role handmade: exists, not in the spec" in evaluation.metadata["drift"].value
    finally:
        sql(ctx, "drop role if exists handmade")
    result = catalog.reconcile(ctx)  # deploy puts the extension back
    assert result.changes == [
        "database app: created extension citext "
        f"{sql(ctx, 'select extversion from pg_extension where extname = %s', ('citext',), dbname='app')[0][0]}"]
    assert catalog.check_catalog(ctx).passed


def run_catalog_check(ctx):
    import dagster as dg

    from pg_ops.defs import drift as drift_defs
    from pg_ops.defs.resources import PgOpsResource

    defs = dg.Definitions.merge(drift_defs.build([ctx.spec]), dg.Definitions(
        resources={"pg_ops": PgOpsResource(clusters_path=str(ctx.spec_path))}))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(drift_defs.JOB_NAME).execute_in_process(instance=instance)
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.asset_key == drift_defs.catalog_asset_key(ctx.name)
    return evaluation


def test_a_misspelt_extension_is_refused_before_any_change(roles_cluster):
    ctx = roles_cluster
    bad = [{**DATABASES[0], "extensions": [{"name": "pg_trgrm"}]}, DATABASES[1]]
    changed = respec(ctx, databases=bad, roles=[*ROLES, {"name": "newcomer"}])
    try:
        with pytest.raises(Refused) as info:
            catalog.reconcile(changed)
        message = str(info.value)
        assert "\n" not in message and "extension 'pg_trgrm' is not available on this server" in message, message
        assert sql(ctx, "select 1 from pg_roles where rolname = 'newcomer'") == []  # nothing changed
    finally:
        respec(ctx, databases=DATABASES, roles=ROLES)


def test_removing_a_role_drops_it_or_refuses_when_it_owns_objects(roles_cluster):
    ctx = roles_cluster
    with_temp = respec(ctx, roles=[*ROLES, {"name": "temp_owner"}, {"name": "temp_plain"}],
                       databases=[DATABASES[0], {**DATABASES[1], "default_privileges": {"readers": ["temp_plain"]}}])
    try:
        with_temp.platform.ensure_credentials()
        catalog.reconcile(with_temp)
        password = with_temp.credentials().password("temp_owner")
        sql(ctx, "grant create on schema public to temp_owner", dbname="analytics")
        with login(with_temp, "temp_owner", password, "analytics") as conn:
            conn.execute("create table owned_here (id int)")
        absent = respec(ctx, roles=[*ROLES, {"name": "temp_owner", "ensure": "absent"},
                                    {"name": "temp_plain", "ensure": "absent"}], databases=DATABASES)
        with pytest.raises(Refused) as info:
            catalog.reconcile(absent)
        message = str(info.value)
        assert "\n" not in message
        assert "role temp_owner has ensure: absent but owns 1 object(s) in database analytics" in message, message
        assert sql(ctx, "select count(*) from pg_roles where rolname in ('temp_owner', 'temp_plain')") == [(2,)]
        sql(ctx, "drop table owned_here", dbname="analytics")
        result = catalog.reconcile(absent)
        # temp_plain held privileges (a reader): they go with it
        assert {"dropped role temp_owner", "dropped role temp_plain"} <= set(result.changes), result.changes
        assert "removed the delivered credentials of temp_owner" in result.changes
        assert sql(ctx, "select count(*) from pg_roles where rolname in ('temp_owner', 'temp_plain')") == [(0,)]
        assert not (ctx.platform.app_credentials_dir() / "temp_owner.json").exists()
        assert catalog.reconcile(absent).changes == []
    finally:
        sql(ctx, "drop table if exists owned_here", dbname="analytics")
        respec(ctx, roles=ROLES, databases=DATABASES)
        for role in ("temp_owner", "temp_plain"):
            sql(ctx, f"drop owned by {role}" if sql(ctx, "select 1 from pg_roles where rolname = %s", (role,))
                else "select 1", dbname="analytics")
            sql(ctx, f"drop role if exists {role}")
    assert catalog.check_catalog(ctx).passed


def test_a_database_with_data_is_dropped_only_on_explicit_opt_in(roles_cluster):
    ctx = roles_cluster
    scratch = {"name": "scratchdb", "owner": "app"}
    try:
        catalog.reconcile(respec(ctx, databases=[*DATABASES, scratch]))
        sql(ctx, "create table kept (id int)", dbname="scratchdb")
        with pytest.raises(Refused, match="database scratchdb has ensure: absent but holds tables"):
            catalog.reconcile(respec(ctx, databases=[*DATABASES, {**scratch, "ensure": "absent"}]))
        assert sql(ctx, "select 1 from pg_database where datname = 'scratchdb'") == [(1,)]
        dropped = catalog.reconcile(respec(ctx, databases=[*DATABASES, {**scratch, "ensure": "absent",
                                                                        "drop_with_data": True}]))
        assert dropped.changes == ["dropped database scratchdb"]
    finally:
        respec(ctx, databases=DATABASES)
        sql(ctx, "drop database if exists scratchdb with (force)")


# -- rotation --------------------------------------------------------------------------------------
def test_cli_deploy_and_rotate_password_as_runs(roles_cluster, capsys):
    """`pg-ops deploy` (the deploy_cluster job: its roles_and_databases asset reports 0 changes on
    a cluster that matches) and `pg-ops rotate-password` (the rotate_password job); a role pg_ops
    holds no password of is refused before any run; no password in any run's config or events."""
    from dagster import AssetKey, DagsterInstance

    from pg_ops.cli import main as cli_main

    ctx = roles_cluster
    old = ctx.credentials().password("app_reader")
    assert cli_main(["deploy", "--cluster", ctx.name, "--in-process"]) == 0
    capsys.readouterr()
    assert cli_main(["rotate-password", "migrator", "--cluster", ctx.name, "--in-process"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("pg-ops rotate-password: cluster roles: role 'migrator' has no password") and "\n" not in err
    assert cli_main(["rotate-password", "app_reader", "--cluster", ctx.name, "--in-process", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["role"] == "app_reader" and meta["login_verified"] and meta["old_password_refused"]
    new = ctx.credentials().password("app_reader")
    assert new != old
    delivered = json.loads((ctx.platform.app_credentials_dir() / "app_reader.json").read_text())
    assert delivered["password"] == new
    with psycopg.connect(delivered["uri"], passfile="/dev/null") as conn:
        assert conn.execute("select current_user").fetchone()[0] == "app_reader"
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert {r.job_name for r in runs} >= {"deploy_cluster", "rotate_password"}
        assert len([r for r in runs if r.job_name == "rotate_password"]) == 1  # none for migrator
        event = instance.get_latest_materialization_event(AssetKey(["deployment", "roles_and_databases"]))
        assert event is not None and event.asset_materialization.metadata["changed"].value == 0
        texts = [json.dumps(r.run_config, default=str) for r in runs]
        texts += [str(e) for r in runs for e in instance.all_logs(r.run_id)]
    secrets = [*ctx.credentials().as_plain_dict().values(), old]
    for text in texts:
        for password in secrets:
            assert password not in text


def test_rotation_then_failover_keeps_the_new_passwords(make_spec, caplog):
    """Every password rotates (an application's, the exporter's, replication's, the superuser's):
    the new one logs in, the old one is refused, the replica keeps streaming, and a failover
    afterwards, a deploy and a switchover back leave the new ones in force (nothing re-applies
    an older password). None of them
    reaches a log line, the metadata, or the server log (log_statement: ddl)."""
    caplog.set_level(logging.DEBUG)
    # No health sensor renews the isolation lease here, and after the failover the new primary of
    # this 2-member cluster has no standby until deploy: fencing is not what this test is about.
    spec: ClusterSpec = make_spec("rot", postgres={"members": 2, "parameters": {"log_statement": "ddl"}},
                                  failover={"mode": "automatic", "isolation_fencing": False},
                                  roles=[{"name": "app_writer"}],
                                  databases=[{"name": "app", "owner": "app",
                                              "default_privileges": {"writers": ["app_writer"]}}])
    with running_cluster(spec) as ctx:
        old = ctx.credentials()
        with login(ctx, "app_writer", old.password("app_writer"), "app") as session:
            metadata = {}
            for role in ("app_writer", MONITORING_USER, REPLICATION_USER, SUPERUSER):
                metadata[role] = catalog.rotate_password(ctx, role)
            new = ctx.credentials()
            assert session.execute("select 1").fetchone() == (1,)  # not ended without --terminate-old
        assert metadata["app_writer"]["old_sessions"] == 1 and metadata["app_writer"]["terminated"] == 0
        for role in ("app_writer", MONITORING_USER, REPLICATION_USER, SUPERUSER):
            assert new.password(role) != old.password(role)
        delivered = json.loads((ctx.platform.app_credentials_dir() / "app_writer.json").read_text())
        assert delivered["password"] == new.password("app_writer")
        primary = ctx.state().primary
        replica = next(m for m in spec.member_names if m != primary)
        # the replica reconnects with the new replication password
        sql(ctx, "select pg_terminate_backend(pid) from pg_stat_replication")
        wait_for(lambda: sql(ctx, "select count(*) from pg_stat_replication where state = 'streaming'") == [(1,)],
                 "the replica streaming again after the replication password rotated")
        # the exporter logs in as it does (PGPASSFILE: pg_ops's passfile) with the new password
        assert f":{MONITORING_USER}:{new.password(MONITORING_USER)}" in ctx.platform.passfile().read_text()
        with psycopg.connect(ctx.platform.primary_dsn(MONITORING_USER, "postgres"),
                             passfile=str(ctx.platform.passfile())) as exporter:
            assert exporter.execute("select count(*) from pg_stat_replication").fetchone()[0] == 1  # pg_monitor
        kill_member(ctx.platform, primary)
        failover(ctx, to=replica, force=True)
        assert ctx.state().primary == replica
        deploy(ctx)  # the old primary rejoins; deploy sets the store's passwords, the new ones
        for member in spec.member_names:
            for role, dbname in (("app_writer", "app"), (SUPERUSER, "postgres"), (MONITORING_USER, "postgres")):
                with pytest.raises(psycopg.OperationalError, match="password"):
                    login(ctx, role, old.password(role), dbname, member)
                with login(ctx, role, new.password(role), dbname, member) as conn:
                    assert conn.execute("select current_user").fetchone()[0] == role
        switchover(ctx, to=primary)  # and back: the delivered uri follows, with the new password
        assert ctx.state().primary == primary
        uri = json.loads((ctx.platform.app_credentials_dir() / "app_writer.json").read_text())["uri"]
        with psycopg.connect(uri, passfile="/dev/null") as conn:
            assert conn.execute("select current_setting('cluster_name'), current_user").fetchone() == \
                (primary, "app_writer")
        with pytest.raises(psycopg.OperationalError, match="password"):
            login(ctx, "app_writer", old.password("app_writer"), "app", primary)
        texts = [caplog.text, json.dumps(metadata, default=str)]
        texts += [ctx.platform.log_path(m).read_text(errors="replace") for m in spec.member_names]
        assert re.search(r"alter role \"app_writer\" with password 'SCRAM-SHA-256\$", texts[2] + texts[3])
        for password in [*old.as_plain_dict().values(), *new.as_plain_dict().values()]:
            for text in texts:
                assert password not in text


def test_a_rotation_schedule_per_role_requests_a_run_without_a_password(tmp_path, monkeypatch):
    import dagster as dg

    from pg_ops.definitions import build_defs
    from pg_ops.defs import roles as roles_defs

    spec = spec_from(write_spec(tmp_path, "sched", roles=[{"name": "app_rw", "rotation_schedule": "0 3 1 * *"},
                                                          {"name": "quiet"}]))
    defs = build_defs([spec])
    name = roles_defs.schedule_name("sched", "app_rw")
    schedule = defs.resolve_schedule_def(name)
    assert schedule.cron_schedule == "0 3 1 * *" and schedule.job_name == roles_defs.JOB_NAME
    assert [s.name for s in defs.schedules if s.name.startswith("rotate_password")] == [name]  # none for quiet
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, repository_def=defs.get_repository_def(),
                                            scheduled_execution_time=datetime(2026, 1, 1, 3, 0, tzinfo=UTC))
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "sched"
    assert request.run_config["ops"] == {"run_rotate_password": {"config": {"role": "app_rw",
                                                                             "terminate_old": False}}}
    assert request.tags["pg_ops/topology"] == "sched"


def test_rotation_request_is_checked_before_any_run(tmp_path):
    spec = spec_from(write_spec(tmp_path, "chk", roles=[{"name": "nopass", "password": "none"}]))
    with pytest.raises(Refused, match="role 'nopass' has no password pg_ops generates"):
        catalog.check_rotation_request(ClusterContext.for_spec(spec), "nopass")
    catalog.check_rotation_request(ClusterContext.for_spec(spec), "app")


# -- Kubernetes: the real API server (real RBAC) with real members behind its pods ------------------
@pytest.mark.parametrize("platform", ["kubernetes"])
def test_kubernetes_delivers_secrets_in_the_named_namespaces_and_rotates_them(make_platform_spec, monkeypatch):
    """A Secret per login role in the namespaces the spec names (pg_ops's rendered RBAC allows
    exactly those), pointing at the primary Service (and `-read` at the replicas' Service); the
    delivered credentials log in through the Service; a rotation rewrites them. The superuser's
    and replicator's rotations wait until every member copied the synced passfile (the replica
    reconnects, the primary's lease checks log in), and put the Secret back when one cannot."""
    import base64

    from pg_ops.platforms import kubernetes as kubernetes_platform
    from pg_ops.platforms.kubernetes_api import KubernetesError
    from pg_ops.render import names as names
    from pg_ops_tests.support.helpers import cluster_on, fake_of

    spec = make_platform_spec("k8roles", postgres={"members": 2},
                              roles=[{"name": "shop_rw", "secret_namespaces": ["shop"]},
                                     {"name": "batch", "password": "none", "secret_namespaces": ["shop"]},
                                     {"name": "nologin_owner", "login": False}],
                              databases=[{"name": "app", "owner": "app", "extensions": [{"name": "pg_trgm"}],
                                          "default_privileges": {"writers": ["shop_rw"]}}])
    with cluster_on(spec) as ctx:
        fake = fake_of(ctx)

        def secret(namespace, name):
            obj = fake.object("secrets", namespace, name)
            return None if obj is None else {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}

        primary_host = f"{names.primary_service(spec)}.{spec.kubernetes.namespace}.svc.cluster.local"
        rw = secret("shop", "k8roles-shop-rw")
        assert set(rw) == {"username", "password", "host", "port", "dbname", "uri", "jdbc-uri"}
        assert (rw["username"], rw["host"], rw["port"], rw["dbname"]) == ("shop_rw", primary_host, "5432", "app")
        assert rw["uri"].startswith("postgresql://shop_rw:") and f"@{primary_host}:5432/app" in rw["uri"]
        read = secret("shop", "k8roles-shop-rw-read")
        assert read["host"] == f"{names.replicas_service(spec)}.{spec.kubernetes.namespace}.svc.cluster.local"
        assert secret(spec.kubernetes.namespace, "k8roles-shop-rw") is None  # only where the spec says
        # pg_ops's access in the application's namespace is to exactly its Secrets there
        fake.admin_api().core.create_namespaced_secret("shop", {"metadata": {"name": "shop-own"},
                                                                "data": {"k": base64.b64encode(b"v").decode()}})
        api = ctx.platform.api  # type: ignore[attr-defined]
        with pytest.raises(KubernetesError) as refused:
            api.call("get", "secret shop/shop-own", api.core.read_namespaced_secret, "shop-own", "shop")
        assert refused.value.status == 403
        assert api.call("get", "secret shop/k8roles-shop-rw", api.core.read_namespaced_secret, "k8roles-shop-rw",
                        "shop") is not None
        assert secret(spec.kubernetes.namespace, "k8roles-app")["username"] == "app"  # default: the cluster's
        ep = ctx.platform.service_endpoint(names.primary_service(spec), 5432)  # type: ignore[attr-defined]
        with psycopg.connect(host=ep.host, port=ep.port, user=rw["username"], password=rw["password"],
                             dbname=rw["dbname"], passfile="/dev/null", connect_timeout=5) as conn:
            assert conn.execute("select current_user, pg_is_in_recovery()").fetchone() == ("shop_rw", False)
        assert catalog.reconcile(ctx).changes == []
        assert catalog.check_catalog(ctx).passed
        # a role without a password (any more): what was delivered for it goes
        fake.admin_api().core.create_namespaced_secret("shop", {"metadata": {"name": "k8roles-batch"},
                                                                "data": {"password": base64.b64encode(b"x").decode()}})
        assert catalog.reconcile(ctx).changes == ["removed the delivered credentials of batch"]
        assert secret("shop", "k8roles-batch") is None
        # pg_ops's own roles: the Secret's passfile reaches the running members at the kubelet's
        # next sync (3 s later here), and the password changes only once every member copied it
        fake.set_sync_delay(3.0)
        with pytest.raises(Refused, match="rotating postgres_exporter on Kubernetes is not supported yet: the "
                                          "exporter sidecar reads its password once"):
            catalog.check_rotation_request(ctx, MONITORING_USER)
        before = ctx.credentials()
        for role in (REPLICATION_USER, SUPERUSER):
            catalog.rotate_password(ctx, role)
        after = ctx.credentials()
        generation = ctx.platform.passfile_generation()  # type: ignore[attr-defined]
        for member in spec.member_names:
            assert ctx.platform.member_report(member).passfile_generation == generation
        primary = ctx.state().primary
        sql(ctx, "select pg_terminate_backend(pid) from pg_stat_replication")  # the replica logs in again
        wait_for(lambda: sql(ctx, "select count(*) from pg_stat_replication where state = 'streaming'") == [(1,)],
                 "the replica streaming again with the new replication password")
        for role in (SUPERUSER, REPLICATION_USER):
            with pytest.raises(psycopg.OperationalError, match="password"):
                login(ctx, role, before.password(role), "postgres", primary)
            login(ctx, role, after.password(role), "postgres", primary).close()
        assert ctx.probe([primary])[primary].writable  # its lease checks log in: not fenced
        # a member that cannot get the new passfile in time: the Secret is put back, nothing changes
        monkeypatch.setattr(kubernetes_platform, "PASSFILE_SYNC_TIMEOUT_S", 4.0)
        fake.set_sync_delay(60.0)
        with pytest.raises(PgOpsError, match=r"member\(s\) .* did not copy the new passfile .* the Secret is put "
                                             "back and the password is not changed"):
            catalog.rotate_password(ctx, REPLICATION_USER)
        assert ctx.credentials().password(REPLICATION_USER) == after.password(REPLICATION_USER)
        login(ctx, REPLICATION_USER, after.password(REPLICATION_USER), "postgres", primary).close()
        fake.set_sync_delay(0.0)
        catalog.rotate_password(ctx, "shop_rw")
        rotated = secret("shop", "k8roles-shop-rw")
        assert rotated["password"] != rw["password"] and rotated["password"] == ctx.credentials().password("shop_rw")
        assert secret("shop", "k8roles-shop-rw-read")["password"] == rotated["password"]
        with psycopg.connect(host=ep.host, port=ep.port, user="shop_rw", password=rotated["password"],
                             dbname="app", passfile="/dev/null", connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
