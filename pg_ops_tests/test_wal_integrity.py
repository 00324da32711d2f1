"""The WAL archive's integrity on real PostgreSQL clusters and real stores (a folder, SeaweedFS):
a fresh cluster's first base backup is requested by the archive sensor at once, and the hourly
archive checks pass on it; a cluster torn down and deployed again under
the same name archives into its own incarnation's folder (keyed by system identifier) and the
old one's files stay where they were; a failover while the archive refuses writes ships what
the survivors still have from their pg_wal, raises `wal_archive_gap` for what none has, keeps
the archive alerts open meanwhile, requests a base backup, and the window is contiguous from it."""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_ops.credentials import SUPERUSER
from pg_ops.defs import wal as wal_defs
from pg_ops.defs.resources import AlertsResource, PgOpsResource
from pg_ops.operations import wal
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.deploy import deploy, teardown
from pg_ops.operations.failover import failover
from pg_ops.operations.recover import recover
from pg_ops.platforms import local_archive
from pg_ops.postgres import archiving, walfiles
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.session import with_connection
from pg_ops.stores import wal_archive as wa
from pg_ops_tests.s3server import S3_PORT, shared_server
from pg_ops_tests.support.helpers import (
    kill_member,
    running_cluster,
    spec_from,
    stop_cluster,
    wait_for,
    write_spec,
)


def run(ctx: ClusterContext, query: str, dbname: str = "postgres"):
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, dbname), password=ctx.admin_password(),
                         autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


def switch_after_a_write(ctx: ClusterContext) -> str:
    """Close the current segment after writing to it (a switch with nothing written since the
    last one does nothing), and return its name."""
    run(ctx, "create table if not exists switch_marker (at timestamptz); insert into switch_marker values (now())")
    return run(ctx, "select pg_walfile_name(pg_switch_wal())")[0][0]


def archiver(ctx: ClusterContext, member: str) -> archiving.ArchiverStatus:
    return with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), archiving.archiver_status,
                           timeout=10, name=member)


def wal_defs_for(spec) -> dg.Definitions:
    return dg.Definitions.merge(wal_defs.build([spec]), dg.Definitions(
        resources={"pg_ops": PgOpsResource(clusters_path=os.environ["PG_OPS_CLUSTERS"])}))


def archive_sensor_requests(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    sensor = defs.resolve_sensor_def(wal_defs.SENSOR)
    context = dg.build_sensor_context(instance=instance, resources={
        "pg_ops": PgOpsResource(clusters_path=os.environ["PG_OPS_CLUSTERS"]), "alerts": AlertsResource()})
    return list(sensor(context).run_requests or [])


# -- F2: a fresh cluster: its first base backup at once, and the hourly checks -------------------------
def test_a_fresh_cluster_gets_its_first_base_backup_from_the_sensor_and_passes_the_checks(pg_home):
    """The recovery window starts at deploy: the archive sensor's first look at a cluster with no
    base backup of its system requests one (once per system and hour), not the nightly schedule;
    once it ran, nothing more is requested and the window is open. Then the `wal_archive_checks`
    job as the hourly schedule runs it, every check of the wal_archive asset included (its limit
    is int + int seconds in the spec)."""
    spec = spec_from(write_spec(pg_home / "specs", "fresh", postgres={"members": 1},
                                backups={"wal": {"archive_timeout_seconds": 5}}))
    with running_cluster(spec) as ctx:
        defs = wal_defs_for(spec)
        with dg.DagsterInstance.ephemeral() as instance:
            assert wal.recovery_window(ctx).oldest is None  # nothing to recover to yet
            (request,) = archive_sensor_requests(defs, instance)
            sysid = wal.archive_ref(ctx).sysid
            assert request.asset_selection == [wal_defs.base_key("fresh")]
            assert sysid in (request.run_key or "") and "first" in (request.run_key or "")
            ran = defs.resolve_job_def(wal_defs.BASE_JOB).execute_in_process(
                instance=instance, asset_selection=request.asset_selection, tags=request.tags)
            assert ran.success
            assert archive_sensor_requests(defs, instance) == []
            window = wal.recovery_window(ctx)
            assert window.base_backups == 1 and window.oldest is not None and window.gap is None
            wal.switch_and_wait(ctx)
            result = defs.resolve_job_def(wal_defs.CHECKS_JOB).execute_in_process(instance=instance,
                                                                                  raise_on_error=False)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()
                       if e.asset_key == wal_defs.archive_key("fresh")}
        assert set(evaluations) == {wal_defs.CHECK_CURRENT, wal_defs.CHECK_NOT_FAILING, wal_defs.CHECK_NO_GAP}
        assert all(e.passed for e in evaluations.values()), evaluations
        assert evaluations[wal_defs.CHECK_CURRENT].metadata["limit_seconds"].value == 125.0


