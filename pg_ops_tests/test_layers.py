"""One way to do each thing, held by the source itself (no cluster needed): operations never ask
which platform they run on, every PostgreSQL connection is opened in postgres/session.py, and
only the Dagster layer imports dagster."""

from __future__ import annotations

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
