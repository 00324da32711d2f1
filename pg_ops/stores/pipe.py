"""Compress a stream into a store object: zstd (multi-threaded), sha256 and byte counts
computed on the fly, progress logged. Nothing is staged on local disk.

Three stages overlap: this thread reads the dump and feeds the compressor (zstd's own worker
threads compress), and a sink thread hashes the compressed bytes and hands them to the store
writer (a file write or an S3 part). Hashing and writing in the reading thread made the backup
about a sixth slower than the raw `pg_dump | zstd` pipe on 2 cores."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from pg_ops.stores.base import ObjectWriter

CHUNK = 1 << 20
PROGRESS_EVERY_S = 10.0
ZSTD_LEVEL = 1  # level 1 keeps up with pg_dump -Z 0; higher levels cost more than they save here
ZSTD_THREADS = 2
SINK_QUEUE = 16  # compressed chunks in flight to the sink thread (bounded memory)


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
    """The compressor's output: counted here, hashed and handed to the store writer by a thread
    of its own, in order. A writer failure is raised on the next write or at close()."""

    _DONE = object()

    def __init__(self, writer: ObjectWriter):
        self.writer = writer
        self.hash = hashlib.sha256()
        self.bytes = 0
        self._queue: queue.Queue = queue.Queue(maxsize=SINK_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="store-sink", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not self._DONE:
            if self._error is not None:
                continue  # keep draining so the producer never blocks on a dead consumer
            try:
                self.hash.update(chunk)
                self.writer.write(chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, data) -> int:
        self._raise()
        chunk = bytes(data)
        self.bytes += len(chunk)
        self._queue.put(chunk)
        return len(chunk)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Wait until everything reached the writer; raise its failure, if any."""
        self._queue.put(self._DONE)
        self._thread.join()
        self._raise()


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def compress_into(source: Readable, writer: ObjectWriter, *, label: str,
                  log: logging.Logger | None = None) -> StreamStats:
    """Read `source` to its end into `writer` (not committed here: the caller decides)."""
    import zstandard

    log = log or logging.getLogger("pg_ops")
    sink = _HashingSink(writer)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS)
    started = time.monotonic()
    next_report = started + PROGRESS_EVERY_S
    raw = 0
    try:
        with compressor.stream_writer(sink, closefd=False) as zw:  # type: ignore[arg-type]  # write() is all it uses
            while chunk := source.read(CHUNK):
                raw += len(chunk)
                zw.write(chunk)
                now = time.monotonic()
                if now >= next_report:
                    log.info("%s: %.1f MB read, %.1f MB stored, %.1f MB/s", label, raw / 1e6, sink.bytes / 1e6,
                             raw / 1e6 / (now - started))
                    next_report = now + PROGRESS_EVERY_S
    except BaseException:
        with contextlib.suppress(BaseException):  # the first failure is the one reported
            sink.close()
        raise
    sink.close()
    return StreamStats(raw, sink.bytes, sink.hash.hexdigest(), time.monotonic() - started)


def compress_bytes_into(data: bytes, writer: ObjectWriter, *, label: str) -> StreamStats:
    import io

    return compress_into(io.BytesIO(data), writer, label=label)
