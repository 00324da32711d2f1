"""Topology and lag as PostgreSQL reports them, probed in parallel under a deadline.

Lag is measured where it is true: bytes from the primary's view (`pg_wal_lsn_diff` of its
current LSN and each standby's replay LSN in pg_stat_replication), seconds from
`replay_lag` — never from `now() - pg_last_xact_replay_timestamp()`, which grows forever on
an idle cluster. A replica whose WAL receiver is not streaming is reported as such, never as
"0 lag".
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from pg_ops.errors import MemberError
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.lsn import Lsn
from pg_ops.postgres.session import with_connection

MEMBER_SQL = """
select
  pg_is_in_recovery() as in_recovery,
  current_setting('server_version_num')::int as server_version_num,
  (select system_identifier::text from pg_control_system()) as system_identifier,
  case when pg_is_in_recovery() then null else pg_current_wal_lsn()::text end as current_lsn,
  case when pg_is_in_recovery() then null
       else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end as primary_tli,
  pg_last_wal_receive_lsn()::text as receive_lsn,
  pg_last_wal_replay_lsn()::text as replay_lsn,
  (select timeline_id from pg_control_checkpoint()) as checkpoint_tli,
  case when pg_is_in_recovery() then greatest(
    (select min_recovery_end_timeline from pg_control_recovery()),
    (select max(('x' || substr(name, 1, 8))::bit(32)::int) from pg_ls_waldir()
      where name ~ '^[0-9A-F]{24}$')) end as wal_tli,
  (select count(*) from pg_stat_activity where backend_type = 'client backend')::int as connections,
  current_setting('max_connections')::int as max_connections,
  current_setting('synchronous_standby_names') as synchronous_standby_names,
  case when pg_is_in_recovery() then current_setting('primary_conninfo') end as primary_conninfo
"""

# `silence_seconds`: how long since this replica last heard from its sender (server clock on
# both sides of the subtraction). A live sender answers the WAL receiver's ping within
# wal_receiver_timeout / 2 even when idle, so a long silence means the primary went quiet,
# long before wal_receiver_timeout ends the connection. `latest_end_lsn` is the sender's WAL
# end as last reported to this replica.
#
# `settled`: PostgreSQL shows a WAL receiver as 'streaming' from the moment its process starts,
# before it has connected or its START_REPLICATION was accepted; a standby that cannot follow
# the primary (diverged onto another timeline: "requested starting point … is not in this
# server's history") starts one every wal_retrieve_retry_interval, each living a few
# milliseconds, and a probe can land on one. Streaming counts only for a receiver connected to
# its sender and alive for SETTLED_RECEIVER_MS (member.sh, probe.sh and the exporter's query use
# the same rule): a refused attempt ends within a few round trips (milliseconds here, tens of
# them across nodes), and every replica that just (re)connected is counted that much later.
SETTLED_RECEIVER_MS = 500
SETTLED_RECEIVER_SQL = (f"r.sender_host is not null and exists (select 1 from pg_stat_activity a where a.pid = r.pid "
                        f"and a.backend_start < clock_timestamp() - interval '{SETTLED_RECEIVER_MS} milliseconds')")
RECEIVER_SQL = f"""
select r.status, r.received_tli, r.sender_host, r.sender_port, r.slot_name,
       r.latest_end_lsn::text as latest_end_lsn, r.flushed_lsn::text as flushed_lsn,
       extract(epoch from clock_timestamp() - r.last_msg_receipt_time)::float8 as silence_seconds,
       ({SETTLED_RECEIVER_SQL}) as settled
from pg_stat_wal_receiver r
"""
# A replica's WAL receivers that stream for real (0 or 1), as one SQL expression.
STREAMING_RECEIVERS_SQL = (f"(select count(*) from pg_stat_wal_receiver r where r.status = 'streaming' "
                           f"and {SETTLED_RECEIVER_SQL})")

REPLICATION_SQL = """
select application_name, state, sync_state,
       sent_lsn::text as sent_lsn, flush_lsn::text as flush_lsn, replay_lsn::text as replay_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint as lag_bytes,
       extract(epoch from replay_lag)::float8 as replay_lag_seconds
