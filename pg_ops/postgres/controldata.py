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
