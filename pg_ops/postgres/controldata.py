"""What a server's control file says (pg_controldata), for facts that need no login: a stopped
primary's shutdown checkpoint, whether a recovering server has promoted."""

from __future__ import annotations

import subprocess
from pathlib import Path

SHUT_DOWN = "shut down"  # "Database cluster state" after a clean shutdown of a primary
IN_PRODUCTION = "in production"  # a running primary (after a recovery: promoted)


def parse(text: str) -> dict[str, str]:
    """pg_controldata's "Label:   value" lines as a dict."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep:
            fields[label.strip()] = value.strip()
    return fields


def read(pg_bin: Path, data_dir: Path) -> dict[str, str]:
    """The control file's fields; empty when it cannot be read."""
    try:
        out = subprocess.run([str(pg_bin / "pg_controldata"), "-D", str(data_dir)], capture_output=True, text=True,
                             timeout=10, check=False, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse(out.stdout) if out.returncode == 0 else {}


def cluster_state(pg_bin: Path, data_dir: Path) -> str | None:
    """"Database cluster state": in production, in archive recovery, shut down, ..."""
    return read(pg_bin, data_dir).get("Database cluster state")


def shutdown_checkpoint(pg_bin: Path, data_dir: Path) -> str | None:
    """The shutdown checkpoint's LSN of a primary that stopped cleanly; None when the control
    file says otherwise (crashed, still running, a standby: "shut down in recovery") or cannot
    be read."""
    fields = read(pg_bin, data_dir)
    if fields.get("Database cluster state") != SHUT_DOWN:
        return None
    return fields.get("Latest checkpoint location") or None


# The settings a standby must match (hot standby refuses lower ones), as the control file names
# them: what the server last ran with.
STANDBY_SETTINGS = {"wal_level setting": "wal_level", "wal_log_hints setting": "wal_log_hints",
                    "max_connections setting": "max_connections",
                    "max_worker_processes setting": "max_worker_processes",
                    "max_wal_senders setting": "max_wal_senders",
                    "max_prepared_xacts setting": "max_prepared_transactions",
                    "max_locks_per_xact setting": "max_locks_per_transaction",
                    "track_commit_timestamp setting": "track_commit_timestamp"}


def last_run_options(pg_bin: Path, data_dir: Path) -> str:
    """`-c name=value` for each setting a standby must match, as the server last ran: a server
    started another way (pg_upgrade's, with the data dir's own postgresql.conf) then logs no
    change of them that would pause the replicas replaying its WAL (member.sh does the same)."""
    control = read(pg_bin, data_dir)
    return " ".join(f"-c {name}={control[key]}" for key, name in STANDBY_SETTINGS.items() if control.get(key))
