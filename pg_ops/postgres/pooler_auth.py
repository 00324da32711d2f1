"""How PgBouncer learns an application's password without a password file: `auth_query` calls a
SECURITY DEFINER function that returns the role's SCRAM verifier from pg_shadow, executable only
by PgBouncer's own login (credentials.POOLER_USER). The client authenticates against the
verifier, and PgBouncer logs in to the server with the keys that exchange gave it (SCRAM
pass-through), so no plain password is ever stored for an application.

PgBouncer 1.18 (Debian 12) runs auth_query in the database the client asked for, so the
function is made in every database the pooler serves. It never returns a superuser's or a
replication role's verifier, nor its own: those log in directly or not at all. The function
belongs to the superuser (only a superuser reads pg_shadow); its schema is pg_ops's."""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA = "pgops_pooler"
FUNCTION = f"{SCHEMA}.lookup"
AUTH_QUERY = f"SELECT usename, passwd FROM {FUNCTION}($1)"

_LOOKUP = """
create or replace function {function}(p_user text, out usename name, out passwd text)
returns setof record language sql security definer set search_path = pg_catalog as $$
    select s.usename, s.passwd from pg_catalog.pg_shadow s
    where s.usename = p_user and not s.usesuper and not s.userepl and s.usename <> {role}
$$
"""


def ensure_lookup(conn: psycopg.Connection, database: str, role: str) -> None:
    """In the database `conn` is connected to: the schema, the function, and only `role` may call it."""
    who = sql.Identifier(role)
    conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL(_LOOKUP).format(function=sql.SQL(FUNCTION), role=sql.Literal(role)))
    conn.execute(sql.SQL("revoke all on schema {} from public").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL("revoke all on function {}(text) from public").format(sql.SQL(FUNCTION)))
    conn.execute(sql.SQL("grant usage on schema {} to {}").format(sql.Identifier(SCHEMA), who))
    conn.execute(sql.SQL("grant execute on function {}(text) to {}").format(sql.SQL(FUNCTION), who))
    conn.execute(sql.SQL("grant connect on database {} to {}").format(sql.Identifier(database), who))
