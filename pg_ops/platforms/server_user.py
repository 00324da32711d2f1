"""Who PostgreSQL runs as. PostgreSQL refuses to run as root; when pg_ops runs as root (CI
does), server processes run as an unprivileged system user, created if missing."""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pg_ops.errors import PgOpsError

DEFAULT_SERVER_USER = "pgops"


@dataclass(frozen=True)
class ServerUser:
    name: str
    uid: int
    gid: int

    @property
    def switch(self) -> bool:
        """True when processes must be started as this user rather than as ourselves."""
        return self.uid != os.geteuid()

    def process_kwargs(self) -> dict:
        """subprocess.Popen/run arguments that start a process as this user (none when we are it)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []} if self.switch else {}


def server_user() -> ServerUser:
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    name = os.environ.get("PG_OPS_SERVER_USER", DEFAULT_SERVER_USER)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True,
        )
        if result.returncode not in (0, 9):  # 9: created concurrently
            raise PgOpsError(f"cannot create the server user {name!r}: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise PgOpsError(f"server user {name!r} is root; PostgreSQL refuses to run as root")
    return ServerUser(name, entry.pw_uid, entry.pw_gid)


def unreachable_parent(path: Path, user: ServerUser) -> Path | None:
    """The first existing folder on the way to `path` the user cannot traverse, if any.
    We never widen permissions of folders we do not own: we report it instead."""
    for parent in reversed([path, *path.parents]):
        if not parent.exists():
            break
        st = parent.stat()
        if st.st_uid == user.uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return parent
    return None


def chown_tree(path: Path, user: ServerUser) -> None:
    if not user.switch:
        return
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.uid, user.gid)


def write_private(path: Path, text: str, owner: ServerUser | None = None) -> None:
    """A 0600 file written whole (a temporary file renamed over it), the owner's when given."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    if owner and owner.switch:
        os.chown(tmp, owner.uid, owner.gid)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """A live process (a zombie is not; our own exited child is reaped on the way)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
