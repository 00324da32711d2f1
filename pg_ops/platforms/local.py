"""The local platform: members are PostgreSQL processes on 127.0.0.1, each started through
the member script (the same one the StatefulSet runs), under PG_OPS_HOME/clusters/<name>/:

    desired-state           the record (key=value), CAS with desired-state.lock
    credentials.json        generated passwords (0600, pg_ops's user)
    pgpass                  libpq passfile for the admin role (0600, pg_ops's user)
    app-credentials/        per application login role: <role>.json, <role>-read.json (0600)
    config/                 postgresql.conf, pg_hba.conf (cluster-wide)
    members/<member>/       owned by the server user: data/, run/, pgpass (0600), member.log
    pids/<member>.pid       the supervisor's pid (its process group holds postgres too)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from pydantic import SecretStr

from pg_ops import settings
from pg_ops.credentials import (
    MONITORING_USER,
    POOLER_USER,
    READ_SUFFIX,
    REPLICATION_USER,
    SUPERUSER,
    Credentials,
    app_credentials,
    generate_password,
    new_credentials,
    pooled_uri,
    required_roles,
)
from pg_ops.errors import MemberError, PgOpsError, Unsupported
from pg_ops.platforms import local_archive
from pg_ops.platforms.base import (
    REPORT_FILE,
    SCRATCH_PARAMETERS,
    MemberReport,
    MemberUpgrade,
    Platform,
    RecoveryPod,
    RecoveryPodRequest,
    ScratchTarget,
    UpgradeScratch,
)
from pg_ops.platforms.local_pooler import LocalPooler
from pg_ops.platforms.local_state import FileStateStore
from pg_ops.platforms.server_user import ServerUser, chown_tree, server_user, unreachable_parent
from pg_ops.platforms.server_user import pid_alive as _pid_alive
from pg_ops.platforms.server_user import write_private as _write_private
from pg_ops.platforms.shared_memory import release_data_dir_segment
from pg_ops.poll import poll
from pg_ops.postgres import config as pg_config
from pg_ops.postgres import controldata, running_config
from pg_ops.postgres.conninfo import Endpoint, multi_host_dsn
from pg_ops.render.member_env import MemberEnv
from pg_ops.spec import ClusterSpec, S3StoreSpec
from pg_ops.state import DesiredState
from pg_ops.stores import StoreError

if TYPE_CHECKING:
    from pg_ops.stores.s3 import S3Credentials

MEMBER_SCRIPT = Path(__file__).with_name("member.sh")
STOP_TIMEOUT_S = 30.0
SCRATCH_READY_TIMEOUT_S = 60.0


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class LocalPlatform(Platform):
    """Members are processes on this machine (see the module doc); the contract is Platform's."""

    kind = "local"

    def __init__(self, spec: ClusterSpec, home: Path | None = None):
        self.spec = spec
        self.root = (home or settings.home()) / "clusters" / spec.name
        self._user: ServerUser | None = None

    # -- layout ----------------------------------------------------------------------------
    @property
    def user(self) -> ServerUser:
        if self._user is None:
            self._user = server_user()
        return self._user

    @property
    def bin(self) -> Path:
        """The PostgreSQL binaries this cluster runs: its spec's major (postgres.version), else
        pg_ops's default ones."""
        version = self.spec.postgres.version
        return settings.pg_bin_for(version) if version is not None else settings.pg_bin()

    def for_major(self, major: int) -> LocalPlatform:
        """The same cluster (root, members, ports) run with PostgreSQL `major`'s binaries."""
        spec = self.spec.model_copy(update={"postgres": self.spec.postgres.model_copy(update={"version": major})})
        return LocalPlatform(spec, self.root.parent.parent)

    def member_dir(self, name: str) -> Path:
        return self.root / "members" / name

    def data_dir(self, name: str) -> Path:
        return self.member_dir(name) / "data"

    def log_path(self, name: str) -> Path:
        return self.member_dir(name) / "member.log"

    def _pid_path(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"

    def member_endpoints(self) -> dict[str, Endpoint]:
        base = self.spec.local.base_port
        return {name: Endpoint("127.0.0.1", base + i) for i, name in enumerate(self.spec.member_names)}

    def peer_addresses(self) -> dict[str, str]:
        return {name: str(ep) for name, ep in self.member_endpoints().items()}

    def primary_dsn(self, user: str = SUPERUSER, dbname: str = "postgres") -> str:
        state = self.state_store().read()
        endpoints = self.member_endpoints()
        order = sorted(endpoints, key=lambda n: (state is None or n != state.primary, n))
        return multi_host_dsn([endpoints[n] for n in order], user=user, dbname=dbname)

    def passfile(self) -> Path:
        return self.root / "pgpass"

    # -- pg_ops-owned objects ----------------------------------------------------------------
    def state_store(self) -> FileStateStore:
        return FileStateStore(self.root / "desired-state")

    def s3_credentials(self, secret_name: str) -> S3Credentials:
        store = self.spec.backups.store
        where = f"s3://{store.bucket}" if isinstance(store, S3StoreSpec) else self.spec.name
        raise StoreError(f"backup store {where}: credentials_secret {secret_name!r} needs the Kubernetes platform "
                         f"to read it")

    def load_credentials(self) -> Credentials | None:
        path = self.root / "credentials.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return Credentials(passwords={k: SecretStr(v) for k, v in raw.items()})

    def ensure_credentials(self, initial: Credentials | None = None) -> Credentials:
        self.root.mkdir(parents=True, exist_ok=True)
        current = self.load_credentials()
        first = initial.with_roles(required_roles(self.spec)) if initial else None
        creds = current.with_roles(required_roles(self.spec)) if current else first or new_credentials(self.spec)
        if creds is not current:
            _write_private(self.root / "credentials.json", json.dumps(creds.as_plain_dict(), indent=1))
        # The admin role's line, and the exporter's (postgres_exporter reads it via PGPASSFILE).
        _write_private(self.passfile(), creds.passfile_text([SUPERUSER, MONITORING_USER]))
        return creds

    def store_credentials(self, creds: Credentials) -> None:
        # The members' passfiles first, then pg_ops's: the one each member script was given and
        # the private copy it uses (run/pgpass: primary_conninfo's passfile, its lease checks),
        # so a replica reconnecting after the change logs in with the new password.
        text = creds.passfile_text([SUPERUSER, REPLICATION_USER])
        for name in self.spec.member_names:
            mdir = self.member_dir(name)
            for path in (mdir / "pgpass", mdir / "run" / "pgpass"):
                if path.parent.is_dir():
                    _write_private(path, text, self.user)
        _write_private(self.root / "credentials.json", json.dumps(creds.as_plain_dict(), indent=1))
        _write_private(self.passfile(), creds.passfile_text([SUPERUSER, MONITORING_USER]))

    def app_credentials_dir(self) -> Path:
        return self.root / "app-credentials"

    def deliver_role_credentials(self, role: str, password: str, dbname: str) -> bool:
        folder = self.app_credentials_dir()
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        hosts = [(ep.host, ep.port) for ep in self.member_endpoints().values()]
        changed = False
        pooler = self.pooler_endpoint()
        for suffix, attrs, jdbc in (("", "read-write", "primary"), (READ_SUFFIX, "prefer-standby", "preferSecondary")):
            path = folder / f"{role}{suffix}.json"
            document = app_credentials(role, password, dbname, hosts, attrs, jdbc)
            if pooler is not None and not suffix:  # spec `pooler`: the same role through PgBouncer
                document["pooled-uri"] = pooled_uri(role, password, dbname, pooler)
            text = json.dumps(document, indent=1) + "\n"
            try:
                same = path.read_text() == text
            except FileNotFoundError:
                same = False
            if not same:
                _write_private(path, text)
                changed = True
        return changed

    def remove_role_credentials(self, role: str) -> bool:
        removed = False
        for suffix in ("", READ_SUFFIX):
            path = self.app_credentials_dir() / f"{role}{suffix}.json"
            if path.exists():
                path.unlink()
                removed = True
        return removed

    def prepare(self, state: DesiredState) -> None:
        """Config files and member folders, owned so the server user can use them."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        blocked = unreachable_parent(self.root, self.user)
        if blocked is not None:
            raise PgOpsError(
                f"PG_OPS_HOME {self.root.parent.parent} is not reachable by the server user "
                f"{self.user.name} (uid {self.user.uid}): {blocked} does not let it through; "
                f"set PG_OPS_HOME to a folder it can reach"
            )
        for name in self.spec.member_names:
            self._check_data_major(name)
        config = self.root / "config"
        config.mkdir(exist_ok=True)
        os.chmod(config, 0o755)
        (config / "postgresql.conf").write_text(self.server_config_text())
        (config / "pg_hba.conf").write_text(pg_config.pg_hba_conf(networks=["127.0.0.1/32"]))
        (config / "pg_ident.conf").write_text("")
        for f in config.iterdir():
            os.chmod(f, 0o644)
        creds = self.load_credentials() or self.ensure_credentials()
        for name in self.spec.member_names:
            mdir = self.member_dir(name)
            (mdir / "data").mkdir(parents=True, exist_ok=True)
            (mdir / "run").mkdir(exist_ok=True)
            os.chmod(mdir, 0o700)
            os.chmod(mdir / "data", 0o700)
            _write_private(mdir / "pgpass", creds.passfile_text(["postgres", "replicator"]), self.user)
            self._check_data_owner(name)
            if self._owner_differs(mdir):
                chown_tree(mdir, self.user)
        (self.root / "pids").mkdir(exist_ok=True)

    def _owner_differs(self, path: Path) -> bool:
        return self.user.switch and path.stat().st_uid != self.user.uid

    def _check_data_major(self, name: str) -> None:
        """A data dir of another major than the binaries: one line before anything starts (the
        server would refuse it after the member script had begun; a downgrade is never possible)."""
        try:
            data_major = int((self.data_dir(name) / "PG_VERSION").read_text().strip())
        except (FileNotFoundError, PermissionError, ValueError):
            return  # empty (a member to initdb or clone) or unreadable: the member script decides
        major = settings.server_major(self.bin)
        if data_major > major:
            raise MemberError(f"member {name}: its data is PostgreSQL {data_major} and the binaries are {major}: "
                              f"a downgrade is not possible (postgres.version, PG_OPS_PG_BIN)")
        if data_major < major:
            raise MemberError(f"member {name}: its data is PostgreSQL {data_major} and the binaries are {major}: "
                              f"a major upgrade is pg_upgrade's, not a restart (rehearse it: "
                              f"`pg-ops upgrade --to {major} --rehearse`)")

    def _check_data_owner(self, name: str) -> None:
        data = self.data_dir(name)
        st = data.stat()
        if st.st_uid not in (self.user.uid, os.geteuid()):
            raise MemberError(
                f"member {name}: data dir {data} is owned by uid {st.st_uid}, not by the server user "
                f"{self.user.name} (uid {self.user.uid})"
            )

    # -- members -----------------------------------------------------------------------------
    def _supervisor_pid(self, name: str) -> int | None:
        try:
            pid = int(self._pid_path(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def member_running(self, name: str) -> bool:
        return self._supervisor_pid(name) is not None

    def start_member(self, name: str) -> None:
        if self.member_running(name):
            return
        endpoint = self.member_endpoints()[name]
        if _port_in_use(endpoint.port):
            raise MemberError(f"member {name}: port {endpoint.port} on 127.0.0.1 is already in use by another process")
        mdir = self.member_dir(name)
        contract = MemberEnv(member=name, data=str(mdir / "data"), port=endpoint.port,
                             state=str(self.state_store().path), config_dir=str(self.root / "config"),
                             passfile=str(mdir / "pgpass"), run_dir=str(mdir / "run"), bin=str(self.bin),
                             listen="127.0.0.1")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", **contract.variables()}
        with open(self.log_path(name), "ab") as log:
            if self.user.switch:
                os.chown(self.log_path(name), self.user.uid, self.user.gid)
            proc = subprocess.Popen(
                ["bash", str(MEMBER_SCRIPT), name], env=env, cwd=mdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self.user.process_kwargs(),
            )
        self._pid_path(name).parent.mkdir(exist_ok=True)
        self._pid_path(name).write_text(f"{proc.pid}\n")

    def stop_member(self, name: str) -> None:
        pid = self._supervisor_pid(name)
        if pid is None:
            self._kill_orphans(name)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # the supervisor turns it into a fast shutdown
        poll(lambda: None if _pid_alive(pid) else True, timeout=STOP_TIMEOUT_S, interval=0.05)
        self._kill_group(pid)

    def kill_member(self, name: str) -> None:
        """SIGKILL of the supervisor and postgres together (the process group), as when the
        machine dies: what fencing does here, and how scratch servers go. Not part of Platform."""
        pid = self._supervisor_pid(name)
        if pid is not None:
            self._kill_group(pid)
        self._kill_orphans(name)

    def _kill_group(self, pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        poll(lambda: None if _pid_alive(pgid) else True, timeout=5, interval=0.02)

    def _kill_orphans(self, name: str) -> None:
        """A postmaster whose supervisor is gone (postmaster.pid names it)."""
        pidfile = self.data_dir(name) / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, PermissionError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"postgres" in cmdline and str(self.data_dir(name)).encode() in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(os.getpgid(pid), signal.SIGKILL)

    def fence_member(self, name: str) -> bool:
        # Locally the primary endpoint follows whoever is writable, so fencing = stopping, and
        # pg_ops can always reach the processes (SIGKILL of the process group).
        self.kill_member(name)
        return True

    def fence_confirmed(self, name: str) -> bool:
        return True  # fence_member never says otherwise here

    def fence_abandon(self, name: str) -> None:
        return None

    def route_primary(self, name: str) -> None:
        # The multi-host DSN with target_session_attrs=read-write routes by itself; the pooler
        # has one target, rewritten here. A pooler a blue/green cut moved to another cluster
        # follows that cluster's primary instead; the poolers moved to this one follow `name`.
        target = self.member_endpoints()[name]
        pooler = self._pooler()
        if pooler is not None and pooler.running():
            self._aim(pooler, self._pooler_target(pooler, target))
        for other in self._clusters_whose_pooler_moved_here():
            other_pooler = other._pooler()
            assert other_pooler is not None
            other._aim(other_pooler, target)

    def _aim(self, pooler: LocalPooler, target: Endpoint) -> None:
        password = self.load_credentials_or_fail().password(POOLER_USER)
        pooler.write(target, password)
        try:
            pooler.admin("RELOAD", password)  # operations/pooling.follow RECONNECTs once the new primary is proven
        except psycopg.Error as exc:  # it died meanwhile: its file is right for its restart; pooler_down alerts
            logging.getLogger("pg_ops").warning("pooler of %s not re-aimed at %s: %s", self.spec.name, target,
                                                str(exc).splitlines()[0])

    def _pooler_target(self, pooler: LocalPooler, own: Endpoint) -> Endpoint:
        """`own` (this cluster's primary), or the primary of the cluster the pooler was moved to."""
        moved = pooler.moved_to
        if moved is None:
            return own
        other = self._local_cluster(moved)
        state = other.state_store().read() if other is not None else None
        if other is None or state is None:
            logging.getLogger("pg_ops").warning("pooler of %s was moved to cluster %s, which is gone: aiming it at "
                                                "%s's own primary again", self.spec.name, moved, self.spec.name)
            return own
        return other.member_endpoints()[state.primary]

    def _local_cluster(self, name: str) -> LocalPlatform | None:
        """Another local cluster of this pg_ops home, by its spec's name (None: no such spec)."""
        from pg_ops.spec import load_specs

        try:
            spec = next((s for s in load_specs() if s.name == name and s.platform == "local"), None)
        except PgOpsError as exc:
            logging.getLogger("pg_ops").warning("cluster %s: the specs do not load (%s)", name, exc)
            return None
        return LocalPlatform(spec, self.root.parent.parent) if spec is not None else None

    @property
    def _moved_here_file(self) -> Path:
        return self.root / "poolers-moved-here"  # the clusters whose pooler a blue/green cut moved here

    def _clusters_whose_pooler_moved_here(self) -> list[LocalPlatform]:
        try:
            names = self._moved_here_file.read_text().split()
        except FileNotFoundError:
            return []
        found = [self._local_cluster(name) for name in names]
        return [c for c in found if c is not None and (p := c._pooler()) is not None
                and p.moved_to == self.spec.name and p.running()]

    def move_pooler(self, cluster: str | None) -> None:
        pooler = self._pooler()
        if pooler is None:
            return
        for name, adding in ((pooler.moved_to, False), (cluster, True)):
            if name is None:
                continue
            listed = self.root.parent / name / self._moved_here_file.name  # that cluster's root
            names = set(listed.read_text().split()) if listed.exists() else set()
            names = names | {self.spec.name} if adding else names - {self.spec.name}
            if listed.parent.is_dir():
                listed.write_text("".join(f"{n}\n" for n in sorted(names)))
        pooler.move(cluster)
        state = self.state_store().read()
        if state is not None and pooler.running():
            self._aim(pooler, self._pooler_target(pooler, self.member_endpoints()[state.primary]))

    # -- the pooler ----------------------------------------------------------------------------
    def _pooler(self) -> LocalPooler | None:
        return LocalPooler(self.spec, self.root, self.user) if self.spec.pooler else None

    def pooler_endpoint(self) -> Endpoint | None:
        pooler = self._pooler()
        return pooler.endpoint if pooler else None

    def start_pooler(self, primary: str) -> bool:
        pooler = self._pooler()
        if pooler is None:
            return False
        if _port_in_use(pooler.endpoint.port) and not pooler.running():
            raise PgOpsError(f"pooler of {self.spec.name}: port {pooler.endpoint.port} on 127.0.0.1 is already in "
                             f"use by another process")
        password = self.load_credentials_or_fail().password(POOLER_USER)
        return pooler.start(self._pooler_target(pooler, self.member_endpoints()[primary]), password)

    def stop_pooler(self) -> None:
        pooler = self._pooler()
        if pooler is not None:
            pooler.stop()


    def pooler_admin(self, command: str, timeout: float = 5.0) -> list[dict]:
        pooler = self._pooler()
        if pooler is None:
            raise PgOpsError(f"cluster {self.spec.name} has no pooler (spec `pooler`)")
        return pooler.admin(command, self.load_credentials_or_fail().password(POOLER_USER), timeout)

    def check_wipe(self, name: str, keep_aside: bool) -> None:
        return None

    def check_rotation(self, role: str) -> None:
        return None  # every member re-reads its passfile, which store_credentials rewrites

    def wipe_member(self, name: str, keep_aside: bool = False) -> str | None:
        if self.member_running(name):
            raise MemberError(f"member {name}: cannot wipe the data dir of a running member")
        data = self.data_dir(name)
        release_data_dir_segment(data)
        aside = None
        if keep_aside and (data / "PG_VERSION").exists():
            # As the member script's keep_aside: beside the data dir, never deleted by pg_ops.
            aside = data.with_name(f"{data.name}.diverged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            data.rename(aside)
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        if self.user.switch:
            os.chown(data, self.user.uid, self.user.gid)
        return str(aside) if aside else None

    def member_log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def member_passfile(self, name: str) -> str:
        return str(self.member_dir(name) / "run" / "pgpass")  # member.sh: $PGOPS_RUN_DIR/pgpass

    def stopped_for_good(self, name: str) -> bool:
        return not self.member_running(name)

    def shutdown_checkpoint(self, name: str) -> str | None:
        return controldata.shutdown_checkpoint(self.bin, self.data_dir(name))

    def member_report(self, name: str) -> MemberReport:
        try:
            return MemberReport.parse((self.member_dir(name) / REPORT_FILE).read_text(errors="replace"))
        except (FileNotFoundError, PermissionError):
            return MemberReport()

    def data_dir_usage(self, name: str) -> tuple[int, int] | None:
        try:
            st = os.statvfs(self.data_dir(name))
        except FileNotFoundError:
            return None
        total = st.f_blocks * st.f_frsize
        return total - st.f_bavail * st.f_frsize, total

    def git_owned_objects(self) -> list[tuple[dict, dict | None]]:
        raise Unsupported(f"cluster {self.spec.name}: the drift check is for Kubernetes clusters "
                          f"(platform local has no Git-owned objects)")

    def check_teardown(self) -> None:
        return None

    def check_archive_store(self, store_type: str) -> None:
        return None  # the archive command runs on this machine: a folder or S3

    def check_point_in_time(self, what: str) -> None:
        return None

    def check_recover(self) -> None:
        return None

    def server_config_text(self) -> str:
        """The postgresql.conf every member of this cluster reads (one file, config/)."""
        archive = local_archive.archive_command(self.spec, self.root, self.user)  # WAL archiving (ADR-003)
        return pg_config.stamped(pg_config.postgresql_conf(self.spec, small=True, archive_command=archive))

    def check_rollout(self) -> None:
        return None

    def server_config_error(self) -> str | None:
        return running_config.config_error(self.bin / "postgres", self.server_config_text(),
                                           self.user.process_kwargs())

    def running_binaries(self, name: str) -> str | None:
        """/proc/<postmaster>/exe: the postmaster.pid's first line names the running server."""
        try:
            pid = int((self.data_dir(name) / "postmaster.pid").read_text().split("\n", 1)[0])
            return os.path.realpath(f"/proc/{pid}/exe") if _pid_alive(pid) else None
        except (OSError, ValueError):
            return None

    def rendered_binaries(self) -> str:
        return os.path.realpath(self.bin / "postgres")

    def discard(self) -> None:
        """Throw the cluster away: kill every member (nothing in it is kept, so no shutdown
        checkpoint), release the shared memory their postmasters leave, and delete its folder
        without waiting (moved aside at once, removed by a detached `rm -rf`)."""
        self.stop_pooler()
        for name in self.spec.member_names:
            with contextlib.suppress(Exception):
                self.kill_member(name)
            release_data_dir_segment(self.data_dir(name))
        discard_tree(self.root)

    def discard_recovered(self) -> None:
        self.teardown()

    def teardown(self) -> None:
        self.stop_pooler()
        for name in self.spec.member_names:
            self.stop_member(name)
            release_data_dir_segment(self.data_dir(name))
        shutil.rmtree(self.root, ignore_errors=True)

    # -- scratch servers -----------------------------------------------------------------------
    @contextlib.contextmanager
    def scratch_target(self, purpose: str) -> Iterator[ScratchTarget]:
        """A fresh one-member local cluster nobody else knows about, on a free port under
        PG_OPS_HOME/clusters/<purpose>-<random>/; always killed and deleted."""
        server = LocalScratchServer(f"{purpose}-{secrets.token_hex(4)}", generate_password(),
                                    version=self.spec.postgres.version)
        try:
            server.start()
            server.wait_ready()
            yield server.target(f"scratch cluster {server.name}")
        finally:
            server.remove()

    def member_upgrade(self, member: str, from_major: int, to_major: int, password: str) -> MemberUpgrade:
        from pg_ops.platforms.local_upgrade import MemberDataUpgrade

        return MemberDataUpgrade(self, member, settings.pg_bin_for(from_major), to_major, password)

    def upgrade_scratch(self, from_major: int, to_major: int) -> AbstractContextManager[UpgradeScratch]:
        from pg_ops.platforms.local_upgrade import upgrade_scratch

        return upgrade_scratch(from_major, to_major)

    def recovery_pod(self, request: RecoveryPodRequest) -> AbstractContextManager[RecoveryPod]:
        raise Unsupported(f"cluster {self.spec.name}: a recovery pod is Kubernetes's; the local drill restores "
                          f"into a local server (local_recovery.drill_server)")

    # -- what the tests observe (not in the Platform protocol; pg_ops itself never calls these) ----
    def supervisor_pid(self, name: str) -> int | None:
        """The pid of the member's running supervisor (member.sh; its process group holds the
        member's postgres), None when it does not run: what changes when the member restarts, and
        what a test stops or partitions."""
        return self._supervisor_pid(name)


def discard_tree(path: Path) -> None:
    """Delete a folder nobody uses any more without waiting for it."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{secrets.token_hex(3)}")
    try:
        path.rename(trash)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
        return
    subprocess.Popen(["rm", "-rf", "--", str(trash)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def free_base_port(count: int, taken: Sequence[range] = ()) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1 (below the ephemeral range,
    so outgoing client sockets cannot take them meanwhile), none of them in `taken` (other local
    clusters' ports, which may be stopped): for a cluster made at run time."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        if not any(base < r.stop and r.start < base + count for r in taken) \
                and not any(_port_in_use(base + i) for i in range(count)):
            return base
    raise PgOpsError(f"no {count} consecutive free ports found on 127.0.0.1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalScratchServer:
    """One throw-away PostgreSQL server: a one-member cluster of its own, booted by the member
    script (initdb with the given superuser password, as for any cluster's first primary).
    Split into start / wait_ready / remove so the fake Kubernetes kubelet can bind a pod's life
    to it too."""

    def __init__(self, name: str, password: str, home: Path | None = None, port: int | None = None,
                 version: int | None = None):
        self.name = name
        self.password = password
        spec = ClusterSpec.model_validate({
            "name": name, "platform": "local",
            "postgres": {"members": 1, "parameters": SCRATCH_PARAMETERS, "version": version},
            "databases": [], "local": {"base_port": port or _free_port()},
            "backups": {"wal": {"enabled": False}}})  # nothing of a scratch server is archived
        self.platform = LocalPlatform(spec, home)
        self.member = spec.member_names[0]

    @property
    def endpoint(self) -> Endpoint:
        return self.platform.member_endpoints()[self.member]

    def target(self, description: str) -> ScratchTarget:
        return ScratchTarget(description, self.endpoint, self.password)

    def start(self) -> None:
        """Credentials, record and config as a deploy writes them, then the member (no wait)."""
        platform = self.platform
        platform.root.mkdir(parents=True, exist_ok=True)
        generated = new_credentials(platform.spec).passwords
        creds = Credentials(passwords={**generated, SUPERUSER: SecretStr(self.password)})
        _write_private(platform.root / "credentials.json", json.dumps(creds.as_plain_dict(), indent=1))
        state = DesiredState(cluster=self.name, primary=self.member, epoch=1, bootstrap=True,
                             members=platform.peer_addresses())
        state = platform.state_store().write(state, None)
        platform.prepare(state)
        platform.start_member(self.member)

    def running(self) -> bool:
        return self.platform.member_running(self.member)

    def wait_ready(self, timeout: float = SCRATCH_READY_TIMEOUT_S) -> None:
        from pg_ops.postgres.topology import probe_members

        errors: list[str | None] = []

        def accepting() -> bool | None:
            probe = probe_members({self.member: self.endpoint}, SUPERUSER, self.password, 2.0)[self.member]
            if probe.reachable:
                return True
            if not self.running():
                raise MemberError(f"scratch server {self.name} exited before accepting connections: "
                                  f"{self.platform.member_log_tail(self.member, 1) or 'no log output'}")
            errors[:] = [probe.error]
            return None

        def expired() -> MemberError:
            return MemberError(f"scratch server {self.name} does not accept connections after "
                               f"{timeout:g} s: {errors[-1] if errors else None}")

        poll(accepting, timeout=timeout, interval=0.1, expired=expired)

    def remove(self) -> None:
        """Nothing in it needs a clean shutdown (LocalPlatform.discard): a large restored data
        dir does not hold up the drill's verdict, and it goes even if this process exits first."""
        self.platform.discard()
