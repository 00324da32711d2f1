"""Base backups of file stores: `pg_basebackup -Ft -X none` streamed as one tar to stdout
(pg_ops compresses it into the store), the WAL coming from the archive. Its verbose output
names the start and end of the WAL the backup needs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from pg_ops.postgres.conninfo import Endpoint, member_dsn
from pg_ops.postgres.dump import _binary, _dump_process

START = re.compile(r"write-ahead log start point: ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
END = re.compile(r"write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)")


@dataclass
class BaseBackupPosition:
    start_lsn: str | None = None
    timeline: int | None = None
    end_lsn: str | None = None
    log: list[str] = field(default_factory=list)


@contextlib.contextmanager
def pg_basebackup_tar(endpoint: Endpoint, user: str, password: str, member: str,
                      position: BaseBackupPosition) -> Iterator[IO[bytes]]:
    """Yield the tar stream; `position` is filled from pg_basebackup's log when it ends."""
    argv = [_binary("pg_basebackup"), f"--dbname={member_dsn(endpoint, user)}", "--pgdata=-", "--format=tar",
            "--wal-method=none", "--checkpoint=fast", "--no-manifest", "--verbose", "--no-password"]
    with _dump_process(argv, f"pg_basebackup of {member}", user, password, stderr_sink=position.log) as out:
        yield out
    text = "\n".join(position.log)
    if m := START.search(text):
        position.start_lsn, position.timeline = m.group(1), int(m.group(2))
    if m := END.search(text):
        position.end_lsn = m.group(1)
