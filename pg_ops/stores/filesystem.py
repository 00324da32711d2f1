"""The filesystem backup store: a folder (under PG_OPS_HOME by default).

Objects are written to a hidden `.<name>.partial-<id>` file beside their final name and
renamed into place on commit (after fsync), so a reader never sees a half-written object.
Folders are 0700 and every object 0600: globals hold password hashes, and a dump holds data.
Run as root, a new folder or object takes the owner of the folder it is made in: the WAL
archive's folder belongs to the server user, whose archive command must keep writing into
what pg_ops adds there (an incarnation's folder made by a base backup, a shipped segment).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pg_ops.stores.base import BackupStore, ObjectInfo, ObjectWriter, PendingUpload, StoreError

PARTIAL_MARK = ".partial-"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


def _owner_like_parent(path: Path) -> None:
    """As root: give `path` the owner of its folder (a no-op when that is root already)."""
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    if parent.st_uid != 0 and path.stat().st_uid != parent.st_uid:
        os.lchown(path, parent.st_uid, parent.st_gid)


def make_folders(root: Path, folder: Path) -> None:
    """mkdir -p below `root`, each new folder 0700 and owned like the folder it is made in."""
    missing = []
    while folder != root and not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
        _owner_like_parent(path)


class FileWriter(ObjectWriter):
    def __init__(self, store: FileStore, key: str):
        self.key = key
        self.final = store.path_of(key)
        self._done = False
        try:
            make_folders(store.root, self.final.parent)
            self.partial = self.final.with_name(f".{self.final.name}{PARTIAL_MARK}{uuid.uuid4().hex[:12]}")
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise StoreError(f"backup store {store.root}: cannot create {key}: {_os_reason(exc)}") from exc
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._store = store

    def write(self, data: bytes) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.abort()
            raise StoreError(f"backup store {self._store.root}: writing {self.key} failed: {_os_reason(exc)}") from exc

    def commit(self) -> None:
        try:
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.partial, self.final)
            _owner_like_parent(self.final)
            dir_fd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.abort()
            raise StoreError(f"backup store {self._store.root}: committing {self.key} failed: {_os_reason(exc)}") \
                from exc
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.partial.unlink()


class FileStore(BackupStore):
    def __init__(self, root: Path):
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def path_of(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"backup store {self.root}: invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"backup store {self.root}: cannot create the folder: {_os_reason(exc)}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"backup store {self.root}: folder is not writable")

    def open_writer(self, key: str, *, private: bool = False) -> ObjectWriter:
        return FileWriter(self, key)  # every object is 0600 on disk

    def open_reader(self, key: str) -> BinaryIO:
        try:
            return open(self.path_of(key), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise StoreError(f"backup store {self.root}: object {key} does not exist") from None

    def _walk(self, prefix: str):
        # Walk only the folder the prefix names: listing one backup must not scan them all.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield path, key, name

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for path, key, name in self._walk(prefix):
            if name.startswith(".") and PARTIAL_MARK in name:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return sorted(out, key=lambda o: o.key)

    def delete(self, keys: builtins.list[str]) -> None:
        folders = set()
        for key in keys:
            path = self.path_of(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            folders.add(path.parent)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            while folder != self.root and folder.is_relative_to(self.root):
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
                folder = folder.parent

    def pending_uploads(self, prefix: str) -> builtins.list[PendingUpload]:
        out = []
        for path, key, name in self._walk(prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""):
            if not (name.startswith(".") and PARTIAL_MARK in name):
                continue
            final = name[1:].split(PARTIAL_MARK)[0]
            final_key = key.rsplit("/", 1)[0] + "/" + final if "/" in key else final
            if not final_key.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                out.append(PendingUpload(final_key, key, datetime.fromtimestamp(path.stat().st_mtime, UTC)))
        return out

    def abort_upload(self, upload: PendingUpload) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(upload.upload_id).unlink()
