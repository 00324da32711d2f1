"""What a server makes of its configuration files: PostgreSQL's own verdict on a postgresql.conf
before anything uses it, and what a running server has applied of the files it has, what it
refused, and what waits for a restart.

Two facts of PostgreSQL shape this module (checked on 16 and 18):
- `pg_file_settings` re-reads the files when it is queried and marks a value the server could
  not apply with "setting could not be applied", for an invalid value and for a changed
  restart-only parameter alike; only `pg_settings.pending_restart` tells the two apart (after
  a reload). A misspelt name marks the whole file unusable: a reload then applies nothing.
- `postgres -C` parses a whole configuration file and applies nothing, and stops at the first
  error with the message the server would log ("invalid value for parameter "work_mem":
  "lots""); it needs no running server and no data files (an empty folder will do).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

# Entries of the files the server did not apply, with whether each waits for a restart; and
# the postmaster's start (a restart moves it) and last configuration load (a reload moves it).
APPLIED_SQL = """
select f.name, f.setting, coalesce(s.pending_restart, false)
from pg_file_settings f left join pg_settings s on s.name = f.name
where f.error is not null
"""
PENDING_RESTART_SQL = "select name from pg_settings where pending_restart"
TIMES_SQL = "select pg_postmaster_start_time(), pg_conf_load_time()"

_LOG_LINE = re.compile(r"^\S+ \S+ \S+ \[\d+\] (?:LOG|FATAL|ERROR|DETAIL|HINT):\s+(.*)$")
_NOT_AN_ERROR = ("skipping missing configuration file",)


@dataclass(frozen=True)
class AppliedConfig:
    """One member's configuration as it runs."""

    pending_restart: tuple[str, ...]   # parameters whose file value waits for a restart
    rejected: tuple[str, ...]          # "name = value" entries the server refused
    started_at: datetime               # the postmaster's start: a restart moves it
    loaded_at: datetime                # the last (re)load of the files: a reload moves it

    @property
    def applied(self) -> bool:
        return not self.pending_restart and not self.rejected


def read_applied(conn: psycopg.Connection) -> AppliedConfig:
    """Needs a superuser (pg_file_settings)."""
    rows = conn.execute(APPLIED_SQL).fetchall()
    pending = {name for (name,) in conn.execute(PENDING_RESTART_SQL).fetchall()}
    rejected = tuple(sorted({f"{name} = {setting}" for name, setting, restart in rows if not restart}))
    [(started, loaded)] = conn.execute(TIMES_SQL).fetchall()
    return AppliedConfig(tuple(sorted(pending)), rejected, started, loaded)


def reload(conn: psycopg.Connection) -> datetime:
    """Ask the server to re-read its files; returns the load time before, which a finished
    reload moves (the postmaster reloads asynchronously)."""
    loaded = load_time(conn)
    conn.execute("select pg_reload_conf()")
    return loaded


def load_time(conn: psycopg.Connection) -> datetime:
    [(loaded,)] = conn.execute("select pg_conf_load_time()").fetchall()
    return loaded


def config_file_text(conn: psycopg.Connection) -> str:
    """The postgresql.conf the server reads (`config_file`), as it is on its disk now (a
    superuser may read any file): a Kubernetes member's is the ConfigMap the kubelet last synced."""
    [(text,)] = conn.execute("select pg_read_file(current_setting('config_file'))").fetchall()
    return text


def settings_shown(conn: psycopg.Connection, names: list[str]) -> dict[str, str]:
    """SHOW of each name, as the server reports it (units canonicalised: 1024MB shows as 1GB)."""
    return {name: conn.execute("select current_setting(%s)", (name,)).fetchall()[0][0] for name in names}


def config_error(postgres: Path, text: str, run_as: Mapping | None = None) -> str | None:
    """PostgreSQL's own first objection to a postgresql.conf text, or None when it would start
    with it: `postgres -C server_version` on a copy of the text, with an empty data folder.
    `run_as`: subprocess arguments that start it as the server user (it refuses root)."""
    kwargs = dict(run_as or {})
    with tempfile.TemporaryDirectory(prefix="pg-ops-conf-") as tmp:
        folder = Path(tmp)
        data = folder / "data"
        data.mkdir(mode=0o700)
        conf = folder / "postgresql.conf"
        conf.write_text(text)
        folder.chmod(0o755)
        conf.chmod(0o644)
        if "user" in kwargs:
            os.chown(data, kwargs["user"], kwargs["group"])
        try:
            out = subprocess.run([str(postgres), "-D", str(data), "-c", f"config_file={conf}", "-C", "server_version"],
                                 capture_output=True, text=True, timeout=30, check=False,
                                 env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}, **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{postgres} could not check it: {exc}"
    if out.returncode == 0:
        return None
    return objection(out.stderr) or f"{postgres} -C exited with {out.returncode}"


def objection(stderr: str) -> str | None:
    """The server's messages about a file, as one line: the first error and its hint, without
    timestamps and without the closing "contains errors" (which names a temporary file)."""
    said = []
    for line in stderr.splitlines():
        m = _LOG_LINE.match(line.strip())
        text = m.group(1) if m else line.strip()
        if not text or text.startswith(_NOT_AN_ERROR) or "contains errors" in text:
            continue
        said.append(re.sub(r' in file "[^"]*" line \d+', "", text))
    return "; ".join(said[:2]) or None
