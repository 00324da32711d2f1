"""The backup store interface: where backup objects live (a folder or an S3 bucket).

Keys are relative, `<cluster>/<backup_id>/<name>`, the same on every backend. An object
written through `open_writer` becomes visible only when the writer commits: a dump that
fails half-way leaves nothing a reader could mistake for a good object.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from pg_ops.errors import PgOpsError


class StoreError(PgOpsError):
    """The backup store cannot be read or written (unreachable, missing, refused, full)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class PendingUpload:
    """An upload that was started and never committed nor aborted (S3 multipart upload,
    or a partial file of the filesystem store)."""

    key: str
    upload_id: str
    started: datetime


class ObjectWriter(abc.ABC):
    """A write-once stream into one object. Use as a context manager: leaving the block
    with an exception aborts; `commit()` makes the object visible."""

    key: str

    @abc.abstractmethod
    def write(self, data: bytes) -> int: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; idempotent, never raises."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class BackupStore(abc.ABC):
    """One interface, two backends (filesystem, S3)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the store is, for messages (never a credential)."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise StoreError with the reason when the store cannot be written to."""

    @abc.abstractmethod
    def open_writer(self, key: str, *, private: bool = False) -> ObjectWriter:
        """`private`: the object holds secrets (password hashes): 0600 on disk, server-side
        encryption on S3 when the spec asks for it (S3 objects are encrypted whenever it does)."""

    @abc.abstractmethod
    def open_reader(self, key: str) -> BinaryIO: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every committed object whose key starts with `prefix`."""

    @abc.abstractmethod
    def delete(self, keys: builtins.list[str]) -> None: ...

    @abc.abstractmethod
    def pending_uploads(self, prefix: str) -> builtins.list[PendingUpload]: ...

    @abc.abstractmethod
    def abort_upload(self, upload: PendingUpload) -> None: ...

    # -- conveniences on top of the primitives ---------------------------------------------
    def put_bytes(self, key: str, data: bytes, *, private: bool = False) -> None:
        with self.open_writer(key, private=private) as writer:
            writer.write(data)
            writer.commit()

    def get_bytes(self, key: str) -> bytes:
        with self.open_reader(key) as reader:
            return reader.read()

    def exists(self, key: str) -> bool:
        return any(o.key == key for o in self.list(key))

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open_reader(key) as reader:
            while chunk := reader.read(chunk_size):
                yield chunk
