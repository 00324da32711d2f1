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
from pathlib import Path

from pg_ops import settings
from pg_ops.credentials import REPLICATION_USER
from pg_ops_tests.helpers import kill_member, wait_for


def _sql(ctx, member: str, query: str):
    from pg_ops.credentials import SUPERUSER
    from pg_ops.postgres.session import with_connection

    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None

    return with_connection(ctx.endpoints()[member], SUPERUSER, ctx.admin_password(), run, dbname="postgres", timeout=5)


def test_a_replication_client_that_is_no_member_does_not_keep_an_isolated_primary_writable(make_spec):
    from pg_ops_tests.helpers import running_cluster

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
            wait_for(lambda: ctx.platform.member_report(primary).get("isolated.at"), "the primary to fence itself",
                     timeout=60, interval=0.5)
            report = ctx.platform.member_report(primary)
            assert report["isolated.reason"].startswith("no lease renewal for "), report
            wait_for(lambda: _sql(ctx, primary, "select pg_is_in_recovery()") == [(True,)],
                     "the primary back as a standby (read-only)", timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait()
