"""Blue/green major-version upgrade: a NEW cluster on the new major, filled by logical
replication from the running one, and a cut of seconds.

    pg-ops upgrade --to 18 --as NEW_CLUSTER [--read-only-days 7]

The alternative to the in-place upgrade (operations/upgrade.py) when the downtime must not grow
with the data, or when keeping the old cluster untouched matters more than disk:

1. NEW is deployed from the source's spec on the new major (free ports, the source's passwords,
   the spec's roles, databases and extensions); each of the spec's databases gets the source's
   schema (the new major's `pg_dump --schema-only`).
2. A publication FOR ALL TABLES in each source database, a subscription in NEW's: every table's
   rows copied while the applications keep writing to the source, then streamed.
3. The cut — the downtime window: the source's databases are made read-only (their sessions
   ended, so nothing that began before can still commit), pg_ops waits until every subscription
   confirmed the source's last WAL position, sets NEW's sequences to the source's values
   (logical replication does not carry them), drops the subscriptions and publications, and
   compares every table's fingerprint (rows, and an md5 over every row) on both sides. NEW is
   then the writable one: the window closes.
4. The source stays up, read-only, for the declared rollback period (its databases keep
   `default_transaction_read_only`): readable for comparison, and `pg-ops upgrade --rollback
   --as NEW` makes it writable again (NEW is left as it is). After that, `pg-ops teardown`.

Any failure before the window closes makes the source writable again, removes NEW, and says so
in one line: the source never stops being the cluster of record until NEW has every row.

Refused before anything starts (one line): the same major or a downgrade, a major without
binaries here, a name that is taken, a source whose `wal_level` is not `logical` (set it in
`postgres.parameters` and roll it out first), a table that has no replica identity (its updates
would fail on the source once published: name them), a database on the source that the spec
does not declare (it would not be carried), Kubernetes (not built: the cut there would move the
primary Service's selector, which is Git's).
"""

from __future__ import annotations

import contextlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pg_ops import settings
from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.errors import ClusterExists, PgOpsError
from pg_ops.operations import pooling
from pg_ops.operations.context import ClusterContext
from pg_ops.poll import poll
from pg_ops.postgres import dump, logical
from pg_ops.postgres import upgrade as pgu

if TYPE_CHECKING:
    from pathlib import Path

    from pg_ops.spec import ClusterSpec

PUBLICATION = "pg_ops_blue_green"
COPY_TIMEOUT_S = 6 * 3600.0   # the initial copy of every table
CATCH_UP_TIMEOUT_S = 300.0    # inside the window: what was written before the cut
DEFAULT_READ_ONLY_DAYS = 7


@dataclass
class BlueGreenResult:
    cluster: str
    new_cluster: str
    from_major: int
    to_major: int
    databases: list[str]
    downtime_seconds: float  # the source's databases read-only -> NEW holds every row and is checked
    seconds: float
    tables_compared: int
    sequences_set: int
    sessions_ended: int
    source_read_only_until: str
    spec_path: str
    # The source's pooler, aimed at NEW's primary at the cut ("" without one): the applications
    # on it reach NEW without a change of their connection strings.
    pooler_moved: str = ""
    steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def subscription_name(index: int, database: str) -> str:
    """One per database, unique on the source (its replication slot has this name)."""
    return f"pg_ops_bg_{index}_{re.sub(r'[^a-z0-9_]', '_', database.lower())[:30]}"


def _primary_sql(ctx: ClusterContext, fn, dbname: str = "postgres", timeout: float = 60):
    """fn(conn) on the cluster's designated primary, in `dbname`."""
    return ctx.sql(ctx.state().primary, fn, timeout=timeout, dbname=dbname)


