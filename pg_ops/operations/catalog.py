"""The spec's roles, databases, schemas, extensions and default privileges, made so by `deploy`
(under the topology lock, on the designated primary), checked for drift, and the application
credentials delivered; and password rotation (`pg-ops rotate-password`).

A password lives in two places only: the data (a SCRAM verifier, replicated to every member)
and the cluster's credentials store (credentials.json locally, the credentials Secret on
Kubernetes). Nothing that changes the topology sets a password: failover, switchover, restore
and recovery carry the verifier in the data; `deploy` sets the store's, which rotation writes
first, so no path re-applies an older one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from pg_ops.credentials import MONITORING_USER, REPLICATION_USER, SUPERUSER, Credentials, generate_password
from pg_ops.errors import PgOpsError, Refused, Unsupported
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.members import lease_kept
from pg_ops.postgres import admin, catalog
from pg_ops.postgres.session import connect, with_connection
from pg_ops.spec import PREDEFINED_ROLES, RESERVED_DATABASES, RESERVED_ROLES, ClusterSpec
from pg_ops.state import topology_lock

# pg_ops's configuration commits locally: in sync-strict mode with no standby it must not wait.
LOCAL_COMMIT = {"options": "-c synchronous_commit=local"}
TIMEOUT_S = 60.0
SYSTEM_ROLES = (SUPERUSER, REPLICATION_USER, MONITORING_USER)


@dataclass(frozen=True)
class AppRole:
    name: str
    login: bool
    connection_limit: int
    valid_until: object
    in_roles: tuple[str, ...]
    password: bool  # pg_ops generates (and delivers, and rotates) it


def app_roles(spec: ClusterSpec) -> list[AppRole]:
    """The present application roles: declared ones, and database owners not declared (login, generated password)."""
    declared = [AppRole(r.name, r.login, r.connection_limit, r.valid_until, tuple(r.in_roles), r.has_password)
                for r in spec.roles if r.present]
    names = {r.name for r in spec.roles}
    implicit = [AppRole(o, True, -1, None, (), True)
                for o in sorted({d.owner for d in spec.databases if d.present} - names)]
    return declared + implicit


@dataclass
class CatalogResult:
    cluster: str
    changes: list[str] = field(default_factory=list)
    delivered: list[str] = field(default_factory=list)  # roles whose credentials were (re)written

    def metadata(self) -> dict:
        return {"changed": len(self.changes), "changes": "; ".join(self.changes) or "none",
                "credentials_delivered": ", ".join(self.delivered) or "none"}


def _primary(ctx: ClusterContext):
    state = ctx.state()
    return state.primary, ctx.endpoints()[state.primary]


def _refusals(ctx: ClusterContext, conn: psycopg.Connection, ep, password: str) -> list[str]:
    """What deploy refuses before it changes anything: an extension (or version) the server does
    not have, a role to drop that owns something, a database to drop that holds data."""
    spec = ctx.spec
    refused = []
    available = catalog.available_extensions(conn)
    for db in (d for d in spec.databases if d.present):
        for ext in db.extensions:
            if ext.name not in available:
                refused.append(f"database {db.name}: extension {ext.name!r} is not available on this server "
                               f"(pg_available_extensions)")
            elif ext.version and ext.version not in available[ext.name]:
                refused.append(f"database {db.name}: extension {ext.name} version {ext.version!r} is not available "
                               f"(available: {', '.join(sorted(available[ext.name]))})")
    existing_dbs = catalog.databases(conn)
    dropped_dbs = {d.name for d in spec.databases if not d.present}
    for db in (d for d in spec.databases if not d.present and d.name in existing_dbs):
        has_data = with_connection(ep, SUPERUSER, password, catalog.database_has_data, dbname=db.name, timeout=10)
        if has_data and not db.drop_with_data:
            refused.append(f"database {db.name} has ensure: absent but holds tables; it is kept (set "
                           f"drop_with_data: true beside it to drop it with its data)")
    existing_roles = catalog.roles(conn)
    for role in (r for r in spec.roles if not r.present and r.name in existing_roles):
        owned = [o for o in catalog.owned_by(conn, role.name)
                 if not any(o == f"database {d}" or o.endswith(f"in database {d}") for d in dropped_dbs)]
        if owned:
            refused.append(f"role {role.name} has ensure: absent but owns {', '.join(owned)}; "
                           f"reassign or drop those first (REASSIGN OWNED BY {role.name} TO …)")
    return refused


def reconcile(ctx: ClusterContext) -> CatalogResult:
    """Make the primary's roles, memberships, databases, schemas, extensions and privileges the
    spec's, then deliver the credentials; under the topology lock. Refusals (see _refusals) come
    first, all of them in one line, and nothing changes. Idempotent: a second run changes nothing."""
    result = CatalogResult(ctx.name)
    spec = ctx.spec
    creds = ctx.credentials()
    password = creds.password(SUPERUSER)
    # Holding the lock, renew the primary's isolation lease as the health tick would (members.lease_kept).
    with topology_lock(ctx.platform.state_store(), "deploy-catalog"), lease_kept(ctx):
        name, ep = _primary(ctx)

        def server(conn: psycopg.Connection) -> None:
            refused = _refusals(ctx, conn, ep, password)
            if refused:
                raise Refused(f"cluster {ctx.name}: deploy refused before any change: {'; '.join(refused)}")
            managed = {r.name for r in spec.roles} | {d.owner for d in spec.databases} | PREDEFINED_ROLES
            wanted = app_roles(spec)
            for role in wanted:
                result.changes += catalog.ensure_role(
                    conn, role.name, login=role.login, connection_limit=role.connection_limit,
                    valid_until=role.valid_until,  # type: ignore[arg-type]
                    password=creds.password(role.name) if role.password else None)
            for role in wanted:
                result.changes += catalog.ensure_memberships(conn, role.name, list(role.in_roles), managed)
            existing = catalog.databases(conn)
            for db in (d for d in spec.databases if d.present):
                if db.name not in existing:
                    admin.ensure_database(conn, db.name, db.owner)
                    result.changes.append(f"created database {db.name} (owner {db.owner})")
                elif existing[db.name] != db.owner:
                    admin.ensure_database(conn, db.name, db.owner)  # alters the owner of an existing one
                    result.changes.append(f"database {db.name}: owner {existing[db.name]} -> {db.owner}")

        with_connection(ep, SUPERUSER, password, server, timeout=TIMEOUT_S, name=name, **LOCAL_COMMIT)
        for db in (d for d in spec.databases if d.present):
            def inside(conn: psycopg.Connection, db=db) -> list[str]:
                changes = []
                for ext in db.extensions:
                    changes += catalog.ensure_extension(conn, ext.name, ext.version)
                owners = {"public": db.owner}
                for schema in db.schemas:
                    owners[schema.name] = schema.owner or db.owner
                    changes += catalog.ensure_schema(conn, schema.name, owners[schema.name])
                readers, writers = db.default_privileges.readers, db.default_privileges.writers
                if readers or writers:
                    changes += catalog.ensure_access(conn, db.name, owners, readers, writers)
                return [f"database {db.name}: {c}" if not c.startswith("database ") else c for c in changes]

            result.changes += with_connection(ep, SUPERUSER, password, inside, dbname=db.name, timeout=TIMEOUT_S,
                                              name=name, **LOCAL_COMMIT)
        result.changes += _drop_absent(ctx, ep, password)
    for role in app_roles(spec):
        if role.password and ctx.platform.deliver_role_credentials(role.name, creds.password(role.name),
                                                                   spec.role_database(role.name)):
            result.delivered.append(role.name)
    for declared in (r for r in spec.roles if not r.has_password):
        if ctx.platform.remove_role_credentials(declared.name):
            result.changes.append(f"removed the delivered credentials of {declared.name}")
    for change in result.changes:
        ctx.log.info("cluster %s: %s", ctx.name, change)
    ctx.log.info("cluster %s: roles and databases: %d change(s); credentials delivered: %s", ctx.name,
                 len(result.changes), ", ".join(result.delivered) or "none (unchanged)")
    return result


def _drop_absent(ctx: ClusterContext, ep, password: str) -> list[str]:
    """Databases, then roles, the spec says are absent (refusals were checked first)."""
    changes = []
    spec = ctx.spec

    def server(conn: psycopg.Connection) -> list[str]:
        out = []
        existing = catalog.databases(conn)
        for db in (d for d in spec.databases if not d.present and d.name in existing):
            catalog.drop_database(conn, db.name)
            out.append(f"dropped database {db.name}")
        return out

    changes += with_connection(ep, SUPERUSER, password, server, timeout=TIMEOUT_S, **LOCAL_COMMIT)
    for role in (r for r in spec.roles if not r.present):
        def privileges(conn: psycopg.Connection, role=role) -> list[str]:
            return catalog.privilege_databases(conn, role.name) if role.name in catalog.roles(conn) else []

        for dbname in with_connection(ep, SUPERUSER, password, privileges, timeout=TIMEOUT_S):
            def revoke(conn: psycopg.Connection, name: str = role.name) -> None:
                catalog.drop_owned_privileges(conn, name)

            with_connection(ep, SUPERUSER, password, revoke, dbname=dbname, timeout=TIMEOUT_S, **LOCAL_COMMIT)

        def drop(conn: psycopg.Connection, role=role) -> bool:
            if role.name not in catalog.roles(conn):
                return False
            catalog.drop_role(conn, role.name)
            return True

        if with_connection(ep, SUPERUSER, password, drop, timeout=TIMEOUT_S, **LOCAL_COMMIT):
            changes.append(f"dropped role {role.name}")
    return changes


# -- drift --------------------------------------------------------------------------------------
@dataclass
class CatalogDrift:
    cluster: str
    differences: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def passed(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.passed:
            return f"cluster {self.cluster}: roles, memberships, databases, schemas and extensions match the spec"
        return f"cluster {self.cluster}: {len(self.differences)} difference(s) from the spec: " + \
            "; ".join(self.differences)


def check_catalog(ctx: ClusterContext) -> CatalogDrift:
    """pg_roles, pg_auth_members, pg_database, pg_namespace and pg_extension on the designated
    primary against the spec, each difference named. Roles and databases pg_ops does not know
    (made by hand) count; PostgreSQL's own (pg_*, templates) and pg_ops's do not."""
    spec = ctx.spec
    report = CatalogDrift(ctx.name)
    password = ctx.admin_password()
    creds = ctx.credentials()
    name, ep = _primary(ctx)
    wanted = {r.name: r for r in app_roles(spec)}
    absent = {r.name for r in spec.roles if not r.present}
    managed = set(wanted) | absent | PREDEFINED_ROLES

    def server(conn: psycopg.Connection) -> dict[str, str]:
        roles = catalog.roles(conn)
        members = catalog.memberships(conn)
        dbs = catalog.databases(conn)
        report.checked += len(roles) + len(members) + len(dbs)
        d = report.differences
        for role in wanted.values():
            row = roles.get(role.name)
            if row is None:
                d.append(f"role {role.name}: missing")
                continue
            until = row.valid_until
            for what, have, want in (("login", row.login, role.login),
                                     ("connection_limit", row.connection_limit, role.connection_limit),
                                     ("valid_until", until, role.valid_until)):
                if have != want:
                    d.append(f"role {role.name}: {what} is {have}, the spec says {want}")
            if role.password and not catalog.password_matches(conn, role.name, creds.password(role.name)):
                d.append(f"role {role.name}: its password is not the one in the credentials store")
            elif not role.password and catalog.has_password(conn, role.name):
                d.append(f"role {role.name}: has a password, the spec says none")
            have_in = {g for g, m in members if m == role.name and g in managed}
            for extra in sorted(have_in - set(role.in_roles)):
                d.append(f"role {role.name}: member of {extra}, not in the spec's in_roles")
            for lacking in sorted(set(role.in_roles) - have_in):
                d.append(f"role {role.name}: not a member of {lacking} (in_roles)")
        for gone in sorted(absent & set(roles)):
            d.append(f"role {gone}: exists, the spec says ensure: absent")
        for extra in sorted(set(roles) - set(wanted) - absent - RESERVED_ROLES):
            d.append(f"role {extra}: exists, not in the spec (made by hand?)")
        present_dbs = {db.name: db for db in spec.databases if db.present}
        for db in present_dbs.values():
            if db.name not in dbs:
                d.append(f"database {db.name}: missing")
            elif dbs[db.name] != db.owner:
                d.append(f"database {db.name}: owner is {dbs[db.name]}, the spec says {db.owner}")
        for other in sorted(set(dbs) - set(present_dbs) - RESERVED_DATABASES):
            absent_db = any(x.name == other and not x.present for x in spec.databases)
            d.append(f"database {other}: exists, " + ("the spec says ensure: absent" if absent_db
                                                   else "not in the spec (made by hand?)"))
        return dbs

    dbs = with_connection(ep, SUPERUSER, password, server, timeout=TIMEOUT_S, name=name)
    for db in (x for x in spec.databases if x.present and x.name in dbs):
        def inside(conn: psycopg.Connection, db=db) -> None:
            d = report.differences
            exts = catalog.extensions(conn)
            nsps = catalog.schemas(conn)
            report.checked += len(exts) + len(nsps)
            for ext in db.extensions:
                if ext.name not in exts:
                    d.append(f"database {db.name}: extension {ext.name} missing")
                elif ext.version and exts[ext.name] != ext.version:
                    d.append(f"database {db.name}: extension {ext.name} is {exts[ext.name]}, the spec says "
                             f"{ext.version}")
            for extra in sorted(set(exts) - {e.name for e in db.extensions} - set(catalog.BUILTIN_EXTENSIONS)):
                d.append(f"database {db.name}: extension {extra} installed, not in the spec")
            for schema in db.schemas:
                owner = schema.owner or db.owner
                if schema.name not in nsps:
                    d.append(f"database {db.name}: schema {schema.name} missing")
                elif nsps[schema.name] != owner:
                    d.append(f"database {db.name}: schema {schema.name} is owned by {nsps[schema.name]}, the spec "
                             f"says {owner}")
            for extra in sorted(set(nsps) - {s.name for s in db.schemas} - set(catalog.SYSTEM_SCHEMAS)):
                d.append(f"database {db.name}: schema {extra} exists, not in the spec")

        with_connection(ep, SUPERUSER, password, inside, dbname=db.name, timeout=TIMEOUT_S, name=name)
    ctx.log.info("%s", report.summary())
    return report


# -- rotation -----------------------------------------------------------------------------------
def rotatable_roles(spec: ClusterSpec) -> list[str]:
    return [*SYSTEM_ROLES, *spec.password_roles()]


def check_rotation_request(ctx: ClusterContext, role: str) -> None:
    """Before any run exists: the role is one whose password pg_ops holds, and its platform can
    rotate it (Platform.check_rotation)."""
    spec = ctx.spec
    if role not in rotatable_roles(spec):
        raise Refused(f"cluster {spec.name}: role {role!r} has no password pg_ops generates (rotatable: "
                      f"{', '.join(rotatable_roles(spec))})")
    try:
        ctx.platform.check_rotation(role)
    except Unsupported as exc:
        raise Refused(str(exc)) from None


def rotate_password(ctx: ClusterContext, role: str, terminate_old: bool = False) -> dict:
    """A new password for `role`, under the topology lock, in this order: the credentials store
    (and the passfiles made from it: the members' for replication, pg_ops's and the exporter's),
    so every later reader (deploy, a replica reconnecting, failover, recovery) has the new one;
    the verifier on the primary (replicated to every member); the delivered credentials; a login
    with the new password proved and the old one refused; then the role's sessions, which
    started with the old password, listed (ended only with `terminate_old`). No secret in the
    returned metadata."""
    check_rotation_request(ctx, role)
    started = time.monotonic()
    old = ctx.credentials()
    new_password = generate_password()
    with topology_lock(ctx.platform.state_store(), "rotate-password"), lease_kept(ctx):
        name, ep = _primary(ctx)
        admin_password = old.password(SUPERUSER)
        creds: Credentials = old.rotated(role, new_password)
        ctx.platform.store_credentials(creds)
        try:
            with_connection(ep, SUPERUSER, admin_password, lambda c: catalog.set_password(c, role, new_password),
                            timeout=TIMEOUT_S, name=name, **LOCAL_COMMIT)
        except PgOpsError:
            ctx.log.error("cluster %s: the new password of %s is stored but not set; `pg-ops deploy` sets it", ctx.name,
                          role)
            raise
        dbname = ctx.spec.role_database(role) if role not in SYSTEM_ROLES else "postgres"
        delivered = False
        if role in ctx.spec.password_roles():
            delivered = ctx.platform.deliver_role_credentials(role, new_password, dbname)
        if role == REPLICATION_USER:
            dbname = "postgres"  # a replication role may log in to a database too (pg_hba allows it)
        with connect(ep, role, new_password, dbname, timeout=10) as conn:
            conn.execute("select 1")
        try:
            connect(ep, role, old.password(role), dbname, timeout=10).close()
            raise PgOpsError(f"cluster {ctx.name}: the old password of {role} still logs in after the rotation")
        except psycopg.OperationalError:
            pass  # refused, as it must be
        admin_now = creds.password(SUPERUSER)

        def sessions(conn: psycopg.Connection) -> tuple[list[dict], int]:
            found = catalog.sessions_of(conn, role)
            if role == REPLICATION_USER:  # the walsenders: replicas keep streaming, never ended here
                return found, 0
            ended = catalog.terminate_sessions(conn, [s["pid"] for s in found]) if terminate_old else 0
            return found, ended

        found, ended = with_connection(ep, SUPERUSER, admin_now, sessions, timeout=TIMEOUT_S, name=name)
    metadata = {"role": role, "primary": name, "login_verified": True, "old_password_refused": True,
                "credentials_delivered": delivered, "old_sessions": len(found),
                "old_sessions_list": "; ".join(f"pid {s['pid']} {s['database']} from {s['client']} since {s['since']}"
                                               for s in found) or "none",
                "terminated": ended, "seconds": round(time.monotonic() - started, 3)}
    ctx.log.info("cluster %s: rotated the password of %s; %d old session(s)%s", ctx.name, role, len(found),
                 f", {ended} ended" if terminate_old else " (not ended: --terminate-old ends them)")
    return metadata
