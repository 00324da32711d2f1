"""The isolation verdict member.sh asks its own server (pg_ops/postgres/isolation.py), against a
real PostgreSQL: the one a deploy starts, which installs it.

Row by row: every case of the arithmetic member.sh did in bash before the rule moved into SQL
(pg_ops_tests/support/lease_rule.py transcribes it), the boundaries included, each with the answer
written out; then the same rule against the transcription over a grid of facts; then the
verdict reading its facts (the lease row pg_ops renews, the server's clock) as member.sh asks it.
"""

from __future__ import annotations

import itertools

import psycopg
import pytest
from psycopg.types.json import Json

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.postgres import admin, isolation
from pg_ops_tests.support.helpers import home_environment, running_cluster, spec_from, write_spec
from pg_ops_tests.support.lease_rule import old_rule

NOW = 17_966_000_000  # tenths of a second since the epoch
ME = "m-0"


@pytest.fixture(scope="module")
def pg_ops_db():
    """The pg_ops database of a deployed one-member cluster (autocommit), as its superuser."""
    with home_environment() as home, running_cluster(spec_from(write_spec(
            home / "specs", "verdict", postgres={"members": 1}))) as ctx:
        ep = ctx.endpoints()[ctx.spec.member_names[0]]
        password = ctx.credentials().password(SUPERUSER)
        with psycopg.connect(host=ep.host, port=ep.port, user=SUPERUSER, password=password,
                             dbname=PG_OPS_DATABASE, autocommit=True) as conn:
            yield conn


def facts(**given) -> dict:
    """A check's facts: a fresh lease for this member, no standby, memory a second old."""
    base = dict(now=NOW, lease_s=1, record_ok=True, lease_seen=True, lease_at=NOW - 10, standby_at=NOW - 10,
                me=ME, holder=ME, lease_age=0, reply_age=-1)
    return {**base, **given}


# (what the case is, facts, the answer). lease 1 s = 10 tenths; "isolated" when both moments
# are MORE than 10 tenths old (strict), after the facts moved them.
CASES = [
    ("a lease renewed now", facts(), f"ok {NOW} {NOW - 10} true"),
    ("renewed 0.5 s ago", facts(lease_age=5), f"ok {NOW - 5} {NOW - 10} true"),
    ("renewed exactly the lease ago: not past it", facts(lease_age=10, lease_at=NOW - 20, standby_at=NOW - 20),
     f"ok {NOW - 10} {NOW - 20} true"),
    ("renewed a tenth past the lease, no standby",
     facts(lease_age=11, lease_at=NOW - 20, standby_at=NOW - 20),
     f"isolated {NOW - 11} {NOW - 20} true no lease renewal for 1 s and no standby for 2 s (lease 1 s)"),
    ("an older renewal never moves the memory back", facts(lease_age=50, lease_at=NOW - 3),
     f"ok {NOW - 3} {NOW - 10} true"),
    ("memory exactly the lease old, nothing new", facts(holder="none", lease_at=NOW - 10, standby_at=NOW - 10),
     f"ok {NOW - 10} {NOW - 10} true"),
    ("memory a tenth past the lease, nothing new", facts(holder="none", lease_at=NOW - 11, standby_at=NOW - 11),
     f"isolated {NOW - 11} {NOW - 11} true no lease renewal for 1 s and no standby for 1 s (lease 1 s)"),
    ("no lease row, none ever read: pg_ops has not renewed it yet",
     facts(holder="none", lease_seen=False, lease_at=NOW - 999, standby_at=NOW - 999),
     f"ok {NOW} {NOW - 999} false"),
    ("no lease row after one was read: no renewal", facts(holder="none", lease_at=NOW - 999, standby_at=NOW - 999),
     f"isolated {NOW - 999} {NOW - 999} true no lease renewal for 99 s and no standby for 99 s (lease 1 s)"),
    ("a lease for another member is no renewal, but a row seen",
     facts(holder="m-1", lease_seen=False, lease_at=NOW - 999, standby_at=NOW - 999),
     f"isolated {NOW - 999} {NOW - 999} true no lease renewal for 99 s and no standby for 99 s (lease 1 s)"),
    ("an unreadable record: our own renewal does not count",
     facts(record_ok=False, lease_at=NOW - 999, standby_at=NOW - 999),
     f"isolated {NOW - 999} {NOW - 999} true no lease renewal for 99 s and no standby for 99 s (lease 1 s)"),
    ("a stale lease, a standby replied half a second ago",
     facts(lease_age=999, lease_at=NOW - 999, standby_at=NOW - 999, reply_age=5),
     f"ok {NOW - 999} {NOW - 5} true"),
    ("a standby replied exactly the lease ago", facts(holder="none", lease_at=NOW - 999, reply_age=10,
                                                      standby_at=NOW - 999),
     f"ok {NOW - 999} {NOW - 10} true"),
    ("a standby replied a tenth past the lease", facts(holder="none", lease_at=NOW - 999, reply_age=11,
                                                       standby_at=NOW - 999),
     f"isolated {NOW - 999} {NOW - 11} true no lease renewal for 99 s and no standby for 1 s (lease 1 s)"),
    ("an older reply never moves the memory back", facts(reply_age=50, standby_at=NOW - 3),
     f"ok {NOW} {NOW - 3} true"),
    ("a lease of 5 s: 5.0 s old is within, 5.1 s past",
     facts(holder="none", lease_s=5, lease_at=NOW - 50, standby_at=NOW - 51),
     f"ok {NOW - 50} {NOW - 51} true"),
    ("a lease of 5 s, both past it",
     facts(holder="none", lease_s=5, lease_at=NOW - 51, standby_at=NOW - 51),
     f"isolated {NOW - 51} {NOW - 51} true no lease renewal for 5 s and no standby for 5 s (lease 5 s)"),
    ("the reason's seconds are whole, rounded down",
     facts(holder="none", lease_at=NOW - 29, standby_at=NOW - 11),
     f"isolated {NOW - 29} {NOW - 11} true no lease renewal for 2 s and no standby for 1 s (lease 1 s)"),
]


