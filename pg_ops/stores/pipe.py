"""Compress a stream into a store object: zstd (multi-threaded), sha256 and byte counts
computed on the fly, progress logged. Nothing is staged on local disk."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import BinaryIO

from pg_ops.stores.base import ObjectWriter

CHUNK = 1 << 20
PROGRESS_EVERY_S = 10.0
ZSTD_LEVEL = 1  # level 1 keeps up with pg_dump -Z 0; higher levels cost more than they save here
ZSTD_THREADS = 2


@dataclass(frozen=True)
class StreamStats:
    raw_bytes: int
    stored_bytes: int
    sha256: str  # of the stored (compressed) object: what a drill downloads and checks
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


class _HashingSink:
    """The compressor's output: counted, hashed, handed to the store writer."""

    def __init__(self, writer: ObjectWriter):
        self.writer = writer
        self.hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.bytes += len(data)
        self.writer.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def compress_into(source: BinaryIO, writer: ObjectWriter, *, label: str,
                  log: logging.Logger | None = None) -> StreamStats:
    """Read `source` to its end into `writer` (not committed here: the caller decides)."""
    import zstandard

    log = log or logging.getLogger("pg_ops")
    sink = _HashingSink(writer)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS)
    started = time.monotonic()
    next_report = started + PROGRESS_EVERY_S
    raw = 0
    with compressor.stream_writer(sink, closefd=False) as zw:
        while chunk := source.read(CHUNK):
            raw += len(chunk)
            zw.write(chunk)
            now = time.monotonic()
            if now >= next_report:
                log.info("%s: %.1f MB read, %.1f MB stored, %.1f MB/s", label, raw / 1e6, sink.bytes / 1e6,
                         raw / 1e6 / (now - started))
                next_report = now + PROGRESS_EVERY_S
    return StreamStats(raw, sink.bytes, sink.hash.hexdigest(), time.monotonic() - started)


def compress_bytes_into(data: bytes, writer: ObjectWriter, *, label: str) -> StreamStats:
    import io

    return compress_into(io.BytesIO(data), writer, label=label)
