"""The Platform protocol: the one seam between the local and the Kubernetes backends."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pg_ops.credentials import Credentials
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState, StateStore

# A throw-away server: durability buys nothing there, and a restore is mostly writes.
SCRATCH_PARAMETERS = {"fsync": False, "synchronous_commit": "off", "full_page_writes": False,
                      "wal_level": "minimal", "max_wal_senders": 0, "max_replication_slots": 0,
                      "maintenance_work_mem": "256MB", "max_wal_size": "4GB", "autovacuum": False}


REPORT_FILE = "pg_ops-report"  # written by member.sh in its state dir (the data dir's parent)


def parse_member_report(text: str) -> dict[str, str]:
    """The member script's report: key=value lines (boot action, isolation, discarded writes)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ScratchTarget:
    """An empty, throw-away PostgreSQL server that is never a member of any cluster (restore
    drills restore into it). `name` says where it runs (a scratch cluster, a pod)."""

    name: str
    endpoint: Endpoint
    password: str = field(repr=False)  # of the superuser postgres


class Platform(Protocol):
    spec: ClusterSpec
    kind: str  # "local" | "kubernetes"

    # -- where things are ------------------------------------------------------------------
    def member_endpoints(self) -> dict[str, Endpoint]:
        """Every member of the spec and the address pg_ops reaches it at."""
        ...

    def peer_addresses(self) -> dict[str, str]:
        """host:port each member script uses to reach a peer (written into the record)."""
        ...

    def primary_dsn(self, user: str, dbname: str) -> str:
        """A libpq string (no password) that always reaches the current primary."""
        ...

    def passfile(self) -> Path | None:
        """A 0600 libpq passfile for the admin role, where the platform has one."""
        ...

    # -- pg_ops-owned objects --------------------------------------------------------------
    def state_store(self) -> StateStore: ...

    def load_credentials(self) -> Credentials | None: ...

    def ensure_credentials(self) -> Credentials:
        """Generate once, never overwrite; add roles the spec gained."""
        ...

    def prepare(self, state: DesiredState) -> None:
        """Make the static parts exist (config files / Git-owned objects when not GitOps)."""
        ...

    # -- members ---------------------------------------------------------------------------
    def member_running(self, name: str) -> bool: ...

    def start_member(self, name: str) -> None: ...

    def stop_member(self, name: str) -> None:
        """Clean (fast) shutdown of postgres and its supervisor."""
        ...

    def kill_member(self, name: str) -> None:
        """SIGKILL supervisor and postgres together, as when a node dies (chaos, fencing)."""
        ...

    def fence_member(self, name: str) -> bool:
        """Remove the member from routing and stop it wherever the platform can reach it.
        True when it is known to be stopped now; False when it may still run somewhere pg_ops
        cannot reach (a pod on a node cut off from the API server): then only its own
        isolation fencing stops it, and a failover waits for its lease to run out."""
        ...

    def route_primary(self, name: str) -> None:
        """Send the primary endpoint to `name` (and away from everyone else)."""
        ...

    def wipe_member(self, name: str) -> None:
        """Delete a stopped member's data so it re-clones at its next start."""
        ...

    def member_log_tail(self, name: str, lines: int = 5) -> str: ...

    def member_report(self, name: str) -> dict[str, str]:
        """What the member script reported (base.REPORT_FILE, parsed): the boot table row it took
        (boot.action, boot.reason: a refusal's reason), its isolation state and the writes its
        last rewind or re-clone discarded (docs/architecture/interfaces.md lists the keys). {} when
        there is none (or the member's volume cannot be read now)."""
        ...

    def data_dir_usage(self, name: str) -> tuple[int, int] | None:
        """(used bytes, total bytes) of the filesystem holding the member's data."""
        ...

    def teardown(self) -> None: ...

    # -- scratch servers -------------------------------------------------------------------
    def scratch_target(self, purpose: str) -> AbstractContextManager[ScratchTarget]:
        """Start an empty server (SCRATCH_PARAMETERS) nothing routes to, wait until it accepts
        connections, and always remove it, data included, when the block ends."""
        ...
