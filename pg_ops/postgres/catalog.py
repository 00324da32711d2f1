"""Application roles, memberships, databases, schemas, extensions and default privileges inside
PostgreSQL (the spec's `roles:` and `databases:`; pg_ops/operations/catalog.py reconciles them).

Every name goes through psycopg.sql.Identifier, every value through a parameter or
sql.Literal; a password only ever as a client-side SCRAM verifier (admin.password_clause).
Each ensure_* function takes an open autocommit connection, is idempotent, and returns what it
changed (one line each, no secret), [] when nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from pg_ops.postgres.admin import USER_OBJECTS_SQL, password_clause

# Schemas PostgreSQL makes itself; a database's other schemas are the spec's business.
SYSTEM_SCHEMAS = ("public", "information_schema")
BUILTIN_EXTENSIONS = ("plpgsql",)
READER_TABLE_PRIVILEGES = sql.SQL("select")
WRITER_TABLE_PRIVILEGES = sql.SQL("select, insert, update, delete, truncate, references, trigger")
WRITER_SEQUENCE_PRIVILEGES = sql.SQL("usage, select, update")


@dataclass(frozen=True)
class RoleRow:
    name: str
    login: bool
    connection_limit: int
    valid_until: datetime | None  # None: no limit (NULL or infinity)


def roles(conn: psycopg.Connection) -> dict[str, RoleRow]:
    """Every role but PostgreSQL's predefined ones (pg_*)."""
    rows = conn.execute("""select rolname, rolcanlogin, rolconnlimit,
                                  case when rolvaliduntil <> 'infinity' then rolvaliduntil end from pg_roles
                           where rolname not like 'pg\\_%'""").fetchall()
    return {r[0]: RoleRow(r[0], r[1], r[2], r[3]) for r in rows}


def memberships(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """(granted role, member) pairs of pg_auth_members."""
    rows = conn.execute("""select g.rolname, m.rolname from pg_auth_members a
                           join pg_roles g on g.oid = a.roleid join pg_roles m on m.oid = a.member""").fetchall()
    return {(r[0], r[1]) for r in rows}


def databases(conn: psycopg.Connection) -> dict[str, str]:
    """Database -> owner, templates left out."""
    rows = conn.execute("""select datname, pg_get_userbyid(datdba) from pg_database
                           where not datistemplate""").fetchall()
    return {r[0]: r[1] for r in rows}


def schemas(conn: psycopg.Connection) -> dict[str, str]:
    """Schema -> owner in the connected database, PostgreSQL's own (pg_*) left out."""
    rows = conn.execute("""select nspname, pg_get_userbyid(nspowner) from pg_namespace
                           where nspname not like 'pg\\_%'""").fetchall()
    return {r[0]: r[1] for r in rows}


def extensions(conn: psycopg.Connection) -> dict[str, str]:
    """Extension -> installed version in the connected database."""
    return {r[0]: r[1] for r in conn.execute("select extname, extversion from pg_extension").fetchall()}


def available_extensions(conn: psycopg.Connection) -> dict[str, set[str]]:
    """What this server can install: extension -> its available versions."""
    rows = conn.execute("select name, version from pg_available_extension_versions").fetchall()
    out: dict[str, set[str]] = {}
    for name, version in rows:
        out.setdefault(name, set()).add(version)
    return out


# -- passwords: compared with the stored verifier, client-side, so a deploy only sets a changed one --
def verifier_matches(verifier: str | None, password: str) -> bool:
    """Whether a SCRAM-SHA-256 verifier (pg_authid.rolpassword) was made from `password` (RFC 5802:
    StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword, "Server Key"))."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    try:
        head, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$", 1)
        iterations, salt = head.split(":", 1)
        stored_key, server_key = keys.split(":", 1)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except ValueError:
        return False
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return (hmac.compare_digest(base64.b64encode(hashlib.sha256(client_key).digest()).decode(), stored_key) and
            hmac.compare_digest(base64.b64encode(hmac.new(salted, b"Server Key", hashlib.sha256).digest()).decode(),
                                server_key))


def password_matches(conn: psycopg.Connection, role: str, password: str) -> bool:
    row = conn.execute("select rolpassword from pg_authid where rolname = %s", (role,)).fetchone()
    return row is not None and verifier_matches(row[0], password)


def set_password(conn: psycopg.Connection, role: str, password: str) -> None:
    conn.execute(sql.SQL("alter role {} with {}").format(sql.Identifier(role), password_clause(conn, role, password)))


# -- roles ---------------------------------------------------------------------------------------
def ensure_role(conn: psycopg.Connection, name: str, *, login: bool, connection_limit: int = -1,
                valid_until: datetime | None = None, password: str | None = None) -> list[str]:
    """The role with these attributes; `password` set only when the stored verifier was not made
    from it; None: the role has no password (one set by hand is removed)."""
    current = roles(conn).get(name)
    attrs = sql.SQL("{} connection limit {} valid until {}").format(
        sql.SQL("login" if login else "nologin"), sql.Literal(connection_limit),
        sql.Literal(valid_until.isoformat() if valid_until else "infinity"))
    changes = []
    if current is None:
        clause = password_clause(conn, name, password) if password is not None else sql.SQL("password null")
        conn.execute(sql.SQL("create role {} with {} {}").format(sql.Identifier(name), attrs, clause))
        return [f"created role {name}"]
    if (current.login, current.connection_limit, current.valid_until) != (login, connection_limit, valid_until):
        conn.execute(sql.SQL("alter role {} with {}").format(sql.Identifier(name), attrs))
        changes.append(f"altered role {name} (login {login}, connection limit {connection_limit}, "
                       f"valid until {valid_until.isoformat() if valid_until else 'infinity'})")
    if password is not None and not password_matches(conn, name, password):
        set_password(conn, name, password)
        changes.append(f"set the password of role {name}")
    elif password is None and has_password(conn, name):
        conn.execute(sql.SQL("alter role {} with password null").format(sql.Identifier(name)))
        changes.append(f"removed the password of role {name} (password: none)")
    return changes


def has_password(conn: psycopg.Connection, role: str) -> bool:
    row = conn.execute("select rolpassword is not null from pg_authid where rolname = %s", (role,)).fetchone()
    return bool(row and row[0])


def ensure_memberships(conn: psycopg.Connection, member: str, wanted: list[str], managed: set[str]) -> list[str]:
    """`member` is a member of exactly `wanted` among `managed` (spec roles and predefined ones);
    memberships in other roles are not pg_ops's business."""
    have = {g for g, m in memberships(conn) if m == member}
    changes = []
    for granted in sorted(set(wanted) - have):
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(granted), sql.Identifier(member)))
        changes.append(f"granted {granted} to {member}")
    for granted in sorted((have & managed) - set(wanted)):
        conn.execute(sql.SQL("revoke {} from {}").format(sql.Identifier(granted), sql.Identifier(member)))
        changes.append(f"revoked {granted} from {member}")
    return changes


