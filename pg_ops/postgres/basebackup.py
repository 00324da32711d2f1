"""Base backups of file stores: `pg_basebackup -Ft -X none` streamed as one tar to stdout
(pg_ops compresses it into the store), the WAL coming from the archive. Where the backup's WAL
starts and ends is read from the backup history file PostgreSQL archives when it ends
(`<segment>.<offset>.backup`), found by the backup's label."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO

from pg_ops.postgres.conninfo import Endpoint, member_dsn
from pg_ops.postgres.dump import _binary, _dump_process


@contextlib.contextmanager
def pg_basebackup_tar(endpoint: Endpoint, user: str, password: str, member: str, label: str) -> Iterator[IO[bytes]]:
    """Yield the tar stream (the server waits until the backup's WAL is archived before ending it)."""
    argv = [_binary("pg_basebackup"), f"--dbname={member_dsn(endpoint, user)}", "--pgdata=-", "--format=tar",
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


def parse_backup_history(text: str) -> BackupHistory:
    fields = {m.group(1): m.group(2).strip() for line in text.splitlines() if (m := LINE.match(line))}
    start, stop = LOCATION.match(fields["START WAL LOCATION"]), LOCATION.match(fields["STOP WAL LOCATION"])
    assert start is not None and stop is not None, "a backup history file PostgreSQL wrote"

    def when(value: str) -> datetime:
        # "2026-12-01 21:13:45 GMT" (the server's log_timezone; pg_ops servers run in UTC/GMT)
        stamp, _, zone = value.rpartition(" ")
        parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        from zoneinfo import ZoneInfo
        return parsed.replace(tzinfo=ZoneInfo("UTC" if zone in ("GMT", "UTC") else zone))

    return BackupHistory(label=fields.get("LABEL", ""), start_wal=start.group(2), stop_wal=stop.group(2),
                         start_lsn=start.group(1), stop_lsn=stop.group(1), start_time=when(fields["START TIME"]),
                         stop_time=when(fields["STOP TIME"]), timeline=int(fields["START TIMELINE"]))