def check_blue_green(ctx: ClusterContext, to_major: int, as_name: str) -> tuple[int, ClusterSpec]:
    """The source's major and NEW's spec, once nothing stops the upgrade; else one line."""
    from pg_ops.operations.recover import new_cluster_spec, refuse_existing
    from pg_ops.operations.upgrade import check_rehearsal

    if ctx.spec.platform != "local":
        raise pgu.UpgradeRefused(f"cluster {ctx.name}: a blue/green upgrade runs on the local platform only (on "
                                 f"Kubernetes its cut would move the primary Service, which Git owns); upgrade in "
                                 f"place")
    from_major = check_rehearsal(ctx, to_major)  # the pair, and the new major's binaries here
    if as_name == ctx.name:
        raise pgu.UpgradeRefused(f"--as {as_name}: that is the source cluster itself; blue/green makes a new one")
    base = new_cluster_spec(ctx.spec, as_name)
    new_spec = base.model_copy(update={"postgres": base.postgres.model_copy(update={"version": to_major})})
    refuse_existing(new_spec)
    level = _primary_sql(ctx, logical.wal_level)
    if level != "logical":
        raise pgu.UpgradeRefused(f"cluster {ctx.name}: wal_level is {level}; a blue/green upgrade copies by logical "
                                 f"replication: set postgres.parameters.wal_level: logical and roll it out "
                                 f"(`pg-ops rollout`) first, or upgrade in place")
    declared = [d.name for d in ctx.spec.databases if d.present]
    present = _primary_sql(ctx, dump.list_databases)
    extra = [d for d in present if d not in declared and d not in ("postgres", PG_OPS_DATABASE)]
    if extra:
        raise pgu.UpgradeRefused(f"cluster {ctx.name}: database(s) {', '.join(extra)} are not in its spec and would "
                                 f"not be carried to {as_name}: declare them (databases:) or upgrade in place")
    for database in declared:
        missing = _primary_sql(ctx, logical.tables_without_replica_identity, database)
        if missing:
            raise pgu.UpgradeRefused(f"cluster {ctx.name}: table(s) {', '.join(missing[:5])} in database {database} "
                                     f"have no primary key or replica identity: once published their updates would "
                                     f"fail on the source (add a primary key, or ALTER TABLE … REPLICA IDENTITY FULL)")
    return from_major, new_spec


