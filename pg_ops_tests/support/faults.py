"""Faults a test puts on a member's processes, beyond the kills of helpers.py (kill_member, lose_member)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


@contextlib.contextmanager
def hung(ctx, member):
    """SIGSTOP a member's postmaster and every backend it forked (not the supervisor, whose
    process group they share); always SIGCONT."""
    pid = int((ctx.platform.data_dir(member) / "postmaster.pid").read_text().splitlines()[0])
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid]
    stopped = []
    try:
        for target in [pid, *children]:  # the postmaster first: it cannot fork new ones meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGSTOP)
                stopped.append(target)
        yield stopped
    finally:
        for target in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGCONT)


def _ppid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
