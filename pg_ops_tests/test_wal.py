"""WAL archiving and point-in-time recovery on real PostgreSQL clusters and a real SeaweedFS:
archiving through a store outage loses nothing and alerts; recovery to three points in time
(one after a failover) gives exactly the rows committed before each; the drill proves its
target; every refusal names the window, the gap or the name. Pure planners are tested on
fabricated archives at the end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pg_ops.credentials import SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations import wal
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deployment_problems
from pg_ops.operations.failover import failover
from pg_ops.operations.recover import RecoveryRefused, check_recovery, pitr_drill, pitr_drill_status, recover
from pg_ops.postgres import archiving, walfiles
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.session import with_connection
from pg_ops.stores import wal_archive as wa
from pg_ops_tests.s3server import S3_PORT, shared_server
from pg_ops_tests.support.helpers import (
    home_environment,
    kill_member,
    kubernetes_s3_cluster,
    running_cluster,
    spec_from,
    stop_cluster,
    wait_for,
    write_spec,
)


class TcpProxy:
    """127.0.0.1:<port> -> SeaweedFS, which a test can take down (connections refused) and bring back."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def s3_cluster():
    server = shared_server()
    bucket = server.new_bucket()
    proxy = TcpProxy(S3_PORT)
    saved = {k: os.environ.get(k) for k in ("PGOPS_T_WAL_AK", "PGOPS_T_WAL_SK")}
    os.environ.update(PGOPS_T_WAL_AK=server.access_key, PGOPS_T_WAL_SK=server.secret_key)
    try:
        with home_environment() as home:
            # No health sensor renews the primary's isolation lease here, and after the failover
            # test no standby is left to vouch for it: fencing would (rightly) stop its writes.
            spec = spec_from(write_spec(home / "specs", "pitr", postgres={"members": 2},
                                        failover={"isolation_fencing": False}, backups={
                "wal": {"archive_timeout_seconds": 5, "backlog_alert_bytes": walfiles.SEGMENT_BYTES},
                "store": {"type": "s3", "bucket": bucket, "prefix": "pitr-tests",
                          "endpoint_url": f"http://127.0.0.1:{proxy.port}",
                          "credentials_env": {"access_key": "PGOPS_T_WAL_AK", "secret_key": "PGOPS_T_WAL_SK"}}}))
            with running_cluster(spec) as ctx:
                run(ctx, "create table pitr (n serial primary key, batch int not null)")
                yield ctx, server, bucket, proxy, home
    finally:
        proxy.down()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def run(ctx: ClusterContext, query: str, dbname: str = "app"):
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, dbname), password=ctx.admin_password(),
                         autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


def batch(ctx: ClusterContext, number: int, rows: int = 10) -> None:
    run(ctx, f"insert into pitr (batch) select {number} from generate_series(1, {rows})")


def between_commits() -> datetime:
    """A target strictly between the commits before and after it."""
    time.sleep(1.1)
    target = datetime.now(UTC)
    time.sleep(1.1)
    return target


def batches_in(ctx: ClusterContext) -> dict[int, int]:
    return dict(run(ctx, "select batch, count(*) from pitr group by batch order by batch"))


