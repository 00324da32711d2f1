"""Real network partitions on one machine, for tests and benchmarks (needs root, iptables and
a writable cgroup v2 hierarchy; `unavailable()` says why not, and callers skip).

Who is who on loopback:
- each member (its supervisor, postgres and everything they fork) is moved into a cgroup of
  its own, kept there by a background thread as members restart;
- the application writer runs as a subprocess in the `app` cgroup (pg_ops_tests/app_writer.py);
- pg_ops is everything else running as root (this test process, the Dagster daemon and the
  runs it launches).

Cutting a client group C off a member S that listens on port P adds, to the OUTPUT chain:
C's packets to P (so no new connection and no more data from C), and, for every connection C
already holds to P, S's packets back to C's port (so the established stream goes silent both
ways, as on a real cut, rather than being reset). Every rule carries the comment
`pg_ops_test:<run>` and is removed when the context ends, whatever happens; `sweep()` removes
rules and cgroups a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pg_ops.operations.context import ClusterContext
from pg_ops.platforms.local import _pid_alive

COMMENT_PREFIX = "pg_ops_test:"
PG_OPS = "pg_ops"
APP = "app"


def _cgroup2_root() -> Path | None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


def unavailable() -> str | None:
    """Why partitions cannot be made here, or None."""
    if os.geteuid() != 0:
        return "partition tests need root (iptables rules and cgroups)"
    if shutil.which("iptables") is None:
        return "iptables is not installed (make test installs it as root: apt-get install iptables)"
    root = _cgroup2_root()
    if root is None or not os.access(root, os.W_OK):
        return "no writable cgroup v2 hierarchy (iptables matches member processes by cgroup)"
    probe = ["OUTPUT", "-p", "tcp", "-d", "127.0.0.1", "--dport", "9", "-m", "cgroup", "--path", "/",
             "-m", "comment", "--comment", f"{COMMENT_PREFIX}probe", "-j", "DROP"]
    added = subprocess.run(["iptables", "-I", *probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"iptables cannot match by cgroup here: {added.stderr.strip()}"
    subprocess.run(["iptables", "-D", *probe], capture_output=True)
    return None


def _iptables(*args: str) -> None:
    result = subprocess.run(["iptables", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {result.stderr.strip()}")


def _owner_gone(run: str) -> bool:
    """A run is named pg-ops-test-<pid>-<hex>: stale once that process is gone (the other test
    worker's or benchmark's live partitions are left alone)."""
    if not run.startswith("pg-ops-test-"):
        return True  # unavailable()'s probe rule, which lives for one command
    try:
        pid = int(run.split("-")[3])
    except (IndexError, ValueError):
        return False
    return not _pid_alive(pid)


def sweep() -> None:
    """Remove every rule and cgroup a pg_ops test run left behind (one killed mid-test, or a
    cgroup whose last process was still exiting when its run ended). Runs at every start."""
    if unavailable() is not None:
        return
    listing = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        if COMMENT_PREFIX in line and line.startswith("-A "):
            run = line.split(COMMENT_PREFIX, 1)[1].split()[0].strip('"')
            if _owner_gone(run):
                subprocess.run(["iptables", "-D", *_split_rule(line[3:])], capture_output=True)
    root = _cgroup2_root()
    for stale in root.glob("pg-ops-test-*") if root else []:
        if _owner_gone(stale.name):
            _remove_cgroup(stale, root)


def _split_rule(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def _remove_cgroup(path: Path, root: Path) -> None:
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            _evacuate(child, root)
            with contextlib.suppress(OSError):
                child.rmdir()
    _evacuate(path, root)
    with contextlib.suppress(OSError):
        path.rmdir()


def _evacuate(cgroup: Path, root: Path) -> None:
    with contextlib.suppress(OSError):
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)


def _descendants(root_pid: int) -> list[int]:
    """root_pid and everything it forked (postgres children call setsid(), so a process
    group does not hold them: follow parent ids instead)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    return out


