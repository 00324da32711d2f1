"""Connections under a client-side deadline.

`statement_timeout` is enforced by the server, so it cannot stop a backend that is itself
stuck (a SIGSTOPped member, a peer that accepts TCP and never answers). Every call here runs
in a daemon thread; when the deadline passes, the socket is shut down under it so the thread
ends too, and the caller gets a MemberUnreachable naming the member and the cause.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg

from pg_ops.errors import MemberError
from pg_ops.postgres.conninfo import Endpoint, member_dsn

T = TypeVar("T")


class MemberUnreachable(MemberError):
    pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def connect(endpoint: Endpoint, user: str, password: str, dbname: str = "postgres",
            timeout: float = 3.0, **extra) -> psycopg.Connection:
    # libpq's connect_timeout has a 2 s minimum.
    return psycopg.connect(
        member_dsn(endpoint, user, dbname, **extra), password=password, autocommit=True,
        connect_timeout=max(2, math.ceil(timeout)),
    )


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
            raise MemberUnreachable(f"{label}: {_first_line(exc)}") from None
        if isinstance(exc, psycopg.Error):
            raise MemberError(f"{label}: {_first_line(exc)}") from None
        raise exc
    return holder["result"]
