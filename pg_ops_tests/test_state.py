import threading

import pytest

from pg_ops.errors import ConflictError, LockHeld
from pg_ops.platforms.local_state import FileStateStore
from pg_ops.state import DesiredState, topology_lock, update_state


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
