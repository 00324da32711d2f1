"""Every PostgreSQL connection pg_ops opens is opened here.

`with_connection`: a member, under a client-side deadline. `statement_timeout` is enforced by
the server, so it cannot stop a backend that is itself stuck (a SIGSTOPped member, a peer that
accepts TCP and never answers). The call runs in a daemon thread; when the deadline passes, the
socket is shut down under it so the thread ends too, and the caller gets a MemberUnreachable
naming the member and the cause.

`connect` (a member's endpoint) and `connect_dsn` (a libpq string: the primary endpoint, a
restore target): plain connections for callers that hold one open (a dump's snapshot, a
scratch database) or bound their statements with statement_timeout.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from pg_ops.errors import MemberError, first_line
from pg_ops.postgres.conninfo import Endpoint, member_dsn

T = TypeVar("T")


class MemberUnreachable(MemberError):
    pass


def connect(endpoint: Endpoint, user: str, password: str, dbname: str = "postgres",
            timeout: float = 3.0, autocommit: bool = True, **extra) -> psycopg.Connection:
    """One member, by its endpoint. No client-side deadline: with_connection adds one."""
    # libpq's connect_timeout has a 2 s minimum.
    return psycopg.connect(
        member_dsn(endpoint, user, dbname, **extra), password=password, autocommit=autocommit,
        connect_timeout=max(2, math.ceil(timeout)),
    )


def connect_dsn(dsn: str, password: str | None = None, timeout: float | None = 3.0,
                **extra) -> psycopg.Connection:
    """A libpq string's server (the primary endpoint, a restore target), autocommit. `password`
    None: libpq finds it (PGPASSFILE, PGPASSWORD). `timeout`: libpq's connect_timeout (2 s at
    least); None keeps the string's own. No client-side deadline: keep statement_timeout short."""
    limit: dict[str, Any] = {} if timeout is None else {"connect_timeout": max(2, math.ceil(timeout))}
    return psycopg.connect(dsn, password=password, autocommit=True, **limit, **extra)


def _shutdown_socket(conn: psycopg.Connection | None) -> None:
    if conn is None:
        return
    try:
        fd = conn.pgconn.socket
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
    except Exception:  # noqa: BLE001 - best effort: the connection may already be gone
        pass


def with_connection(endpoint: Endpoint, user: str, password: str, fn: Callable[[psycopg.Connection], T], *,
                    dbname: str = "postgres", timeout: float = 3.0, name: str | None = None, **extra) -> T:
    """Connect, run fn(conn), close; all of it within `timeout` seconds of wall time."""
    label = name or str(endpoint)
    holder: dict = {}
    done = threading.Event()

    def work() -> None:
        try:
            conn = connect(endpoint, user, password, dbname, timeout=timeout, **extra)
            holder["conn"] = conn
            try:
                holder["result"] = fn(conn)
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            holder["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=work, name=f"pg-{label}", daemon=True)
    thread.start()
    if not done.wait(timeout):
        _shutdown_socket(holder.get("conn"))
        raise MemberUnreachable(f"{label}: no answer within {timeout:g} s")
    if "error" in holder:
        exc = holder["error"]
        if isinstance(exc, psycopg.OperationalError):
            raise MemberUnreachable(f"{label}: {first_line(exc)}") from exc
        if isinstance(exc, psycopg.Error):
            raise MemberError(f"{label}: {first_line(exc)}") from exc
        raise exc
    return holder["result"]
