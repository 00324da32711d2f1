"""The HA state machine's types: the policy a spec sets, the snapshot of a cluster read once
per tick or step (`ClusterView`), what the sensor remembers between ticks (`HaMemory`), and
what `decide` returns (`Decision`, its `Action`s, a `FailoverPlan` or a `Refusal`).

Everything here is plain data: no I/O, so the decisions over it are tested table by table
without a server (pg_ops_tests/test_ha.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pg_ops.operations import stored
from pg_ops.operations.alert_model import Alert
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.topology import MemberProbe
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState

SYNC_MODES = ("sync", "sync-strict")


@dataclass(frozen=True)
class Policy:
    """What the spec says about failover and replication, in the units decide() uses."""

    cluster: str
    replication: str  # async | sync | sync-strict
    automatic: bool
    probes: int
    probe_interval_s: float
    max_lag_bytes: int
    silence_s: float  # a replica that heard nothing from its sender this long: the sender went quiet
    relax_after_s: float  # sync: no standby streaming this long -> relax to async (with an alert)
    observe_every_bytes: int  # the record's observed LSN is refreshed when it moved this far

    @classmethod
    def from_spec(cls, spec: ClusterSpec) -> Policy:
        from pg_ops.postgres.config import wal_receiver_timeout_seconds

        # A live sender answers the receiver's ping, sent after wal_receiver_timeout / 2 of
        # silence, within milliseconds; one second on top absorbs a busy machine.
        silence = wal_receiver_timeout_seconds(spec) / 2 + 1.0
        return cls(cluster=spec.name, replication=spec.postgres.replication,
                   automatic=spec.failover.mode == "automatic", probes=spec.failover.probes,
                   probe_interval_s=spec.failover.probe_interval_ms / 1000,
                   max_lag_bytes=spec.failover.max_lag_bytes, silence_s=silence,
                   relax_after_s=2.0 * spec.monitoring.interval_seconds,
                   observe_every_bytes=max(1, spec.failover.max_lag_bytes // 4))

    @property
    def sync(self) -> bool:
        return self.replication in SYNC_MODES


@dataclass(frozen=True)
class ClusterView:
    """One cluster as read at one moment: the record, every member's probe (the primary's own
    pg_stat_replication inside its probe), and where each member can be streamed from."""

    record: DesiredState
    members: dict[str, MemberProbe]
    addresses: dict[str, frozenset[str]]  # member -> host:port a replica may stream it from
    now: float
    primary_misses: int = 0  # probes of the designated primary that failed in this read
    # Members whose member script reports it fenced itself as an isolated primary at the
    # record's epoch (read for the designated primary when it answers as a standby).
    fenced_itself: frozenset[str] = frozenset()
    # Fenced members whose processes are gone and that nothing but pg_ops starts again (local:
    # the failover's SIGKILL took their supervisor; on Kubernetes the StatefulSet restarts pods,
    # so never). Read only for fenced members that do not answer.
    stopped: frozenset[str] = frozenset()

    @property
    def cluster(self) -> str:
        return self.record.cluster

    @property
    def designated(self) -> str:
        return self.record.primary

    @property
    def primary(self) -> MemberProbe:
        return self.members[self.designated]

    @property
    def writable(self) -> list[str]:
        return sorted(n for n, p in self.members.items() if p.writable)

    @property
    def replicas(self) -> list[str]:
        return [n for n in self.members if n != self.designated]

    def streams_from(self, name: str, source: str) -> bool:
        """`name`'s WAL receiver streams from `source` (by the addresses source is known at)."""
        probe = self.members[name]
        return probe.streaming and probe.sender in self.addresses.get(source, frozenset())

    def follows(self, name: str, source: str) -> bool:
        """`name`'s primary_conninfo names `source`."""
        return self.members[name].upstream in self.addresses.get(source, frozenset())

    def with_members(self, members: dict[str, MemberProbe], **changes) -> ClusterView:
        return replace(self, members={**self.members, **members}, **changes)


# -- what the sensor remembers between ticks (its cursor) -------------------------------------------
@dataclass
class Incident:
    """One spell of "the cluster has no writable designated primary"."""

    id: str
    requested: bool = False  # a failover run was requested for it
    signature: str = ""  # the facts the last request or refusal was based on
    run_failed: bool = False  # the requested run failed (the executor finds out)
    refused: str | None = None  # why the failover rules refuse (no run is requested then)


@dataclass
class HaMemory:
    incident: Incident | None = None
    down_since: float | None = None  # first tick without a writable designated primary
    no_standby_since: float | None = None  # sync: first tick the primary reported no standby streaming
    departed: dict[str, Lsn] = field(default_factory=dict)  # sync-set member -> primary LSN when it left
    last_primary_lsn: Lsn | None = None  # the designated primary's LSN at the last tick that reached it

    def to_dict(self) -> dict:
        return stored.to_json_value(self)

    @classmethod
    def from_dict(cls, raw: dict | None) -> HaMemory:
        # An unreadable memory is a fresh start, never a crash.
        return stored.from_json_value(cls, raw or {}) or cls()


