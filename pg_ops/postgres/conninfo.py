"""libpq connection strings. DSNs that leave pg_ops (status --json, logs) never carry a password."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.conninfo import make_conninfo


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, _, port = text.rpartition(":")
        return cls(host, int(port))


def member_dsn(endpoint: Endpoint, user: str, dbname: str = "postgres", **extra) -> str:
    return make_conninfo(host=endpoint.host, port=endpoint.port, user=user, dbname=dbname, **extra)


def multi_host_dsn(endpoints: list[Endpoint], user: str, dbname: str, **extra) -> str:
    """The primary endpoint of a local cluster: libpq tries each host and keeps the writable
    one (target_session_attrs=read-write), skipping dead hosts in milliseconds."""
    return make_conninfo(
        host=",".join(e.host for e in endpoints),
        port=",".join(str(e.port) for e in endpoints),
        user=user, dbname=dbname, target_session_attrs="read-write", connect_timeout=3, **extra,
    )