# -- F3: teardown, then deploy under the same name ---------------------------------------------------
@pytest.fixture(params=["file", "s3"])
def store_spec(request, monkeypatch) -> dict:
    if request.param == "file":
        return {"type": "file", "path": "backups"}
    server = shared_server()
    monkeypatch.setenv("PGOPS_T_INC_AK", server.access_key)
    monkeypatch.setenv("PGOPS_T_INC_SK", server.secret_key)
    return {"type": "s3", "bucket": server.new_bucket(), "prefix": "inc", "endpoint_url": f"http://127.0.0.1:{S3_PORT}",
            "credentials_env": {"access_key": "PGOPS_T_INC_AK", "secret_key": "PGOPS_T_INC_SK"}}


def test_teardown_then_deploy_archives_into_its_own_incarnation(pg_home, store_spec, caplog):
    spec = spec_from(write_spec(pg_home / "specs", "again", postgres={"members": 1},
                                backups={"wal": {"archive_timeout_seconds": 5}, "store": store_spec}))
    first = ClusterContext.for_spec(spec)
    second = ClusterContext.for_spec(spec)
    try:
        deploy(first)
        old = wal.archive_ref(first)
        old_backup = wal.base_backup(first)
        wal.switch_and_wait(first)
        store = first.store()
        with caplog.at_level(logging.INFO, logger="pg_ops"):
            teardown(first)
        old_files = {o.key: o.size for o in store.list(f"{old.root}/")}  # what the torn-down cluster left
        assert any("/wals/" in k for k in old_files) and any(k.endswith("/backup.info") for k in old_files)
        said = [r.getMessage() for r in caplog.records if "torn down" in r.getMessage()]
        assert len(said) == 1 and "\n" not in said[0]
        assert f"the WAL archive of system {old.sysid}" in said[0] and "archives into a folder of its own" in said[0]

        deploy(second)
        new = wal.archive_ref(second)
        assert new.sysid != old.sysid  # a new system
        primary = second.state().primary
        for _ in range(2):
            wal.switch_and_wait(second, timeout=60)
        # The archiver counts a segment once its command returned: a moment after the store has it.
        status = wait_for(lambda: (st := archiver(second, primary)).archived_count >= 2 and st.ready_segments == 0
                          and st, "the archiver to count both segments", timeout=30)
        assert status.failed_count == 0
        # The new incarnation's window: none of the torn-down cluster's base backups or segments.
        window = wal.recovery_window(second)
        assert window.sysid == new.sysid and window.base_backups == 0 and window.oldest is None
        backup = wal.base_backup(second)
        wal.switch_and_wait(second)
        window = wal.recovery_window(second)
        assert window.base_backups == 1 and window.oldest == backup.end_time > old_backup.end_time
        assert window.gap is None
        listing = wa.list_archive(store, new)
        assert all(s.key.startswith(f"{new.root}/wals/") for s in listing.segments)
        # The old incarnation's files are where they were, unchanged, beside the new one.
        assert {o.key: o.size for o in store.list(f"{old.root}/")} == old_files
        assert {i.sysid for i in wa.incarnations(store, "again")} == {old.sysid, new.sysid}
        if store_spec["type"] == "file":
            assert (local_archive.archive_dir(spec) / old.sysid / "base" / old_backup.id / "backup.info").exists()
        # And the new incarnation recovers to a point in time from its own archive.
        sql(second, "create table kept (n int); insert into kept values (1)")
        time.sleep(1.1)
        target = datetime.now(UTC)
        time.sleep(1.1)
        sql(second, "insert into kept values (2)")
        wal.switch_and_wait(second)
        copy = ClusterContext.for_spec(spec_from(Path(recover(second, target, "again-copy").spec_path)))
        try:
            assert sql(copy, "select n from kept") == [(1,)]
        finally:
            stop_cluster(copy)
    finally:
        stop_cluster(second)
        stop_cluster(first)