# -- what decide() returns ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repoint:
    """Point a replica at the designated primary (ALTER SYSTEM + reload, no restart)."""
    member: str


@dataclass(frozen=True)
class Unfence:
    """A fenced member streams from the current primary on its timeline: a replica again."""
    member: str


@dataclass(frozen=True)
class SetSyncNames:
    """synchronous_standby_names on the primary."""
    value: str


@dataclass(frozen=True)
class RecordSyncSet:
    """The synchronous set in the desired-state record."""
    members: tuple[str, ...]


@dataclass(frozen=True)
class RoutePrimary:
    """Send the primary endpoint to the designated primary (Kubernetes: its role label)."""
    member: str


@dataclass(frozen=True)
class RecordObserved:
    """The primary's LSN, timeline and streaming standbys, kept in the record (the lag guard's
    reference, the timeline candidates must be on, and the down check's memory, for runs that
    have no sensor memory)."""
    lsn: str
    standbys: tuple[str, ...]
    timeline: int = 0


@dataclass(frozen=True)
class EnsureSlots:
    """The primary lacks the replication slot of some other member (a promotion that completed
    after its run gave up never created them): create one per other member."""
    member: str
    missing: tuple[str, ...]


@dataclass(frozen=True)
class RenewLease:
    """pg_ops reached the designated primary: renew its isolation lease (member.sh reads it)."""
    member: str
    epoch: int


@dataclass(frozen=True)
class StartMember:
    """A fenced former primary is stopped for good (ClusterView.stopped): start its member
    script, which waits until it reaches the primary, rewinds (or re-clones, keeping its data
    aside) and reports the writes it discards; it rejoins as a replica."""
    member: str


Action = (Repoint | Unfence | SetSyncNames | RecordSyncSet | RoutePrimary | RecordObserved | RenewLease
          | EnsureSlots | StartMember)
# Actions that change topology-related state: the tick takes the topology lock to run them (a
# start under it too: a rebuild or deploy of the same member holds the lock while it works).
LOCKED_ACTIONS = (Repoint, Unfence, SetSyncNames, RecordSyncSet, StartMember)


@dataclass(frozen=True)
class FailoverRequest:
    cluster: str
    incident: str
    detected_at: float
    last_primary_lsn: str | None = None  # for the run's lag guard
    # failover.promote_in: sensor: what the sensor's tick already did (TakeOver JSON); the run finishes it
    taken_over: str | None = None

    @property
    def run_key(self) -> str:
        return f"failover-{self.cluster}-{self.incident}"


# The names `decide` gives its decisions (DECISIONS says what each means; ha-state-machine.md has
# the table, test_ha.py a case for each).
DecisionName = Literal["healthy", "split_brain", "change_in_progress", "primary_unreachable", "primary_down",
                       "manual_failover_needed", "failover_refused", "failover_failed", "primary_not_writable"]


@dataclass(frozen=True)
class Decision:
    """One named decision for one cluster at one tick (see DECISIONS)."""

    name: DecisionName
    summary: str
    memory: HaMemory
    actions: tuple[Action, ...] = ()
    alerts: tuple[Alert, ...] = ()
    unknown: frozenset[str] = frozenset()  # alert keys this tick could not evaluate (kept open)
    failover: FailoverRequest | None = None


DECISIONS: dict[DecisionName, str] = {
    "healthy": "the designated primary is writable; upkeep actions keep replicas, the synchronous set "
               "and routing right",
    "split_brain": "another member is writable too: critical alert (its member script stops it)",
    "change_in_progress": "a topology change holds the lock: nothing is decided",
    "primary_unreachable": "pg_ops cannot reach the primary but cannot confirm it is down: alert, no failover",
    "primary_down": "confirmed down: one failover run per incident",
    "manual_failover_needed": "confirmed down, failover mode manual: alert with the command",
    "failover_refused": "confirmed down but the failover rules refuse: alert once, wait for the cluster to change",
    "failover_failed": "the requested failover run failed and nothing changed since: alert, wait",
    "primary_not_writable": "the designated primary answers as a standby (a change stopped half-way): "
                            "resume it through a failover run, or alert with the command (manual)",
}


@dataclass(frozen=True)
class FailoverIntent:
    """What a failover run was asked for."""

    to: str | None = None
    force: bool = False
    reference_lsn: str | None = None  # the primary's last LSN the sensor saw


@dataclass(frozen=True)
class FailoverPlan:
    candidate: str
    old_primary: str | None  # None: resuming a change whose designated primary is the candidate
    fence: tuple[str, ...]
    lag_bytes: int | None  # behind the reference (None: no reference and forced)
    reference_lsn: str | None
    notes: tuple[str, ...] = ()

    @property
    def resume(self) -> bool:
        return self.old_primary is None


@dataclass(frozen=True)
class Refusal:
    reason: str
    deterministic: bool = True  # the same view gives the same refusal (lag guard, sync rule)
