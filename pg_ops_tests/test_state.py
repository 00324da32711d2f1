import threading
import time

import pytest

from pg_ops.errors import ConflictError, LockHeld, LockLost
from pg_ops.operations.steps import StepLog
from pg_ops.platforms.local_state import FileStateStore
from pg_ops.state import DesiredState, HeldLock, topology_lock, update_state


def record(**kw) -> DesiredState:
    base = {"cluster": "c", "primary": "c-0", "members": {"c-0": "127.0.0.1:5000", "c-1": "127.0.0.1:5001"}}
    return DesiredState(**{**base, **kw})


def test_text_round_trip_is_shell_readable():
    state = record(epoch=4, fenced=("c-1",), system_identifier="123", bootstrap=False, version=3)
    text = state.to_text()
    assert "primary=c-0\n" in text and "member.c-1=127.0.0.1:5001\n" in text and "bootstrap=false\n" in text
    assert DesiredState.from_text(text) == state


def test_compare_and_swap(tmp_path):
    store = FileStateStore(tmp_path / "state")
    first = store.write(record(), None)
    assert first.version == 1
    with pytest.raises(ConflictError):
        store.write(record(), None)  # already exists
    second = store.write(first.model_copy(update={"epoch": 2}), 1)
    assert second.version == 2 and store.read().epoch == 2
    with pytest.raises(ConflictError):
        store.write(first.model_copy(update={"epoch": 9}), 1)  # stale version
    assert store.read().epoch == 2


def test_concurrent_updates_lose_nothing(tmp_path):
    store = FileStateStore(tmp_path / "state")
    store.write(record(epoch=0), None)

    def bump():
        for _ in range(20):
            update_state(store, lambda s: s.model_copy(update={"epoch": s.epoch + 1}), attempts=200)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read().epoch == 80


def test_topology_lock_refuses_second_holder_and_releases(tmp_path):
    store = FileStateStore(tmp_path / "state")
    store.write(record(), None)
    with topology_lock(store, "failover"):
        assert store.read().lock.operation == "failover"
        other = store.read().lock.model_copy(update={"holder": "someone-else"})
        # Simulate another process holding it.
        store.write(store.read().model_copy(update={"lock": other}), store.read().version)
        with pytest.raises(LockHeld, match="failover held by someone-else"):
            with topology_lock(store, "switchover"):
                pass
    # Our release leaves a foreign holder alone.
    assert store.read().lock.holder == "someone-else"


def test_expired_lock_is_taken_over(tmp_path):
    store = FileStateStore(tmp_path / "state")
    store.write(record(), None)
    with topology_lock(store, "deploy", ttl_seconds=-1):
        pass
    stale = store.read()
    assert stale.lock is None
    with topology_lock(store, "deploy", ttl_seconds=-1):
        with topology_lock(store, "failover"):  # the first one already expired
            assert store.read().lock.operation == "failover"


def test_lock_is_renewed_while_held(tmp_path):
    store = FileStateStore(tmp_path / "state")
    store.write(record(), None)
    with topology_lock(store, "switchover", ttl_seconds=0.9) as lock:
        time.sleep(2.0)  # more than twice the TTL: only renewal keeps it
        held = store.read().lock
        assert held.holder == lock.holder and not held.expired()
        with pytest.raises(LockHeld):
            with topology_lock(store, "failover"):
                pass
    assert store.read().lock is None


def test_writes_under_a_lost_lock_are_refused(tmp_path):
    store = FileStateStore(tmp_path / "state")
    store.write(record(), None)
    with topology_lock(store, "failover", ttl_seconds=60) as lock:
        lock.update(lambda s: s.model_copy(update={"epoch": 2}))
        # Another run took the lock over (ours had expired while we were stuck).
        taken = store.read().lock.model_copy(update={"holder": "switchover@other:1"})
        store.write(store.read().model_copy(update={"lock": taken}), store.read().version)
        with pytest.raises(LockLost, match="now held by switchover@other:1"):
            lock.update(lambda s: s.model_copy(update={"epoch": 3, "primary": "c-1"}))
    state = store.read()
    assert state.epoch == 2 and state.primary == "c-0" and state.lock.holder == "switchover@other:1"


def test_a_step_after_the_lock_was_taken_over_never_runs(tmp_path, monkeypatch):
    """L2: the renewals stall past the TTL and another run takes the lock: the next step of the
    change raises LockLost before its body runs (not only record writes are refused)."""
    import logging

    store = FileStateStore(tmp_path / "state")
    store.write(record(), None)
    monkeypatch.setattr(HeldLock, "_renew_once", lambda self: None)  # the renewals stall
    ran: list[str] = []
    steps = StepLog(logging.getLogger("test"), "failover")
    with topology_lock(store, "failover", ttl_seconds=2.5) as lock:
        steps.guard = lock.check
        with steps.step("fence the old primary"):
            ran.append("fence")  # within the TTL: no read, nobody else can hold it
        time.sleep(2.7)  # expired: another run may take it now, and does
        with topology_lock(store, "switchover", ttl_seconds=60):
            with pytest.raises(LockLost, match="now held by switchover"):
                with steps.step("promote"):
                    ran.append("promote")
    assert ran == ["fence"] and steps.steps[-1][0] == "promote (failed)"


def test_new_record_fields_round_trip():
    state = record(sync_set=("c-1",), observed_lsn="0/3000060", observed_at=12.5, observed_standbys=("c-1",))
    assert DesiredState.from_text(state.to_text()) == state
