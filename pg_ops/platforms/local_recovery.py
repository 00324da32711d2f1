"""Local servers whose data comes from a base backup instead of initdb: the first primary of a
cluster recovered to a point in time (`pg-ops recover`), and the throw-away server of a
point-in-time drill. pg_ops fills the empty data dir (barman-cloud-restore or the tar of a file
store), adds the recovery settings and `recovery.signal`, hands the folder to the server user,
and the member script starts it like any primary: PostgreSQL replays the archive to the target
and promotes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import SecretStr

from pg_ops.credentials import Credentials
from pg_ops.errors import ClusterExists, MemberError
from pg_ops.platforms.local import LocalPlatform, _free_port
from pg_ops.platforms.server_user import chown_tree
from pg_ops.postgres import controldata
from pg_ops.postgres.archiving import RECOVERY_SIGNAL
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState

# What a restored data dir must not keep: it would make the server a standby, or look running.
LEFTOVERS = ("standby.signal", "postmaster.pid", "postmaster.opts", RECOVERY_SIGNAL)
# The drill's server: nothing in it must survive; no hot standby during recovery, so it need not
# match the source's max_wal_senders & co (a 1-member server has fewer than a 3-member cluster).
DRILL_PARAMETERS = {"fsync": False, "synchronous_commit": "off", "full_page_writes": False, "autovacuum": False,
                    "hot_standby": False, "max_wal_size": "4GB", "maintenance_work_mem": "256MB"}

Fill = Callable[[Path], None]  # restores a base backup into the (empty) data dir given
# (the server's cluster folder, postgresql.auto.conf as restored) -> as recovery needs it
AutoConf = Callable[[Path, str], str]


def seed_data_dir(platform: LocalPlatform, member: str, fill: Fill, auto_conf: AutoConf) -> None:
    data = platform.data_dir(member)
    data.mkdir(parents=True, exist_ok=True)
    if any(data.iterdir()):
        raise MemberError(f"member {member}: data dir {data} is not empty; refusing to restore into it")
    fill(data)
    for name in LEFTOVERS:
        with contextlib.suppress(FileNotFoundError):
            (data / name).unlink()
    (data / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    auto = data / "postgresql.auto.conf"
    auto.write_text(auto_conf(platform.root, auto.read_text() if auto.exists() else ""))
    (data / RECOVERY_SIGNAL).touch()
    chown_tree(data, platform.user)
    os.chmod(data, 0o700)


def bootstrap_recovered(platform: LocalPlatform, credentials: Credentials, fill: Fill, auto_conf: AutoConf) -> str:
    """Lay out a new local cluster whose first primary is a restored base backup (not started);
    returns that member. It keeps the source's roles and passwords: they come with the data."""
    if platform.state_store().read() is not None:
        raise ClusterExists(f"cluster {platform.spec.name} already exists under {platform.root}")
    platform.ensure_credentials(credentials)
    member = platform.spec.member_names[0]
    state = DesiredState(cluster=platform.spec.name, primary=member, epoch=1, bootstrap=True,
                         members=platform.peer_addresses())
    state = platform.state_store().write(state, None)
    platform.prepare(state)
    seed_data_dir(platform, member, fill, auto_conf)
    return member


@contextlib.contextmanager
def drill_server(purpose: str, credentials: Credentials, fill: Fill, auto_conf: AutoConf,
                 home: Path | None = None, version: int | None = None) -> Iterator[LocalPlatform]:
    """A throw-away one-member cluster seeded from a base backup, started with the binaries of
    PostgreSQL `version` (the source cluster's; None: the default ones); always killed and
    deleted (data included) when the block ends. Nothing of it is archived."""
    name = f"{purpose}-{secrets.token_hex(4)}"
    spec = ClusterSpec.model_validate({
        "name": name, "platform": "local",
        "postgres": {"members": 1, "parameters": DRILL_PARAMETERS, "version": version},
        "databases": [], "local": {"base_port": _free_port()}, "backups": {"wal": {"enabled": False}}})
    platform = LocalPlatform(spec, home)
    try:
        member = bootstrap_recovered(platform, Credentials(passwords={
            k: SecretStr(v) for k, v in credentials.as_plain_dict().items()}), fill, auto_conf)
        platform.start_member(member)
        yield platform
    finally:
        platform.discard()


def promoted(platform: LocalPlatform, member: str) -> bool:
    """The restored member has finished recovery and runs as a primary, by its control file
    (readable without a login, which an older password in the restored data may refuse)."""
    return controldata.cluster_state(platform.bin, platform.data_dir(member)) == controldata.IN_PRODUCTION


SINGLE_USER_TIMEOUT_S = 300.0


def run_single_user(platform: LocalPlatform, member: str, statement: str) -> None:
    """One statement on the member's data with no server and no login: stops the member (a clean
    shutdown), runs `postgres --single` as the server user with the cluster's configuration, and
    starts the member again. For what the restored data refuses to let pg_ops do over a
    connection: setting the credentials store's superuser password when the data holds an older
    one. The statement is not logged (log_statement off) and its output is not kept."""
    platform.stop_member(member)
    data = platform.data_dir(member)
    command = [str(platform.bin / "postgres"), "--single", "-D", str(data),
               "-c", f"config_file={platform.root / 'config' / 'postgresql.conf'}", "-c", "log_statement=none",
               "-c", "log_min_error_statement=panic", "-c", "archive_mode=off", "postgres"]
    try:
        done = subprocess.run(command, input=statement + "\n", capture_output=True, text=True, cwd=data,
                              timeout=SINGLE_USER_TIMEOUT_S, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
                              check=False, **platform.user.process_kwargs())
    except subprocess.TimeoutExpired:
        raise MemberError(f"member {member}: single-user postgres did not finish in {SINGLE_USER_TIMEOUT_S:g} s") \
            from None
    errors = [line.strip() for line in done.stderr.splitlines()
              if line.lstrip().startswith(("ERROR", "FATAL", "PANIC"))]
    if done.returncode != 0 or errors:
        raise MemberError(f"member {member}: single-user postgres failed (exit {done.returncode}): "
                          f"{errors[-1] if errors else 'no error line'}")
    platform.start_member(member)
