"""System V shared memory a postmaster leaves behind.

Every postmaster keeps a small System V segment (56 bytes since PostgreSQL 9.3; its key and id
are line 7 of postmaster.pid). A postmaster killed with SIGKILL (fencing, a crash) leaves it; the
next postmaster in the same data dir finds it through postmaster.pid and removes it. A data dir
that is deleted takes that pointer with it, and the kernel keeps the segment until reboot: after
about 4,000 rebuilds, teardowns and drills (kernel.shmmni, 4096 by default) every initdb and
every start fails with "could not create shared memory segment". So before pg_ops deletes a data
dir it releases the segment its last postmaster left, once no process is attached to it.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

SYSV_SHM = Path("/proc/sysvipc/shm")


def segments() -> dict[int, tuple[int, int]]:
    """shmid -> (owner uid, attached processes), from the kernel's table ({} where there is none)."""
    try:
        lines = SYSV_SHM.read_text().splitlines()[1:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 8:
            out[int(fields[1])] = (int(fields[7]), int(fields[6]))
    return out


def remove_unattached(shmids: list[int]) -> list[int]:
    """Remove those of `shmids` no process is attached to (a running postmaster always is);
    returns the ones removed. Best effort: a segment that went meanwhile is no error."""
    table = segments()
    gone = [shmid for shmid in shmids if shmid in table and table[shmid][1] == 0]
    for shmid in gone:
        with contextlib.suppress(OSError):
            subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, check=False)
    return gone


def release_data_dir_segment(data_dir: Path) -> None:
    """Before a data dir is deleted: release the segment its last postmaster left, if unattached."""
    try:
        line = (data_dir / "postmaster.pid").read_text().splitlines()[6]
        shmid = int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return
    remove_unattached([shmid])