def _established_to(port: int) -> list[tuple[int, str]]:
    """(local port, socket inode) of established TCP connections to 127.0.0.1:port."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and remote.endswith(f":{port:04X}"):
                found.append((int(local.split(":")[1], 16), inode))
    return found


class Partitions:
    """Cuts between pg_ops, the application and the members of one cluster. Local members by
    default; `pid_of(member)` (the process whose descendants are the member) and
    `port_of(member)` (the port it serves) let it work on other hosts of members (the fake
    Kubernetes API's containers)."""

    def __init__(self, ctx: ClusterContext, pid_of=None, port_of=None):
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self.ctx = ctx
        self.pid_of = pid_of or ctx.platform.supervisor_pid
        self.port_of = port_of or (lambda member: ctx.endpoints()[member].port)
        self.root = _cgroup2_root()
        self.run = f"pg-ops-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.comment = f"{COMMENT_PREFIX}{self.run}"
        self.base = self.root / self.run
        self.rules: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._adopt_loop, name="partition-adopt", daemon=True)
        self._lock = threading.Lock()

    # -- who is who ------------------------------------------------------------------------
    def cgroup(self, group: str) -> str:
        """The cgroup path (relative to the cgroup2 root) of a member or of the app."""
        return f"{self.run}/{group}"

    def _members(self) -> list[str]:
        return self.ctx.spec.member_names

    def _adopt(self) -> None:
        for name in self._members():
            pid = self.pid_of(name)
            if pid is None:
                continue
            target = self.base / name / "cgroup.procs"
            current = set((self.base / name / "cgroup.procs").read_text().split())
            for member_pid in _descendants(pid):
                if str(member_pid) not in current:
                    with contextlib.suppress(OSError):
                        target.write_text(str(member_pid))

    def _adopt_loop(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):
                self._adopt()

    def _match(self, group: str) -> list[str]:
        if group == PG_OPS:
            return ["-m", "owner", "--uid-owner", "0", "-m", "cgroup", "!", "--path", self.cgroup(APP)]
        return ["-m", "cgroup", "--path", self.cgroup(group)]

    def _in_group(self, pid: int, group: str) -> bool:
        try:
            line = next(x for x in (Path("/proc") / str(pid) / "cgroup").read_text().splitlines()
                        if x.startswith("0::"))
            stat = os.stat(Path("/proc") / str(pid))
        except (OSError, StopIteration):
            return False
        path = line[3:].strip().lstrip("/")
        if group == PG_OPS:
            return stat.st_uid == 0 and path != self.cgroup(APP)
        return path == self.cgroup(group)

    # -- cuts --------------------------------------------------------------------------------
    def _add(self, rule: list[str]) -> None:
        full = ["OUTPUT", *rule, "-m", "comment", "--comment", self.comment, "-j", "DROP"]
        _iptables("-I", *full)
        self.rules.append(full)

    def _port(self, member: str) -> int:
        return self.port_of(member)

    def block(self, client: str, server: str) -> None:
        """`client` (pg_ops, app or a member) can no longer reach member `server`, and what it
        already had open to it goes silent."""
        port = self._port(server)
        with self._lock:
            self._adopt()
            self._add(["-p", "tcp", "-d", "127.0.0.1", "--dport", str(port), *self._match(client)])
            pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
            owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
            for local_port, inode in _established_to(port):
                pid = owners.get(inode)
                if pid is not None and self._in_group(pid, client):
                    self._add(["-p", "tcp", "-s", "127.0.0.1", "--sport", str(port), "-d", "127.0.0.1",
                               "--dport", str(local_port)])

    def cut(self, a: str, b: str) -> None:
        """No connection between a and b, either way (each a group: pg_ops, app or a member)."""
        if b in self._members():
            self.block(a, b)
        if a in self._members():
            self.block(b, a)

    def seal(self, member: str) -> None:
        """Nothing but the application and the member itself reaches `member`'s port, whoever
        the client is (pg_ops, proxies standing in for cluster networking, other members)."""
        port = self._port(member)
        everyone_else = ["-m", "cgroup", "!", "--path", self.cgroup(APP), "-m", "cgroup", "!", "--path",
                         self.cgroup(member)]
        with self._lock:
            self._adopt()
            self._add(["-p", "tcp", "-d", "127.0.0.1", "--dport", str(port), *everyone_else])
            pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
            owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
            for local_port, inode in _established_to(port):
                pid = owners.get(inode)
                if pid is not None and not self._in_group(pid, APP) and not self._in_group(pid, member):
                    self._add(["-p", "tcp", "-s", "127.0.0.1", "--sport", str(port), "-d", "127.0.0.1",
                               "--dport", str(local_port)])

    def isolate(self, member: str, reachable_by: tuple[str, ...] = (APP,)) -> None:
        """`member` cut off from pg_ops and every other member; `reachable_by` still reach it."""
        for other in [PG_OPS, APP, *self._members()]:
            if other != member and other not in reachable_by:
                self.cut(member, other)

    def heal(self) -> None:
        with self._lock:
            for rule in reversed(self.rules):
                subprocess.run(["iptables", "-D", *rule], capture_output=True)
            self.rules.clear()

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> Partitions:
        sweep()
        self.base.mkdir()
        for group in [*self._members(), APP]:
            (self.base / group).mkdir()
        self._adopt()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.heal()
        for _ in range(50):  # a killed member's last processes may still be exiting
            _remove_cgroup(self.base, self.root)
            if not self.base.exists():
                break
            time.sleep(0.1)

    @contextlib.contextmanager
    def app_process(self, argv: list[str], **popen) -> Iterator[subprocess.Popen]:
        """Run the application (a subprocess) in the app cgroup; stopped by process group."""
        procs = self.base / APP / "cgroup.procs"

        def enter():
            procs.write_text(str(os.getpid()))

        proc = subprocess.Popen(argv, preexec_fn=enter, start_new_session=True, **popen)  # noqa: PLW1509
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()

