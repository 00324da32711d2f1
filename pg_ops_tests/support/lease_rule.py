"""The isolation rule as member.sh computed it in bash before it moved into PostgreSQL
(pg_ops/postgres/isolation.py), transcribed line by line: the reference the installed SQL rule
is checked against (test_isolation_verdict.py), and the answer of the stubbed psql in
test_member_script.py, whose member.sh asks the verdict of a server it does not have.

The bash it transcribes (isolation_check, after `read -r holder age reply`; `now` in tenths of
a second, LAST_LEASE/LAST_STANDBY the memory, `lease` whole seconds):

    if holder == none and not LEASE_SEEN: LAST_LEASE = now
    elif holder in (none, unread): pass
    elif record_ok and holder == MEMBER and age >= 0 and now - age > LAST_LEASE: LAST_LEASE = now - age
    if holder not in (none, unread): LEASE_SEEN = 1
    if reply >= 0 and now - reply > LAST_STANDBY: LAST_STANDBY = now - reply
    isolated when now - LAST_LEASE > lease * 10 and now - LAST_STANDBY > lease * 10
"""

from __future__ import annotations

import re
import sys
import time


def old_rule(*, now: int, lease_s: int, record_ok: bool, lease_seen: bool, lease_at: int, standby_at: int,
             me: str, holder: str, lease_age: int, reply_age: int) -> str:
    """`<verdict> <lease_at> <standby_at> <lease_seen> [reason]`, as the SQL rule answers."""
    if holder == "none" and not lease_seen:
        lease_at = now
    elif holder in ("none", "unread"):
        pass
    elif record_ok and holder == me and lease_age >= 0 and now - lease_age > lease_at:
        lease_at = now - lease_age
    seen = lease_seen or holder not in ("none", "unread")
    if reply_age >= 0 and now - reply_age > standby_at:
        standby_at = now - reply_age
    memory = f"{lease_at} {standby_at} {'true' if seen else 'false'}"
    if now - lease_at > lease_s * 10 and now - standby_at > lease_s * 10:
        return (f"isolated {memory} no lease renewal for {(now - lease_at) // 10} s and no standby for "
                f"{(now - standby_at) // 10} s (lease {lease_s} s)")
    return f"ok {memory}"


VERDICT_CALL = re.compile(r"isolation_verdict\((\d+), '((?:[^']|'')*)', array\[(.*?)\]::text\[\], (\d+), (\d+), "
                          r"(true|false), (true|false)\)")


def stub_answer(sql: str, facts: str) -> str:
    """A stubbed server's answer to member.sh's question: `facts` is what the real one would read
    ("holder lease_age reply_age", tenths of a second; "none 0 -1": no lease row, no standby)."""
    match = VERDICT_CALL.search(sql)
    if match is None:
        raise SystemExit(f"not member.sh's verdict question: {sql}")
    lease_s, me, _standbys, lease_at, standby_at, seen, record_ok = match.groups()
    holder, lease_age, reply_age = (facts or "none 0 -1").split()
    return old_rule(now=int(time.time() * 10), lease_s=int(lease_s), record_ok=record_ok == "true",
                    lease_seen=seen == "true", lease_at=int(lease_at), standby_at=int(standby_at),
                    me=me.replace("''", "'"), holder=holder, lease_age=int(lease_age), reply_age=int(reply_age))


if __name__ == "__main__":  # the psql stub: lease-verdict SQL FACTS
    print(stub_answer(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
