"""`pg-ops`: the same jobs from a terminal, as runs of the pg-ops code location.

Every command takes --cluster (default: the only/first cluster) and --json; a failure exits
non-zero with one clear line on stderr. Commands that launch a job check their arguments
first (no run exists for a typo), then submit it to the Dagster deployment (--dagster-url,
PG_OPS_DAGSTER_URL, or the local one of `make run`) and follow it to its end: pg_ops/runs.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec, load_specs, select_spec

if TYPE_CHECKING:  # dagster is imported by the commands that launch a run, not when pg-ops starts
    from dagster import RunConfig

    from pg_ops.operations.failover import TopologyChange

Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One sub-command: its help line, its own arguments (besides the global options) and its
    handler, registered together by `@command` beside the handler."""

    help: str
    arguments: Arguments | None
    handler: Callable[[argparse.Namespace, ClusterSpec], object]


COMMANDS: dict[str, Command] = {}  # in the order `pg-ops --help` lists them


def command(name: str, help: str, arguments: Arguments | None = None):
    def register(fn):
        COMMANDS[name] = Command(help, arguments, fn)
        return fn
    return register


# -- running Dagster jobs (pg_ops/runs.py decides where: the deployment, or this process) --------
def run_job(args: argparse.Namespace, job_name: str, spec: ClusterSpec, run_config: RunConfig | None = None,
            tags: dict | None = None, partition_key: str | None = None, asset_selection=None):
    """Run a job of the code location for one cluster, to its end; a failed run raises with its
    one-line reason (its traceback goes to stderr first with --verbose). `asset_selection`:
    asset keys of an asset job (a daily job's keys: see pg_ops/defs/backups.py). `run_config`: built
    by the job's defs module (pg_ops/defs/failover.py's `failover_run_config`, ...)."""
    from pg_ops import runs

    launch = runs.JobLaunch(
        job=job_name, cluster=spec.name, run_config=run_config, tags=tags or {}, partition_key=partition_key,
        asset_selection=(None if asset_selection is None
                         else tuple(tuple(getattr(k, "path", k)) for k in asset_selection)))
    options = runs.Options(dagster_url=args.dagster_url, in_process=args.in_process, verbose=args.verbose)
    outcome = runs.run(launch, options, spec.platform)
    if not outcome.success:
        if args.verbose and outcome.traceback and outcome.where != "in process":  # in process: Dagster's log has it
            print(outcome.traceback, file=sys.stderr)
        raise PgOpsError(f"{job_name} on {spec.name} failed (run {outcome.run_id[:8]}, {outcome.link}): "
                         f"{outcome.reason}")
    return outcome


# -- arguments checked before any run exists: a typo costs one line, not a failed run -------------
def require_member(spec: ClusterSpec, member: str, what: str) -> None:
    if member not in spec.member_names:
        raise PgOpsError(f"cluster {spec.name} has no member {member!r} ({what}; its members: "
                         f"{', '.join(spec.member_names)})")


def reachable_store(spec: ClusterSpec, source: str = "primary"):
    """The cluster's backup store (or its second store), or None (said on stderr) when this
    machine cannot open it: it is the deployment's, and its runs check the backup themselves."""
    try:
        return ClusterContext.for_spec(spec).store_from(source)
    except PgOpsError as exc:
        backup_unchecked(spec, exc)
        return None


def backup_unchecked(spec: ClusterSpec, exc: Exception) -> None:
    from pg_ops.runs import notice

    notice(f"cannot read the backup store of {spec.name} from here ({exc}); the run will check the backup")


def require_backup(spec: ClusterSpec, backup_id: str | None, source: str = "primary") -> None:
    """The backup exists and is complete (or, without an id, some complete backup exists)."""
    from pg_ops.operations.drill import choose_backup
    from pg_ops.stores.base import StoreError

    store = reachable_store(spec, source)
    try:
        if store is not None:
            choose_backup(store, spec.name, backup_id)
    except StoreError as exc:
        backup_unchecked(spec, exc)


