"""member.sh's boot table, one test per row, with stubbed PostgreSQL tools.

The script runs as the platforms run it (bash, its environment contract, PGOPS_BIN naming the
tools' folder) in a temporary folder; PGOPS_BIN is a folder of stubs. Each stub appends its
argv to a call log and answers from a small "world" folder the test prepares (is the primary
up, its timeline, what pg_rewind exits with...); initdb and pg_basebackup leave a data dir
that the pg_controldata stub reads back. The stubbed `postgres` runs until it is signalled,
like the real one, so the supervisor reaches its natural end: TERM (exit 0) after the row was
taken, or die() (exit 1) for the refusals. Each test asserts the tools called and the
structured report pg_ops reads (Platform.member_report: boot.action, boot.reason,
isolated.*, discarded.*). Real PostgreSQL runs the same script in test_deploy.py,
test_failover.py and the fake-Kubernetes tests; these cover the rows that are slow or hard to
reach there, and the ones that must never touch anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import pytest

from pg_ops.platforms.base import REPORT_FILE, report_pairs
from pg_ops.platforms.local import MEMBER_SCRIPT
from pg_ops.render.member_env import MemberEnv
from pg_ops.state import DesiredState
from pg_ops_tests.support import lease_rule
from pg_ops_tests.support.helpers import wait_for

SYSID = "7300000000000000001"
OTHER_SYSID = "7300000000000000999"
PORTS = {"m-0": 41000, "m-1": 41001, "m-2": 41002}
SUPERUSER_PASSWORD = "pw-super"
TIMEOUT_S = 20.0

# The stubs. `knob NAME` prints the world's scripted answer (nothing when unset); every call is
# one record of the call log: the tool's name and its arguments, \x1f between them, \x1e after.
STUB_HEAD = """#!/bin/bash
W={world}
rec=$(basename "$0"); for a in "$@"; do rec+=$'\\x1f'"$a"; done
printf '%s\\x1e' "$rec" >> "$W/calls"
knob() {{ cat "$W/$1" 2>/dev/null; }}
rc() {{ local v; v=$(knob "$1.rc"); exit "${{v:-0}}"; }}
opt() {{ local want=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$want" ] && {{ echo "$2"; return; }}; shift; done; }}
control() {{ printf 'Database system identifier:           %s\\nLatest checkpoint'"'"'s TimeLineID:       %s\\n' \
"$2" "$3" > "$1/fake_control"; }}
"""

STUBS = {
    "pg_controldata": 'cat "$(opt -D "$@")/fake_control" 2>/dev/null || exit 1\n',
    "initdb": """D=$(opt -D "$@")
for a in "$@"; do case $a in --pwfile=*) cat "${a#--pwfile=}" > "$W/initdb.pwfile" ;; esac; done
[ "$(knob initdb.rc)" ] && { echo "initdb: error: scripted failure" >&2; rc initdb; }
echo 16 > "$D/PG_VERSION"; control "$D" "$(knob initdb.sysid)" 1
""",
    "pg_basebackup": """D=$(opt -D "$@")
[ "$(knob pg_basebackup.rc)" ] && { echo "pg_basebackup: error: scripted failure" >&2; rc pg_basebackup; }
mkdir -p "$D"; echo 16 > "$D/PG_VERSION"; echo "a copy of the primary" > "$D/cloned"
control "$D" "$(knob primary.sysid)" "$(knob primary.tli)"
""",
    "pg_rewind": """D=$(opt -D "$@")
[ "$(knob pg_rewind.rc)" ] && { echo "pg_rewind: error: could not find common ancestor"; rc pg_rewind; }
control "$D" "$(knob primary.sysid)" "$(knob primary.tli)"; echo "pg_rewind: Done!"
""",
    "psql": """SQL=$(opt -c "$@")
case $SQL in
    "select 1")           [ -e "$W/primary.up" ] || { echo "psql: error: connection refused" >&2; exit 2; } ;;
    *pg_walfile_name*)    [ -e "$W/primary.up" ] || exit 2; knob primary.tli ;;
    *.history*)           [ -e "$W/primary.up" ] || exit 2; knob primary.history ;;
    *isolation_verdict*)  [ -e "$W/lease.hang" ] && exec sleep 600; [ "$(knob lease.rc)" ] && exit 2
                          [ -e "$W/lease.missing" ] && { echo \
"ERROR:  function public.isolation_verdict(integer, unknown) does not exist" >&2; exit 1; }
                          exec "$(dirname "$0")/lease-verdict" "$SQL" "$(knob lease.check)" ;;  # lease_rule.py
    *"from lease"*)       v=$(knob lease.own); [ -n "$v" ] || exit 1; echo "$v" ;;
    *pg_stat_wal_receiver*) v=$(knob receiver.streaming); echo "${v:-0}" ;;  # before: it joins pg_stat_activity
    *pg_stat_activity*)   echo 0 ;;
    *pg_ls_waldir*)       v=$(knob standby.tli); [ -n "$v" ] || exit 2; echo "$v" ;;
esac
exit 0
""",
    "pg_waldump": "knob waldump\n",
    "pg_isready": '[ -e "$W/postgres.accepting" ] || exit 2\n',
    "pg_ctl": """D=$(opt -D "$@")
[ "$(knob pg_ctl.rc)" ] && rc pg_ctl
[ "$1" = promote ] && rm -f "$D/standby.signal"
exit 0
""",
}

# The server: runs until INT (fast), TERM (smart) or QUIT (immediate), like postgres; installs
# its handlers before it "accepts connections" (pg_isready answers). Python, because bash cannot
# trap the SIGINT that a background job of a non-interactive shell inherits ignored.
POSTGRES_STUB = """#!{python}
import os, signal, sys, time
W = {world!r}
with open(os.path.join(W, "calls"), "a") as fh:
    fh.write("\\x1f".join(["postgres", *sys.argv[1:]]) + "\\x1e")
def stop(signum, frame):
    with open(os.path.join(W, "calls"), "a") as fh:
        fh.write("\\x1f".join(["postgres-signal", signal.Signals(signum).name]) + "\\x1e")
    try:
        os.unlink(os.path.join(W, "postgres.accepting"))
    except FileNotFoundError:
        pass
    sys.exit(0)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
    signal.signal(s, stop)
open(os.path.join(W, "postgres.pid"), "w").write(str(os.getpid()))
open(os.path.join(W, "postgres.accepting"), "w").close()
while True:
    time.sleep(60)
