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
