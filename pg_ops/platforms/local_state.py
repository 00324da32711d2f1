"""The desired-state record of a local cluster: a file, with flock + version + atomic rename."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from pg_ops.errors import ConflictError
from pg_ops.state import DesiredState


class FileStateStore:
    def __init__(self, path: Path):
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def read(self) -> DesiredState | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        return DesiredState.from_text(text, source=str(self.path))

    def write(self, new: DesiredState, expected_version: int | None) -> DesiredState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read()
            current_version = current.version if current else None
            if current_version != expected_version:
                raise ConflictError(
                    f"{self.path}: desired state changed concurrently (version {current_version}, "
                    f"expected {expected_version})"
                )
            stored = new.model_copy(update={"version": (expected_version or 0) + 1})
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as fh:
                fh.write(stored.to_text())
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # the member script (server user) reads it; it holds no secret
            os.replace(tmp, self.path)
            return stored
