"""The real restore: one database of a backup into a named target database.

    pg-ops restore --backup ID --target "host=… port=… user=… dbname=app_restored" --confirm CLUSTER

Safety first, because this is run under stress:
- `--confirm` must repeat the cluster's name;
- the DSN must not carry a password (it would land in run config and shell history): libpq
  reads it from PGPASSFILE / PGPASSWORD of the process;
- a target that is a member of the cluster itself (same system identifier, or one of its
  member addresses) is refused: a restore never writes into the live cluster;
- a target database that exists and holds any table, view, sequence or function is refused
  unless `overwrite` (then it is dropped and created again).
Objects are checked against the manifest's sha256 while they download; the backup is held
against retention while it is read.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from dataclasses import asdict, dataclass

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_ops import settings
from pg_ops.errors import PgOpsError, first_line
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres import admin as pg_admin
from pg_ops.postgres import dump
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.postgres.session import connect_dsn
from pg_ops.stores import BackupStore
from pg_ops.stores import catalog as cat


# Objects that make a database "not empty" (outside the system schemas).
class RestoreRefused(PgOpsError):
    pass


@dataclass
class RestoreResult:
    cluster: str
    backup_id: str
    source_database: str
    target: str  # the DSN, without a password
    restored_bytes: int
    seconds: float
    overwritten: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _target_parts(target_dsn: str) -> dict:
    try:
        parts = conninfo_to_dict(target_dsn)
    except psycopg.ProgrammingError as exc:
        # from None: the parser's error may quote the DSN, which may hold a password
        raise RestoreRefused(f"target DSN is not a valid libpq connection string: {exc}") from None
    if parts.get("password"):
        raise RestoreRefused("the target DSN carries a password: put it in a passfile (PGPASSFILE) or "
                             "PGPASSWORD instead")
    if not parts.get("dbname"):
        raise RestoreRefused("the target DSN names no database (dbname=…): name the database to restore into")
    return parts


def _connect(parts: dict, dbname: str) -> psycopg.Connection:
    try:
        return connect_dsn(make_conninfo("", **{**parts, "dbname": dbname}), timeout=10)
    except psycopg.Error as exc:
        raise PgOpsError(f"target {make_conninfo('', **{**parts, 'dbname': dbname})}: cannot connect: "
                         f"{first_line(exc)}") from exc


def refuse_live_cluster(ctx: ClusterContext, parts: dict, conn: psycopg.Connection) -> None:
    state = ctx.platform.state_store().read()
    with contextlib.suppress(psycopg.Error):
        sysid = pg_admin.system_identifier(conn)
        if state is not None and sysid == state.system_identifier:
            raise RestoreRefused(f"the target is a member of cluster {ctx.name} itself (system identifier "
                                 f"{sysid}): restore into another server")
    host, port = conn.info.host, conn.info.port
    members = {str(ep) for ep in ctx.endpoints().values()}
    if str(Endpoint(host, int(port))) in members:
        raise RestoreRefused(f"the target {host}:{port} is a member of cluster {ctx.name}: restore into "
                             f"another server")


def choose_database(manifest: cat.Manifest, database: str | None) -> cat.DatabaseDump:
    names = [d.name for d in manifest.databases]
    if database is None:
        # Every backup also holds `postgres`: the default is the one other database, if there is one.
        application = [n for n in names if n not in dump.EXISTING_ON_EVERY_SERVER]
        if len(application) != 1:
            raise PgOpsError(f"backup {manifest.id} holds databases {', '.join(names) or 'none'}: "
                             f"choose one with --database")
        database = application[0]
    found = next((d for d in manifest.databases if d.name == database), None)
    if found is None:
        raise PgOpsError(f"backup {manifest.id} has no database {database} (it holds {', '.join(names)})")
    return found


def prepare_target_database(parts: dict, overwrite: bool, log) -> bool:
    """Create the target database, or check that it is empty; returns True if it was dropped."""
    name = parts["dbname"]
    with _connect(parts, "postgres") as admin:
        if pg_admin.database_exists(admin, name):
            with _connect(parts, name) as conn:
                objects = pg_admin.user_object_count(conn)
            if objects and not overwrite:
                raise RestoreRefused(f"target database {name} is not empty ({objects} tables/views/sequences): "
                                     f"refusing to overwrite it without --overwrite")
            if objects:
                log.warning("dropping the non-empty target database %s (--overwrite)", name)
                pg_admin.drop_database(admin, name)
                pg_admin.create_database(admin, name)
                return True
            return False
        pg_admin.create_database(admin, name)
    return False


def check_target(ctx: ClusterContext, target_dsn: str, confirm: str | None) -> dict:
    """The checks that need no store and no server: the confirmation and the DSN (no
    password, a database named). Returns the DSN's parts."""
    if confirm != ctx.name:
        raise RestoreRefused(f"restore of cluster {ctx.name}'s backup needs --confirm {ctx.name}")
    return _target_parts(target_dsn)