def owned_by(conn: psycopg.Connection, role: str) -> list[str]:
    """What a role owns, cluster-wide: databases, and objects counted per database (pg_shdepend
    owner dependencies, which cover every database); [] when nothing."""
    owned = [f"database {r[0]}" for r in conn.execute(
        "select datname from pg_database where datdba = (select oid from pg_roles where rolname = %s) "
        "order by 1", (role,)).fetchall()]
    rows = conn.execute("""select coalesce(d.datname, '(shared)'), count(*) from pg_shdepend s
                           left join pg_database d on d.oid = s.dbid
                           where s.deptype = 'o' and s.refclassid = 'pg_authid'::regclass
                             and s.refobjid = (select oid from pg_roles where rolname = %s)
                           group by 1 order by 1""", (role,)).fetchall()
    owned += [f"{n} object(s) in database {d}" for d, n in rows]
    return owned


def privilege_databases(conn: psycopg.Connection, role: str) -> list[str]:
    """Databases where `role` holds privileges or default privileges (DROP OWNED BY there, before DROP ROLE)."""
    rows = conn.execute("""select distinct d.datname from pg_shdepend s join pg_database d on d.oid = s.dbid
                           where s.deptype in ('a', 'i') and s.refclassid = 'pg_authid'::regclass
                             and s.refobjid = (select oid from pg_roles where rolname = %s)""", (role,)).fetchall()
    return sorted(r[0] for r in rows)


def drop_owned_privileges(conn: psycopg.Connection, role: str) -> None:
    """In the connected database: the role's privileges go (it owns nothing there: checked first)."""
    conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))


def drop_role(conn: psycopg.Connection, role: str) -> None:
    conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def database_has_data(conn: psycopg.Connection) -> bool:
    """The connected database holds tables, views, sequences… outside the system schemas."""
    return int(conn.execute(USER_OBJECTS_SQL).fetchone()[0]) > 0


def drop_database(conn: psycopg.Connection, name: str) -> None:
    conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# -- inside one database -------------------------------------------------------------------------