def sql(ctx: ClusterContext, query: str):
    with psycopg.connect(ctx.platform.primary_dsn(SUPERUSER, "app"), password=ctx.admin_password(),
                         autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


# -- H4: a failover while the archive refuses writes -------------------------------------------------
def test_failover_while_the_archive_refuses_writes_ships_or_alerts_and_backs_up(pg_home):
    """The archive folder unwritable for the server user: segments pile up on the primary (and
    stream to the replicas), the primary is killed, the cluster fails over, the folder is given
    back. The first unarchived segment is gone from every survivor's pg_wal (as when recycled):
    the others are shipped from the new primary's pg_wal, the first is a gap: `wal_archive_gap`
    names it, the failing alert stays open meanwhile, the sensor requests a base backup, and from
    that base backup the window is contiguous again."""
    from pg_ops.cli import main

    spec = spec_from(write_spec(pg_home / "specs", "gap", postgres={"members": 3},
                                failover={"isolation_fencing": False},
                                backups={"wal": {"archive_timeout_seconds": 5}}))
    with running_cluster(spec) as ctx:
        run(ctx, "create table t (n int)", "app")
        base = wal.base_backup(ctx)
        wal.switch_and_wait(ctx)
        old = ctx.state().primary
        survivors = [m for m in spec.member_names if m != old]
        folder = local_archive.archive_dir(spec)
        mode = folder.stat().st_mode
        try:
            os.chmod(folder, 0)  # the server user can no longer reach the archive; pg_ops (root) can
            unarchived = []
            for i in range(4):
                run(ctx, f"insert into t values ({i})", "app")
                unarchived.append(run(ctx, "select pg_walfile_name(pg_switch_wal())")[0][0])
            wait_for(lambda: archiver(ctx, old).failing and archiver(ctx, old).ready_segments >= 4,
                     "the archiver fails with the segments waiting", timeout=60)
            lsn = run(ctx, "select pg_current_wal_lsn()::text")[0][0]
            wait_for(lambda: all(ctx.probe([m])[m].replay_lsn >= Lsn.parse(lsn) for m in survivors),
                     "the replicas have it all")
            _, open_alerts = wal.watch_archiving([ctx], {})
            failing = [k for k, v in open_alerts.items() if v["kind"] == "wal_archive_failing"]
            assert failing
            lost = unarchived[0]
            for member in survivors:  # recycled everywhere: nobody can ship it
                (ctx.platform.data_dir(member) / "pg_wal" / lost).unlink()
            kill_member(ctx.platform, old)
            change = failover(ctx, detected_at=time.time())
        finally:
            os.chmod(folder, mode)
        assert change.timeline == 2
        notes = "; ".join(change.notes)
        assert "shipped" in notes and f"WAL archive gap from {lost}" in notes, notes
        store = ctx.store()
        ref = wal.archive_ref(ctx)
        names = {s.segment.name for s in wa.list_archive(store, ref).segments}
        assert lost not in names and set(unarchived[1:]) <= names  # shipped from the new primary's pg_wal
        new_primary = change.new_primary
        wait_for(lambda: archiver(ctx, new_primary).ready_segments == 0, "the new primary archives again", timeout=60)

        # The sensor's tick: the gap alert names the first missing segment and the window it
        # breaks; the failing alert of the dead primary does not resolve while segments are missing.
        healths, state = wal.watch_archiving([ctx], open_alerts)
        gap = [v for v in state.values() if v["kind"] == "wal_archive_gap"]
        assert len(gap) == 1 and gap[0]["severity"] == "critical"
        assert gap[0]["details"]["first_missing"] == lost and lost in gap[0]["summary"]
        assert base.end_time.isoformat(timespec="seconds") in gap[0]["summary"]
        assert set(failing) <= set(state)
        window = wal.recovery_window(ctx)
        assert window.gap and window.gap.startswith(f"WAL segment {lost}")
        assert main(["status", "--cluster", "gap"]) == 0

        # The sensor itself requests a base backup of this cluster; the run it asks for runs.
        defs = wal_defs_for(spec)
        sensor = defs.resolve_sensor_def(wal_defs.SENSOR)
        with dg.DagsterInstance.ephemeral() as instance:
            context = dg.build_sensor_context(instance=instance, cursor=json.dumps({"alerts": state}),
                                              resources={"pg_ops": PgOpsResource(
                                                  clusters_path=os.environ["PG_OPS_CLUSTERS"]),
                                                  "alerts": AlertsResource()})
            checks = defs.resolve_job_def(wal_defs.CHECKS_JOB).execute_in_process(instance=instance)
            no_gap = next(e for e in checks.get_asset_check_evaluations() if e.check_name == wal_defs.CHECK_NO_GAP)
            assert not no_gap.passed and no_gap.metadata["first_missing"].value == lost
            result = sensor(context)
            requests = result.run_requests or []
            assert len(requests) == 1 and requests[0].asset_selection == [wal_defs.base_key("gap")]
            assert lost in (requests[0].run_key or "")
            job = defs.resolve_job_def(wal_defs.BASE_JOB)
            ran = job.execute_in_process(instance=instance, asset_selection=requests[0].asset_selection,
                                         tags=requests[0].tags)
            assert ran.success
            cursor = json.loads(result.cursor or "{}")
            checks = defs.resolve_job_def(wal_defs.CHECKS_JOB).execute_in_process(instance=instance)
            assert next(e for e in checks.get_asset_check_evaluations()
                        if e.check_name == wal_defs.CHECK_NO_GAP).passed
        listing = wa.list_archive(store, ref)
        newest_base = listing.base_backups[-1]
        assert newest_base.timeline == 2 and newest_base.id != base.id
        window = wal.recovery_window(ctx)
        assert window.gap is None and window.oldest == newest_base.end_time
        assert window.before_gap and lost in window.before_gap
        starts = wa.timeline_starts(store, listing)
        last = wa.required_last_segno(listing, starts)
        assert last is not None and wa.find_gaps(listing, starts, newest_base.begin_segno, last) == []
        # Now the gap alert (and the dead primary's failing alert) resolve.
        _, state = wal.watch_archiving([ctx], cursor["alerts"])
        assert not any(v["kind"] in ("wal_archive_gap", "wal_archive_failing") for v in state.values()), state


def test_switchover_waits_a_bounded_time_for_the_archiver_then_ships_what_waits(pg_home):
    """`backups.wal.switchover_drain_seconds` bounds the wait for the old primary's archiver;
    past it the switchover goes on, and what still waited is shipped from the new primary's
    pg_wal, so the window has no gap. With a working archive the archiver drains."""
    from pg_ops.operations.failover import switchover

    spec = spec_from(write_spec(pg_home / "specs", "drain", postgres={"members": 2},
                                failover={"isolation_fencing": False},
                                backups={"wal": {"archive_timeout_seconds": 5, "switchover_drain_seconds": 2}}))
    with running_cluster(spec) as ctx:
        wal.base_backup(ctx)
        old = ctx.state().primary
        target = next(m for m in spec.member_names if m != old)
        folder = local_archive.archive_dir(spec)
        mode = folder.stat().st_mode
        try:
            os.chmod(folder, 0)
            waiting = [switch_after_a_write(ctx) for _ in range(2)]
            wait_for(lambda: archiver(ctx, old).ready_segments >= 2, "segments wait for the archiver", timeout=60)
            change = switchover(ctx, to=target)
        finally:
            os.chmod(folder, mode)
        notes = "; ".join(change.notes)
        assert f"archiver of {old} not drained after 2 s" in notes and "shipped" in notes, notes
        ref = wal.archive_ref(ctx)
        names = {s.segment.name for s in wa.list_archive(ctx.store(), ref).segments}
        assert set(waiting) <= names
        wait_for(lambda: archiver(ctx, target).ready_segments == 0, "the new primary archives", timeout=60)
        assert wal.recovery_window(ctx).gap is None
        back = switchover(ctx, to=old)
        assert f"archiver of {target} drained" in back.notes


# -- the window and the gap on fabricated archives (pure) -------------------------------------------
T0 = datetime(2026, 12, 1, tzinfo=UTC)


class FakeHistories:
    """get_bytes of a history file key: its text."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts

    def get_bytes(self, key: str) -> bytes:
        return self.texts[key].encode()


def fabricated(segments: list[tuple[int, int]], bases: list[tuple[str, int, int]], histories: dict[int, str]):
    """segments: (timeline, segno), archived segno minutes after T0; bases: (id, timeline, begin
    segno), ending a minute after their first segment; histories: timeline -> text."""
    listing = wa.ArchiveListing("c", "42")
    for tl, segno in segments:
        seg = walfiles.Segment(segno, tl)
        listing.segments.append(wa.ArchivedSegment(seg, f"c.wal/42/wals/{seg.name}", T0 + timedelta(minutes=segno), 1))
    for backup_id, tl, segno in bases:
        listing.base_backups.append(wa.BaseBackup(
            backup_id, T0 + timedelta(minutes=segno), T0 + timedelta(minutes=segno, seconds=30),
            walfiles.segment_name(tl, segno), walfiles.segment_name(tl, segno), tl, 1))
    texts = {}
    for tl, text in histories.items():
        listing.histories[tl] = f"c.wal/42/wals/{tl:08X}.history"
        texts[listing.histories[tl]] = text
    return listing, FakeHistories(texts)


TL2_AT_8 = {2: "1\t0/8000100\tno recovery target specified\n"}


def test_window_shows_a_gap_until_a_base_backup_after_it_exists():
    segs = [(1, n) for n in (1, 2, 3, 4, 6, 7)] + [(2, 8), (2, 9)]
    listing, store = fabricated(segs, [("b1", 1, 2)], TL2_AT_8)
    window = wal.window_of(store, listing)  # type: ignore[arg-type]
    assert window.first_missing == "000000010000000000000005" and window.gap and "BROKEN" in window.text()
    assert window.oldest == T0 + timedelta(minutes=2, seconds=30)
    listing, store = fabricated(segs, [("b1", 1, 2), ("b2", 2, 8)], TL2_AT_8)
    window = wal.window_of(store, listing)  # type: ignore[arg-type]
    assert window.gap is None and window.oldest == T0 + timedelta(minutes=8, seconds=30)
    assert window.before_gap and "000000010000000000000005" in window.before_gap
    assert "older base backups stop at" in window.text()


def test_segments_before_the_new_timeline_count_as_missing_before_it_archives_anything():
    """The old primary died with segments 6 and 7 unarchived; the new primary has archived only
    its history file: the gap is visible at once, not when timeline 2's first segment arrives."""
    listing, store = fabricated([(1, n) for n in range(1, 6)], [("b1", 1, 2)], TL2_AT_8)
    window = wal.window_of(store, listing)  # type: ignore[arg-type]
    assert window.first_missing == "000000010000000000000006"
    assert "000000010000000000000006 .. 000000010000000000000007" in (window.gap or "")


def test_a_missing_timeline_history_file_is_a_gap():
    segs = [(1, n) for n in range(1, 8)] + [(2, n) for n in range(8, 10)] + [(3, 10)]
    histories = {3: "1\t0/8000100\tno recovery target specified\n2\t0/A000100\tno recovery target specified\n"}
    listing, store = fabricated(segs, [("b1", 1, 2)], histories)
    window = wal.window_of(store, listing)  # type: ignore[arg-type]
    assert (window.first_missing == "00000002.history"
            and "history file 00000002.history is missing" in (window.gap or ""))


def test_the_gap_alert_names_the_first_missing_segment_and_the_window(pg_home):
    spec = spec_from(write_spec(pg_home / "specs", "g", postgres={"members": 1}))
    ctx = ClusterContext.for_spec(spec)
    listing, store = fabricated([(1, n) for n in (1, 2, 3, 4, 6)], [("b1", 1, 2)], {})
    status = archiving.ArchiverStatus(archived_count=6, last_archived_wal="000000010000000000000006",
                                      last_archived_time=T0, failed_count=0, last_failed_wal=None,
                                      last_failed_time=None, ready_segments=0, current_wal="x", archive_mode="on",
                                      now=T0)
    health = wal.ArchiveHealth("g", "g-0", status, 180.0, 0, None, wal.window_of(store, listing))  # type: ignore[arg-type]
    [gap] = [a for a in wal.archive_alerts(ctx, health) if a.kind == "wal_archive_gap"]
    assert gap.severity == "critical" and gap.details["first_missing"] == "000000010000000000000005"
    assert "000000010000000000000005 is missing" in gap.summary and "2026-12-01T00:02:30+00:00" in gap.summary
    assert "a base backup is requested" in gap.summary


def test_a_former_primarys_archive_alert_waits_for_the_new_timeline_in_the_archive(pg_home, monkeypatch):
    """Right after a promotion, before the new timeline's history file is in the archive, the
    dead primary's open `wal_archive_failing` is not resolved (continuity cannot be judged yet);
    once the archive has the new timeline and no gap, it resolves."""
    spec = spec_from(write_spec(pg_home / "specs", "g", postgres={"members": 2}))
    ctx = ClusterContext.for_spec(spec)
    listing, store = fabricated([(1, n) for n in range(1, 6)], [("b1", 1, 2)], {})
    status = archiving.ArchiverStatus(archived_count=0, last_archived_wal=None, last_archived_time=T0,
                                      failed_count=0, last_failed_wal=None, last_failed_time=None, ready_segments=0,
                                      current_wal="000000020000000000000006", archive_mode="on", now=T0)
    health = wal.ArchiveHealth("g", "g-1", status, 1e9, 0, None, wal.window_of(store, listing))  # type: ignore[arg-type]
    monkeypatch.setattr(wal, "archive_health", lambda _ctx, _store=None: health)
    failing = {"cluster": "g", "severity": "critical", "kind": "wal_archive_failing", "summary": "g-0: failing",
               "details": {"member": "g-0"}, "fired_at": 1.0, "resolved_at": None}
    _, state = wal.watch_archiving([ctx], {"g/wal_archive_failing/g-0": failing})
    assert "g/wal_archive_failing/g-0" in state  # timeline 2 not in the archive yet: kept open
    listing, store = fabricated([(1, n) for n in range(1, 6)], [("b1", 1, 2)],
                                {2: "1\t0/6000100\tno recovery target specified\n"})
    health.window = wal.window_of(store, listing)  # type: ignore[arg-type]
    assert health.window.gap is None and health.window.newest_timeline == 2
    _, state = wal.watch_archiving([ctx], state)
    assert "g/wal_archive_failing/g-0" not in state  # the archive is whole on the new timeline: resolved


def test_an_archive_of_the_layout_before_incarnations_is_adopted_only_if_it_is_this_systems(pg_home):
    """Upgrading: the files an older pg_ops wrote directly under `<cluster>.wal/` are moved into
    the incarnation's folder by the next deploy when their segments name this system (the window
    keeps its base backup); another system's are left where they are."""
    spec = spec_from(write_spec(pg_home / "specs", "legacy", postgres={"members": 1},
                                backups={"wal": {"archive_timeout_seconds": 5}}))
    with running_cluster(spec) as ctx:
        backup = wal.base_backup(ctx)
        wal.switch_and_wait(ctx)
        ref = wal.archive_ref(ctx)
        folder = local_archive.archive_dir(spec)
        for part in ("wals", "base"):  # as the layout before incarnations had them
            (folder / ref.sysid / part).rename(folder / part)
        assert wal.recovery_window(ctx).base_backups == 0
        deploy(ctx)
        assert not (folder / "wals").exists() and not (folder / "base").exists()
        window = wal.recovery_window(ctx)
        assert window.base_backups == 1 and window.oldest == backup.end_time and window.gap is None
        # Another system's old-layout segment: left alone.
        segment = next(s for s in wa.list_archive(ctx.store(), ref).segments if not s.segment.partial)
        data = bytearray((folder / ref.sysid / "wals" / segment.segment.name[:16] / segment.segment.name).read_bytes())
        data[24:32] = (int(ref.sysid) + 1).to_bytes(8, "little")
        stranger = folder / "wals" / segment.segment.name[:16] / segment.segment.name
        stranger.parent.mkdir(parents=True)
        stranger.write_bytes(bytes(data))
        deploy(ctx)
        assert stranger.exists() and wal.recovery_window(ctx).base_backups == 1
        assert {i.sysid for i in wa.incarnations(ctx.store(), "legacy")} == {ref.sysid, "legacy"}