@pytest.mark.parametrize("what, given, answer", CASES, ids=[c[0] for c in CASES])
def test_the_rule_answers_each_case_as_member_sh_did(pg_ops_db, what, given, answer):
    assert old_rule(**given) == answer, "the transcription of the bash rule"
    assert isolation.isolation_rule(pg_ops_db, **given) == answer


def test_the_rule_is_the_bash_arithmetic_over_a_grid_of_facts(pg_ops_db):
    """Every combination of holder, memory, ages around the bound, in one round trip."""
    grid = [facts(holder=holder, lease_seen=seen, record_ok=record_ok, lease_at=NOW - la, standby_at=NOW - sa,
                  lease_age=age, reply_age=reply, lease_s=lease_s)
            for holder, seen, record_ok, la, sa, age, reply, lease_s in itertools.product(
                ("none", ME, "m-1"), (False, True), (False, True), (0, 9, 10, 11, 60), (0, 10, 11, 60),
                (0, 10, 11, 70), (-1, 0, 10, 11), (1, 5))]
    rows = pg_ops_db.execute(
        "select public.isolation_rule(now_t, lease_s, record_ok, lease_seen, lease_at, standby_at, me, holder,"
        " lease_age, reply_age) from rows from (jsonb_to_recordset(%s::jsonb) as (now_t bigint, lease_s float8,"
        " record_ok boolean, lease_seen boolean, lease_at bigint, standby_at bigint, me text, holder text,"
        " lease_age int, reply_age int)) with ordinality as f(now_t, lease_s, record_ok, lease_seen, lease_at,"
        " standby_at, me, holder, lease_age, reply_age, n) order by n",
        (Json([{**f, "now_t": f["now"]} for f in grid]),)).fetchall()
    answers = [row[0] for row in rows]
    assert len(answers) == len(grid) > 5000
    differ = [(f, got, old_rule(**f)) for f, got in zip(grid, answers, strict=True) if got != old_rule(**f)]
    assert not differ, differ[:5]


def verdict(conn, lease_s=1, lease_at=0, standby_at=0, seen="true", record_ok="true", standbys="") -> list[str]:
    """member.sh's question, as it asks it (pg_ops/platforms/member.sh: verdict_sql)."""
    sql = (f"select public.isolation_verdict({lease_s}, '{ME}', array[{standbys}]::text[], {lease_at}, "
           f"{standby_at}, {seen}, {record_ok})")
    return conn.execute(sql).fetchone()[0].split(" ", 4)


def server_now(conn) -> int:
    return int(conn.execute("select floor(extract(epoch from clock_timestamp()) * 10)::bigint").fetchone()[0])


def test_the_verdict_reads_the_lease_pg_ops_renews_and_the_server_s_clock(pg_ops_db):
    admin.renew_lease(pg_ops_db, ME, 3)
    before = server_now(pg_ops_db)
    answer = verdict(pg_ops_db, lease_at=before - 100, standby_at=before - 100)
    assert answer[0] == "ok" and answer[3] == "true"
    assert before - 100 < int(answer[1]) <= server_now(pg_ops_db)  # renewed just now: the memory moved
    assert answer[2] == str(before - 100)  # no standby streams here
    # Renewed for another member an hour ago: no renewal, and past the lease.
    pg_ops_db.execute("update lease set holder = 'm-1', renewed_at = now() - interval '1 hour'")
    answer = verdict(pg_ops_db, lease_at=before - 100, standby_at=before - 100)
    assert answer[0] == "isolated" and answer[1] == answer[2] == str(before - 100)
    assert answer[4].startswith("no lease renewal for ") and answer[4].endswith("(lease 1 s)")
    # No row, none read before: not deployed yet, counted as renewed now.
    pg_ops_db.execute("delete from lease")
    answer = verdict(pg_ops_db, lease_at=before - 100, standby_at=before - 100, seen="false")
    assert answer[0] == "ok" and answer[3] == "false" and int(answer[1]) >= before


def test_every_deploy_installs_it_again_and_a_lease_renewal_that_finds_it_missing(pg_ops_db):
    """Idempotent: the schema applied twice (a redeploy, an older cluster's next deploy); and a
    cluster deployed by an older pg_ops gets it at its first lease renewal (the health tick)."""
    drop = f"drop function {isolation.VERDICT_SIGNATURE}"
    pg_ops_db.execute(drop)
    admin.ensure_pg_ops_schema(pg_ops_db)
    admin.ensure_pg_ops_schema(pg_ops_db)
    assert verdict(pg_ops_db, seen="false")[0] == "ok"
    pg_ops_db.execute(drop)
    with pytest.raises(psycopg.errors.UndefinedFunction):
        verdict(pg_ops_db)
    admin.renew_lease(pg_ops_db, ME, 3)
    assert verdict(pg_ops_db)[0] == "ok"
    admin.renew_lease(pg_ops_db, ME, 3)  # installed: nothing more to do