def ensure_extension(conn: psycopg.Connection, name: str, version: str | None) -> list[str]:
    installed = extensions(conn)
    if name not in installed:
        statement = sql.SQL("create extension if not exists {}").format(sql.Identifier(name))
        if version:
            statement = sql.SQL("{} version {}").format(statement, sql.Literal(version))
        conn.execute(statement)
        return [f"created extension {name} {extensions(conn)[name]}"]
    if version and installed[name] != version:
        conn.execute(sql.SQL("alter extension {} update to {}").format(sql.Identifier(name), sql.Literal(version)))
        return [f"updated extension {name} {installed[name]} -> {version}"]
    return []


def ensure_schema(conn: psycopg.Connection, name: str, owner: str) -> list[str]:
    current = schemas(conn).get(name)
    if current is None:
        conn.execute(sql.SQL("create schema {} authorization {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return [f"created schema {name} (owner {owner})"]
    if current != owner:
        conn.execute(sql.SQL("alter schema {} owner to {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return [f"schema {name}: owner {current} -> {owner}"]
    return []


ACL_FINGERPRINT_SQL = """
select (select coalesce(datacl::text, '') from pg_database where datname = current_database()),
       (select coalesce(string_agg(nspname || '=' || coalesce(nspacl::text, ''), ';' order by nspname), '')
          from pg_namespace where nspname = any(%(schemas)s)),
       (select coalesce(string_agg(c.oid::text || '=' || coalesce(c.relacl::text, ''), ';' order by c.oid), '')
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')),
       (select coalesce(string_agg(defaclrole::text || defaclnamespace::text || defaclobjtype::text || defaclacl::text,
                                   ';' order by defaclrole, defaclnamespace, defaclobjtype), '')
          from pg_default_acl)
"""


def ensure_access(conn: psycopg.Connection, database: str, schema_owners: dict[str, str],
                  readers: list[str], writers: list[str]) -> list[str]:
    """Readers read and writers write every table of these schemas (schema -> owner), now and
    those the owner creates later (ALTER DEFAULT PRIVILEGES FOR ROLE owner). Grants only: a
    privilege granted by hand beyond these stays (the drift check does not look at ACLs)."""
    names = sorted(schema_owners)
    before = conn.execute(ACL_FINGERPRINT_SQL, {"schemas": names}).fetchone()
    db = sql.Identifier(database)
    for role, tables, sequences in ([(r, READER_TABLE_PRIVILEGES, sql.SQL("select")) for r in readers] +
                                    [(w, WRITER_TABLE_PRIVILEGES, WRITER_SEQUENCE_PRIVILEGES) for w in writers]):
        who = sql.Identifier(role)
        conn.execute(sql.SQL("grant connect on database {} to {}").format(db, who))
        for schema in names:
            nsp = sql.Identifier(schema)
            conn.execute(sql.SQL("grant usage on schema {} to {}").format(nsp, who))
            conn.execute(sql.SQL("grant {} on all tables in schema {} to {}").format(tables, nsp, who))
            conn.execute(sql.SQL("grant {} on all sequences in schema {} to {}").format(sequences, nsp, who))
            for creator in sorted({schema_owners[schema], *writers} - {role}):
                conn.execute(sql.SQL("alter default privileges for role {} in schema {} grant {} on tables to {}")
                             .format(sql.Identifier(creator), nsp, tables, who))
                conn.execute(sql.SQL("alter default privileges for role {} in schema {} grant {} on sequences to {}")
                             .format(sql.Identifier(creator), nsp, sequences, who))
    after = conn.execute(ACL_FINGERPRINT_SQL, {"schemas": names}).fetchone()
    if before == after:
        return []
    return [f"database {database}: privileges of readers ({', '.join(readers) or 'none'}) and writers "
            f"({', '.join(writers) or 'none'}) on schemas {', '.join(names)} granted"]


# -- sessions (rotation) ---------------------------------------------------------------------------
def sessions_of(conn: psycopg.Connection, role: str) -> list[dict]:
    rows = conn.execute("""select pid, datname, coalesce(client_addr::text, 'local'), backend_start::text
                           from pg_stat_activity where usename = %s and pid <> pg_backend_pid()
                           order by pid""", (role,)).fetchall()
    return [{"pid": r[0], "database": r[1], "client": r[2], "since": r[3]} for r in rows]


def terminate_sessions(conn: psycopg.Connection, pids: list[int]) -> int:
    if not pids:
        return 0
    row = conn.execute("select count(*) filter (where pg_terminate_backend(pid)) from unnest(%s::int[]) pid",
                       (pids,)).fetchone()
    return int(row[0])
