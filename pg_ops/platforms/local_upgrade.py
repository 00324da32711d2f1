"""A scratch server of a local cluster's major that can be upgraded in place to a newer one
(the upgrade rehearsal, operations/upgrade.py): the pg_upgrade --link steps on a throw-away
copy, with the processes run as the server user (pg_upgrade and initdb refuse root).

    with upgrade_scratch(platform, 18) as scratch:   # an empty server of the cluster's major
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
from collections.abc import Iterator
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
def upgrade_scratch(platform: LocalPlatform, to_major: int) -> Iterator[UpgradeScratch]:
    """An empty server of `platform`'s major, always removed (both data dirs) at the end."""
    new_bin = settings.pg_bin_for(to_major)  # one line before anything starts when missing
    server = LocalScratchServer(f"upgrade-{secrets.token_hex(4)}", generate_password(),
                                version=platform.spec.postgres.version)
    try:
        server.start()
        server.wait_ready()
        yield UpgradeScratch(f"scratch cluster {server.name}", server.endpoint, server.password,
                             upgrade=lambda: upgrade_in_place(server, to_major, new_bin))
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


def upgrade_in_place(server: LocalScratchServer, to_major: int, new_bin: Path) -> dict[str, float]:
    """The running scratch server upgraded to `to_major`; the seconds each step took."""
    old = server.platform
    member = server.member
    old_data = old.data_dir(member)
    timings: dict[str, float] = {}

    def timed(step: str, fn):
        t0 = time.monotonic()
        out = fn()
        timings[f"{step}_seconds"] = round(time.monotonic() - t0, 3)
        return out

    locale_args = with_connection(server.endpoint, SUPERUSER, server.password, pgu.initdb_locale_args,
                                  timeout=30, name=server.name)
    timed("stop", lambda: old.stop_member(member))
    state = controldata.cluster_state(old.bin, old_data)
    if state != "shut down":
        raise pgu.UpgradeFailed(f"{server.name} did not stop cleanly ({state}): pg_upgrade needs a clean shutdown")
    checksums = controldata.read(old.bin, old_data).get("Data page checksum version", "0") != "0"

    work = old.root / "upgrade"
    work.mkdir(mode=0o700)
    new_data = old.member_dir(member) / f"data-{to_major}"
    user = old.user
    if user.switch:
        shutil.chown(work, user.uid, user.gid)
    pwfile, passfile = work / "pwfile", work / "pgpass"
    write_private(pwfile, f"{server.password}\n", user)
    write_private(passfile, f"*:*:*:{SUPERUSER}:{server.password}\n", user)
    env = {"PGPASSFILE": str(passfile)}
    try:
        timed("initdb", lambda: _run("initdb", pgu.initdb_command(new_bin, new_data, pwfile, locale_args, checksums),
                                     old, work, env))
        port = server.endpoint.port
        timed("check", lambda: _run("pg_upgrade --check", pgu.pg_upgrade_command(
            old.bin, new_bin, old_data, new_data, work, port, check=True), old, work, env, new_data))
        timed("pg_upgrade", lambda: _run("pg_upgrade --link", pgu.pg_upgrade_command(
            old.bin, new_bin, old_data, new_data, work, port, check=False), old, work, env, new_data))
    finally:
        pwfile.unlink(missing_ok=True)
        passfile.unlink(missing_ok=True)
    # Past this point the old data dir is the new one's by hard link: it is never started again.
    old_data.rename(old.member_dir(member) / "data-old")
    new_data.rename(old_data)
    # pg_upgrade carries no configuration: ALTER SYSTEM's settings come across as they are (one
    # the new major no longer knows stops its start, which is what a rehearsal is for).
    auto_conf = old.member_dir(member) / "data-old" / "postgresql.auto.conf"
    if auto_conf.exists():
        shutil.copy2(auto_conf, old_data / "postgresql.auto.conf")
        if user.switch:
            shutil.chown(old_data / "postgresql.auto.conf", user.uid, user.gid)
    server.platform = LocalPlatform(old.spec.model_copy(update={"postgres": old.spec.postgres.model_copy(
        update={"version": to_major})}), old.root.parent.parent)
    def start() -> None:
        server.platform.start_member(member)
        server.wait_ready()

    timed("start", start)
    return timings
