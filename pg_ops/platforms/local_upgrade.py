"""A scratch server of a local cluster's major that can be upgraded in place to a newer one
(the upgrade rehearsal, operations/upgrade.py): the pg_upgrade --link steps on a throw-away
copy, with the processes run as the server user (pg_upgrade and initdb refuse root).

    with upgrade_scratch(16, 18) as scratch:          # an empty server of PostgreSQL 16
        ...restore into scratch.endpoint...
        timings = scratch.upgrade()                   # the same server, now PostgreSQL 18

The steps are the ones the real upgrade takes on a primary: a clean stop, initdb of the new
major with the old cluster's locale and checksums, `pg_upgrade --check`, `pg_upgrade --link`,
the new data dir in the old one's place, the server started by the member script with the new
binaries on the same port. A step that fails raises UpgradeFailed with pg_upgrade's own reason.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pg_ops import settings
from pg_ops.credentials import SUPERUSER, generate_password
from pg_ops.platforms.base import UpgradeScratch
from pg_ops.platforms.local import LocalPlatform, LocalScratchServer
from pg_ops.platforms.server_user import write_private
from pg_ops.postgres import controldata
from pg_ops.postgres import upgrade as pgu
from pg_ops.postgres.session import with_connection

STEP_TIMEOUT_S = 3600.0  # pg_upgrade --link of a large catalog; initdb


@contextlib.contextmanager
def upgrade_scratch(from_major: int, to_major: int) -> Iterator[UpgradeScratch]:
    """An empty server of `from_major`, always removed (both data dirs) at the end."""
    settings.pg_bin_for(to_major)  # one line before anything starts when missing
    server = LocalScratchServer(f"upgrade-{secrets.token_hex(4)}", generate_password(), version=from_major)
    try:
        server.start()
        server.wait_ready()
        yield UpgradeScratch(f"scratch cluster {server.name}", server.endpoint, server.password,
                             upgrade=lambda: upgrade_in_place(server, to_major))
    finally:
        server.remove()


def _run(step: str, command: list[str], platform: LocalPlatform, cwd: Path, env: dict[str, str],
         reports: Path | None = None) -> str:
    """One tool as the server user; its output, or UpgradeFailed naming the step with the tool's
    reason (and the report files pg_upgrade left under `reports`: the objects it refuses)."""
    try:
        done = subprocess.run(command, cwd=cwd, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", **env},
                              capture_output=True, text=True, timeout=STEP_TIMEOUT_S, stdin=subprocess.DEVNULL,
                              **platform.user.process_kwargs())
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise pgu.UpgradeFailed(f"{step}: {exc}") from exc
    if done.returncode != 0:
        found = sorted(reports.glob("pg_upgrade_output.d/*/*.txt")) if reports else []
        raise pgu.UpgradeFailed(f"{step} failed (exit {done.returncode}): "
                                f"{pgu.failure_reason(done.stdout + done.stderr, found)}")
    return done.stdout


class MemberDataUpgrade:
    """pg_upgrade --link of one member's data dir, in steps the caller times: `prepare` (initdb
    of the new major beside it, while the old server still runs), `check` (the old server
    stopped cleanly, `pg_upgrade --check`), `link` (`pg_upgrade --link`, then the new data dir in
    the old one's place, the old kept as data-<from>-old), and `undo`, which until the new server
    first starts gives the old major its data dir back untouched (pg_upgrade --link renames
    global/pg_control to pg_control.old before it links; renamed back, the old cluster is whole,
    as PostgreSQL documents). Starting the new server is the point of no return: the old one
    shares its files by hard link from then on."""

    def __init__(self, platform: LocalPlatform, member: str, from_bin: Path, to_major: int, password: str):
        self.platform = platform
        self.member = member
        self.from_bin = from_bin
        self.new_bin = settings.pg_bin_for(to_major)
        self.data = platform.data_dir(member)
        self.new_data = platform.member_dir(member) / f"data-{to_major}"
        self.old_data = platform.member_dir(member) / f"data-{settings.server_major(from_bin)}-old"
        self.work = platform.member_dir(member) / "upgrade"
        self.password = password
        self.port = platform.member_endpoints()[member].port
        self.swapped = False
        self.old_options = ""

    def _tool(self, step: str, command: Callable[[Path], list[str]]) -> str:
        """`command(pwfile)` as the server user in the work folder, the superuser's password in
        a passfile (and `pwfile`, initdb's) that exist only while it runs."""
        user = self.platform.user
        self.work.mkdir(mode=0o700, exist_ok=True)
        if user.switch:
            shutil.chown(self.work, user.uid, user.gid)
        pwfile, passfile = self.work / "pwfile", self.work / "pgpass"
        write_private(pwfile, f"{self.password}\n", user)
        write_private(passfile, f"*:*:*:{SUPERUSER}:{self.password}\n", user)
        try:
            return _run(step, command(pwfile), self.platform, self.work, {"PGPASSFILE": str(passfile)}, self.new_data)
        finally:
            pwfile.unlink(missing_ok=True)
            passfile.unlink(missing_ok=True)

    def prepare(self, initdb_options: list[str]) -> None:
        """The new major's empty cluster beside the old one (the old server may still run)."""
        shutil.rmtree(self.new_data, ignore_errors=True)  # a previous attempt's
        self._tool("initdb", lambda pwfile: pgu.initdb_command(self.new_bin, self.new_data, pwfile, initdb_options))

    def check(self) -> None:
        """The old server must have stopped cleanly (pg_upgrade needs it, and a crash-stopped
        primary may hold writes only its WAL has); then `pg_upgrade --check`."""
        state = controldata.cluster_state(self.from_bin, self.data)
        if state != controldata.SHUT_DOWN:
            raise pgu.UpgradeFailed(f"member {self.member} did not stop cleanly ({state}): pg_upgrade needs a "
                                    f"clean shutdown")
        self.old_options = controldata.last_run_options(self.from_bin, self.data)
        self._tool("pg_upgrade --check", lambda _: pgu.pg_upgrade_command(
            self.from_bin, self.new_bin, self.data, self.new_data, self.work, self.port, check=True,
            old_options=self.old_options))

    def link(self) -> None:
        self._tool("pg_upgrade --link", lambda _: pgu.pg_upgrade_command(
            self.from_bin, self.new_bin, self.data, self.new_data, self.work, self.port, check=False,
            old_options=self.old_options))
        self.data.rename(self.old_data)
        self.new_data.rename(self.data)
        self.swapped = True
        # pg_upgrade carries no configuration: ALTER SYSTEM's settings come across as they are
        # (one the new major no longer knows stops its start: a rehearsal finds that first).
        auto_conf = self.old_data / "postgresql.auto.conf"
        if auto_conf.exists():
            shutil.copy2(auto_conf, self.data / "postgresql.auto.conf")
            if self.platform.user.switch:
                shutil.chown(self.data / "postgresql.auto.conf", self.platform.user.uid, self.platform.user.gid)

    def go(self) -> None:
        return None  # the platform starts the member, which reads the record as it boots

    def undo(self) -> None:
        """Before the new server started: the old data dir as it was, the new one gone."""
        if self.swapped:
            self.data.rename(self.new_data)
            self.old_data.rename(self.data)
            self.swapped = False
        renamed = self.data / "global" / "pg_control.old"
        if renamed.exists():
            renamed.rename(self.data / "global" / "pg_control")
        shutil.rmtree(self.new_data, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def finish(self) -> None:
        """After the new server runs: what only the old major could use goes."""
        shutil.rmtree(self.old_data, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def system_identifier(self) -> str:
        return controldata.read(self.new_bin, self.data).get("Database system identifier", "")

    def start_old(self, member: str) -> None:
        self.platform.for_major(settings.server_major(self.from_bin)).start_member(member)


def upgrade_in_place(server: LocalScratchServer, to_major: int) -> dict[str, float]:
    """The running scratch server upgraded to `to_major` (the steps the real upgrade takes on a
    primary, MemberDataUpgrade); the seconds each step took."""
    old = server.platform
    member = server.member
    timings: dict[str, float] = {}

    def timed(step: str, fn):
        t0 = time.monotonic()
        out = fn()
        timings[f"{step}_seconds"] = round(time.monotonic() - t0, 3)
        return out

    options = with_connection(server.endpoint, SUPERUSER, server.password, pgu.initdb_options, timeout=30,
                              name=server.name)
    upgrade = MemberDataUpgrade(old, member, old.bin, to_major, server.password)
    timed("initdb", lambda: upgrade.prepare(options))
    timed("stop", lambda: old.stop_member(member))
    timed("check", upgrade.check)
    timed("pg_upgrade", upgrade.link)
    server.platform = old.for_major(to_major)

    def start() -> None:
        server.platform.start_member(member)
        server.wait_ready()

    timed("start", start)
    return timings
