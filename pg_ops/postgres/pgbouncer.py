"""PgBouncer as both platforms run it (spec `pooler`): its configuration file, its one-line auth
file and its admin console. The local platform writes the file (platforms/local_pooler.py), the
Kubernetes one renders it into the pooler's ConfigMap (render/pooler.py); what differs is only
where it listens, where the primary is and where its files are.

The auth file holds PgBouncer's own login (credentials.POOLER_USER), which it needs in plain text
to log in to the server for auth_query; application passwords come from auth_query
(postgres/pooler_auth.py). The admin console (`pgbouncer` database) admits that same login only."""

from __future__ import annotations

from pg_ops.credentials import POOLER_USER
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.pooler_auth import AUTH_QUERY
from pg_ops.postgres.session import connect
from pg_ops.spec import PoolerSpec

ADMIN_DATABASE = "pgbouncer"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def userlist(password: str) -> str:
    return f'"{POOLER_USER}" "{_quote(password)}"\n'


def ini_text(pooler: PoolerSpec, *, target: Endpoint, listen: Endpoint, auth_file: str,
             logfile: str | None = None, pidfile: str | None = None, header: str = "") -> str:
    """pgbouncer.ini: every database forwarded to `target` (the primary, or the Service that
    follows it), clients authenticated through auth_query. No logfile: PgBouncer logs to stderr
    (a container's log)."""
    lines = [
        f"; Rendered by pg_ops (spec `pooler`). {header}".rstrip(),
        "[databases]",
        f"* = host={target.host} port={target.port}",
        "[pgbouncer]",
        f"listen_addr = {listen.host}",
        f"listen_port = {listen.port}",
        "unix_socket_dir =",
        "auth_type = scram-sha-256",
        f"auth_file = {auth_file}",
        f"auth_user = {POOLER_USER}",
        f"auth_query = {AUTH_QUERY}",
        f"admin_users = {POOLER_USER}",
        f"stats_users = {POOLER_USER}",
        f"pool_mode = {pooler.mode}",
        f"default_pool_size = {pooler.pool_size}",
        f"max_client_conn = {pooler.max_client_conn}",
        # libpq clients may pass these at startup; PgBouncer refuses unknown ones otherwise.
        "ignore_startup_parameters = extra_float_digits,options,statement_timeout",
        "server_login_retry = 1",
        *([f"logfile = {logfile}"] if logfile else []),
        *([f"pidfile = {pidfile}"] if pidfile else []),
    ]
    return "\n".join(lines) + "\n"


def admin(endpoint: Endpoint, password: str, command: str, timeout: float = 5.0) -> list[dict]:
    """One admin console command (simple query protocol: the console knows no other); rows as
    column -> value."""
    with connect(endpoint, POOLER_USER, password, ADMIN_DATABASE, timeout=timeout) as conn:
        cur = conn.cursor()
        cur.execute(command.encode(), prepare=False)
        if not cur.description:
            return []
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
