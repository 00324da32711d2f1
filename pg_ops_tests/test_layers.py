"""One way to do each thing, held by the source itself (no cluster needed): operations never ask
which platform they run on, every PostgreSQL connection is opened in postgres/session.py, and
only the Dagster layer imports dagster."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pg_ops

ROOT = Path(pg_ops.__file__).parent


def sources(folder: str = "") -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / folder).rglob("*.py"))}


def offenders(pattern: str, folder: str = "", allowed: tuple[str, ...] = ()) -> list[str]:
    return [f"{name}:{n}" for name, text in sources(folder).items() if name not in allowed
            for n, line in enumerate(text.splitlines(), 1) if re.search(pattern, line)]


def test_operations_never_branch_on_the_platform():
    assert offenders(r"platform\.kind\s*(==|!=|in\b)|\.kind\s*(==|!=)\s*\"(local|kubernetes)\"", "operations") == []
    assert offenders(r"getattr\([^)]*platform", "operations") == []


def test_every_connection_is_opened_in_the_session_module():
    assert offenders(r"psycopg\.connect\(", allowed=("postgres/session.py",)) == []


def test_only_defs_imports_dagster():
    pattern = r"^\s*(import dagster|from dagster)"
    assert offenders(pattern, "operations") == offenders(pattern, "platforms") == offenders(pattern, "postgres") == []


# -- the layers, bottom up: render/ under platforms/, the HA decisions pure -------------------------
def test_render_never_imports_platforms():
    """The manifests are pure functions of the spec; the Kubernetes backend applies them, never the
    reverse (render/names.py holds the names both sides share)."""
    assert offenders(r"^\s*(from|import) pg_ops\.platforms\b", "render") == []


def test_the_drill_pod_manifests_are_built_only_in_render():
    pod_spec_keys = r'"(restartPolicy|automountServiceAccountToken|securityContext|volumeMounts|emptyDir)"\s*:'
    assert offenders(pod_spec_keys, "platforms") == offenders(pod_spec_keys, "operations") == []


# What the HA decisions may import from pg_ops: pure modules whole, and from modules that also
# connect or write files only these values (types and naming rules), never a function that does I/O.
PURE_FOR_HA = {"pg_ops.operations.ha.model", "pg_ops.operations.alert_model", "pg_ops.operations.stored",
               "pg_ops.postgres.lsn", "pg_ops.spec", "pg_ops.errors"}
VALUES_FOR_HA = {"pg_ops.postgres.topology": {"MemberProbe", "StandbyRow"},
                 "pg_ops.postgres.admin": {"slot_name", "synchronous_standby_names"},
                 "pg_ops.postgres.config": {"wal_receiver_timeout_seconds"},
                 "pg_ops.state": {"DesiredState", "TopologyLock"}}
STDLIB_FOR_HA = {"__future__", "dataclasses", "datetime", "hashlib", "typing", "collections"}


def test_the_ha_decisions_import_nothing_that_does_io():
    """ha/model.py and ha/decide.py decide from a view read elsewhere (ha/observe.py) and return
    what to do (ha/act.py does it): so every decision is tested without a server (test_ha.py)."""
    wrong = []
    for name in ("operations/ha/model.py", "operations/ha/decide.py"):
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, ast.Import):
                wrong += [f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] not in STDLIB_FOR_HA]
            elif isinstance(node, ast.ImportFrom) and node.module:
                module = node.module
                if module.split(".")[0] in STDLIB_FOR_HA or module in PURE_FOR_HA:
                    continue
                wrong += [f"{name}: from {module} import {a.name}" for a in node.names
                          if a.name not in VALUES_FOR_HA.get(module, set()) and f"{module}.{a.name}" not in PURE_FOR_HA]
    assert wrong == []


def test_alert_delivery_never_imports_the_context_that_carries_it():
    """operations/alerts.py delivers; a ClusterContext carries its AlertDelivery; what needs both
    is operations/cluster_alerts.py. No circle between alerts and context."""
    text = (ROOT / "operations" / "alerts.py").read_text()
    assert not re.search(r"pg_ops\.operations\.context|pg_ops\.operations import context", text)


# -- the tests: shared support, public handles ------------------------------------------------------
TESTS = ROOT.parent / "pg_ops_tests"


def lines_of_tests(pattern: str) -> list[str]:
    return [f"{p.relative_to(TESTS)}:{n}" for p in sorted(TESTS.rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]


def test_no_test_module_imports_another_test_module():
    """What several test modules (or benchmarks) share lives in pg_ops_tests/support/."""
    assert lines_of_tests(r"^\s*(from pg_ops_tests\.test_|import pg_ops_tests\.test_|"
                          r"from pg_ops_tests import test_)") == []


def test_tests_call_no_private_platform_method():
    """A test reaches a platform through the Platform protocol or the documented handles each
    backend keeps for the tests (supervisor_pid, force_delete_pod, member_pods, …), never a private
    method, so a backend can change its insides without breaking the tests."""
    assert lines_of_tests(r"[Pp]latform\)?\._[a-z]") == []


# Modules of operations/ that still open connections themselves, and why. Equal, not a subset:
# a module that moves onto the context leaves this list, a new one cannot join it unnoticed.
CONNECTS_ITSELF = {
    "operations/context.py": "the toolkit: ctx.sql (a member, superuser) and ctx.on_primary_endpoint",
    "operations/backup.py": "one reading of endpoints and password for a whole backup, shared with pg_dump",
    "operations/catalog.py": "the passwords being deployed or rotated, not yet the stored ones",
    "operations/deploy.py": "the credentials being deployed, before the platform holds them",
    "operations/drill.py": "the drill's scratch server, not a member",
    "operations/pooling.py": "the pooler's own role at the pooler's endpoint (its member calls: not moved yet)",
    "operations/recover.py": "the PITR drill's scratch server, not a member",
    "operations/restore.py": "a restore target's own connection string",
    "operations/rollout.py": "member reads with one reading per function (not moved yet)",
    "operations/upgrade.py": "the rehearsal's scratch server, not a member",
    "operations/write_probe.py": "a connection held open in its own thread for a whole rollout",
}


def test_operations_run_sql_through_the_context():
    """SQL on a member as the superuser is `ctx.sql`, through the primary endpoint
    `ctx.on_primary_endpoint` (operations/context.py: through the session's one reading of the
    endpoints and the password); the old spellings are gone, and who else connects says why."""
    spellings = (r"with_connection\(\s*ctx\.endpoints\(\)|connect_dsn\(\s*ctx\.platform\.primary_dsn"
                 r"|\bact\.sql\(|\b_on_primary\(")
    assert offenders(spellings, "operations", allowed=("operations/context.py",)) == []
    connecting = {o.split(":")[0] for o in offenders(r"\b(with_connection|connect_dsn)\b", "operations")}
    assert connecting == set(CONNECTS_ITSELF)