def blue_green(ctx: ClusterContext, to_major: int, as_name: str,
               read_only_days: float = DEFAULT_READ_ONLY_DAYS) -> BlueGreenResult:
    from pg_ops.operations.deploy import deploy
    from pg_ops.operations.steps import StepLog
    from pg_ops.platforms import platform_for

    from_major, new_spec = check_blue_green(ctx, to_major, as_name)
    steps = StepLog(ctx.log, f"blue/green upgrade of {ctx.name} to PostgreSQL {to_major} as {as_name}", ctx)
    new_ctx = ClusterContext(new_spec, platform_for(new_spec), ctx.log, ctx.alerts)
    databases = [d.name for d in ctx.spec.databases if d.present]
    subscriptions = {db: subscription_name(i, db) for i, db in enumerate(databases)}
    password = ctx.admin_password()
    new_bin = settings.pg_bin_for(to_major)
    read_only: list[str] = []
    window = None
    moved = ""
    path: Path | None = None
    try:
        with steps.step(f"deploy {as_name} on PostgreSQL {to_major}"):
            if new_ctx.platform.state_store().read() is not None:
                raise ClusterExists(f"cluster {as_name} was made meanwhile by someone else")
            new_ctx.platform.ensure_credentials(ctx.credentials())  # the source's passwords
            deploy(new_ctx)
        new_primary = new_ctx.state().primary
        new_endpoint = new_ctx.endpoints()[new_primary]
        source_primary = ctx.state().primary
        source_endpoint = ctx.endpoints()[source_primary]
        with steps.step("copy the schema"):
            for db in databases:
                script = dump.schema_script(source_endpoint, SUPERUSER, password, db, new_bin)
                report = dump.psql_script(new_endpoint, SUPERUSER, password, db, script, bin_dir=new_bin)
                if not report.ok:
                    raise PgOpsError(f"the schema of database {db} did not apply to {as_name}: "
                                     f"{report.errors[0] if report.errors else f'psql exit {report.returncode}'}")
        with steps.step("publish and subscribe"):
            passfile = new_ctx.platform.member_passfile(new_primary)
            for db in databases:
                _primary_sql(ctx, lambda c: logical.create_publication(c, PUBLICATION), db)
                conninfo = (f"host={source_endpoint.host} port={source_endpoint.port} dbname={db} user={SUPERUSER} "
                            f"passfile={passfile} application_name={subscriptions[db]}")
                _primary_sql(new_ctx, lambda c, db=db, conninfo=conninfo: logical.create_subscription(
                    c, subscriptions[db], conninfo, PUBLICATION), db)
        with steps.step("copy every table"):
            for db in databases:
                _wait_copied(new_ctx, db, subscriptions[db])
        # NEW's spec where pg_ops finds its clusters: from the cut on, the source's pooler follows
        # NEW's primary, which it looks up by NEW's spec (removed again if the upgrade fails).
        until = datetime.now(UTC) + timedelta(days=read_only_days)
        path = write_made_spec(new_spec, ctx.name, from_major, until)
        # -- the window --------------------------------------------------------------------
        # Applications on the source's pooler wait out the window (PAUSE), then reach NEW (moved).
        with pooling.paused(ctx):
            window = time.monotonic()
            ended = 0
            with steps.step("the source read-only"):
                for db in databases:
                    ended += _primary_sql(ctx, lambda c, db=db: logical.set_read_only(c, db, True))
                    read_only.append(db)
            with steps.step("NEW caught up"):
                cut = _primary_sql(ctx, logical.current_lsn)
                for db in databases:
                    _wait_confirmed(ctx, subscriptions[db], cut)
            sequences = 0
            with steps.step("sequences"):
                for db in databases:
                    values = _primary_sql(ctx, logical.sequence_values, db)
                    _primary_sql(new_ctx, lambda c, values=values: logical.set_sequences(c, values), db)
                    sequences += len(values)
            with steps.step("stop the replication"):
                for db in databases:
                    _primary_sql(new_ctx, lambda c, db=db: logical.drop_subscription(c, subscriptions[db]), db)
                    _primary_sql(ctx, lambda c: logical.drop_publication(c, PUBLICATION), db)
            compared = 0
            with steps.step("compare fingerprints"):
                for db in databases:
                    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fingerprint") as pool:  # both at once
                        source_side = pool.submit(_primary_sql, ctx, logical.fingerprint, db, 3600)
                        ours = _primary_sql(new_ctx, logical.fingerprint, db, 3600)
                        theirs = source_side.result()
                    differ = sorted(t for t in set(theirs) | set(ours) if theirs.get(t) != ours.get(t))
                    if differ:
                        raise PgOpsError(f"database {db}: table(s) {', '.join(differ[:5])} differ between "
                                         f"{ctx.name} and {as_name} after the copy")
                    compared += len(ours)
            if ctx.spec.pooler is not None:
                with steps.step("the pooler to NEW"):
                    pooling.move(ctx, as_name)
                    moved = str(ctx.platform.pooler_endpoint())
            downtime = time.monotonic() - window
    except ClusterExists:
        raise  # nothing was done to either cluster, and the other one is not ours to remove
    except BaseException as exc:
        _undo(ctx, new_ctx, databases, subscriptions, read_only)
        if path is not None:
            path.unlink(missing_ok=True)
        raise pgu.UpgradeFailed(f"blue/green upgrade of cluster {ctx.name} to PostgreSQL {to_major} failed: {exc}; "
                                f"{ctx.name} runs PostgreSQL {from_major}, writable, untouched, and {as_name} was "
                                f"removed") from exc
    assert path is not None
    result = BlueGreenResult(cluster=ctx.name, new_cluster=as_name, from_major=from_major, to_major=to_major,
                             databases=databases, downtime_seconds=round(downtime, 3), seconds=round(steps.elapsed, 3),
                             tables_compared=compared, sequences_set=sequences, sessions_ended=ended,
                             source_read_only_until=until.isoformat(timespec="seconds"), spec_path=str(path),
                             pooler_moved=moved, steps=steps.as_metadata())
    ctx.log.info("cluster %s upgraded blue/green to PostgreSQL %d as %s: downtime %.2f s (%d tables compared); %s "
                 "stays read-only until %s", ctx.name, to_major, as_name, downtime, compared, ctx.name,
                 result.source_read_only_until)
    return result


