"""Isolation fencing counts only the cluster's own standbys (issue 20, M2), on a real cluster:
a replication client that is not a member (pg_receivewal here; a CDC consumer or a clone's
pg_basebackup alike) answering the primary's WAL sender must not keep a primary that lost
pg_ops and every member writable. No network cut is needed: the members are killed, and no
sensor renews the lease (none runs in this test)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from pg_ops import settings
from pg_ops.credentials import REPLICATION_USER
from pg_ops_tests.support.helpers import kill_member, wait_for


def _sql(ctx, member: str, query: str):
    from pg_ops.credentials import SUPERUSER
    from pg_ops.postgres.session import with_connection

    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None

    return with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), run, dbname="postgres", timeout=5)


def test_a_replication_client_that_is_no_member_does_not_keep_an_isolated_primary_writable(make_spec):
    from pg_ops_tests.support.helpers import running_cluster

    spec = make_spec("iso", failover={"mode": "automatic", "lease_seconds": 3})
    with running_cluster(spec) as ctx, tempfile.TemporaryDirectory() as scratch:
        primary = ctx.state().primary
        endpoint = ctx.endpoints()[primary]
        passfile = Path(scratch) / "pgpass"
        passfile.write_text(f"*:*:*:{REPLICATION_USER}:{ctx.credentials().password(REPLICATION_USER)}\n")
        passfile.chmod(0o600)
        receiver = subprocess.Popen(
            [str(settings.pg_bin() / "pg_receivewal"), "-D", scratch, "--status-interval=1", "--no-loop",
             "-d", f"host={endpoint.host} port={endpoint.port} user={REPLICATION_USER} "
                   f"application_name=cdc-consumer passfile={passfile}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: _sql(ctx, primary, "select 1 from pg_stat_replication where application_name = "
                                                "'cdc-consumer' and state = 'streaming'"),
                     "pg_receivewal streaming from the primary")
            for member in spec.member_names:
                if member != primary:
                    kill_member(ctx.platform, member)
            # pg_ops renews nothing here and no member streams: within the lease (3 s) and a
            # check, the primary stops acknowledging writes, however often pg_receivewal replies.
            wait_for(lambda: ctx.platform.member_report(primary).isolated_at, "the primary to fence itself",
                     timeout=60, interval=0.5)
            report = ctx.platform.member_report(primary)
            assert report.isolated_reason.startswith("no lease renewal for "), report
            wait_for(lambda: _sql(ctx, primary, "select pg_is_in_recovery()") == [(True,)],
                     "the primary back as a standby (read-only)", timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait()


def test_a_change_holding_the_lock_keeps_the_primary_lease_renewed(make_spec):
    """A topology change that leaves the primary without a streaming standby (a 2-member cluster
    whose only replica is being rebuilt) renews its lease while it holds the lock, so the primary
    does not fence itself during pg_ops's own change (issue 20, M1); once nobody renews it, the
    same primary does fence itself, which shows the renewal is what kept it writable."""
    from pg_ops.operations.members import lease_kept
    from pg_ops.state import topology_lock
    from pg_ops_tests.support.helpers import running_cluster

    spec = make_spec("own", postgres={"members": 2}, failover={"mode": "automatic", "lease_seconds": 2})
    with running_cluster(spec) as ctx:
        primary = ctx.state().primary
        replica = next(m for m in spec.member_names if m != primary)
        with topology_lock(ctx.platform.state_store(), "test-rebuild"), lease_kept(ctx):
            ctx.platform.stop_member(replica)
            time.sleep(8)  # four leases with no standby
            assert not ctx.platform.member_report(primary).isolated_at
            assert _sql(ctx, primary, "select pg_is_in_recovery()") == [(False,)]
        wait_for(lambda: ctx.platform.member_report(primary).isolated_at,
                 "the primary to fence itself once nothing renews its lease", timeout=60, interval=0.5)


def test_a_former_primary_re_cloned_keeps_its_data_aside(make_spec):
    """`pg-ops rebuild OLD --reclone` on the ex-primary a failover fenced: its data dir, which may
    hold writes nobody counted, is moved aside (never deleted by pg_ops) before the clone
    (issue 20, M3); the member streams again and is no longer fenced."""
    from pg_ops.operations.failover import failover, rebuild
    from pg_ops_tests.support.helpers import running_cluster

    with running_cluster(make_spec("aside")) as ctx:
        old = ctx.state().primary
        kill_member(ctx.platform, old)
        wait_for(lambda: not ctx.probe([old])[old].reachable, "the old primary to be gone")
        failover(ctx)
        assert old in ctx.state().fenced
        result = rebuild(ctx, old, reclone=True)
        kept = Path(result.kept_aside or "")
        assert kept.name.startswith("data.diverged-") and (kept / "PG_VERSION").exists()
        assert ctx.probe([old])[old].streaming and old not in ctx.state().fenced
        # A replica that was never a primary is re-cloned without a copy.
        replica = next(m for m in ctx.spec.member_names if m not in (old, ctx.state().primary))
        assert rebuild(ctx, replica, reclone=True).kept_aside is None