def check_request(ctx: ClusterContext, backup_id: str, target_dsn: str, confirm: str | None,
                  database: str | None, store: BackupStore) -> tuple[dict, cat.BackupRecord, cat.DatabaseDump]:
    """Everything about a restore request that can be refused before anything starts (pg-ops
    runs it before a run exists): confirmation, DSN, backup, database of the backup."""
    from pg_ops.operations.drill import choose_backup

    parts = check_target(ctx, target_dsn, confirm)
    record = choose_backup(store, ctx.name, backup_id)
    entry = choose_database(cat.read_manifest(store, ctx.name, record.id), database)
    return parts, record, entry


def restore(ctx: ClusterContext, backup_id: str, target_dsn: str, confirm: str | None, *,
            database: str | None = None, overwrite: bool = False, keep_owners: bool = False,
            store: BackupStore | None = None) -> RestoreResult:
    from pg_ops.operations.drill import BackupFault, download

    check_target(ctx, target_dsn, confirm)  # refused before the store is even opened
    store = store or ctx.store()
    parts, record, entry = check_request(ctx, backup_id, target_dsn, confirm, database, store)
    shown = make_conninfo(**parts)
    with _connect(parts, "postgres") as conn:
        refuse_live_cluster(ctx, parts, conn)
    started = time.monotonic()
    holder = f"restore-{secrets.token_hex(4)}"
    workdir = settings.home() / "restores" / f"{ctx.name}-{record.id}-{secrets.token_hex(3)}"
    workdir.mkdir(parents=True, mode=0o700)
    try:
        with cat.hold_backup(store, ctx.name, record.id, holder, "restore"):
            dump_file = workdir / "restore.dump"
            try:
                download(store, entry, dump_file)
            except BackupFault as fault:
                raise PgOpsError(f"backup {record.id}: {fault}") from fault
            overwritten = prepare_target_database(parts, overwrite, ctx.log)
            ctx.log.info("restoring %s of backup %s/%s into %s", entry.name, ctx.name, record.id, shown)
            report = dump.pg_restore_into(make_conninfo(**parts), dump_file, keep_owners=keep_owners)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not report.ok:
        first = report.errors[0] if report.errors else f"exit status {report.returncode}"
        raise PgOpsError(f"restore of {entry.name} from backup {record.id} into {shown} failed: "
                         f"{len(report.errors)} error(s); first: {first}")
    result = RestoreResult(cluster=ctx.name, backup_id=record.id, source_database=entry.name, target=shown,
                           restored_bytes=entry.raw_bytes, seconds=round(time.monotonic() - started, 3),
                           overwritten=overwritten)
    ctx.log.info("restored %s (%.1f MB) into %s in %.1f s", entry.name, entry.raw_bytes / 1e6, shown, result.seconds)
    return result
