"""A local cluster's PgBouncer (spec `pooler`): one process from Debian's `pgbouncer` package on
127.0.0.1, the port after the members', run as the server user (PgBouncer refuses root), in a
process group of its own, its files in `<cluster>/pooler/`. It forwards every database to the
primary's port; pg_ops rewrites that target and RELOADs when the primary changes.

Its configuration and auth file are postgres/pgbouncer.py's; the auth file is 0600, the server
user's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from pg_ops.errors import PgOpsError
from pg_ops.platforms.server_user import ServerUser, pid_alive, write_private
from pg_ops.poll import poll
from pg_ops.postgres import pgbouncer
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.spec import ClusterSpec

START_TIMEOUT_S = 10.0


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")
                                               if os.access(p, os.X_OK)), None)
    if found is None:
        raise PgOpsError("pooler: pgbouncer is not installed (Debian package pgbouncer; `make` installs it as root)")
    return found


class LocalPooler:
    def __init__(self, spec: ClusterSpec, root: Path, user: ServerUser):
        assert spec.pooler is not None
        self.spec, self.config, self.user = spec, spec.pooler, user
        self.folder = root / "pooler"
        self.endpoint = Endpoint("127.0.0.1", spec.local.base_port + spec.postgres.members)

    @property
    def ini(self) -> Path:
        return self.folder / "pgbouncer.ini"

    @property
    def moved_to(self) -> str | None:
        """The cluster whose primary it serves since a blue/green cut (its `moved-to` file)."""
        try:
            return (self.folder / "moved-to").read_text().strip() or None
        except FileNotFoundError:
            return None

    def move(self, cluster: str | None) -> None:
        if cluster is None:
            (self.folder / "moved-to").unlink(missing_ok=True)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_private(self.folder / "moved-to", f"{cluster}\n", self.user)

    def _pid(self) -> int | None:
        try:
            pid = int((self.folder / "supervisor.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self._pid() is not None

    def ini_text(self, target: Endpoint) -> str:
        return pgbouncer.ini_text(self.config, target=target, listen=self.endpoint,
                                  auth_file=str(self.folder / "userlist.txt"),
                                  logfile=str(self.folder / "pgbouncer.log"),
                                  pidfile=str(self.folder / "pgbouncer.pid"),
                                  header="Rewritten when the primary changes.")

    def write(self, target: Endpoint, password: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        write_private(self.folder / "userlist.txt", pgbouncer.userlist(password), self.user)
        write_private(self.ini, self.ini_text(target), self.user)
        if self.user.switch:
            os.chown(self.folder, self.user.uid, self.user.gid)

    def start(self, target: Endpoint, password: str) -> bool:
        """Start it (False: it was running; its target is set by retarget)."""
        if self.running():
            return False
        self.write(target, password)
        with open(self.folder / "stdout.log", "ab") as out:
            proc = subprocess.Popen([pgbouncer_binary(), str(self.ini)], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder,
                                    env={"PATH": "/usr/sbin:/usr/bin:/bin", "LC_ALL": "C"},
                                    **self.user.process_kwargs())
        (self.folder / "supervisor.pid").write_text(f"{proc.pid}\n")

        def accepting() -> bool | None:
            if proc.poll() is not None:
                raise PgOpsError(f"pooler of {self.spec.name}: pgbouncer exited ({proc.returncode}): "
                                 f"{self.log_tail()}")
            with contextlib.suppress(psycopg.Error):
                self.admin("SHOW VERSION", password, timeout=2)
                return True
            return None

        poll(accepting, timeout=START_TIMEOUT_S, interval=0.1, expired=lambda: PgOpsError(
            f"pooler of {self.spec.name}: not answering on {self.endpoint} after {START_TIMEOUT_S:g} s: "
            f"{self.log_tail()}"))
        return True

    def stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.running():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def admin(self, command: str, password: str, timeout: float = 5.0) -> list[dict]:
        return pgbouncer.admin(self.endpoint, password, command, timeout)

    def log_tail(self, lines: int = 3) -> str:
        try:
            return " | ".join((self.folder / "pgbouncer.log").read_text(errors="replace").strip().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
