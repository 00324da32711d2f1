"""Base backups: `pg_basebackup -Ft -X none` streamed as one tar to stdout (pg_ops compresses it
into the store), the WAL coming from the archive. Where the backup's WAL starts and ends is read,
for a backup of the primary, from the backup history file PostgreSQL archives when it ends
(`<segment>.<offset>.backup`), found by the backup's label. A standby writes no history file:
its start is read from the `backup_label` the server puts first in the tar (LabelTap), its end
from the standby once the backup ended (operations/wal.py)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from pg_ops.postgres.conninfo import Endpoint, member_dsn
from pg_ops.postgres.dump import _binary, _dump_process


@contextlib.contextmanager
def pg_basebackup_tar(endpoint: Endpoint, user: str, password: str, member: str, label: str,
                      bin_dir: Path | None = None) -> Iterator[IO[bytes]]:
    """Yield the tar stream (the server waits until the backup's WAL is archived before ending it).
    `bin_dir`: pg_basebackup's folder (default pg_ops's client tools)."""
    tool = str(bin_dir / "pg_basebackup") if bin_dir is not None else _binary("pg_basebackup")
    argv = [tool, f"--dbname={member_dsn(endpoint, user)}", "--pgdata=-", "--format=tar",
            "--wal-method=none", "--checkpoint=fast", "--no-manifest", f"--label={label}", "--no-password"]
    with _dump_process(argv, f"pg_basebackup of {member}", user, password) as out:
        yield out


@dataclass(frozen=True)
class BackupHistory:
    label: str
    start_wal: str
    stop_wal: str
    start_lsn: str
    stop_lsn: str
    start_time: datetime
    stop_time: datetime
    timeline: int


LINE = re.compile(r"^([A-Z ]+): (.*)$")
LOCATION = re.compile(r"^([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)")


def _fields(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for line in text.splitlines() if (m := LINE.match(line))}


def _when(value: str) -> datetime:
    # "2026-12-01 21:13:45 GMT" (the server's log_timezone; pg_ops servers run in UTC/GMT)
    stamp, _, zone = value.rpartition(" ")
    parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
    from zoneinfo import ZoneInfo
    return parsed.replace(tzinfo=ZoneInfo("UTC" if zone in ("GMT", "UTC") else zone))


def parse_backup_history(text: str) -> BackupHistory:
    fields = _fields(text)
    start, stop = LOCATION.match(fields["START WAL LOCATION"]), LOCATION.match(fields["STOP WAL LOCATION"])
    assert start is not None and stop is not None, "a backup history file PostgreSQL wrote"
    return BackupHistory(label=fields.get("LABEL", ""), start_wal=start.group(2), stop_wal=stop.group(2),
                         start_lsn=start.group(1), stop_lsn=stop.group(1), start_time=_when(fields["START TIME"]),
                         stop_time=_when(fields["STOP TIME"]), timeline=int(fields["START TIMELINE"]))


def standby_position(conn) -> tuple[str | None, datetime | None]:
    """Where a standby has replayed to, and the server's time now (a standby backup's end)."""
    row = conn.execute("select pg_last_wal_replay_lsn()::text, clock_timestamp()").fetchone()
    return (row[0], row[1]) if row else (None, None)


@dataclass(frozen=True)
class BackupStart:
    """What a backup_label says: where and when the backup began."""
    label: str
    start_wal: str
    start_lsn: str
    start_time: datetime
    timeline: int
    from_standby: bool


def parse_backup_label(text: str) -> BackupStart:
    fields = _fields(text)
    start = LOCATION.match(fields.get("START WAL LOCATION", ""))
    if start is None or "START TIME" not in fields or "START TIMELINE" not in fields:
        raise ValueError(f"not a backup_label: {text[:200]!r}")
    return BackupStart(label=fields.get("LABEL", ""), start_wal=start.group(2), start_lsn=start.group(1),
                       start_time=_when(fields["START TIME"]), timeline=int(fields["START TIMELINE"]),
                       from_standby=fields.get("BACKUP FROM") == "standby")


TAR_BLOCK = 512
LABEL_HEAD_BYTES = TAR_BLOCK + 8192  # the label's tar header and its text (well under a kilobyte)


class LabelTap:
    """The tar stream passed through unchanged, keeping its first bytes: the server sends the
    main tablespace's `backup_label` as the tar's first member."""

    def __init__(self, source: IO[bytes]):
        self.source = source
        self.head = bytearray()

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        if len(self.head) < LABEL_HEAD_BYTES:
            self.head += chunk[:LABEL_HEAD_BYTES - len(self.head)]
        return chunk

    def backup_label(self) -> str:
        header = bytes(self.head[:TAR_BLOCK])
        name = header[:100].split(b"\0", 1)[0].decode(errors="replace")
        if name != "backup_label":
            raise ValueError(f"the base backup's tar does not begin with backup_label (first member: {name!r})")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        return bytes(self.head[TAR_BLOCK:TAR_BLOCK + size]).decode(errors="replace")