# -- output ------------------------------------------------------------------------------------
def emit(args: argparse.Namespace, data: object, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def status_text(status: dict) -> str:
    head = (f"cluster {status['cluster']} ({status['platform']}, {status['replication']})  "
            f"epoch {status['epoch']}  primary {status['designated_primary']}")
    rows = table(status["members"], ["name", "role", "host", "port", "timeline", "lsn", "lag_bytes",
                                     "lag_seconds", "sync_state", "error"])
    tail = [f"primary DSN: {status['primary_dsn']}"]
    if status.get("maintenance"):
        from pg_ops.operations.maintenance import until_text

        held = status["maintenance"]
        tail.append(f"MAINTENANCE MODE until {until_text(held['until'])}"
                    f"{' (' + held['reason'] + ')' if held['reason'] else ''}: no automatic failover or rollout")
    if status.get("passfile"):
        tail.append(f"passfile:    {status['passfile']}   (PGPASSFILE={status['passfile']} psql \"<DSN>\")")
    # Health (operations/health.py): storage, connections and the alert conditions active now.
    for m in status["members"]:
        facts = []
        if m.get("storage_ratio") is not None:
            facts.append(f"data disk {m['storage_ratio']:.0%} used")
        if m.get("connections") is not None:
            facts.append(f"{m['connections']}/{m['max_connections']} connections")
        if facts:
            tail.append(f"{m['name']}: {', '.join(facts)}")
    tail += [f"ALERT {a['severity']} {a['kind']}: {a['summary']}" for a in status.get("alerts", [])] or ["alerts: none"]
    return "\n".join([head, rows, *tail])


def configuration_text(ctx: ClusterContext, status: dict) -> str:
    """What keeps members from running the rendered configuration (operations/rollout.py), and
    sets status["configuration"]."""
    from pg_ops.operations.rollout import member_configs

    try:
        configs = member_configs(ctx)
    except PgOpsError as exc:
        status["configuration"] = {"error": str(exc)}
        return f"configuration: unknown ({exc})"
    status["configuration"] = {"pending": configs.pending}
    if not configs.pending:
        return f"configuration: {configs.summary()}"
    return f"configuration pending: {configs.summary()} (`pg-ops rollout` applies it)"


# -- commands ----------------------------------------------------------------------------------
@command("status", "members, roles, lag, primary DSN")
def cmd_status(args, spec):
    from pg_ops import runs
    from pg_ops.operations.health import status_report

    ctx = ClusterContext.for_spec(spec)
    status = status_report(ctx)
    # Runs that failed within the hour: their run-failure alerts still fire (defs/health.py).
    options = runs.Options(dagster_url=args.dagster_url, in_process=args.in_process)
    for failed in runs.recent_failures(spec.name, options):
        when = datetime.fromtimestamp(failed["failed_at"], UTC).strftime("%H:%M:%SZ")
        status["alerts"].append({"cluster": spec.name, "severity": "critical" if failed["topology"] else "warning",
                                 "kind": "run_failed", "details": {"run_id": failed["run_id"], "job": failed["job"]},
                                 "summary": f"run {failed['job']} ({failed['run_id'][:8]}) failed at {when}"})
    text = status_text(status)
    text += "\n" + configuration_text(ctx, status)
    if spec.pooler is not None:  # spec `pooler` (operations/pooling.py)
        from pg_ops.operations.pooling import pooler_status

        status["pooler"] = pooled = pooler_status(ctx)
        text += "\npooler: " + (f"unknown ({pooled['error']})" if "error" in pooled else
                                f"{pooled['endpoint']} -> port {pooled['target_port']}, {pooled['clients_active']} "
                                f"clients active, {pooled['clients_waiting']} waiting, {pooled['servers']} server "
                                f"connections")
    from pg_ops.operations.blue_green import read_only_databases

    # A blue/green upgrade's source after its cut (asked only of a primary that answered above).
    read_only = read_only_databases(ctx) if status.get("writable_members") else []
    if read_only:
        status["read_only_databases"] = read_only
        text += (f"\nread-only databases: {', '.join(read_only)} (the source of a blue/green upgrade; "
                 f"`pg-ops upgrade --cluster {spec.name} --rollback --as NEW` makes them writable again)")
    if spec.backups.wal.enabled:  # the recovery window (operations/wal.py)
        from pg_ops.operations.wal import recovery_window

        try:
            window = recovery_window(ctx)
            status["recovery_window"], text = window.as_dict(), text + "\n" + window.text()
        except PgOpsError as exc:
            status["recovery_window"], text = {"error": str(exc)}, text + f"\nrecovery window: unknown ({exc})"
    emit(args, status, text)


@command("deploy", "deploy or repair the cluster (idempotent)")
def cmd_deploy(args, spec):
    from pg_ops.operations.health import status_report

    result = run_job(args, "deploy_cluster", spec, partition_key=spec.name)
    status = status_report(ClusterContext.for_spec(spec))
    status["run_id"] = result.run_id
    emit(args, status, f"deployed (run {result.run_id[:8]})\n" + status_text(status))


def _teardown_arguments(p) -> None:
    p.add_argument("--all", action="store_true", help="every local cluster: the specs' and the recovered ones")


@command("teardown", "stop and delete a local cluster", _teardown_arguments)
def cmd_teardown(args, spec):
    """One cluster, or with --all every local cluster pg_ops knows (what `make run` and `pg-ops
    recover` made). A recovered cluster's spec (written by recover) goes with it."""
    from pg_ops.operations.deploy import teardown
    from pg_ops.operations.recover import forget_recovered_spec

    targets = [s for s in load_specs() if s.platform == "local"] if args.all else [spec]
    done = []
    for target in targets:
        teardown(ClusterContext.for_spec(target))
        removed = forget_recovered_spec(target.name)
        done.append({"cluster": target.name, "torn_down": True, "spec_removed": str(removed) if removed else None})
    emit(args, done if args.all else done[0],
         "\n".join(f"cluster {d['cluster']} torn down" + (f" (its spec {d['spec_removed']} removed)"
                                                          if d["spec_removed"] else "") for d in done))


def _change_text(change: TopologyChange) -> str:
    head = f"{change.operation}: {change.old_primary} -> {change.new_primary}  epoch {change.epoch}"
    steps = [f"  {name}: {seconds:.3f} s" for name, seconds in change.steps.items()]
    notes = [f"  {'; '.join(change.notes)}"] if change.notes else []
    return "\n".join([head, *steps, f"  total: {change.seconds} s", *notes])


def precheck(spec: ClusterSpec, check: Callable[[ClusterContext], None]) -> None:
    """A run's own refusal rules on the cluster as this machine sees it, before any run exists
    (Refused: one line, no run, no alert). When this machine cannot read the cluster (a
    Kubernetes cluster from a laptop), the run decides alone and pg-ops says so."""
    from pg_ops.errors import Refused
    from pg_ops.runs import notice

    try:
        check(ClusterContext.for_spec(spec))
    except Refused:
        raise
    except PgOpsError as exc:
        notice(f"cannot read cluster {spec.name} from here ({exc}); the run will check the request")


# The topology commands read their run's result back as the operation's result dataclass
# (pg_ops/defs/metadata.py: the same field names the op recorded), never by a metadata key.
def _failover_arguments(p) -> None:
    p.add_argument("--to", help="member to promote (default: the replica with the highest received LSN)")
    p.add_argument("--force", action="store_true", help="even if the primary answers, or the candidate lags")


@command("failover", "promote a replica after the primary died", _failover_arguments)
def cmd_failover(args, spec):
    from pg_ops.defs.failover import FAILOVER_JOB, FAILOVER_OP, failover_run_config
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.operations.failover import TopologyChange, check_failover_request

    if args.to:
        require_member(spec, args.to, "--to")
    precheck(spec, lambda ctx: check_failover_request(ctx, to=args.to, force=args.force))
    result = run_job(args, FAILOVER_JOB, spec, failover_run_config(to=args.to, force=args.force),
                     partition_key=spec.name)
    meta = result.output_for_node(FAILOVER_OP)
    emit(args, meta, _change_text(from_metadata(TopologyChange, meta)))


def _switchover_arguments(p) -> None:
    p.add_argument("--to", required=True, help="replica to promote")


@command("switchover", "planned, lossless change of primary", _switchover_arguments)
def cmd_switchover(args, spec):
    from pg_ops.defs.failover import SWITCHOVER_JOB, SWITCHOVER_OP, switchover_run_config
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.operations.failover import TopologyChange

    require_member(spec, args.to, "--to")
    result = run_job(args, SWITCHOVER_JOB, spec, switchover_run_config(args.to), partition_key=spec.name)
    meta = result.output_for_node(SWITCHOVER_OP)
    emit(args, meta, _change_text(from_metadata(TopologyChange, meta)))


def _rebuild_arguments(p) -> None:
    p.add_argument("member")
    p.add_argument("--reclone", action="store_true", help="wipe and re-clone instead of rewinding")


@command("rebuild", "rewind (or re-clone) a replica from the primary", _rebuild_arguments)
def cmd_rebuild(args, spec):
    from pg_ops.defs.failover import REBUILD_JOB, REBUILD_OP, rebuild_run_config
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.operations.failover import RebuildResult, check_rebuild_request

    require_member(spec, args.member, "rebuild")
    precheck(spec, lambda ctx: check_rebuild_request(ctx, args.member))
    result = run_job(args, REBUILD_JOB, spec, rebuild_run_config(args.member, args.reclone), partition_key=spec.name)
    meta = result.output_for_node(REBUILD_OP)
    rebuilt = from_metadata(RebuildResult, meta)
    emit(args, meta, f"rebuilt {rebuilt.member} by {rebuilt.method} in {rebuilt.seconds} s")


@command("rolling-restart", "restart every member, replicas first, then switch over")
def cmd_rolling_restart(args, spec):
    from pg_ops.defs.failover import ROLLING_RESTART_JOB, ROLLING_RESTART_OP
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.operations.failover import RestartResult

    result = run_job(args, ROLLING_RESTART_JOB, spec, partition_key=spec.name)
    meta = result.output_for_node(ROLLING_RESTART_OP)
    done = from_metadata(RestartResult, meta)
    emit(args, meta, f"restarted {', '.join(done.restarted)}; primary now {done.primary} (epoch {done.epoch}) "
                     f"in {done.seconds} s")


@command("rollout", "apply the spec's configuration and binaries: reload, or restart replicas first then switch over")
def cmd_rollout(args, spec):
    from pg_ops.defs.failover import ROLLOUT_JOB, ROLLOUT_OP
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.operations.rollout import RolloutResult, check_rollout

    check_rollout(ClusterContext.for_spec(spec))  # a refused value or a member down: one line, no run
    result = run_job(args, ROLLOUT_JOB, spec, partition_key=spec.name)
    done = from_metadata(RolloutResult, result.output_for_node(ROLLOUT_OP))
    reloaded, restarted = ", ".join(done.reloaded), ", ".join(done.restarted) or "none"
    out = {**result.output_for_node(ROLLOUT_OP), "reloaded": reloaded, "restarted": restarted,
           "settings": done.settings()}
    emit(args, out, f"rolled out to {reloaded}: restarted {restarted}; primary {done.primary} "
                    f"(epoch {done.epoch}) in {done.seconds} s")


def _maintenance_arguments(p) -> None:
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--for", dest="duration", metavar="DURATION", help="how long: 90m, 2h, 1d (at most 7 days)")
    p.add_argument("--reason", help="shown in status, the UI and the held failover's alert")


@command("maintenance", "hold automatic failover and rollouts for a time (alerts go on), or resume them",
         _maintenance_arguments)
def cmd_maintenance(args, spec):
    from pg_ops.defs.rollout import MAINTENANCE_JOB, MAINTENANCE_OP, maintenance_run_config
    from pg_ops.operations.maintenance import parse_duration

    if args.state == "on" and not args.duration:
        raise PgOpsError("pg-ops maintenance on needs --for DURATION (90m, 2h, 1d): it always ends by itself")
    seconds = parse_duration(args.duration) if args.state == "on" else 0.0
    ClusterContext.for_spec(spec).state()  # not deployed: one line, no run
    result = run_job(args, MAINTENANCE_JOB, spec, maintenance_run_config(seconds, args.reason or ""),
                     partition_key=spec.name)
    meta = result.output_for_node(MAINTENANCE_OP)
    emit(args, meta, f"{spec.name}: maintenance mode on until {meta['until']}: no automatic failover or rollout, "
                     f"alerts go on" if meta["maintenance"] == "on" else
                     f"{spec.name}: maintenance mode off: automatic failover and rollouts resume")


def _rotate_password_arguments(p) -> None:
    p.add_argument("role", help="an application login role, or postgres, replicator, postgres_exporter")
    p.add_argument("--terminate-old", action="store_true", help="end the role's sessions that logged in before")


@command("rotate-password", "a new password for a role, delivered and verified", _rotate_password_arguments)
def cmd_rotate_password(args, spec):
    from pg_ops.defs.roles import JOB_NAME, OP_NAME, run_config
    from pg_ops.operations.catalog import check_rotation_request

    check_rotation_request(ClusterContext.for_spec(spec), args.role)  # no run for a role pg_ops cannot rotate
    result = run_job(args, JOB_NAME, spec, run_config(args.role, args.terminate_old), partition_key=spec.name)
    meta = result.output_for_node(OP_NAME)
    ended = f", {meta['terminated']} ended" if args.terminate_old else " (--terminate-old ends them)"
    emit(args, meta, f"rotated the password of {meta['role']} on {spec.name}: new login verified, old password "
                     f"refused; {meta['old_sessions']} session(s) from before{ended}")


GLOBAL_OPTIONS = ("cluster", "json", "verbose", "dagster_url", "in_process")
SUB_PREFIX = "sub_command_"


class Parser(argparse.ArgumentParser):
    """argparse, with a one-line refusal and a suggestion for a mistyped sub-command."""

    def error(self, message: str):
        import difflib

        typo = re.search(r"invalid choice: '([^']*)'", message)
        if typo and self.prog == "pg-ops":
            close = difflib.get_close_matches(typo.group(1), list(COMMANDS), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (commands: {', '.join(sorted(COMMANDS))})"
            self.exit(2, f"pg-ops: unknown command {typo.group(1)!r}{hint}\n")
        self.exit(2, f"{self.prog}: {message}\n")


def _global_options(suppress: bool) -> Parser:
    """The options every command takes, valid before or after the sub-command. The sub-command's
    copy leaves an option it was not given unset (SUPPRESS), so it cannot overwrite one given
    before the sub-command with its own default (argparse's parents otherwise do exactly that)."""
    def kw(name: str, value) -> dict:
        return {"dest": f"{SUB_PREFIX}{name}", "default": argparse.SUPPRESS} if suppress else {"default": value}

    common = Parser(add_help=False)
    common.add_argument("--cluster", help="cluster name (default: the only/first cluster)", **kw("cluster", None))
    common.add_argument("--json", action="store_true", help="machine-readable output", **kw("json", False))
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log progress (and a failure's traceback) to stderr",
                        **kw("verbose", False))
    # Where runs go (pg_ops/runs.py): a named deployment, else the local one of `make run`, else here.
    common.add_argument("--dagster-url", metavar="URL",
                        help="Dagster webserver to submit runs to (default: $PG_OPS_DAGSTER_URL, else the local "
                             "deployment of `make run`)", **kw("dagster_url", None))
    common.add_argument("--in-process", action="store_true",
                        help="run the job in this process (bypasses the deployment's queue, limits and alerts)",
                        **kw("in_process", False))
    return common


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with each global option taken from wherever it was given; one given
    twice with two different values is refused (which one was meant cannot be known)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in GLOBAL_OPTIONS:
        after = vars(args).pop(f"{SUB_PREFIX}{name}", None)
        if after is None:
            continue
        before = getattr(args, name)
        if before not in (None, False) and before != after:
            parser.error(f"--{name.replace('_', '-')} given twice, as {before!r} and {after!r}")
        setattr(args, name, after)
    return args


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(suppress=True)
    parser = Parser(prog="pg-ops", description=__doc__.splitlines()[0], parents=[_global_options(suppress=False)])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, registered in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=registered.help)
        if registered.arguments is not None:
            registered.arguments(p)
    return parser


def _psql_arguments(p) -> None:
    p.add_argument("--member", help="one member instead of the primary endpoint")
    p.add_argument("--dbname", default="postgres", help="database (default: postgres)")
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql after `--` (e.g. -- -c 'select 1')")


@command("psql", "psql on the primary (or --member), password from the passfile", _psql_arguments)
def cmd_psql(args, spec):
    """psql on the primary endpoint (or one member), its password from the cluster's 0600
    passfile: never on the command line, never in the environment."""
    from pg_ops import settings

    ctx = ClusterContext.for_spec(spec)
    passfile = ctx.platform.passfile()
    if passfile is None or not passfile.exists():
        raise PgOpsError(f"cluster {spec.name}: no passfile on this machine ({spec.platform} platform"
                         + ("; the passwords stay in its Secret: `kubectl exec -it <pod> -c postgres -- psql`)"
                            if spec.platform == "kubernetes" else "; deploy the cluster first)"))
    if args.member:
        require_member(spec, args.member, "--member")
        endpoint = ctx.endpoints()[args.member]
        dsn = f"host={endpoint.host} port={endpoint.port} user=postgres dbname={args.dbname}"
    else:
        dsn = ctx.platform.primary_dsn("postgres", args.dbname)
    psql = settings.pg_bin() / "psql"
    sys.stdout.flush()
    extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    os.execve(str(psql), [str(psql), dsn, *extra], {**os.environ, "PGPASSFILE": str(passfile)})


# -- render (offline: writes the Git-owned manifests, never talks to a cluster) ---------------------
def _render_arguments(p) -> None:
    p.add_argument("--out", help="output folder (default: deploy/kubernetes/<cluster>/)")


@command("render", "write a kubernetes cluster's Git-owned manifests", _render_arguments)
def cmd_render(args, spec):
    from pathlib import Path

    from pg_ops.render import default_output_dir, manifests, write_manifests

    out = Path(args.out) if args.out else default_output_dir(spec)
    written = write_manifests(spec, manifests(spec), out)
    emit(args, {"cluster": spec.name, "out": str(out), "files": [p.name for p in written]},
         f"rendered {len(written)} files for {spec.name} into {out}")


def _from_option(parser) -> None:
    parser.add_argument("--from", dest="source", choices=["primary", "copy"], default="primary",
                        help="which store: backups.store (primary) or the second store of backups.copy_to (copy)")


# -- backups (pg_ops/defs/backups.py, operations/backup.py, operations/retention.py) -----------------
@command("backup", "back up the cluster now (backup_cluster job), then prune")
def cmd_backup(args, spec):
    from pg_ops.defs.backups import backup_run_kwargs, nightly_key, retained_key

    result = run_job(args, "backup_cluster", spec, **backup_run_kwargs(spec.name))
    made, kept = (result.materialization(nightly_key(spec.name).path),
                  result.materialization(retained_key(spec.name).path))
    # From the run's materialization metadata: the store may not be reachable from here.
    report = {"id": made.get("backup_id"), "cluster": spec.name, "status": "complete", "size": made.get("size_bytes"),
              "size_mb": made.get("size_mb"), "raw_bytes": made.get("raw_bytes"),
              "duration": made.get("duration_seconds"), "throughput_mb_per_s": made.get("throughput_mb_per_s"),
              "source": made.get("source"), "lsn": made.get("lsn"), "store": made.get("store"),
              "databases": made.get("database_names"), "excluded": made.get("excluded_databases"),
              "pruned": kept.get("deleted_ids"), "copy": kept.get("copy"), "run_id": result.run_id}
    emit(args, report, f"backup {report['id']} of {spec.name}: {human_bytes(report['size'])} in {report['duration']} s "
                       f"from {report['source']} (run {result.run_id[:8]})\n"
                       f"  databases: {report['databases'] or 'none'}; excluded: {report['excluded'] or 'none'}"
                       + (f"\n  second store: {report['copy']}" if report["copy"] else ""))


@command("backups", "list backups: id, started, size, duration, status, expires", _from_option)
def cmd_backups(args, spec):
    from pg_ops.operations.retention import backups_report

    ctx = ClusterContext.for_spec(spec)
    rows = backups_report(ctx, ctx.store_from(args.source))
    shown = [{**r, "excluded": ", ".join(r.get("excluded") or []) or "-", "size": human_bytes(r["size"]),
              "duration": "-" if r.get("duration") is None else f"{r['duration']} s"} for r in rows]
    emit(args, rows, table(shown, ["id", "started", "size", "duration", "status", "excluded", "expires",
                                   "retention"])
         if rows else f"no backups of {spec.name} yet" + (" in the second store" if args.source == "copy" else ""))


def human_bytes(size: int | None) -> str:
    """4.2 kB, 170 MB: a small backup must not read as an empty one (0.0 MB)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def require_copy(spec: ClusterSpec, source: str) -> None:
    if source == "copy" and spec.backups.copy_to is None:
        raise PgOpsError(f"cluster {spec.name} has no second store: --from copy needs backups.copy_to in its spec")


# -- restore drills (pg_ops/defs/drills.py, operations/drill.py) -----------------------------------
def _drill_arguments(p) -> None:
    p.add_argument("--backup", help="backup id (default: the newest complete backup)")
    p.add_argument("--point-in-time", nargs="?", const="", metavar="TIME",
                   help="drill point-in-time recovery instead (base backup + WAL), to TIME (ISO 8601) or, "
                        "without TIME, to a moment the drill marks itself")
    _from_option(p)


@command("restore-drill", "restore a backup into a throw-away target and verify it", _drill_arguments)
def cmd_restore_drill(args, spec):
    from pg_ops.defs.drills import drill_key, drill_run_config, drill_run_kwargs
    from pg_ops.operations.drill import drill_report_text

    require_copy(spec, args.source)
    if args.point_in_time is not None:
        return pitr_drill_command(args, spec)
    require_backup(spec, args.backup, args.source)
    result = run_job(args, "restore_drill", spec, drill_run_config(spec.name, args.backup, args.source),
                     **drill_run_kwargs(spec.name))
    report = {**result.materialization(drill_key(spec.name).path)["report"], "run_id": result.run_id}
    emit(args, report, drill_report_text(report))


def _restore_arguments(p) -> None:
    p.add_argument("--backup", required=True, help="backup id (pg-ops backups)")
    p.add_argument("--target", required=True, help="libpq DSN of the target database, WITHOUT a password "
                                                   "(PGPASSFILE / PGPASSWORD supply it)")
    p.add_argument("--confirm", help="the cluster's name, to confirm")
    p.add_argument("--database", help="which database of the backup (default: its only one)")
    p.add_argument("--overwrite", action="store_true", help="drop and recreate a non-empty target database")
    p.add_argument("--keep-owners", action="store_true", help="keep object owners (the roles must exist)")


@command("restore", "restore a backup into a named target database", _restore_arguments)
def cmd_restore(args, spec):
    from pg_ops.defs.drills import restore_run_config
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.operations.restore import RestoreResult, check_request, check_target
    from pg_ops.stores.base import StoreError

    ctx = ClusterContext.for_spec(spec)
    check_target(ctx, args.target, args.confirm)  # a DSN's password is refused before it is stored anywhere
    store = reachable_store(spec)
    try:
        if store is not None:
            check_request(ctx, args.backup, args.target, args.confirm, args.database, store)
    except StoreError as exc:
        backup_unchecked(spec, exc)
    config = restore_run_config(spec.name, args.backup, args.target, args.confirm, args.database, args.overwrite,
                                args.keep_owners)
    result = run_job(args, "restore_backup", spec, config)
    out = result.output_for_node("run_restore")
    restored = from_metadata(RestoreResult, out)
    emit(args, out, f"restored {restored.source_database} of backup {restored.backup_id} into {restored.target} "
                    f"in {restored.seconds} s")


# -- WAL archiving and point-in-time recovery (pg_ops/defs/wal.py, operations/wal.py, recover.py) ----
def pitr_drill_command(args, spec):
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.defs.wal import pitr_drill_run_config, pitr_key
    from pg_ops.operations.recover import PitrDrillReport, check_recovery, parse_target_time

    ctx = ClusterContext.for_spec(spec)
    ctx.platform.check_point_in_time("the point-in-time drill")  # before a run exists
    target = args.point_in_time or None
    if target:  # refused before a run exists, naming the window or the gap
        check_recovery(ctx, parse_target_time(target), ctx.store_from(args.source))
    result = run_job(args, "pitr_drill", spec, pitr_drill_run_config(spec.name, target, args.source),
                     asset_selection=[pitr_key(spec.name)])
    recorded = result.materialization(pitr_key(spec.name).path)
    drilled = from_metadata(PitrDrillReport, recorded)
    emit(args, {**recorded, "run_id": result.run_id},
         f"point-in-time drill of {spec.name} to {drilled.target_time}: {drilled.result.upper()} "
         f"(base backup {drilled.base_backup}; restore {drilled.restore_seconds:.1f} s, replay "
         f"{drilled.replay_seconds:.1f} s; {drilled.heartbeat_rows_before} heartbeat rows before the "
         f"target, {drilled.heartbeat_rows_after} after)")


def _recover_arguments(p) -> None:
    p.add_argument("--to", required=True, help="target time, ISO 8601 (UTC when no offset is given)")
    p.add_argument("--as", dest="as_name", required=True, help="name of the new cluster")


@command("recover", "recover the cluster to a point in time as a NEW cluster", _recover_arguments)
def cmd_recover(args, spec):
    from pg_ops.defs.metadata import from_metadata
    from pg_ops.defs.wal import recover_run_config
    from pg_ops.operations.recover import (
        RecoverResult,
        new_cluster_spec,
        parse_target_time,
        validate_recover,
        write_recovered_spec,
    )

    target = parse_target_time(args.to)
    validate_recover(ClusterContext.for_spec(spec), target, args.as_name)  # before a run exists
    result = run_job(args, "recover_cluster", spec, recover_run_config(spec.name, target.isoformat(), args.as_name),
                     {"pg_ops/recovered_as": args.as_name})
    out = result.output_for_node("run_recover")
    recovered = from_metadata(RecoverResult, out)
    if result.where.startswith("http"):  # the deployment watches the new cluster from its next load
        from pg_ops.runs import Deployment

        Deployment(result.where).reload()
    text = (f"recovered {recovered.source} to {recovered.target} as cluster {recovered.cluster} "
            f"({', '.join(recovered.members)}; base backup {recovered.base_backup}, "
            f"replay {recovered.replay_seconds} s, "
            f"total {recovered.seconds} s)")
    if spec.platform == "kubernetes":  # pg_ops applied its objects; Git gets them from here
        from pg_ops.render import default_output_dir, manifests, write_manifests

        # The run wrote the spec where it ran (a run pod's in production): here too (no ports
        # to choose on Kubernetes, so it is the same spec).
        new_spec = new_cluster_spec(spec, args.as_name)
        out["spec_path"] = str(write_recovered_spec(new_spec, spec.name, target, recovered.base_backup))
        folder = default_output_dir(new_spec)
        write_manifests(new_spec, manifests(new_spec), folder)
        out["manifests"] = str(folder)
        text += f"; manifests rendered in {folder} (commit them and the spec to Git)"
    emit(args, out, f"{text}; spec written to {out['spec_path']}")


@command("base-backup", "take a base backup for point-in-time recovery now")
def cmd_base_backup(args, spec):
    from pg_ops.defs.wal import base_key

    result = run_job(args, "base_backup", spec, asset_selection=[base_key(spec.name)])
    meta = result.materialization(base_key(spec.name).path)
    window = {"oldest": meta.get("window_oldest"), "newest": meta.get("window_newest"), "gap": meta.get("window_gap")}
    oldest, newest = meta.get("window_oldest"), meta.get("window_newest")
    if oldest and newest and datetime.fromisoformat(str(newest)) >= datetime.fromisoformat(str(oldest)):
        opened = f"recovery window {oldest} .. {newest}"
    else:  # the backup is consistent at `oldest`; the window opens once WAL past it is archived
        opened = f"recovery window opens at {oldest} once the WAL after it is archived"
    emit(args, {**meta, "recovery_window": window, "run_id": result.run_id},
         f"base backup {meta['backup_id']} of {spec.name}: {human_bytes(round(meta['size_mb'] * 1e6))} in "
         f"{meta['duration_seconds']} s (run {result.run_id[:8]}); {opened}")


# -- major-version upgrades (pg_ops/defs/upgrades.py, operations/upgrade.py) ----------------------
def _upgrade_arguments(p) -> None:
    p.add_argument("--to", type=int, metavar="MAJOR", help="the PostgreSQL major to upgrade to (not with --rollback)")
    p.add_argument("--force", action="store_true", help="upgrade without a passed rehearsal within a week")
    p.add_argument("--rehearse", action="store_true",
                   help="restore a backup into a scratch server, pg_upgrade it there and verify it (the cluster "
                        "is only read)")
    p.add_argument("--backup", help="backup id to rehearse on (default: the newest complete backup)")
    p.add_argument("--as", dest="as_name", metavar="NEW_CLUSTER",
                   help="blue/green: a new cluster on the new major, filled by logical replication; the source "
                        "stays read-only for --read-only-days")
    p.add_argument("--read-only-days", type=float, default=7.0, help="blue/green: the rollback period (default 7)")
    p.add_argument("--rollback", action="store_true",
                   help="blue/green, within the rollback period: make the source writable again (with --as)")


@command("upgrade", "major-version upgrade in place (pg_upgrade --link), or its rehearsal on a copy (--rehearse)",
         _upgrade_arguments)
def cmd_upgrade(args, spec):
    from pg_ops.defs.failover import (
        BLUE_GREEN_JOB,
        BLUE_GREEN_OP,
        BLUE_GREEN_ROLLBACK_JOB,
        BLUE_GREEN_ROLLBACK_OP,
        UPGRADE_JOB,
        UPGRADE_OP,
        blue_green_rollback_run_config,
        blue_green_run_config,
        upgrade_run_config,
    )
    from pg_ops.defs.upgrades import rehearsal_key, rehearsal_run_config, rehearsal_run_kwargs
    from pg_ops.operations.upgrade import check_rehearsal, check_upgrade, rehearsal_text

    if args.rollback:
        if not args.as_name:
            raise PgOpsError("--rollback needs --as NEW_CLUSTER (the cluster the blue/green upgrade made)")
        result = run_job(args, BLUE_GREEN_ROLLBACK_JOB, spec, blue_green_rollback_run_config(args.as_name),
                         partition_key=spec.name)
        meta = result.output_for_node(BLUE_GREEN_ROLLBACK_OP)
        emit(args, meta, f"cluster {spec.name} is writable again ({', '.join(meta['databases_writable'])}); "
                         f"{args.as_name} keeps what it took since the cut")
        return
    if args.to is None:
        raise PgOpsError("upgrade needs --to MAJOR")
    if args.as_name:
        from pg_ops.operations.blue_green import check_blue_green

        check_blue_green(ClusterContext.for_spec(spec), args.to, args.as_name)  # one line before a run exists
        result = run_job(args, BLUE_GREEN_JOB, spec, blue_green_run_config(args.to, args.as_name, args.read_only_days),
                         partition_key=spec.name)
        meta = result.output_for_node(BLUE_GREEN_OP)
        if result.where.startswith("http"):  # the deployment watches the new cluster from its next load
            from pg_ops.runs import Deployment

            Deployment(result.where).reload()
        emit(args, meta, f"cluster {spec.name} upgraded blue/green to PostgreSQL {meta['to_major']} as "
                         f"{meta['new_cluster']}: downtime {meta['downtime_seconds']} s, {meta['tables_compared']} "
                         f"tables compared, {meta['sequences_set']} sequences set; {spec.name} stays read-only "
                         f"until {meta['source_read_only_until']} (`pg-ops upgrade --cluster {spec.name} --rollback "
                         f"--as {meta['new_cluster']}` makes it writable again); spec written to {meta['spec_path']}"
                         + (f"; the applications on its pooler ({meta['pooler_moved']}) reach {meta['new_cluster']} now"
                            if meta.get("pooler_moved") else ""))
        return
    if not args.rehearse:
        check_upgrade(ClusterContext.for_spec(spec), args.to, args.force)  # one line before a run exists
        result = run_job(args, UPGRADE_JOB, spec, upgrade_run_config(args.to, args.force), partition_key=spec.name)
        meta = result.output_for_node(UPGRADE_OP)
        emit(args, meta, f"cluster {spec.name} upgraded from PostgreSQL {meta['from_major']} to {meta['to_major']} "
                         f"(primary {meta['primary']}): downtime {meta['downtime_seconds']} s, {meta['seconds']} s "
                         f"in all; backup {meta['backup_id']} before, base backup {meta['base_backup'] or 'none'} "
                         f"after (run {result.run_id[:8]})")
        return
    check_rehearsal(ClusterContext.for_spec(spec), args.to)  # the pair and the binaries, before a run exists
    require_backup(spec, args.backup, "primary")
    result = run_job(args, "upgrade_rehearsal", spec, rehearsal_run_config(spec.name, args.to, args.backup),
                     **rehearsal_run_kwargs(spec.name))
    report = {**result.materialization(rehearsal_key(spec.name).path)["report"], "run_id": result.run_id}
    emit(args, report, rehearsal_text(report))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "render" and "PG_OPS_CLUSTERS" not in os.environ:
            os.environ["PG_OPS_CLUSTERS"] = "deploy/clusters"  # offline: every spec, not just local
        spec = select_spec(load_specs(), args.cluster)
        COMMANDS[args.command].handler(args, spec)
    except PgOpsError as exc:
        print(f"pg-ops {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pg-ops {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pg-ops status | head`: the reader went away; nothing is wrong with the command. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
