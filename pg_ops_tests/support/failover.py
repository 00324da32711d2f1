"""What the topology-change tests share (failover, HA cases, upgrades, PostgreSQL 16): SQL on one
member, a connection through the primary endpoint, a writer that counts acknowledged writes."""

from __future__ import annotations

import threading
import time

import psycopg

from pg_ops.credentials import PG_OPS_DATABASE
from pg_ops.operations.status import cluster_status
from pg_ops.postgres.session import with_connection


def q(ctx, member, query, dbname=PG_OPS_DATABASE):
    def run(conn):
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None
    return with_connection(ctx.endpoints()[member], "postgres", ctx.admin_password(), run, dbname=dbname, timeout=10)


def primary_conn(ctx, dbname: str = PG_OPS_DATABASE, **kw):
    return psycopg.connect(ctx.platform.primary_dsn("postgres", dbname), password=ctx.admin_password(),
                           autocommit=True, **kw)


def assert_one_primary_all_streaming(ctx):
    status = cluster_status(ctx).to_dict()
    assert status["writable_members"] == [ctx.state().primary], status["writable_members"]
    for m in status["members"]:
        if m["name"] != ctx.state().primary:
            assert m["streaming"], f"{m['name']} not streaming: {m}"
            assert m["timeline"] == next(x["timeline"] for x in status["members"] if x["role"] == "primary")


class Writer:
    """Commits numbered rows into `writes` of `dbname` through the primary endpoint; remembers
    every acknowledged one, and counts the writes refused (not acknowledged, retried)."""

    def __init__(self, ctx, dbname: str = PG_OPS_DATABASE):
        self.ctx, self.dbname, self.acked, self.refused, self.stop = ctx, dbname, [], 0, threading.Event()
        with primary_conn(ctx, dbname) as c:
            c.execute("create table if not exists writes (n int primary key)")
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        n, conn = 0, None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = primary_conn(self.ctx, self.dbname, connect_timeout=2)
                n += 1
                conn.execute("insert into writes values (%s)", (n,))
                self.acked.append(n)
            except psycopg.Error:
                self.refused += 1
                conn = None
                time.sleep(0.05)
            time.sleep(0.002)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def writes_after(writer, k):
    before = len(writer.acked)
    time.sleep(0.3)
    return len(writer.acked) >= before + k