"""


def control_text(sysid: str, tli: int) -> str:
    return f"Database system identifier:           {sysid}\nLatest checkpoint's TimeLineID:       {tli}\n"


@dataclass
class Member:
    """One member's folders, its stubs' world, and the running script."""

    root: Path
    name: str
    proc: subprocess.Popen | None = field(default=None, repr=False)
    more_env: dict[str, str] = field(default_factory=dict)  # beyond the contract's required part

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def state_dir(self) -> Path:
        return self.root / "member"

    @property
    def data(self) -> Path:
        return self.state_dir / "data"

    @property
    def record(self) -> Path:
        return self.root / "desired-state"

    # -- preparing a row ---------------------------------------------------------------------
    def write_record(self, primary: str, bootstrap: bool = False, epoch: int = 3, lease_seconds: float = 0.0,
                     recovery: str = ""):
        state = DesiredState(cluster="c", version=epoch, epoch=epoch, primary=primary, bootstrap=bootstrap,
                             system_identifier="" if bootstrap else SYSID, lease_seconds=lease_seconds,
                             members={n: f"127.0.0.1:{p}" for n, p in PORTS.items()}, recovery=recovery)
        self.record.write_text(state.to_text())

    def primary(self, up: bool = True, tli: int = 1, sysid: str = SYSID, history: str = "") -> None:
        """The designated primary as psql and pg_basebackup/pg_rewind see it."""
        (self.world / "primary.up").unlink(missing_ok=True)
        if up:
            (self.world / "primary.up").touch()
        self.knob("primary.tli", str(tli))
        self.knob("primary.sysid", sysid)
        self.knob("primary.history", history)

    def knob(self, name: str, value: str) -> None:
        (self.world / name).write_text(value)

    def data_dir(self, sysid: str = SYSID, tli: int = 1, standby: bool = False, auto_conf: str = "") -> None:
        """An existing data dir (what pg_controldata reads back)."""
        self.data.mkdir(mode=0o700, exist_ok=True)
        (self.data / "PG_VERSION").write_text("16\n")
        (self.data / "fake_control").write_text(control_text(sysid, tli))
        if standby:
            (self.data / "standby.signal").touch()
        if auto_conf:
            (self.data / "postgresql.auto.conf").write_text(auto_conf)

    # -- running it ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        contract = MemberEnv(member=self.name, data=str(self.data), port=PORTS[self.name], state=str(self.record),
                             config_dir=str(self.root / "config"), passfile=str(self.root / "pgpass"),
                             run_dir=str(self.state_dir / "run"), bin=str(self.root / "stubs"), listen="127.0.0.1",
                             recovery_dir=str(self.root / "recovery"))
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", **contract.variables(), **self.more_env}

    def recovery_inputs(self, token: str, rc: int = 0, reason: str = "") -> None:
        """The recovery Secret as mounted: its token, and a recover_pod.sh that records its call and
        its environment's mode, restores a data dir of the cluster's system (or fails with
        `reason` in its termination log, as recover_pod.sh does)."""
        folder = self.root / "recovery"
        folder.mkdir(exist_ok=True)
        (folder / "token").write_text(token)
        (folder / "recover_pod.sh").write_text(
            f'printf "%s %s %s\\n" "$PGOPS_RECOVERY_THEN" "[$PGOPS_LISTEN]" "$PGDATA" >> {self.world}/recoveries\n'
            + (f'printf "%s\\n" "{reason}" > "$PGOPS_TERMINATION_LOG"; exit {rc}\n' if rc else
               f'echo 16 > "$PGDATA/PG_VERSION"; printf "{control_text(SYSID, 2)}" > "$PGDATA/fake_control"\n'))

    def recoveries(self) -> list[str]:
        path = self.world / "recoveries"
        return path.read_text().splitlines() if path.exists() else []

    def start(self) -> None:
        log = open(self.root / "member.log", "ab")  # noqa: SIM115 - the child holds it
        with log:
            self.proc = subprocess.Popen(["bash", str(MEMBER_SCRIPT), self.name], env=self.env(), cwd=self.root,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def exit_code(self) -> int:
        """The script's natural end (die() or after TERM)."""
        try:
            return self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"member.sh did not exit; its log:\n{self.log()}") from None

    def terminate(self) -> int:
        """TERM, as the platforms stop a member: checkpoint, fast shutdown, exit 0."""
        self.proc.send_signal(signal.SIGTERM)
        return self.exit_code()

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=TIMEOUT_S)

    # -- what it did ---------------------------------------------------------------------------
    def log(self) -> str:
        return (self.root / "member.log").read_text(errors="replace")

    def calls(self, tool: str | None = None) -> list[list[str]]:
        try:
            raw = (self.world / "calls").read_text()
        except FileNotFoundError:
            return []
        records = [r.split("\x1f") for r in raw.split("\x1e") if r]
        return [r for r in records if tool is None or r[0] == tool]

    def tools_called(self) -> set[str]:
        return {r[0] for r in self.calls()}

    def report(self) -> dict[str, str]:
        """What pg_ops reads, parsed the way the platforms parse it."""
        path = self.state_dir / REPORT_FILE
        return report_pairs(path.read_text()) if path.exists() else {}

    def status(self) -> dict[str, str]:
        path = self.state_dir / "run" / "member-status"
        with contextlib.suppress(FileNotFoundError):
            return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return {}

    def wait_action(self, action: str, running: bool = True) -> dict[str, str]:
        """Until the report names `action` (and, for a row that starts postgres, postgres accepts)."""
        def taken():
            report = self.report()
            if report.get("boot.action") != action:
                return None
            return report if not running or self.status().get("phase") == "running" else None
        try:
            return wait_for(taken, f"boot.action={action}", timeout=TIMEOUT_S, interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; report {self.report()}, status {self.status()}; log:\n{self.log()}") from None


@pytest.fixture
def member(tmp_path):
    """A member m-1 (tests may rename it) of a three-member cluster, not started yet; the script
    and everything it started are killed (its process group) whatever the test did."""
    m = Member(tmp_path, "m-1")
    for folder in ("world", "stubs", "config", "member", "member/run"):
        (tmp_path / folder).mkdir()
    (tmp_path / "member" / "data").mkdir(mode=0o700)
    (tmp_path / "pgpass").write_text(f"*:*:*:postgres:{SUPERUSER_PASSWORD}\n*:*:*:replicator:pw-repl\n")
    for tool, body in STUBS.items():
        path = tmp_path / "stubs" / tool
        path.write_text(STUB_HEAD.format(world=m.world) + body)
        path.chmod(0o755)
    verdict = tmp_path / "stubs" / "lease-verdict"  # the isolation verdict a server would give (not a tool)
    verdict.write_text(f'#!/bin/bash\nexec {sys.executable} {lease_rule.__file__} "$@"\n')
    verdict.chmod(0o755)
    postgres = tmp_path / "stubs" / "postgres"
    postgres.write_text(POSTGRES_STUB.format(python=sys.executable, world=str(m.world)))
    postgres.chmod(0o755)
    m.primary(up=True)
    try:
        yield m
    finally:
        m.kill()


def arg(call: list[str], option: str) -> str:
    return call[call.index(option) + 1]


def started_postgres(member: Member) -> list[str]:
    calls = member.calls("postgres")
    assert len(calls) == 1, calls
    call = calls[0]
    assert arg(call, "-D") == str(member.data) and arg(call, "-p") == str(PORTS[member.name])
    assert f"cluster_name={member.name}" in call
    assert f"config_file={member.root / 'config'}/postgresql.conf" in call
    return call


def standby_config(member: Member, primary: str) -> str:
    """The standby settings member.sh writes: the primary's address and this member's slot."""
    assert (member.data / "standby.signal").exists()
    auto = (member.data / "postgresql.auto.conf").read_text()
    conninfo = [line for line in auto.splitlines() if line.startswith("primary_conninfo")]
    assert len(conninfo) == 1, auto
    assert f"port={PORTS[primary]} user=replicator" in conninfo[0]
    assert f"application_name={member.name}" in conninfo[0]
    assert f"primary_slot_name = '{member.name.replace('-', '_')}'" in auto
    return auto


# -- empty data dir ----------------------------------------------------------------------------
def test_initdb_for_the_first_primary_of_a_new_cluster(member):
    member.name = "m-0"
    member.write_record("m-0", bootstrap=True)
    member.knob("initdb.sysid", SYSID)
    member.start()
    report = member.wait_action("initdb")
    assert report["boot.reason"] == "" and report["boot.at"].isdigit()
    [initdb] = member.calls("initdb")
    assert arg(initdb, "-D") == str(member.data) and arg(initdb, "-U") == "postgres"
    assert "--data-checksums" in initdb and "--auth-host=scram-sha-256" in initdb
    assert (member.world / "initdb.pwfile").read_text() == SUPERUSER_PASSWORD + "\n"  # from the passfile
    assert "pg_basebackup" not in member.tools_called()
    started_postgres(member)
    assert not (member.data / "standby.signal").exists()  # a primary
    assert member.terminate() == 0
    assert member.calls("postgres-signal") == [["postgres-signal", "SIGINT"]]  # fast shutdown on TERM
    assert member.status()["phase"] == "stopping"


def test_a_recovery_waits_for_its_inputs_then_restores_and_starts_as_the_primary(member):
    """`pg-ops recover` on Kubernetes: the record names a recovery; until the Secret with that
    token is mounted the member waits (never initdb: a new empty cluster would read as healthy);
    then recover_pod.sh restores and replays (stop mode, socket only) and the data starts as the
    primary."""
    member.name = "m-0"
    member.write_record("m-0", bootstrap=True, recovery="tok1")
    member.recovery_inputs("an-older-token")
    member.start()
    report = member.wait_action("wait", running=False)
    assert "recovery tok1: its inputs are not mounted yet" in report["boot.reason"]
    assert member.recoveries() == [] and member.tools_called().isdisjoint({"initdb", "postgres", "pg_basebackup"})
    member.recovery_inputs("tok1")  # the kubelet synced the Secret
    member.wait_action("recover")
    assert member.recoveries() == [f"stop [] {member.data}"]
    assert "initdb" not in member.tools_called()
    started_postgres(member)
    assert not (member.state_dir / "pg_ops-recovering").exists()
    assert member.terminate() == 0


def test_a_failed_recovery_is_refused_at_every_boot_and_one_cut_short_starts_over(member):
    member.name = "m-0"
    member.write_record("m-0", bootstrap=True, recovery="tok2")
    member.recovery_inputs("tok2", rc=1, reason="postgres exited (1): could not locate required checkpoint record")
    member.start()
    assert member.exit_code() == 1
    report = member.report()
    assert report["boot.action"] == "refused"
    assert report["boot.reason"] == ("recovery tok2 failed: postgres exited (1): could not locate required "
                                     "checkpoint record")
    # The container restarts: the kept failure is refused again, recover_pod.sh not run twice.
    member.start()
    assert member.exit_code() == 1 and len(member.recoveries()) == 1
    assert member.report()["boot.reason"].startswith("recovery tok2 failed: postgres exited (1)")
    # A restore cut short (the marker left, a half-written data dir): wiped, then restored again.
    member.write_record("m-0", bootstrap=True, recovery="tok3")
    member.recovery_inputs("tok3")
    member.data_dir(sysid=OTHER_SYSID)
    (member.data / "half-restored").touch()
    (member.state_dir / "pg_ops-recovering").touch()
    member.start()
    member.wait_action("recover")
    assert not (member.data / "half-restored").exists() and len(member.recoveries()) == 2
    started_postgres(member)  # the restored data, as the primary
    assert member.terminate() == 0


def test_failed_initdb_is_a_refusal(member):
    member.name = "m-0"
    member.write_record("m-0", bootstrap=True)
    member.knob("initdb.rc", "1")
    member.start()
    assert member.exit_code() == 1
    report = member.report()
    assert (report["boot.action"], report["boot.reason"]) == ("refused", "initdb failed")
    assert "postgres" not in member.tools_called()


def test_empty_replica_is_cloned_from_the_primary(member):
    member.write_record("m-0")
    member.start()
    report = member.wait_action("clone")
    assert report["boot.reason"] == "from m-0"
    [clone] = member.calls("pg_basebackup")
    assert arg(clone, "-D") == str(member.data) and arg(clone, "-S") == "m_1"
    assert f"port={PORTS['m-0']} user=replicator" in arg(clone, "-d")
    assert "initdb" not in member.tools_called()  # never a new empty cluster
    assert (member.data / "cloned").exists()
    standby_config(member, "m-0")
    started_postgres(member)
    assert member.terminate() == 0


def test_empty_designated_primary_of_a_bootstrapped_cluster_refuses(member):
    member.name = "m-0"
    member.write_record("m-0", bootstrap=False)
    member.start()
    assert member.exit_code() == 1
    report = member.report()
    assert report["boot.action"] == "refused"
    assert "the data dir is empty and the cluster is bootstrapped; refusing initdb" in report["boot.reason"]
    assert member.status()["phase"] == "refused" and member.status()["reason"] == report["boot.reason"]
    assert member.tools_called().isdisjoint({"initdb", "pg_basebackup", "postgres"})


def test_empty_replica_waits_for_an_unreachable_primary_without_wiping(member):
    member.write_record("m-0")
    member.primary(up=False)
    (member.data / "keep-me").write_text("not a data dir, but not ours to delete")
    member.start()
    report = member.wait_action("wait", running=False)
    assert report["boot.reason"] == "primary m-0 unreachable: nothing to clone from"
    assert member.status()["phase"] == "waiting"
    assert member.calls("psql")[0][-1] == "select 1"
    assert (member.data / "keep-me").exists()
    assert member.tools_called().isdisjoint({"pg_basebackup", "initdb", "postgres"})
    member.primary(up=True)  # it comes back: the same loop clones
    member.wait_action("clone")
    assert len(member.calls("pg_basebackup")) == 1
    assert member.terminate() == 0


# -- a data dir of the wrong cluster -----------------------------------------------------------
def test_data_dir_of_another_cluster_is_refused_and_left_alone(member):
    member.write_record("m-0")
    member.data_dir(sysid=OTHER_SYSID)
    member.start()
    assert member.exit_code() == 1
    report = member.report()
    assert report["boot.action"] == "refused"
    assert f"belongs to another cluster (system identifier {OTHER_SYSID}, expected {SYSID})" in report["boot.reason"]
    assert member.tools_called().isdisjoint({"pg_rewind", "pg_basebackup", "initdb", "postgres"})
    assert (member.data / "fake_control").read_text() == control_text(OTHER_SYSID, 1)
    assert not (member.data / "standby.signal").exists()


# -- a former primary, or a replica behind a failover ------------------------------------------
HISTORY = "1\t0/3000000\tno recovery target specified\n"
WALDUMP = (
    "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/03000028, prev 0/03000000, "
    "desc: INSERT off: 2, flags: 0x00, blkref #0: rel 1663/5/16384 blk 0\n"
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/03000060, prev 0/03000028, "
    "desc: COMMIT 2026-01-01 00:00:00.000000 UTC\n"
)


def test_former_primary_is_rewound_and_its_discarded_writes_reported(member):
    member.write_record("m-0")
    member.data_dir(tli=1)  # no standby.signal: it was a primary
    member.primary(tli=2, history=HISTORY)
    member.knob("waldump", WALDUMP)
    member.start()
    report = member.wait_action("rewind")
    assert report["boot.reason"] == "from m-0"
    [rewind] = member.calls("pg_rewind")
    assert arg(rewind, "-D") == str(member.data)
    assert f"port={PORTS['m-0']} user=postgres" in next(a for a in rewind if a.startswith("--source-server="))
    [waldump] = member.calls("pg_waldump")
    assert (arg(waldump, "-t"), arg(waldump, "-s")) == ("1", "0/3000000")  # from the fork point on
    # 0/3000060 + 34 bytes: 130 bytes and one commit beyond the fork point, thrown away.
    assert {k: v for k, v in report.items() if k.startswith("discarded.") and k != "discarded.at"} == {
        "discarded.from": "0/3000000", "discarded.to": "0/3000082", "discarded.timeline": "1",
        "discarded.bytes": "130", "discarded.transactions": "1", "discarded.kept_aside": "",
        "discarded.unknown": ""}
    assert "pg_basebackup" not in member.tools_called()
    standby_config(member, "m-0")
    started_postgres(member)
    assert member.terminate() == 0


def test_a_killed_primary_promoted_since_its_last_checkpoint_counts_on_its_wal_timeline(member):
    """A primary promoted onto timeline 2 and killed before its first checkpoint there: its control
    file still says timeline 1, its pg_wal holds timeline 2's segments. What the rewind discards is
    counted on timeline 2 from where timeline 3 forked (the control file alone made it look on
    timeline 1 and report it uncountable, found by the failover benchmark's second trial)."""
    member.write_record("m-0")
    member.data_dir(tli=1)
    (member.data / "pg_wal").mkdir()
    for segment in ("000000010000000000000003", "000000020000000000000005", "00000002.history"):
        (member.data / "pg_wal" / segment).touch()
    member.primary(tli=3, history="1\t0/3000000\tno recovery target specified\n"
                                  "2\t0/5000000\tno recovery target specified\n")
    member.knob("waldump", WALDUMP)
    member.start()
    report = member.wait_action("rewind")
    [waldump] = member.calls("pg_waldump")
    assert (arg(waldump, "-t"), arg(waldump, "-s")) == ("2", "0/5000000")
    assert report["discarded.timeline"] == "2" and report["discarded.transactions"] == "1"
    assert member.terminate() == 0


def test_failed_rewind_keeps_the_diverged_data_aside_and_reclones(member):
    member.write_record("m-0")
    member.data_dir(tli=1)
    (member.data / "diverged-row").write_text("written after the fork")
    member.primary(tli=2)
    member.knob("pg_rewind.rc", "1")
    member.start()
    report = member.wait_action("reclone")
    assert report["boot.reason"] == "from m-0"
    assert len(member.calls("pg_rewind")) == 1 and len(member.calls("pg_basebackup")) == 1
    [aside] = member.state_dir.glob("data.diverged-*")
    assert (aside / "diverged-row").exists()  # moved aside, never deleted
    assert report["discarded.kept_aside"] == str(aside)
    # The primary's history has no line for timeline 1 here: what is discarded cannot be counted,
    # and is reported as such (M3: this returned silently, and no alert fired).
    assert report["discarded.at"] and report["discarded.transactions"] == "" and report["discarded.timeline"] == "1"
    assert report["discarded.unknown"].startswith("timeline 1 is not in the history of the primary's timeline 2")
    assert (member.data / "cloned").exists() and not (member.data / "diverged-row").exists()
    standby_config(member, "m-0")
    started_postgres(member)
    assert member.terminate() == 0


def test_former_primary_waits_while_the_primary_is_unreachable(member):
    member.write_record("m-0")
    member.data_dir(tli=1)
    member.primary(up=False)
    member.start()
    report = member.wait_action("wait", running=False)
    assert report["boot.reason"] == "primary m-0 unreachable: cannot rewind"
    assert member.tools_called().isdisjoint({"pg_rewind", "pg_basebackup", "postgres"})
    assert not (member.data / "standby.signal").exists()  # untouched
    assert member.terminate() == 0


def test_replica_on_another_timeline_is_rewound_first(member):
    member.write_record("m-0")
    member.data_dir(tli=1, standby=True)
    member.primary(tli=2, history=HISTORY)
    member.start()
    member.wait_action("rewind")
    assert len(member.calls("pg_rewind")) == 1
    standby_config(member, "m-0")
    started_postgres(member)
    assert member.terminate() == 0


def test_a_standby_started_behind_an_unreachable_primary_rewinds_once_it_reaches_it(member):
    """H3 (issue 20): a standby on timeline 1 (a former primary that fenced itself) starts while the
    primary is unreachable, so boot cannot compare timelines. Once the primary on timeline 2
    answers and it still does not stream, three looks in a row find it behind: it boots again,
    and the rewind counts what it discards."""
    member.write_record("m-0")
    member.data_dir(tli=1, standby=True)
    member.primary(up=False)
    member.env = lambda: {**Member.env(member), "PGOPS_TIMELINE_CHECK_SECONDS": "1"}
    member.start()
    member.wait_action("standby")
    member.primary(tli=2, history=HISTORY)
    member.knob("waldump", WALDUMP)
    # Its own timeline unreadable (a hung server, say): never a reason to restart it.
    looks = lambda: sum(1 for c in member.calls("psql") if "pg_ls_waldir" in c[-1])  # noqa: E731
    wait_for(lambda: looks() >= 4, "four looks at its own timeline", timeout=TIMEOUT_S, interval=0.1)
    assert "pg_rewind" not in member.tools_called() and len(member.calls("postgres")) == 1
    member.knob("standby.tli", "1")
    report = member.wait_action("rewind")
    assert "replica on timeline 1, the primary m-0 on 2, and not streaming: booting again to rewind" in member.log()
    assert report["discarded.transactions"] == "1" and report["discarded.timeline"] == "1"
    assert len(member.calls("postgres")) == 2
    assert member.terminate() == 0


def test_replica_is_repointed_at_the_current_primary_and_started_as_a_standby(member):
    member.write_record("m-2")  # a failover made m-2 the primary since
    old = f"primary_conninfo = 'host=127.0.0.1 port={PORTS['m-0']} user=replicator'\nprimary_slot_name = 'm_1'\n"
    member.data_dir(tli=1, standby=True, auto_conf="work_mem = '8MB'\n" + old)
    member.primary(tli=1)
    member.start()
    report = member.wait_action("standby")
    assert report["boot.reason"] == "from m-2"
    auto = standby_config(member, "m-2")
    assert "work_mem = '8MB'" in auto and f"port={PORTS['m-0']}" not in auto
    assert member.tools_called().isdisjoint({"pg_rewind", "pg_basebackup", "initdb"})
    started_postgres(member)
    assert member.terminate() == 0


# -- the designated primary --------------------------------------------------------------------
def test_designated_primary_starts_as_the_primary(member):
    member.name = "m-0"
    member.write_record("m-0")
    member.data_dir()
    member.start()
    report = member.wait_action("primary")
    assert report["boot.reason"] == ""
    started_postgres(member)
    assert member.tools_called().isdisjoint({"pg_rewind", "pg_basebackup", "initdb", "pg_ctl"})
    assert not (member.data / "standby.signal").exists()
    assert member.terminate() == 0
    assert "checkpoint" in [c[-1] for c in member.calls("psql")]  # while still serving, before stopping


def test_a_data_dir_runs_with_its_major_s_binaries_and_one_the_image_lacks_is_refused(member):
    """PGOPS_BINS (an image with several majors): the data dir's PG_VERSION picks the folder."""
    bins = member.root / "image"
    (bins / "16").mkdir(parents=True)
    for tool in (member.root / "stubs").iterdir():
        (bins / "16" / tool.name).symlink_to(tool)
    member.more_env = {"PGOPS_BIN": str(bins / "18"), "PGOPS_BINS": str(bins / "{major}")}
    member.name = "m-0"
    member.write_record("m-0")
    member.data_dir()  # PostgreSQL 16's
    member.start()
    member.wait_action("primary")
    started_postgres(member)  # the 16 folder's (the image's own 18 has none here)
    assert member.terminate() == 0
    (bins / "16").rename(bins / "15")
    member.start()
    assert member.exit_code() == 1
    report = member.report()
    assert report["boot.action"] == "refused"
    assert report["boot.reason"] == (f"data dir {member.data} is PostgreSQL 16 and this image has no binaries "
                                     f"for it ({bins}/{{major}})")


def test_designated_primary_still_in_recovery_is_promoted(member):
    member.name = "m-0"
    member.write_record("m-0")
    member.data_dir(standby=True)
    member.start()
    member.wait_action("promote")
    wait_for(lambda: member.calls("pg_ctl"), "pg_ctl promote", timeout=TIMEOUT_S, interval=0.05)
    [promote] = member.calls("pg_ctl")
    assert promote[1] == "promote" and arg(promote, "-D") == str(member.data) and "-W" in promote
    started_postgres(member)
    assert member.terminate() == 0


def test_isolated_primary_stays_a_standby_until_pg_ops_acts(member):
    member.name = "m-0"
    member.write_record("m-0", epoch=3)
    member.data_dir(standby=True)
    (member.state_dir / "pg_ops-isolated").write_text("epoch=3\nat=1\nreason=cut off\n")
    member.start()
    report = member.wait_action("isolated")
    assert report["boot.reason"] == "isolated at epoch 3: a standby until pg_ops promotes it"
    started_postgres(member)
    assert member.terminate() == 0
    assert "pg_ctl" not in member.tools_called()  # never promotes itself back
    assert (member.data / "standby.signal").exists()


def test_a_member_fenced_at_a_newer_epoch_waits_for_its_record_to_catch_up(member):
    """M4 (issue 20): a Kubernetes fence wrote its marker (epoch 4) and stopped postgres; the
    record file here still says epoch 3 with this member the primary (the kubelet's ConfigMap
    sync lags): it starts nothing until the record reaches epoch 4, then boots from that."""
    member.name = "m-0"
    member.write_record("m-0", epoch=3)
    member.data_dir()
    (member.state_dir / "pg_ops-fenced").write_text("epoch=4\n")
    member.start()
    report = member.wait_action("wait", running=False)
    assert report["boot.reason"] == "fenced by pg_ops at epoch 4; the record here is at epoch 3"
    assert "postgres" not in member.tools_called()
    member.write_record("m-1", epoch=4)  # the record catches up: m-1 is the primary now
    member.primary(tli=2, history=HISTORY)
    member.knob("waldump", WALDUMP)
    member.wait_action("rewind")
    assert not (member.state_dir / "pg_ops-fenced").exists()
    standby_config(member, "m-1")
    assert member.terminate() == 0


def test_isolation_of_an_older_epoch_is_over(member):
    """pg_ops acted since (a new epoch designates this member again): it promotes, and the
    isolation state it reports is cleared."""
    member.name = "m-0"
    member.write_record("m-0", epoch=4)
    member.data_dir(standby=True)
    (member.state_dir / "pg_ops-isolated").write_text("epoch=3\nat=1\nreason=cut off\n")
    (member.state_dir / REPORT_FILE).write_text("isolated.at=1\nisolated.reason=cut off\n")
    member.start()
    member.wait_action("promote")
    wait_for(lambda: not (member.state_dir / "pg_ops-isolated").exists(), "the marker removed",
             timeout=TIMEOUT_S, interval=0.05)
    wait_for(lambda: member.report().get("isolated.at") == "", "isolated.at cleared", timeout=TIMEOUT_S,
             interval=0.05)
    assert member.calls("pg_ctl")[0][1] == "promote"
    assert member.terminate() == 0


def designated_primary_with_lease(member, lease_seconds: float) -> None:
    """m-0, the designated primary at epoch 3, with a data dir it ran as a replica from
    (primary_conninfo kept) and isolation fencing after `lease_seconds`."""
    member.name = "m-0"
    member.write_record("m-0", epoch=3, lease_seconds=lease_seconds)
    member.data_dir(auto_conf="primary_conninfo = 'host=127.0.0.1 port=41001'\nprimary_slot_name = 'm_0'\n")


def test_primary_cut_off_from_pg_ops_and_every_standby_restarts_as_a_standby(member):
    """Isolation fencing: no lease renewal and no standby for lease_seconds (the stub's lease
    query answers an old lease and no standby), so it stops, writes the isolation state and
    boots again as a standby with no upstream."""
    designated_primary_with_lease(member, 1)
    member.knob("lease.check", "m-0 999 -1")  # lease 99.9 s old, no standby streams
    member.start()
    member.wait_action("primary")
    report = member.wait_action("isolated")
    assert report["isolated.at"].isdigit()
    assert report["isolated.reason"].startswith("no lease renewal for ") and "(lease 1 s)" in report["isolated.reason"]
    marker = (member.state_dir / "pg_ops-isolated").read_text()
    assert "epoch=3\n" in marker
    assert (member.data / "standby.signal").exists()
    assert "primary_conninfo" not in (member.data / "postgresql.auto.conf").read_text()
    assert len(member.calls("postgres")) == 2 and member.calls("postgres-signal")[0][1] == "SIGINT"
    assert member.terminate() == 0
    assert "pg_ctl" not in member.tools_called()


def test_a_primary_whose_own_lease_check_fails_is_not_kept_writable_by_that(member):
    """Its own server not answering the lease query is no sign of life from pg_ops or a standby
    (issue 20, M2: it used to conclude nothing and stay writable): past the lease it fences."""
    designated_primary_with_lease(member, 1)
    member.knob("lease.rc", "2")
    member.start()
    member.wait_action("primary")
    report = member.wait_action("isolated")
    assert report["isolated.reason"].startswith("no lease renewal for "), report
    assert member.terminate() == 0


def test_a_lease_check_that_hangs_is_bounded_and_the_primary_fences(member):
    """Its own server accepts the lease query and never answers (a lock on the lease table, a
    stuck disk): the check is cut off, counts as no renewal, and past the lease it fences. An
    unbounded check would stall the loop, and a cut-off primary would stay writable."""
    designated_primary_with_lease(member, 1)
    member.knob("lease.hang", "")
    member.start()
    member.wait_action("primary")
    report = member.wait_action("isolated")
    assert report["isolated.reason"].startswith("no lease renewal for "), report
    assert member.terminate() == 0


def test_a_server_without_the_verdict_fences_as_one_that_does_not_answer(member):
    """A cluster deployed by an older pg_ops has no isolation_verdict() until pg_ops installs it
    (its next deploy or lease renewal): no verdict is no renewal (fail closed), said once."""
    designated_primary_with_lease(member, 1)
    member.knob("lease.missing", "")
    member.start()
    member.wait_action("primary")
    report = member.wait_action("isolated")
    assert report["isolated.reason"].startswith("no lease renewal for "), report
    assert member.log().count("the pg_ops database has no isolation_verdict()") == 1
    assert member.terminate() == 0


def test_a_lease_row_that_goes_away_is_no_renewal(member):
    """Before pg_ops ever renewed the lease, a missing row keeps the primary running (a cluster
    being deployed); once a row was seen, its disappearance does not count as a renewal."""
    designated_primary_with_lease(member, 1)
    member.knob("lease.check", "none 0 -1")
    member.start()
    member.wait_action("primary")
    checks = lambda: sum(1 for c in member.calls("psql") if "isolation_verdict" in c[-1])  # noqa: E731
    wait_for(lambda: checks() >= 3, "three isolation checks with no lease row yet", timeout=20, interval=0.1)
    assert not member.report().get("isolated.at")  # no row yet: not a reason to stop
    member.knob("lease.check", "m-0 0 -1")  # pg_ops renews it
    seen = checks()
    wait_for(lambda: checks() >= seen + 2, "the renewed lease read", timeout=20, interval=0.1)
    member.knob("lease.check", "none 0 -1")  # then the row is gone
    report = member.wait_action("isolated")
    assert report["isolated.reason"].startswith("no lease renewal for "), report
    assert member.terminate() == 0


def test_only_members_count_as_standbys_in_the_lease_query(member):
    """The standby replies that keep a primary writable are its members' (application_name =
    member name, from the record), never any replication client's."""
    designated_primary_with_lease(member, 5)
    member.knob("lease.check", "m-0 0 -1")
    member.start()
    member.wait_action("primary")
    wait_for(lambda: [c for c in member.calls("psql") if "isolation_verdict" in c[-1]], "a lease check",
             timeout=20, interval=0.1)
    query = next(c[-1] for c in member.calls("psql") if "isolation_verdict" in c[-1])
    others = ",".join(f"'{n}'" for n in sorted(PORTS) if n != "m-0")
    assert f"array[{others}]::text[]" in query, query  # isolation_verdict's standbys: application_name = any(...)
    assert member.terminate() == 0


# -- before any boot action --------------------------------------------------------------------
def test_no_record_yet_waits_then_boots(member):
    member.name = "m-0"
    member.knob("initdb.sysid", SYSID)
    member.start()
    report = member.wait_action("wait", running=False)
    assert report["boot.reason"] == f"no desired-state record yet ({member.record})"
    assert not member.calls()
    member.write_record("m-0", bootstrap=True)
    member.wait_action("initdb")
    assert member.terminate() == 0


def test_a_second_instance_waits_for_the_data_lock_and_touches_nothing(member):
    """A replacement pod on the same volume while the old container still stops: it waits for
    the lock before any boot action, leaves the report alone, and clears the previous boot's
    action once it holds the lock."""
    member.write_record("m-0")
    member.data_dir(standby=True)
    (member.state_dir / REPORT_FILE).write_text("boot.action=refused\nboot.reason=an earlier boot\n")
    lock = open(member.state_dir / "member.lock", "a")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        member.start()
        wait_for(lambda: member.status().get("phase") == "waiting", "waiting for the lock", timeout=TIMEOUT_S,
                 interval=0.05)
        assert "still holds" in member.status()["reason"]
        assert not member.calls()
        assert member.report()["boot.action"] == "refused"
    finally:
        lock.close()  # the other instance is gone
    report = member.wait_action("standby")
    assert "an earlier boot" not in report["boot.reason"]
    assert member.terminate() == 0


def test_primary_a_standby_still_replies_to_keeps_running_without_pg_ops(member):
    """Only the control plane is gone: the lease is stale but a standby replied half a second
    ago, so it is not isolated and stays writable (a stale lease alone never stops it)."""
    designated_primary_with_lease(member, 1)
    member.knob("lease.check", "m-0 999 5")
    member.start()
    member.wait_action("primary")
    checks = lambda: sum(1 for c in member.calls("psql") if "isolation_verdict" in c[-1])  # noqa: E731
    wait_for(lambda: checks() >= 4, "four isolation checks, each past the 1 s lease", timeout=20, interval=0.1)
    assert member.report().get("boot.action") == "primary" and not member.report().get("isolated.at")
    assert len(member.calls("postgres")) == 1  # never restarted
    assert member.terminate() == 0


def m1_primary_and_m0_on_timeline_2(member) -> None:
    """m-1 running as the designated primary at epoch 3, and m-0 answering on timeline 2 (a
    promotion the record has not named yet), with the WAL m-1 would discard."""
    member.name = "m-1"
    member.write_record("m-1", epoch=3)
    member.data_dir()
    member.start()
    member.wait_action("primary")
    member.primary(tli=2, history=HISTORY)
    member.knob("waldump", WALDUMP)


@pytest.mark.parametrize("age, stays", [(1, True), (600, False)])
def test_a_fresh_own_lease_outranks_a_lagging_record_and_an_old_one_does_not(member, age, stays):
    """Writable, the record file names another primary at the same epoch (it lags behind pg_ops,
    as a kubelet's ConfigMap sync does): our own lease at that epoch, renewed a second ago, is
    the newer word and it keeps running; one ten minutes old protects nothing (issue 20, L3)."""
    m1_primary_and_m0_on_timeline_2(member)
    member.knob("lease.own", f"m-1 3 {age}")
    member.write_record("m-0", epoch=3)
    if stays:
        looks = lambda: sum(1 for c in member.calls("psql")  # noqa: E731
                            if "from lease" in c[-1] and "isolation_verdict" not in c[-1])
        wait_for(lambda: looks() >= 3, "three looks at its own lease", timeout=20, interval=0.1)
        assert member.report()["boot.action"] == "primary" and len(member.calls("postgres")) == 1
    else:
        member.wait_action("rewind")
        assert "writable but the designated primary is m-0" in member.log()
    assert member.terminate() == 0


# -- the supervision loop ----------------------------------------------------------------------------
def test_postgres_that_dies_is_booted_again_in_place(member):
    """postgres exits under the script (a crash, an OOM kill): the boot table runs again and,
    still the designated primary, it starts postgres again in the same data dir."""
    member.name = "m-0"
    member.write_record("m-0")
    member.data_dir()
    member.start()
    member.wait_action("primary")
    os.kill(int((member.world / "postgres.pid").read_text()), signal.SIGKILL)
    wait_for(lambda: len(member.calls("postgres")) == 2 and (member.world / "postgres.accepting").exists(),
             "postgres started again", timeout=TIMEOUT_S, interval=0.05)
    assert "postgres exited (status 137): booting again" in member.log()
    assert member.report()["boot.action"] == "primary"
    assert member.tools_called().isdisjoint({"pg_rewind", "pg_basebackup", "initdb"})
    assert member.terminate() == 0


def test_writable_member_no_longer_designated_stops_and_rejoins_by_rewind(member):
    """The record names another primary at a newer epoch (a failover pg_ops made) and our lease
    does not say otherwise: after a second look it stops (fast) and boots again as a replica of
    the new primary, rewinding first."""
    m1_primary_and_m0_on_timeline_2(member)
    member.write_record("m-0", epoch=4)
    report = member.wait_action("rewind")
    assert "writable but the designated primary is m-0: stopping (fast) to rejoin as a replica" in member.log()
    assert member.calls("postgres-signal")[0][1] == "SIGINT"
    assert report["boot.reason"] == "from m-0"
    standby_config(member, "m-0")
    assert member.terminate() == 0


def command_substitutions(text: str) -> list[tuple[int, str]]:
    """Every `$( ... )` in a shell script with the line it starts on (parentheses matched, not
    a shell parser: enough for scripts that keep `(` and `)` balanced inside them)."""
    found, start = [], text.find("$(")
    while start >= 0:
        depth, end = 0, start + 1
        while end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
            end += 1
        found.append((text.count("\n", 0, start) + 1, text[start:end + 1]))
        start = text.find("$(", start + 2)
    return found


def test_no_command_substitution_in_member_sh_spans_lines():
    """bash 5.2 sometimes fails to parse a multi-line `$( ... )` that a TERM handler runs while the
    main loop is inside another ("trap: line 2: unexpected EOF while looking for matching `)'"):
    member.sh then never stopped (CI, issue 27). Its handlers run its functions, so none of them
    may hold one; longer SQL goes into a variable. (recover_pod.sh's handler only sends a signal.)"""
    text = Path(MEMBER_SCRIPT).read_text()
    assert len(command_substitutions(text)) > 20, "the scanner no longer finds member.sh's $( ... )"
    spanning = [(line, sub[:70]) for line, sub in command_substitutions(text) if "\n" in sub]
    assert not spanning, f"member.sh: command substitutions over several lines: {spanning}"


# -- the rules alone: member.sh sourced, boot_row and demotion_rule called with facts ---------------
def sourced(function: str, facts: list[str], tmp_path: Path) -> str:
    """`function facts...` of member.sh sourced (which runs nothing), with the contract's
    environment; its output, or an AssertionError with what it said on stderr."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C",
           **MemberEnv(member="m-1", data=str(tmp_path / "data"), port=PORTS["m-1"], state=str(tmp_path / "record"),
                       config_dir=str(tmp_path), passfile=str(tmp_path / "pgpass"),
                       run_dir=str(tmp_path / "run")).variables()}
    done = subprocess.run(["bash", "-c", f'source "$0" && {function} "$@"', str(MEMBER_SCRIPT), *facts],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and not done.stderr, (done.returncode, done.stderr)
    return done.stdout.strip()


DATA_PRIMARY = ["record=yes", "data=yes", "designated=yes"]
DATA_REPLICA = ["record=yes", "data=yes", "designated=no"]
# One case per line of member.sh's header table, in its order: (row, facts). Facts not given are
# boot_row's defaults (no, match, unknown); the cases add the ones that must not change the row.
BOOT_TABLE = [
    ("wait-record", ["record=no", "data=yes", "designated=yes"]),
    ("wait-fenced", ["record=yes", "fenced=yes", "data=yes", "designated=yes", "restore_cut=yes"]),
    ("wipe-restore", ["record=yes", "restore_cut=yes", "data=yes", "designated=yes", "bootstrap=yes"]),
    ("recover", ["record=yes", "data=no", "designated=yes", "bootstrap=yes", "recovery=yes"]),
    ("initdb", ["record=yes", "data=no", "designated=yes", "bootstrap=yes"]),
    ("refuse-empty", ["record=yes", "data=no", "designated=yes", "bootstrap=no", "recovery=yes"]),
    ("clone", ["record=yes", "data=no", "designated=no", "bootstrap=yes", "recovery=yes"]),
    ("upgrade", [*DATA_PRIMARY, "upgrade=yes", "sysid=differs"]),
    ("refuse-sysid", [*DATA_REPLICA, "sysid=differs", "standby=yes", "reachable=yes"]),
    ("standby", [*DATA_REPLICA, "rewound=yes", "standby=yes", "timeline=differs"]),
    ("wait-primary", [*DATA_REPLICA, "standby=no", "reachable=no"]),
    ("rewind", [*DATA_REPLICA, "standby=no", "reachable=yes"]),
    ("rewind-timeline", [*DATA_REPLICA, "standby=yes", "timeline=differs"]),
    ("standby", [*DATA_REPLICA, "standby=yes", "timeline=same"]),
    ("isolated", [*DATA_PRIMARY, "standby=yes", "isolated=yes"]),
    ("promote", [*DATA_PRIMARY, "standby=yes", "isolated=no"]),
    ("primary", [*DATA_PRIMARY, "standby=no", "isolated=yes"]),
]


@pytest.mark.parametrize("row, facts", BOOT_TABLE, ids=[f"{i:02d}-{row}" for i, (row, _) in enumerate(BOOT_TABLE)])
def test_boot_row_takes_the_header_s_row(row, facts, tmp_path):
    assert sourced("boot_row", facts, tmp_path) == row


def header_rows(script: str) -> list[str]:
    """The boot table's row names, in the header's order (a line `#   <row>  <situation> ...`)."""
    header = script[:script.index("\n# Then it stays the parent of postgres")]
    return re.findall(r"^#   ([a-z]+(?:-[a-z]+)*) {2,}\S", header, re.M)


def function_rows(script: str, function: str) -> set[str]:
    body = script[script.index(f"\n{function}() {{"):]
    body = body[:body.index("\n}\n")]
    return {a or b for a, b in re.findall(r"then echo ([a-z-]+)|else echo ([a-z-]+)", body)}


def test_the_header_s_boot_table_is_boot_row_row_for_row():
    """Every header line is a case above, in the same order, and boot_row prints no other row."""
    script = Path(MEMBER_SCRIPT).read_text()
    assert header_rows(script) == [row for row, _ in BOOT_TABLE]
    assert function_rows(script, "boot_row") == {row for row, _ in BOOT_TABLE}


def test_boot_row_refuses_a_fact_it_does_not_know(tmp_path):
    """A misspelt fact must not be read as its default (a refusal skipped, say)."""
    env_script = f'source "{MEMBER_SCRIPT}" && boot_row record=yes sysd=differs'
    done = subprocess.run(["bash", "-c", env_script], capture_output=True, text=True, timeout=10,
                          env={"PATH": "/usr/bin:/bin", **MemberEnv(member="m-1", data="d", port=1, state="s",
                               config_dir="c", passfile="p", run_dir=str(tmp_path)).variables()})
    assert done.returncode == 2 and "unknown fact sysd=differs" in done.stderr and not done.stdout


WRITABLE = ["alive=yes", "standby=no"]
# One case per line of demotion_rule's table (beside the function), in its order.
DEMOTION_TABLE = [
    ("reboot", ["alive=no", "designated=other", "mark=old", "lease=isolated"]),
    ("rejoin", ["alive=yes", "mark=old", "designated=other", "standby=yes", "off_timeline=yes"]),
    ("rewind", ["alive=yes", "mark=old", "designated=me", "standby=yes", "off_timeline=yes"]),
    ("standby", ["alive=yes", "mark=current", "designated=other", "standby=yes", "off_timeline=no"]),
    ("look-again", [*WRITABLE, "designated=other", "lease_newer=no", "stale_seen=no", "lease=isolated"]),
    ("demote", [*WRITABLE, "designated=other", "lease_newer=no", "stale_seen=yes", "lease=ok"]),
    ("isolate", [*WRITABLE, "designated=me", "lease=isolated", "mark=current"]),
    ("isolate", [*WRITABLE, "designated=other", "lease_newer=yes", "stale_seen=yes", "lease=isolated"]),
    ("isolate", [*WRITABLE, "designated=none", "lease=isolated"]),
    ("primary", [*WRITABLE, "designated=me", "lease=ok", "mark=old"]),
    ("primary", [*WRITABLE, "designated=other", "lease_newer=yes", "stale_seen=no", "lease=ok"]),
]


@pytest.mark.parametrize("rule, facts", DEMOTION_TABLE,
                         ids=[f"{i:02d}-{rule}" for i, (rule, _) in enumerate(DEMOTION_TABLE)])
def test_demotion_rule_takes_its_table_s_rule(rule, facts, tmp_path):
    assert sourced("demotion_rule", facts, tmp_path) == rule


def test_demotion_rule_s_table_is_the_function_row_for_row():
    script = Path(MEMBER_SCRIPT).read_text()
    table = script[script.index("# demotion_rule is pure"):script.index("\ndemotion_rule() {")]
    listed = re.findall(r"-> .*?\s([a-z]+(?:-[a-z]+)*)$", table, re.M)
    assert listed == list(dict.fromkeys(rule for rule, _ in DEMOTION_TABLE))
    assert function_rows(script, "demotion_rule") == set(listed)


def test_the_member_env_contract_is_the_header_s():
    """MemberEnv (render/member_env.py) names every variable the header documents, no other."""
    script = Path(MEMBER_SCRIPT).read_text()
    documented = set(re.findall(r"^#\s+(PGOPS_\w+)\s", script, re.M))
    assert {f"PGOPS_{f.name.upper()}" for f in fields(MemberEnv)} == documented
    assert set(re.findall(r"\$\{(PGOPS_\w+):\?", script)) == {
        f"PGOPS_{f.name.upper()}" for f in fields(MemberEnv) if f.default is MISSING}