def _wait_copied(new_ctx: ClusterContext, db: str, subscription: str) -> None:
    last = [(0, 0)]

    def copied() -> bool | None:
        last[0] = _primary_sql(new_ctx, lambda c: logical.subscription_tables(c, subscription), db)
        ready, total = last[0]
        return True if ready == total else None

    poll(copied, timeout=COPY_TIMEOUT_S, interval=0.2, expired=lambda: PgOpsError(
        f"subscription {subscription}: {last[0][0]} of {last[0][1]} tables copied after {COPY_TIMEOUT_S:g} s"))


def _wait_confirmed(ctx: ClusterContext, slot: str, cut: str) -> None:
    def confirmed() -> bool | None:
        return True if _primary_sql(ctx, lambda c: logical.slot_confirmed(c, slot, cut)) else None

    poll(confirmed, timeout=CATCH_UP_TIMEOUT_S, interval=0.1, expired=lambda: PgOpsError(
        f"subscription {slot} did not confirm {cut} within {CATCH_UP_TIMEOUT_S:g} s"))


def _undo(ctx: ClusterContext, new_ctx: ClusterContext, databases: list[str], subscriptions: dict[str, str],
          read_only: list[str]) -> None:
    """Before the window closed: the source writable again, the subscriptions dropped on NEW
    (which drops their slots on the source) while it answers, the publications dropped, NEW
    removed, then any slot of ours still on the source. Each step is tried; one that fails does
    not stop the others."""
    for db in read_only:
        with contextlib.suppress(PgOpsError):
            _primary_sql(ctx, lambda c, db=db: logical.set_read_only(c, db, False))
    with contextlib.suppress(PgOpsError):
        pooling.move(ctx, None)  # the source's pooler on the source (a no-op unless the cut moved it)
    for db in databases:  # while NEW answers: its subscription drops its slot on the source
        with contextlib.suppress(PgOpsError):
            _primary_sql(new_ctx, lambda c, db=db: logical.drop_subscription(c, subscriptions[db]), db, 30)
    for db in databases:
        with contextlib.suppress(PgOpsError):
            _primary_sql(ctx, lambda c: logical.drop_publication(c, PUBLICATION), db)
    new_ctx.platform.discard_recovered()
    for db in databases:
        with contextlib.suppress(PgOpsError):
            _primary_sql(ctx, lambda c, db=db: logical.drop_slot(c, subscriptions[db]))


def read_only_databases(ctx: ClusterContext) -> list[str]:
    """The cluster's databases a blue/green cut left read-only; [] when its primary does not
    answer (status reports that itself)."""
    try:
        return _primary_sql(ctx, logical.read_only_databases, timeout=5)
    except PgOpsError:
        return []


def rollback(ctx: ClusterContext, as_name: str) -> list[str]:
    """Within the rollback period: the source's databases writable again (NEW is left as it is:
    whatever it took since the cut is its own). Returns the databases made writable."""
    made = []
    for database in [d.name for d in ctx.spec.databases if d.present]:
        if _primary_sql(ctx, lambda c, database=database: logical.is_read_only(c, database)):
            _primary_sql(ctx, lambda c, database=database: logical.set_read_only(c, database, False))
            made.append(database)
    if not made:
        raise PgOpsError(f"cluster {ctx.name}: none of its databases is read-only: nothing to roll back to from "
                         f"{as_name}")
    if pooling.move(ctx, None):  # writable first: the applications on the pooler come back to a writable source
        ctx.log.warning("the pooler of %s serves %s's primary again", ctx.name, ctx.name)
    ctx.log.warning("cluster %s is writable again (rolled back from %s; %s keeps what it took since the cut)",
                    ctx.name, as_name, as_name)
    return made


def write_made_spec(new_spec: ClusterSpec, source: str, from_major: int, until: datetime) -> Path:
    import yaml

    from pg_ops.operations.recover import MADE_BY_UPGRADE, specs_folder

    path = specs_folder() / f"{new_spec.name}.yaml"
    path.write_text(f"{MADE_BY_UPGRADE} from cluster {source} (PostgreSQL {from_major} -> "
                    f"{new_spec.postgres.version}); {source} stays read-only until "
                    f"{until.isoformat(timespec='seconds')}"
                    f"; `pg-ops teardown --cluster {new_spec.name}` removes the cluster and this file.\n"
                    + yaml.safe_dump(new_spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    return path
