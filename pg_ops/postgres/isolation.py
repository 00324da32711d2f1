"""The isolation verdict: the rule that fences a primary cut off from pg_ops and every standby.

member.sh asks it every second of its own server, through the local port (the member may be
cut off from everyone else), in the cluster's `pg_ops` database, where every deploy installs it
(`admin.ensure_pg_ops_schema`, idempotent), and every lease renewal that finds it missing (a cluster
deployed by an older pg_ops); physical replication carries it to every member:

    select public.isolation_verdict(lease_s, me, standbys, lease_at, standby_at, lease_seen, record_ok)

and acts on the answer, `<verdict> <lease_at> <standby_at> <lease_seen> [reason]`: `ok`, or
`isolated` with the reason it logs and reports (member.sh restarts as a standby). The rule
keeps memory between seconds, which the script holds and hands back with each question (its
server may restart, and a function cannot keep state): when the lease was last renewed for
this member and when one of its standbys last replied, in tenths of a second since the epoch,
and whether a lease row was ever read.

`isolation_rule` is the rule alone, immutable (tested row by row against a real server); the
verdict reads its facts: the lease row (`admin.LEASE_DDL`: pg_ops renews it for the designated
primary) and the newest reply of a member's WAL receiver (`pg_stat_replication`, only the
`application_name`s the script names: a CDC consumer or pg_receivewal never counts).

Its arithmetic is the script's before it moved here, unchanged: whole tenths of a second, ages
rounded up (an age is never younger than measured), "now" rounded down, bounds strict.
"""

from __future__ import annotations

import psycopg

# The rule. Memory in, memory and verdict out:
# - no lease row and none ever read: pg_ops has not renewed this cluster's lease yet (a cluster
#   being deployed), counted as renewed now; a row that went away after one was read is no
#   renewal;
# - a row renewed for this member counts (its age measured by the server), when the record is
#   readable (an unreadable record counts as a stale lease) — never a row for another member;
# - the newest reply of a member's standby counts; -1: none streams;
# - the moments only move forward;
# - isolated when both are older than lease_s.
ISOLATION_RULE_DDL = """
create or replace function public.isolation_rule(
    now_t bigint, lease_s float8, record_ok boolean, lease_seen boolean,
    lease_at bigint, standby_at bigint, me text, holder text, lease_age int, reply_age int)
returns text language sql immutable as $rule$
    with moments as (
        select case when holder = 'none' and not lease_seen then now_t
                    when holder <> 'none' and record_ok and holder = me and lease_age >= 0
                         and now_t - lease_age > lease_at then now_t - lease_age
                    else lease_at end as l,
               case when reply_age >= 0 and now_t - reply_age > standby_at then now_t - reply_age
                    else standby_at end as s,
               lease_seen or holder <> 'none' as seen)
    select case when now_t - l > lease_s * 10 and now_t - s > lease_s * 10
                then 'isolated ' || l || ' ' || s || ' ' || seen || ' no lease renewal for ' || (now_t - l) / 10
                     || ' s and no standby for ' || (now_t - s) / 10 || ' s (lease ' || lease_s || ' s)'
                else 'ok ' || l || ' ' || s || ' ' || seen end
    from moments
$rule$
"""

# The facts, read by the server itself: its clock, the lease row, its members' replies.
ISOLATION_VERDICT_DDL = """
create or replace function public.isolation_verdict(
    lease_s float8, me text, standbys text[], lease_at bigint, standby_at bigint,
    lease_seen boolean, record_ok boolean)
returns text language sql volatile as $verdict$
    select public.isolation_rule(
        floor(extract(epoch from clock_timestamp()) * 10)::bigint, lease_s, record_ok, lease_seen,
        lease_at, standby_at, me,
        coalesce((select holder from public.lease), 'none'),
        coalesce((select ceil(extract(epoch from clock_timestamp() - renewed_at) * 10)::int from public.lease), 0),
        coalesce((select ceil(extract(epoch from clock_timestamp() - max(reply_time)) * 10)::int
                    from pg_stat_replication where state = 'streaming' and application_name = any(standbys)), -1))
$verdict$
"""


VERDICT_SIGNATURE = "public.isolation_verdict(float8, text, text[], bigint, bigint, boolean, boolean)"


def ensure_isolation_verdict(conn: psycopg.Connection) -> None:
    """Install (or replace) the rule and the verdict; after the lease table they read. One
    installer at a time (a deploy's and a lease renewal's may meet: two creations of one function
    at once fail on pg_proc's unique index), by a lock held to the end of the transaction."""
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('pg_ops.isolation_verdict'))")
        conn.execute(ISOLATION_RULE_DDL)
        conn.execute(ISOLATION_VERDICT_DDL)


def isolation_rule(conn: psycopg.Connection, *, now: int, lease_s: float, record_ok: bool, lease_seen: bool,
                   lease_at: int, standby_at: int, me: str, holder: str, lease_age: int, reply_age: int) -> str:
    """The installed rule's answer for these facts (tests and diagnosis)."""
    row = conn.execute("select public.isolation_rule(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                       (now, lease_s, record_ok, lease_seen, lease_at, standby_at, me, holder, lease_age,
                        reply_age)).fetchone()
    return str(row[0])