from pg_stat_replication
"""

SLOTS_SQL = """
select slot_name, active, wal_status, restart_lsn::text as restart_lsn
from pg_replication_slots where slot_type = 'physical'
"""


@dataclass(frozen=True)
class StandbyRow:
    """One standby as the primary sees it (pg_stat_replication)."""

    name: str  # application_name = the member name
    state: str | None
    sync_state: str | None
    sent_lsn: Lsn | None
    flush_lsn: Lsn | None
    replay_lsn: Lsn | None
    lag_bytes: int | None
    replay_lag_seconds: float | None

    @property
    def streaming(self) -> bool:
        return self.state == "streaming"


@dataclass
class MemberProbe:
    """One member as it answered (or did not) within the deadline."""

    name: str
    host: str
    port: int
    reachable: bool
    error: str | None = None
    in_recovery: bool | None = None
    system_identifier: str | None = None
    server_version_num: int | None = None
    timeline: int | None = None
    lsn: Lsn | None = None  # current LSN on a primary, received LSN on a replica
    receive_lsn: Lsn | None = None
    replay_lsn: Lsn | None = None
    connections: int | None = None
    max_connections: int | None = None
    synchronous_standby_names: str | None = None
    # pg_stat_wal_receiver.status ('streaming', 'waiting', …; 'starting' for a 'streaming' one not
    # settled yet: RECEIVER_SQL), or None when there is no WAL receiver
    receiver_status: str | None = None
    sender: str | None = None  # host:port the WAL receiver streams from
    silence_seconds: float | None = None  # replica: since its sender's last message
    latest_end_lsn: Lsn | None = None  # replica: the sender's WAL end as last reported to it
    upstream: str | None = None  # replica: host:port its primary_conninfo names
    replication: list[StandbyRow] = field(default_factory=list)  # primary only: pg_stat_replication
    slots: list[dict] = field(default_factory=list)  # primary only: physical slots
    probe_seconds: float = 0.0

    @property
    def writable(self) -> bool:
        return self.reachable and self.in_recovery is False

    @property
    def streaming(self) -> bool:
        return self.reachable and self.receiver_status == "streaming"

    def standby(self, name: str) -> StandbyRow | None:
        """`name` as this member (a primary) sees it in pg_stat_replication."""
        return next((r for r in self.replication if r.name == name), None)


def _query_member(conn: psycopg.Connection) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(MEMBER_SQL)
        out = dict(cur.fetchone() or {})
        if out["in_recovery"]:
            cur.execute(RECEIVER_SQL)
            out["receiver"] = cur.fetchone()
            out["replication"], out["slots"] = [], []
        else:
            out["receiver"] = None
            cur.execute(REPLICATION_SQL)
            out["replication"] = [StandbyRow(name=r["application_name"], state=r["state"], sync_state=r["sync_state"],
                                             sent_lsn=Lsn.parse(r["sent_lsn"]),
                                             flush_lsn=Lsn.parse(r["flush_lsn"]),
                                             replay_lsn=Lsn.parse(r["replay_lsn"]), lag_bytes=r["lag_bytes"],
                                             replay_lag_seconds=r["replay_lag_seconds"])
                                  for r in cur.fetchall()]
            cur.execute(SLOTS_SQL)
            out["slots"] = [dict(r) for r in cur.fetchall()]
    return out


def probe_member(name: str, endpoint: Endpoint, user: str, password: str, timeout: float) -> MemberProbe:
    started = time.monotonic()
    probe = MemberProbe(name=name, host=endpoint.host, port=endpoint.port, reachable=False)
    try:
        row = with_connection(endpoint, user, password, _query_member, timeout=timeout, name=name,
                              application_name="pg_ops-probe")
    except MemberError as exc:
        probe.error = str(exc)
        probe.probe_seconds = time.monotonic() - started
        return probe
    receiver = row.pop("receiver")
    probe.reachable = True
    probe.in_recovery = row["in_recovery"]
    probe.system_identifier = row["system_identifier"]
    probe.server_version_num = row["server_version_num"]
    probe.receive_lsn = Lsn.parse(row["receive_lsn"])
    probe.replay_lsn = Lsn.parse(row["replay_lsn"])
    probe.connections = row["connections"]
    probe.max_connections = row["max_connections"]
    probe.synchronous_standby_names = row["synchronous_standby_names"]
    probe.replication = row["replication"]
    probe.slots = row["slots"]
    if probe.in_recovery:
        # pg_walfile_name() errors on a replica. Its timeline is the newest of: the WAL
        # receiver's, the last restartpoint's, the minimum recovery point's, and that of the
        # newest WAL segment it holds (a replica that followed a promotion and lost its sender
        # may not have had a restartpoint on the new timeline yet; one on an older timeline,
        # say a diverged ex-primary, never received a segment of the newer one).
        probe.timeline = max(t for t in ((receiver or {}).get("received_tli"), row["checkpoint_tli"],
                                         row["wal_tli"], 0) if t is not None) or None
        probe.lsn = probe.receive_lsn or probe.replay_lsn
        probe.upstream = conninfo_address(row["primary_conninfo"])
        if receiver:
            settled = receiver["status"] != "streaming" or receiver["settled"]
            probe.receiver_status = receiver["status"] if settled else "starting"
            probe.silence_seconds = receiver["silence_seconds"]
            probe.latest_end_lsn = Lsn.parse(receiver["latest_end_lsn"])
            if receiver["sender_host"]:
                probe.sender = f"{receiver['sender_host']}:{receiver['sender_port']}"
    else:
        # Right after promotion pg_control_checkpoint() still shows the old timeline.
        probe.timeline = row["primary_tli"]
        probe.lsn = Lsn.parse(row["current_lsn"])
    probe.probe_seconds = time.monotonic() - started
    return probe


def probe_members(members: dict[str, Endpoint], user: str, password: str, timeout: float,
                  deadlines: dict[str, float] | None = None) -> dict[str, MemberProbe]:
    """Probe every member at once; the whole call takes about one deadline at most.
    `deadlines`: a shorter (or longer) deadline for some members."""
    if not members:
        return {}
    deadlines = deadlines or {}
    with ThreadPoolExecutor(max_workers=min(32, len(members)), thread_name_prefix="probe") as pool:
        futures = {name: pool.submit(probe_member, name, ep, user, password, deadlines.get(name, timeout))
                   for name, ep in members.items()}
        return {name: fut.result() for name, fut in futures.items()}


def conninfo_address(conninfo: str | None) -> str | None:
    """host:port a primary_conninfo names (None when it names none)."""
    if not conninfo:
        return None
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None
    host = params.get("host") or params.get("hostaddr")
    return f"{host}:{params.get('port') or 5432}" if host else None
