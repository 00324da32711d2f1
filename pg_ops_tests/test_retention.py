"""Retention over fabricated sets of dated backups (pure), and prune on a real store."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from pg_ops.operations.context import ClusterContext
from pg_ops.operations.retention import plan_retention, prune
from pg_ops.stores import catalog as cat
from pg_ops.stores.filesystem import FileStore

NOW = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def rec(days_ago: float, status: str = "complete", held: bool = False) -> cat.BackupRecord:
    started = NOW - timedelta(days=days_ago)
    holds = [cat.Hold(holder="drill-run-1", purpose="drill", expires_at=NOW.timestamp() + 3600)] if held else []
    return cat.BackupRecord(id=cat.new_backup_id(started), status=status, started=started, stored_bytes=1, holds=holds)


def plan(records, retention_days=7, min_keep=3):
    decisions, blocked = plan_retention(records, now=NOW, retention_days=retention_days, min_keep=min_keep)
    return {d.id: d for d in decisions}, blocked


def ids(records, *indexes):
    return {records[i].id for i in indexes}


def test_keeps_seven_days_and_deletes_older_ones():
    records = [rec(d) for d in range(0, 14)]  # nightly for two weeks, all complete
    decisions, blocked = plan(records)
    assert blocked is None
    kept = {i for i, d in decisions.items() if d.keep}
    assert kept == ids(records, *range(0, 7))
    for r in records[7:]:
        assert "older than 7 days" in decisions[r.id].reason


def test_min_keep_good_backups_survive_whatever_their_age():
    # Backups stopped 30 days ago: the newest three good ones stay, even though all are old.
    records = [rec(d) for d in (30, 31, 32, 33, 34)] + [rec(29, "failed")]
    decisions, _ = plan(records)
    assert {i for i, d in decisions.items() if d.keep} == ids(records, 0, 1, 2)
    assert "newest 3 good" in decisions[records[0].id].reason
    assert not decisions[records[5].id].keep  # a failed drill is not good


def test_newest_verified_backup_is_kept():
    records = [rec(d) for d in range(0, 10)] + [rec(20, "verified"), rec(25, "verified")]
    decisions, _ = plan(records)
    assert decisions[records[10].id].keep and decisions[records[10].id].reason == "the newest verified backup"
    assert not decisions[records[11].id].keep


def test_verified_counts_as_good_for_min_keep():
    records = [rec(40, "verified"), rec(41), rec(42), rec(43)]
    decisions, _ = plan(records)
    assert {i for i, d in decisions.items() if d.keep} == ids(records, 0, 1, 2)


def test_failed_drills_are_not_good():
    records = [rec(0, "failed"), rec(10, "failed"), rec(11), rec(12), rec(13), rec(14)]
    decisions, _ = plan(records)
    kept = {i for i, d in decisions.items() if d.keep}
    assert kept == ids(records, 0, 2, 3, 4)  # the young failed one by age; three good ones by min_keep


def test_incomplete_backups_older_than_a_day_are_deleted():
    records = [rec(0), rec(0.5, "incomplete"), rec(2, "incomplete"), rec(3)]
    decisions, _ = plan(records)
    assert decisions[records[1].id].keep
    assert not decisions[records[2].id].keep and "incomplete" in decisions[records[2].id].reason
    assert decisions[records[3].id].keep


def test_nothing_is_pruned_the_night_a_backup_failed():
    records = [rec(0, "incomplete")] + [rec(d) for d in range(1, 20)] + [rec(5, "incomplete")]
    decisions, blocked = plan(records)
    assert blocked and "incomplete" in blocked
    assert all(d.keep for d in decisions.values())


def test_a_held_backup_is_never_deleted():
    records = [rec(d) for d in range(0, 5)] + [rec(20, held=True), rec(21, "incomplete", held=True)]
    decisions, _ = plan(records)
    for r in records[5:]:
        assert decisions[r.id].keep and "held by drill drill-run-1" in decisions[r.id].reason


def test_an_expired_hold_does_not_protect():
    old = rec(20)
    old.holds = [cat.Hold(holder="dead-run", purpose="restore", expires_at=NOW.timestamp() - 1)]
    records = [rec(d) for d in range(0, 5)] + [old]
    decisions, _ = plan(records)
    assert not decisions[old.id].keep


@pytest.mark.parametrize("retention_days,min_keep", [(1, 1), (7, 3), (3, 10)])
def test_never_deletes_the_last_good_backup(retention_days, min_keep):
    records = [rec(d, s) for d, s in ((50, "complete"), (60, "verified"), (70, "failed"), (80, "incomplete"))]
    decisions, _ = plan(records, retention_days, min_keep)
    assert decisions[records[0].id].keep and decisions[records[1].id].keep


# -- prune on a real filesystem store ---------------------------------------------------------
def fabricate(store: FileStore, cluster: str, backup_id: str, status: str) -> None:
    store.put_bytes(cat.object_key(cluster, backup_id, "app.dump.zst"), b"dump")
    if status != "incomplete":
        store.put_bytes(cat.object_key(cluster, backup_id, cat.MANIFEST), b"{}")
    if status in ("verified", "failed"):
        result = "passed" if status == "verified" else "failed"
        store.put_bytes(cat.object_key(cluster, backup_id, cat.DRILL), json.dumps({"result": result}).encode())


@pytest.fixture
def pruning(make_spec, pg_home):
    spec = make_spec("r", backups={"retention_days": 7, "min_keep": 2})
    ctx = ClusterContext.for_spec(spec)
    store = FileStore(pg_home / "backups")
    return ctx, store


def test_prune_dry_run_reports_and_deletes_nothing(pruning):
    ctx, store = pruning
    now = datetime.now(UTC)
    ages = {0: "complete", 1: "complete", 9: "verified", 10: "complete", 12: "complete", 13: "incomplete"}
    made = {age: cat.new_backup_id(now - timedelta(days=age)) for age in ages}
    for age, status in ages.items():
        fabricate(store, "r", made[age], status)
    before = store.list("r/")
    result = prune(ctx, store, dry_run=True)
    assert store.list("r/") == before
    assert set(result.to_delete) == {made[10], made[12], made[13]}
    reasons = {d.id: d.reason for d in result.decisions}
    assert reasons[made[9]] == "the newest verified backup"
    assert "incomplete" in reasons[made[13]]

    result = prune(ctx, store)
    left = {r.id for r in cat.list_backups(store, "r")}
    assert left == {made[0], made[1], made[9]} and set(result.deleted) == {made[10], made[12], made[13]}
    assert not (store.root / "r" / made[10]).exists()  # the folder goes too


def test_prune_respects_a_hold_and_a_failed_night(pruning):
    ctx, store = pruning
    now = datetime.now(UTC)
    old = [cat.new_backup_id(now - timedelta(days=d)) for d in (0, 1, 20)]
    for backup_id in old:
        fabricate(store, "r", backup_id, "complete")
    with cat.hold_backup(store, "r", old[2], holder="drill-abc", purpose="drill"):
        result = prune(ctx, store)
        assert old[2] in result.kept and result.deleted == []
    assert not any("hold-" in o.key for o in store.list("r/"))  # the hold is released

    failed_tonight = cat.new_backup_id(now + timedelta(seconds=5))
    fabricate(store, "r", failed_tonight, "incomplete")
    result = prune(ctx, store)
    assert result.blocked and result.deleted == [] and (store.root / "r" / old[2]).exists()


def test_prune_aborts_stale_uploads_only(pruning):
    ctx, store = pruning
    fabricate(store, "r", cat.new_backup_id(), "complete")
    stale = store.open_writer("r/20261101T020000Z/app.dump.zst")
    stale.write(b"partial")
    fresh = store.open_writer("r/20261101T020000Z/other.dump.zst")
    fresh.write(b"partial")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale.partial, (two_days_ago, two_days_ago))
    result = prune(ctx, store)
    assert result.aborted_uploads == ["r/20261101T020000Z/app.dump.zst"]
    assert not stale.partial.exists() and fresh.partial.exists()
    fresh.abort()


def test_freshness_check_fails_when_the_newest_good_backup_is_older_than_26_hours(pruning, pg_home):
    import dagster as dg

    from pg_ops.defs import backups
    from pg_ops.defs.resources import PgOpsResource

    ctx, store = pruning
    defs = dg.Definitions.merge(backups.build([ctx.spec]), dg.Definitions(
        resources={"pg_ops": PgOpsResource(clusters_path=str(pg_home / "specs"))}))
    job = defs.resolve_job_def(backups.FRESHNESS_JOB)

    def evaluate():
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(instance=instance, raise_on_error=False)
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    assert not evaluate().passed  # no backup at all
    now = datetime.now(UTC)
    fabricate(store, "r", cat.new_backup_id(now - timedelta(hours=27)), "complete")
    fabricate(store, "r", cat.new_backup_id(now - timedelta(hours=1)), "incomplete")
    stale = evaluate()
    assert not stale.passed and stale.metadata["age_hours"].value > 26
    fabricate(store, "r", cat.new_backup_id(now - timedelta(hours=2)), "verified")
    assert evaluate().passed