def test_base_backup_window_and_status(s3_cluster, capsys):
    from pg_ops.cli import main

    ctx, server, bucket, _, _ = s3_cluster
    backup = wal.base_backup(ctx)
    # The backup is consistent from its end_time (the history file's whole-second STOP TIME + 1 s);
    # S3 dates objects to the second: a segment archived in that same second is not past it.
    time.sleep(1.1)
    run(ctx, "insert into pitr (batch) values (0)")
    wal.switch_and_wait(ctx)
    sysid = ctx.state().system_identifier
    keys = [o["Key"] for o in server.client().list_objects_v2(Bucket=bucket, Prefix="pitr-tests/pitr.wal/")["Contents"]]
    assert f"pitr-tests/pitr.wal/{sysid}/base/{backup.id}/backup.info" in keys  # keyed by the system identifier
    assert any(k.endswith(".zst") and "/wals/" in k for k in keys)  # barman-cloud, zstd-compressed
    window = wal.recovery_window(ctx)
    assert window.oldest == backup.end_time and window.newest > backup.end_time and window.gap is None
    assert main(["status", "--cluster", "pitr", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["recovery_window"]["oldest"] == backup.end_time.isoformat()
    health = wal.archive_health(ctx)
    assert health.status.archive_mode == "on" and not health.status.failing and not health.stale
    assert wal.archive_alerts(ctx, health) == []


def test_base_backup_from_the_standby_while_an_application_writes(s3_cluster):
    """backups.source: replica (the default): the base backup is the streaming replica's, taken
    while rows are committed on the primary, and a recovery from it to a moment after it holds
    every row committed before that moment and none after."""
    ctx, *_ = s3_cluster
    run(ctx, "create table standby_pitr (n serial primary key, batch int not null)")
    replica = next(m for m in ctx.spec.member_names if m != ctx.state().primary)
    written, stop = [0], threading.Event()

    def write() -> None:
        while not stop.is_set():
            run(ctx, "insert into standby_pitr (batch) values (0)")
            written[0] += 1
            time.sleep(0.02)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        backup = wal.base_backup(ctx)
    finally:
        stop.set()
        writer.join(timeout=10)
    assert backup.source == replica and backup.source_role == "replica", backup
    assert written[0] > 0
    run(ctx, "insert into standby_pitr (batch) select 1 from generate_series(1, 10)")
    target = between_commits()
    run(ctx, "insert into standby_pitr (batch) select 2 from generate_series(1, 10)")
    wal.switch_and_wait(ctx)
    result = recover(ctx, target, "pitr-standby")
    new = ClusterContext.for_spec(spec_from(Path(result.spec_path)))
    try:
        assert dict(run(new, "select batch, count(*) from standby_pitr group by batch")) == {0: written[0], 1: 10}
    finally:
        stop_cluster(new)


def test_store_down_while_archiving_alerts_and_loses_nothing(s3_cluster):
    ctx, _, _, proxy, _ = s3_cluster
    primary = wal.primary_member(ctx)
    status = lambda: with_connection(ctx.endpoints()[primary], SUPERUSER, ctx.admin_password(),  # noqa: E731
                                     archiving.archiver_status, timeout=10)
    proxy.down()
    try:
        batch(ctx, 100)
        stuck = run(ctx, "select pg_walfile_name(pg_switch_wal())", "postgres")[0][0]
        wait_for(lambda: status().failing, "the archive command fails while the store is down", timeout=120)
        health = wal.archive_health(ctx)
        kinds = {a.kind for a in wal.archive_alerts(ctx, health)}
        assert "wal_archive_failing" in kinds and "wal_archive_backlog" in kinds, kinds
        assert health.backlog_bytes >= walfiles.SEGMENT_BYTES  # WAL piles up on the primary
        _, open_alerts = wal.watch_archiving([ctx], {})
        assert {v["kind"] for v in open_alerts.values()} >= {"wal_archive_failing", "wal_archive_backlog"}
    finally:
        proxy.up()
    store = ctx.store()
    wal.wait_archived(ctx, store, stuck, timeout=180)
    wait_for(lambda: not status().failing and status().ready_segments == 0, "the backlog is archived", timeout=180)
    assert wal.recovery_window(ctx).gap is None  # nothing lost
    _, still_open = wal.watch_archiving([ctx], open_alerts)
    assert not any(v["kind"] in ("wal_archive_failing", "wal_archive_backlog") for v in still_open.values())


def test_point_in_time_drill_proves_its_target(s3_cluster):
    ctx, *_ = s3_cluster
    report = pitr_drill(ctx)
    assert report.result == "passed" and report.chosen_by == "drill"
    assert report.heartbeat_rows_after == 0 and report.heartbeat_rows_before >= 1
    assert report.amcheck["pg_ops"]["indexes_checked"] >= 1
    status = pitr_drill_status(ctx)
    assert status["drilled"] and status["latest"]["target_time"] == report.target_time


def test_refusals_name_the_window_the_gap_and_the_name(s3_cluster, capsys):
    from dagster import DagsterInstance

    from pg_ops.cli import main

    ctx, server, bucket, _, home = s3_cluster
    listing = wa.list_archive(ctx.store(), wal.archive_ref(ctx))
    oldest = listing.base_backups[0].end_time
    with pytest.raises(RecoveryRefused, match=r"before the oldest base backup .*recovery window"):
        check_recovery(ctx, oldest - timedelta(hours=1))
    with pytest.raises(RecoveryRefused, match=r"after the newest archived WAL .*recovery window"):
        check_recovery(ctx, datetime.now(UTC) + timedelta(hours=1))
    # A segment missing in the middle: refused naming it.
    for n in (1, 2, 3):
        batch(ctx, 200 + n)
        wal.switch_and_wait(ctx)
    target = datetime.now(UTC)
    time.sleep(1)
    wal.switch_and_wait(ctx)
    listing = wa.list_archive(ctx.store(), wal.archive_ref(ctx))
    victim = [s for s in listing.segments if s.segment.segno > listing.base_backups[-1].begin_segno][1]
    client = server.client()
    key = f"pitr-tests/{victim.key}"
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=bucket, Key=key)
    try:
        with pytest.raises(RecoveryRefused, match=f"WAL segment {victim.segment.name} is missing"):
            check_recovery(ctx, target)
        assert f"BROKEN: WAL segment {victim.segment.name}" in wal.recovery_window(ctx).text()
    finally:
        client.put_object(Bucket=bucket, Key=key, Body=io.BytesIO(body))
    assert check_recovery(ctx, target).base_backup.id == listing.base_backups[-1].id
    # --as naming an existing cluster: refused by the CLI before any run exists.
    write_spec(home / "specs", "taken")
    rc = main(["recover", "--cluster", ctx.name, "--to", target.isoformat(), "--as", "taken"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "a cluster named taken already exists" in err[0]
    assert main(["recover", "--cluster", ctx.name, "--to", "yesterday-ish", "--as", "fresh"]) == 1
    assert "is not a time" in capsys.readouterr().err
    with DagsterInstance.get() as instance:
        assert instance.get_runs() == []
    (home / "specs" / "taken.yaml").unlink()


def test_recovery_to_three_points_in_time_across_a_failover(s3_cluster):
    ctx, *_ = s3_cluster
    run(ctx, "truncate pitr")
    wal.base_backup(ctx)
    batch(ctx, 1)
    t1 = between_commits()
    batch(ctx, 2)
    t2 = between_commits()
    old = ctx.state().primary
    wait_for(lambda: wal.archive_health(ctx).status.ready_segments == 0, "nothing waiting for the archiver")
    replica = next(m for m in ctx.spec.member_names if m != old)
    lsn = run(ctx, "select pg_current_wal_lsn()::text", "postgres")[0][0]
    wait_for(lambda: ctx.probe([replica])[replica].replay_lsn >= Lsn.parse(lsn),  # numbers: "0/10000060" > "0/FFFFF38"
             "the replica replayed batch 2")
    kill_member(ctx.platform, old)
    change = failover(ctx, detected_at=time.time())
    assert change.new_primary == replica and change.timeline == 2
    batch(ctx, 3)
    t3 = between_commits()
    batch(ctx, 4)
    wal.switch_and_wait(ctx)
    listing = wa.list_archive(ctx.store(), wal.archive_ref(ctx))
    assert 2 in listing.histories and listing.newest_segment.segment.timeline == 2
    for i, (target, expected) in enumerate([(t1, {1: 10}), (t2, {1: 10, 2: 10}), (t3, {1: 10, 2: 10, 3: 10})]):
        result = recover(ctx, target, f"pitr-at-{i + 1}")
        new = ClusterContext.for_spec(spec_from(Path(result.spec_path)))
        try:
            assert batches_in(new) == expected, f"recovery to point {i + 1}"
            probes = new.probe()
            assert deployment_problems(new, probes, new.state().primary) == []  # primary + streaming replica
            assert result.members == new.spec.member_names
        finally:
            stop_cluster(new)
    assert batches_in(ctx) == {1: 10, 2: 10, 3: 10, 4: 10}  # the source is untouched


# -- a file store, through the CLI (the Dagster jobs on a real instance) ----------------------------
def test_file_store_recovery_and_drill_through_the_cli(pg_home, capsys):
    """One member, the default file store: `pg-ops base-backup`, heartbeat rows written by the
    health tick's call (activity.record_status), `pg-ops recover`, `pg-ops restore-drill
    --point-in-time`, each a recorded run; the heartbeat history is trimmed to its bounded age."""
    from dagster import DagsterInstance

    from pg_ops.cli import main
    from pg_ops.operations.activity import record_status

    spec = spec_from(write_spec(pg_home / "specs", "filepitr", postgres={"members": 1},
                                backups={"wal": {"archive_timeout_seconds": 5}}))
    with running_cluster(spec) as ctx:
        run(ctx, "insert into heartbeat_history (at, value) values (now() - interval '30 days', 0)", "pg_ops")
        assert main(["base-backup", "--cluster", "filepitr", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["recovery_window"]["oldest"] and out["backup_id"]
        sysid = ctx.state().system_identifier
        assert (pg_home / "backups" / "filepitr.wal" / sysid / "base" / out["backup_id"] / "backup.info").exists()
        for _ in range(3):
            assert record_status(ctx, "health_tick", 1)
        # The 30-day-old row is gone: the history keeps a bounded age.
        assert run(ctx, "select count(*) from heartbeat_history where at < now() - interval '9 days'",
                   "pg_ops") == [(0,)]
        run(ctx, "create table kept (n int)")
        run(ctx, "insert into kept values (1)")
        target = between_commits()
        run(ctx, "insert into kept values (2)")
        wal.switch_and_wait(ctx)
        assert main(["recover", "--cluster", "filepitr", "--to", target.isoformat(), "--as", "filepitr-copy",
                     "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        copy = ClusterContext.for_spec(spec_from(Path(result["spec_path"])))
        try:
            assert run(copy, "select n from kept") == [(1,)]
            assert run(copy, "select count(*) from heartbeat_history", "pg_ops")[0][0] == 3
        finally:
            stop_cluster(copy)
        assert main(["restore-drill", "--cluster", "filepitr", "--point-in-time", "--json"]) == 0
        drill = json.loads(capsys.readouterr().out)
        assert drill["result"] == "passed" and drill["heartbeat_rows_before"] >= 3
        with DagsterInstance.get() as instance:
            jobs = sorted(r.job_name for r in instance.get_runs())
        assert jobs == ["base_backup", "pitr_drill", "recover_cluster"]


def test_recovery_and_drill_to_before_a_rotation_keep_the_current_passwords(pg_home, caplog):
    """The data restored to a target holds the passwords as they were then. A recovery and a
    drill to before a rotation of the superuser's and an application role's passwords still log
    in with the store's (the superuser's set in single-user mode once promoted, the others by
    deploy), and the older ones are refused: nothing re-applies an older password, and no
    password reaches a log."""
    import logging

    from pg_ops.operations import catalog

    caplog.set_level(logging.DEBUG)
    spec = spec_from(write_spec(pg_home / "specs", "rotpitr", postgres={"members": 1,
                                                                       "parameters": {"log_statement": "ddl"}},
                                backups={"wal": {"archive_timeout_seconds": 5}}))
    with running_cluster(spec) as ctx:
        run(ctx, "create table kept (n int)")
        wal.base_backup(ctx)
        run(ctx, "insert into kept values (1)")
        old = ctx.credentials()
        target = between_commits()
        for role in ("app", SUPERUSER):
            catalog.rotate_password(ctx, role)
        new = ctx.credentials()
        run(ctx, "insert into kept values (2)")
        wal.switch_and_wait(ctx)
        result = recover(ctx, target, "rotpitr-copy")
        copy = ClusterContext.for_spec(spec_from(Path(result.spec_path)))
        try:
            assert run(copy, "select n from kept") == [(1,)]
            ep = copy.endpoints()[copy.state().primary]
            for role, dbname in ((SUPERUSER, "postgres"), ("app", "app")):
                assert new.password(role) != old.password(role)
                with psycopg.connect(host=ep.host, port=ep.port, user=role, dbname=dbname,
                                     password=new.password(role), connect_timeout=5) as conn:
                    assert conn.execute("select current_user").fetchone() == (role,)
                with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                    psycopg.connect(host=ep.host, port=ep.port, user=role, dbname=dbname,
                                    password=old.password(role), connect_timeout=5).close()
            logs = [copy.platform.log_path(m).read_text(errors="replace") for m in copy.spec.member_names]
        finally:
            stop_cluster(copy)
        assert "setting the store's in single-user mode" in caplog.text
        drill = pitr_drill(ctx, target)
        assert drill.result == "passed" and drill.heartbeat_rows_after == 0
        for password in [*old.as_plain_dict().values(), *new.as_plain_dict().values()]:
            for text in [caplog.text, json.dumps(result.as_dict()), json.dumps(drill.as_dict()), *logs]:
                assert password not in text


# -- Kubernetes: the rendered StatefulSet on the real API server ----------------------------------
def test_statefulset_on_the_api_server_archives_with_the_image_and_the_backup_secret(pg_home):
    from pg_ops.platforms.kubernetes import KubernetesPlatform
    from pg_ops.render import names as k
    from pg_ops.state import DesiredState
    from pg_ops_tests.support.helpers import real_kubernetes

    image = "registry.example/pg-ops-postgres:16-barman-3.19.1"
    spec = spec_from(write_spec(pg_home / "specs", "k8spitr", platform="kubernetes", kubernetes={
        "namespace": "ns-k8spitr", "gitops": False, "image": image}, backups={"store": {
            "type": "s3", "bucket": "b", "prefix": "p", "endpoint_url": "http://minio.storage:9000",
            "credentials_secret": "pg-ops-backup-s3"}}))
    with real_kubernetes() as fake:
        fake.register_cluster(spec)
        platform = KubernetesPlatform(spec)
        platform.prepare(DesiredState(cluster=spec.name, primary=spec.member_names[0]))
        sts = fake.object("statefulsets", "ns-k8spitr", k.statefulset_name(spec), "apps/v1")
        config = fake.object("configmaps", "ns-k8spitr", k.config_configmap(spec))
    postgres = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == k.CONTAINER)
    assert postgres["image"] == image
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in postgres["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "pg-ops-backup-s3", "key": "access_key"}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "pg-ops-backup-s3", "key": "secret_key"}
    conf = config["data"]["postgresql.conf"]
    assert "archive_mode = 'on'" in conf and "barman-cloud-wal-archive" in conf
    # The server name is the member's own system identifier, read from pg_control when it archives.
    assert 's3://b/p/k8spitr.wal "$sysid" %p' in conf and "global/pg_control" in conf
    assert "AWS_SECRET" not in conf  # the keys never in the config


def test_kubernetes_base_backup_streamed_from_the_run_while_the_pods_archive(pg_home):
    """On Kubernetes the members archive WAL from their pods (barman-cloud-wal-archive, keys from
    the backup Secret) and pg_ops takes the base backup over the replication protocol from where
    it runs (a run pod in production, this process here), compressed straight into SeaweedFS:
    nothing runs in the database's pod. The backup is complete in the archive's layout, opens
    the recovery window, and restores into a data dir a server starts from; the point-in-time
    drill recovers it in a pod and proves its target, and fails on an unreadable segment. Such a
    cluster gets the base-backup schedule and the weekly point-in-time drill."""
    import tarfile

    import zstandard

    from pg_ops import settings
    from pg_ops.postgres import controldata
    from pg_ops.render import names as k

    with kubernetes_s3_cluster(pg_home, "k8sbase") as (ctx, fake):
        spec = ctx.spec
        run(ctx, "create table kept (n int)")
        run(ctx, "insert into kept values (1)")
        backup = wal.base_backup(ctx)
        window = wal.recovery_window(ctx)
        listing = wa.list_archive(ctx.store(), wal.archive_ref(ctx))
        assert [b.id for b in listing.base_backups] == [backup.id] and window.gap is None
        assert window.oldest == backup.end_time and backup.begin_segno <= listing.newest_segment.segment.segno
        assert any(key.endswith("/data.tar.zst") for key in backup.keys)
        # the tar restores into a data dir whose control file is the primary's system
        data = pg_home / "restored"
        key = next(key for key in backup.keys if key.endswith("/data.tar.zst"))
        with ctx.store().open_reader(key) as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            with tarfile.open(fileobj=io.BufferedReader(stream, 1 << 20), mode="r|") as tar:
                tar.extractall(data, filter="fully_trusted")
        assert (data / "backup_label").read_text().startswith("START WAL LOCATION")
        fields = controldata.read(settings.pg_bin(), data)
        assert fields["Database system identifier"] == ctx.state().system_identifier
        # Retention on Kubernetes: once the first base backup is out of the window, it goes with
        # the WAL only it needed; the newer one and everything after its start stay.
        from pg_ops.operations.retention import prune_archive

        for _ in range(2):
            run(ctx, "insert into kept values (2)")
            wal.switch_and_wait(ctx)
        newer = wal.base_backup(ctx)
        later = datetime.now(UTC) + timedelta(days=spec.backups.retention_days + 1)
        pruned = prune_archive(ctx, now=later, min_keep=1)
        assert pruned.deleted_base_backups == [backup.id] and pruned.deleted_segments >= 1
        after = wa.list_archive(ctx.store(), wal.archive_ref(ctx))
        assert [b.id for b in after.base_backups] == [newer.id]
        assert min(s.segment.segno for s in after.segments) == newer.begin_segno
        assert wal.recovery_window(ctx).oldest == newer.end_time
        # The point-in-time drill on Kubernetes: a recovery pod in the drill namespace fetches the
        # base backup from S3 and replays the archive (barman-cloud-wal-restore of the image) to a
        # target between two marker rows; pg_ops logs in with the store's password and proves it.
        drill = pitr_drill(ctx)
        assert drill.result == "passed" and drill.chosen_by == "drill" and drill.base_backup == newer.id
        assert drill.heartbeat_rows_after == 0 and drill.heartbeat_rows_before >= 1
        assert drill.amcheck["pg_ops"]["indexes_checked"] >= 1
        assert pitr_drill_status(ctx)["drilled"]
        drills = k.drill_namespace(spec)
        assert fake.admin_api().core.list_namespaced_pod(drills, label_selector=k.LABEL_SCRATCH).items == []
        assert fake.admin_api().core.list_namespaced_secret(drills, label_selector=k.LABEL_SCRATCH).items == []
        # A segment the replay needs is unreadable (present, so the plan accepts it): the pod's
        # replay ends before the target, and the drill fails with PostgreSQL's reason, recorded.
        run(ctx, "insert into kept values (3)")
        target = datetime.now(UTC)
        time.sleep(1)  # S3 keeps the segment's time to the second: archived after the target, not in its second
        wal.switch_and_wait(ctx)
        first = next(s for s in after.segments if s.segment.segno == newer.begin_segno)
        ctx.store().put_bytes(first.key, b"not a WAL segment")
        with pytest.raises(PgOpsError, match=r"recovery to .* failed: pod .*-pitr-.* stopped \(exit 1\): "
                                             r"postgres exited \(1\): could not locate required checkpoint record"):
            pitr_drill(ctx, target)
        assert pitr_drill_status(ctx)["latest"]["result"] == "failed"
        assert fake.admin_api().core.list_namespaced_pod(drills, label_selector=k.LABEL_SCRATCH).items == []
    from pg_ops.definitions import build_defs  # loads the specs folder on import: after writing the spec

    defs = build_defs([spec])
    assert any(s.name.startswith("base_backup_schedule") for s in defs.schedules)
    assert any(s.name.startswith("weekly_pitr_drill") for s in defs.schedules)


def test_kubernetes_recovery_into_a_new_cluster_replays_in_its_first_pod(pg_home, monkeypatch, capsys):
    """`recover --as NEW` on Kubernetes: the new cluster's first pod restores the base backup from
    S3 and replays the source's archive on its own data volume (member.sh's [recover] row), then
    runs as the primary and its replica clones from it. Exactly the rows committed before the
    target are there, the source is untouched, the recovery's Secret is gone and the record
    forgets it. A target outside the window is refused before anything exists; a recovery whose
    replay fails is reported with the pod's reason and leaves nothing of the new cluster. Until a
    cluster admin has applied the new cluster's Role, recover refuses and renders its manifests."""

    from pg_ops.operations.recover import new_cluster_spec
    from pg_ops.render import names as k

    with kubernetes_s3_cluster(pg_home, "k8srec") as (ctx, fake):
        spec, ns = ctx.spec, ctx.spec.kubernetes.namespace
        run(ctx, "create table pitr (batch int, at timestamptz default clock_timestamp())")
        batch(ctx, 1)
        wal.base_backup(ctx)
        batch(ctx, 2)
        time.sleep(1)
        target = datetime.now(UTC)
        time.sleep(1)
        batch(ctx, 3)
        wal.switch_and_wait(ctx)
        recovered, broken = new_cluster_spec(spec, "k8srec-back"), new_cluster_spec(spec, "k8srec-bad")
        # pg_ops's access is per cluster: without the new one's Role (an admin applies it) the
        # recovery is refused before anything exists, and its manifests are rendered for the admin.
        monkeypatch.setattr("pg_ops.render.default_output_dir", lambda s: pg_home / "rendered" / s.name)
        with pytest.raises(RecoveryRefused, match=r"--as k8srec-back: its access is not applied yet \(role "
                                                  r".*kubectl apply -f .*rendered/k8srec-back/role.yaml"):
            recover(ctx, target, "k8srec-back")
        assert (pg_home / "rendered" / "k8srec-back" / "rolebinding.yaml").is_file()
        fake.register_cluster(recovered)  # the admin's step (role.yaml, rolebinding.yaml)
        fake.register_cluster(broken)
        with pytest.raises(RecoveryRefused, match=r"is before the oldest base backup .*recovery window"):
            recover(ctx, target - timedelta(days=1), "k8srec-back")
        assert fake.admin_api().core.list_namespaced_config_map(
            ns, field_selector=f"metadata.name={k.state_configmap(recovered)}").items == []

        from pg_ops.cli import main
        from pg_ops.spec import load_spec

        capsys.readouterr()
        assert main(["recover", "--cluster", "k8srec", "--to", target.isoformat(), "--as", "k8srec-back",
                     "--in-process", "--json"]) == 0  # the CLI and the Dagster job recover_cluster
        result = json.loads(capsys.readouterr().out)
        assert result["cluster"] == "k8srec-back" and result["members"] == ["k8srec-back-0", "k8srec-back-1"]
        # The spec where pg_ops loads specs from, and the manifests for Git, written by the CLI.
        kept = load_spec(Path(result["spec_path"]))
        assert kept.name == "k8srec-back" and not kept.kubernetes.gitops
        assert kept.kubernetes.services.primary.name == "k8srec-back-primary"
        assert (Path(result["manifests"]) / "statefulset.yaml").is_file()
        new_ctx = ClusterContext.for_spec(recovered)
        assert run(new_ctx, "select batch, count(*) from pitr group by batch order by batch") == [(1, 10), (2, 10)]
        # The source is only read, and its primary Service still leads to it (the new cluster has
        # its own Services: the source's name would have handed them over).
        assert run(ctx, "select count(*), current_setting('cluster_name') from pitr") == [(30, "k8srec-0")]
        assert k.primary_service(recovered) == "k8srec-back-primary"
        state = new_ctx.state()
        assert state.primary == "k8srec-back-0" and state.recovery == "" and not state.bootstrap
        assert state.system_identifier == ctx.state().system_identifier  # the source's data, recovered
        assert deployment_problems(new_ctx, new_ctx.probe(), state.primary) == []
        assert fake.admin_api().core.list_namespaced_secret(
            ns, field_selector=f"metadata.name={k.recovery_secret(recovered)}").items == []
        assert new_ctx.platform.member_report("k8srec-back-0").boot_action == "recover"  # its boot row
        run(new_ctx, "insert into pitr (batch) values (4)")  # writable, as the new cluster's primary

        # A segment the replay needs cannot be read: the pod's refusal names PostgreSQL's reason,
        # and the half-made cluster is removed (its record, StatefulSet, claims and Secrets).
        listing = wa.list_archive(ctx.store(), wal.archive_ref(ctx))
        first = next(s for s in listing.segments if s.segment.segno == listing.base_backups[-1].begin_segno)
        ctx.store().put_bytes(first.key, b"not a WAL segment")
        with pytest.raises(PgOpsError, match=r"recovery to .* failed on k8srec-bad-0: recovery \w+ failed: "
                                             r"postgres exited \(1\): could not locate required checkpoint"):
            recover(ctx, target, "k8srec-bad")
        core = fake.admin_api().core
        assert core.list_namespaced_config_map(
            ns, field_selector=f"metadata.name={k.state_configmap(broken)}").items == []
        assert core.list_namespaced_persistent_volume_claim(
            ns, label_selector=f"{k.LABEL_CLUSTER}=k8srec-bad").items == []
        assert [s.metadata.name for s in core.list_namespaced_secret(ns).items if s.metadata.name.startswith(
            "k8srec-bad-")] == []


# -- pure planners on fabricated archives ----------------------------------------------------------
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def fabricated(segments: list[tuple[int, int, int]], bases: list[tuple[str, int, int]], history: str | None = None):
    """segments: (timeline, segno, minutes after T0 archived); bases: (id, begin segno, minutes)."""
    listing = wa.ArchiveListing("c")
    for tl, segno, minute in segments:
        seg = walfiles.Segment(segno, tl)
        listing.segments.append(wa.ArchivedSegment(seg, f"c.wal/wals/{seg.name}", T0 + timedelta(minutes=minute), 1))
    for backup_id, segno, minute in bases:
        listing.base_backups.append(wa.BaseBackup(
            backup_id, T0 + timedelta(minutes=minute - 1), T0 + timedelta(minutes=minute),
            walfiles.segment_name(1, segno), walfiles.segment_name(1, segno), 1, 1))

    class Store:
        def get_bytes(self, key):
            return history.encode()

    if history:
        listing.histories[2] = "c.wal/wals/00000002.history"
    return listing, wa.timeline_starts(Store(), listing)


def test_plan_follows_the_timeline_history_and_names_gaps():
    from pg_ops.operations.recover import plan_recovery

    # Timeline 2 forked in segment 5 (0/5000100): segments 1-5 on timeline 1, 5-8 on timeline 2.
    segs = [(1, n, n) for n in range(1, 6)] + [(2, n, n) for n in range(5, 9)]
    listing, starts = fabricated(segs, [("b1", 2, 2)], "1\t0/5000100\tno recovery target specified\n")
    assert starts == {1: 0, 2: 5}
    plan = plan_recovery(listing, starts, T0 + timedelta(minutes=7, seconds=30))
    assert plan.base_backup.id == "b1" and plan.last_segno == 8
    # Timeline 2's segment 6 missing: named, with its neighbours.
    listing.segments = [s for s in listing.segments if (s.segment.timeline, s.segment.segno) != (2, 6)]
    with pytest.raises(RecoveryRefused, match="000000020000000000000006 is missing .*between "
                                              "000000020000000000000005 and 000000020000000000000007"):
        plan_recovery(listing, starts, T0 + timedelta(minutes=7, seconds=30))
    # A target before the gap needs no segment after it.
    assert plan_recovery(listing, starts, T0 + timedelta(minutes=4, seconds=30)).last_segno == 5
    with pytest.raises(RecoveryRefused, match=r"before the oldest base backup \(b1.*window 2026-12-01T00:02:00"):
        plan_recovery(listing, starts, T0)
    with pytest.raises(RecoveryRefused, match=r"after the newest archived WAL \(000000020000000000000008"):
        plan_recovery(listing, starts, T0 + timedelta(hours=1))


def test_archive_retention_keeps_the_window_the_verified_point_and_their_wal():
    from pg_ops.operations.retention import plan_archive_retention

    day = 24 * 60
    now = T0 + timedelta(days=20)
    listing, _ = fabricated([], [(f"d{i}", 10 * i, day * i) for i in range(1, 21)])
    plan = plan_archive_retention(listing.base_backups, now=now, retention_days=7, min_keep=3, verified_base="d2",
                                  holds=[])
    kept = {d.id for d in plan.decisions if d.keep}
    # Younger than 7 days (d14..d20), the one covering the window's start (d13), the verified d2.
    assert kept == {"d2", *(f"d{i}" for i in range(13, 21))}
    assert plan.wal_floor_segno == 20  # d2's first segment: its WAL stays
    held = plan_archive_retention(listing.base_backups, now=now, retention_days=7, min_keep=3, verified_base=None,
                                  holds=[{"holder": "drill-x", "purpose": "drill"}])
    assert held.blocked and held.wal_floor_segno is None and all(d.keep for d in held.decisions)


def test_recovery_auto_conf_drops_the_source_replica_settings():
    current = ("primary_conninfo = 'host=x'\nprimary_slot_name = 'x_1'\nsynchronous_standby_names = 'ANY 1 (a)'\n"
               "work_mem = '8MB'\n")
    text = archiving.auto_conf_for_recovery(current, archiving.recovery_settings("cp %f %p", T0))
    assert "primary_conninfo" not in text and "synchronous_standby_names" not in text and "work_mem" in text
    assert "recovery_target_time = '2026-12-01 00:00:00+00:00'" in text
    assert "restore_command = 'cp %f %p'" in text and "recovery_target_action = 'promote'" in text
