"""`pg-ops`: the same jobs from a terminal, recorded in the same Dagster instance.

Every command takes --cluster (default: the only/first cluster) and --json; a failure exits
non-zero with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.spec import ClusterSpec, load_specs, select_spec

COMMANDS: dict[str, Callable[[argparse.Namespace, ClusterSpec], object]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn
    return register


# -- running Dagster jobs ----------------------------------------------------------------------
def failure_reason(result) -> str:
    """The first line of the first step failure, without Dagster's wrapping."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None and "DagsterExecutionStepExecutionError" in (err.cls_name or ""):
                err = err.cause
            return err.message.strip().splitlines()[0]
    for event in result.all_events:
        if event.is_failure and event.message:
            return event.message.splitlines()[0]
    return "the run failed"


def run_job(job_name: str, cluster: str, run_config: dict | None = None, tags: dict | None = None,
            execute_kwargs: dict | None = None):
    """Execute a job of the code location in this process, on the persistent instance.
    `execute_kwargs` overrides execute_in_process arguments (a daily job's partition_key and
    asset_selection: see pg_ops/defs/backups.py)."""
    from dagster import DagsterInstance

    from pg_ops import settings

    settings.ensure_dagster_home()
    from pg_ops.definitions import build_defs

    # Built from the specs as they are now (the module-level `defs` froze them at import).
    job = build_defs(load_specs()).resolve_job_def(job_name)
    # Dagster's per-event console log goes to stderr only with --verbose.
    level = "DEBUG" if logging.getLogger().level <= logging.INFO else "WARNING"
    run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": level}}}}
    with DagsterInstance.get() as instance:
        kwargs = {"partition_key": cluster} if job.partitions_def is not None else {}
        kwargs.update(execute_kwargs or {})
        result = job.execute_in_process(instance=instance, run_config=run_config, tags=tags or {},
                                        raise_on_error=False, **kwargs)
    if not result.success:
        raise PgOpsError(f"{job_name} on {cluster} failed (run {result.run_id[:8]}): {failure_reason(result)}")
    return result


def topology_tags(cluster: str) -> dict:
    from pg_ops.defs.partitions import topology_run_tags

    return topology_run_tags(cluster)


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


# -- commands ----------------------------------------------------------------------------------
@command("status")
def cmd_status(args, spec):
    from pg_ops.operations.status import cluster_status

    ctx = ClusterContext.for_spec(spec)
    status = cluster_status(ctx)
    text = status_text(status)
    if spec.backups.wal.enabled:  # the recovery window (operations/wal.py)
        from pg_ops.operations.wal import recovery_window

        try:
            window = recovery_window(ctx)
            status["recovery_window"], text = window.as_dict(), text + "\n" + window.text()
        except PgOpsError as exc:
            status["recovery_window"], text = {"error": str(exc)}, text + f"\nrecovery window: unknown ({exc})"
    emit(args, status, text)


@command("deploy")
def cmd_deploy(args, spec):
    from pg_ops.operations.status import cluster_status

    result = run_job("deploy_cluster", spec.name, tags=topology_tags(spec.name))
    status = cluster_status(ClusterContext.for_spec(spec))
    status["run_id"] = result.run_id
    emit(args, status, f"deployed (run {result.run_id[:8]})\n" + status_text(status))


@command("teardown")
def cmd_teardown(args, spec):
    from pg_ops.operations.deploy import teardown

    teardown(ClusterContext.for_spec(spec))
    emit(args, {"cluster": spec.name, "torn_down": True}, f"cluster {spec.name} torn down")


def _change_text(meta: dict) -> str:
    head = f"{meta.get('operation')}: {meta.get('old_primary')} -> {meta.get('new_primary')}  epoch {meta.get('epoch')}"
    steps = [f"  {k.removeprefix('step: ')}: {v:.3f} s" for k, v in meta.items() if k.startswith("step: ")]
    return "\n".join([head, *steps, f"  total: {meta.get('seconds')} s"] + ([f"  {meta['notes']}"] if meta.get("notes") else []))


@command("failover")
def cmd_failover(args, spec):
    config = {"to": args.to, "force": args.force}
    result = run_job("failover", spec.name, {"ops": {"run_failover": {"config": config}}}, topology_tags(spec.name))
    meta = result.output_for_node("run_failover")
    emit(args, meta, _change_text(meta))


@command("switchover")
def cmd_switchover(args, spec):
    result = run_job("switchover", spec.name, {"ops": {"run_switchover": {"config": {"to": args.to}}}},
                     topology_tags(spec.name))
    meta = result.output_for_node("run_switchover")
    emit(args, meta, _change_text(meta))


@command("rebuild")
def cmd_rebuild(args, spec):
    config = {"member": args.member, "reclone": args.reclone}
    result = run_job("rebuild_member", spec.name, {"ops": {"run_rebuild": {"config": config}}}, topology_tags(spec.name))
    meta = result.output_for_node("run_rebuild")
    emit(args, meta, f"rebuilt {meta['member']} by {meta['method']} in {meta['seconds']} s")


@command("rolling-restart")
def cmd_rolling_restart(args, spec):
    result = run_job("rolling_restart", spec.name, tags=topology_tags(spec.name))
    meta = result.output_for_node("run_rolling_restart")
    emit(args, meta, f"restarted {meta['restarted']}; primary now {meta['primary']} (epoch {meta['epoch']}) "
                     f"in {meta['seconds']} s")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster", help="cluster name (default: the only/first cluster)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser = argparse.ArgumentParser(prog="pg-ops", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="members, roles, lag, primary DSN")
    sub.add_parser("deploy", parents=[common], help="deploy or repair the cluster (idempotent)")
    sub.add_parser("teardown", parents=[common], help="stop and delete a local cluster")
    p = sub.add_parser("failover", parents=[common], help="promote a replica after the primary died")
    p.add_argument("--to", help="member to promote (default: the replica with the highest received LSN)")
    p.add_argument("--force", action="store_true", help="even if the primary answers, or the candidate lags")
    p = sub.add_parser("switchover", parents=[common], help="planned, lossless change of primary")
    p.add_argument("--to", required=True, help="replica to promote")
    p = sub.add_parser("rebuild", parents=[common], help="rewind (or re-clone) a replica from the primary")
    p.add_argument("member")
    p.add_argument("--reclone", action="store_true", help="wipe and re-clone instead of rewinding")
    sub.add_parser("rolling-restart", parents=[common], help="restart every member, replicas first, then switch over")
    for extend in EXTENSIONS:
        extend(sub, common)
    return parser


# Later capabilities add their sub-commands here: fn(subparsers, common_parent).
EXTENSIONS: list[Callable] = []


# -- render (offline: writes the Git-owned manifests, never talks to a cluster) ---------------------
@command("render")
def cmd_render(args, spec):
    from pathlib import Path

    from pg_ops.render import default_output_dir, manifests, write_manifests

    out = Path(args.out) if args.out else default_output_dir(spec)
    written = write_manifests(spec, manifests(spec), out)
    emit(args, {"cluster": spec.name, "out": str(out), "files": [p.name for p in written]},
         f"rendered {len(written)} files for {spec.name} into {out}")


def _render_parser(sub, common) -> None:
    p = sub.add_parser("render", parents=[common], help="write a kubernetes cluster's Git-owned manifests")
    p.add_argument("--out", help="output folder (default: deploy/kubernetes/<cluster>/)")


EXTENSIONS.append(_render_parser)


# -- backups (pg_ops/defs/backups.py, operations/backup.py, operations/retention.py) -----------------
@command("backup")
def cmd_backup(args, spec):
    from pg_ops.defs.backups import backup_run_kwargs
    from pg_ops.operations.retention import backups_report

    result = run_job("backup_cluster", spec.name, tags={"pg_ops/cluster": spec.name},
                     execute_kwargs=backup_run_kwargs(spec.name))
    newest = next((r for r in backups_report(ClusterContext.for_spec(spec)) if r["status"] != "incomplete"), {})
    emit(args, {**newest, "run_id": result.run_id},
         f"backup {newest.get('id')} of {spec.name}: {newest.get('size_mb')} MB in {newest.get('duration')} s "
         f"from {newest.get('source')} (run {result.run_id[:8]})\n"
         f"  databases: {', '.join(newest.get('databases') or []) or 'none'}; "
         f"excluded: {', '.join(newest.get('excluded') or []) or 'none'}")


@command("backups")
def cmd_backups(args, spec):
    from pg_ops.operations.retention import backups_report

    rows = backups_report(ClusterContext.for_spec(spec))
    shown = [{**r, "excluded": ", ".join(r.get("excluded") or []) or "-"} for r in rows]
    emit(args, rows, table(shown, ["id", "started", "size_mb", "duration", "status", "excluded", "expires",
                                   "retention"])
         if rows else f"no backups of {spec.name} yet")


def _backup_parsers(sub, common) -> None:
    sub.add_parser("backup", parents=[common], help="back up the cluster now (backup_cluster job), then prune")
    sub.add_parser("backups", parents=[common], help="list backups: id, started, size, duration, status, expires")


EXTENSIONS.append(_backup_parsers)


# -- restore drills (pg_ops/defs/drills.py, operations/drill.py) -----------------------------------
@command("restore-drill")
def cmd_restore_drill(args, spec):
    from pg_ops.defs.drills import drill_key, drill_run_config, drill_run_kwargs
    from pg_ops.operations.drill import drill_report_text, read_drill

    if args.point_in_time is not None:
        return pitr_drill_command(args, spec)

    result = run_job("restore_drill", spec.name, drill_run_config(spec.name, args.backup),
                     {"pg_ops/cluster": spec.name}, execute_kwargs=drill_run_kwargs(spec.name))
    (materialization,) = [m for m in result.get_asset_materialization_events()
                          if m.asset_key == drill_key(spec.name)]
    backup_id = materialization.materialization.metadata["backup_id"].value
    report = {**read_drill(ClusterContext.for_spec(spec), backup_id), "run_id": result.run_id}
    emit(args, report, drill_report_text(report))


def _drill_parsers(sub, common) -> None:
    p = sub.add_parser("restore-drill", parents=[common], help="restore a backup into a throw-away target and verify it")
    p.add_argument("--backup", help="backup id (default: the newest complete backup)")
    p.add_argument("--point-in-time", nargs="?", const="", metavar="TIME",
                   help="drill point-in-time recovery instead (base backup + WAL), to TIME (ISO 8601) or, "
                        "without TIME, to a moment the drill marks itself")


EXTENSIONS.append(_drill_parsers)


@command("restore")
def cmd_restore(args, spec):
    from pg_ops.defs.drills import restore_run_config

    config = restore_run_config(spec.name, args.backup, args.target, args.confirm, args.database, args.overwrite,
                                args.keep_owners)
    result = run_job("restore_backup", spec.name, config, {"pg_ops/cluster": spec.name})
    out = result.output_for_node("run_restore")
    emit(args, out, f"restored {out['source_database']} of backup {out['backup_id']} into {out['target']} "
                    f"in {out['seconds']} s")


def _restore_parser(sub, common) -> None:
    p = sub.add_parser("restore", parents=[common], help="restore a backup into a named target database")
    p.add_argument("--backup", required=True, help="backup id (pg-ops backups)")
    p.add_argument("--target", required=True, help="libpq DSN of the target database, WITHOUT a password "
                                                   "(PGPASSFILE / PGPASSWORD supply it)")
    p.add_argument("--confirm", help="the cluster's name, to confirm")
    p.add_argument("--database", help="which database of the backup (default: its only one)")
    p.add_argument("--overwrite", action="store_true", help="drop and recreate a non-empty target database")
    p.add_argument("--keep-owners", action="store_true", help="keep object owners (the roles must exist)")


EXTENSIONS.append(_restore_parser)


# -- WAL archiving and point-in-time recovery (pg_ops/defs/wal.py, operations/wal.py, recover.py) ----
def pitr_drill_command(args, spec):
    from pg_ops.defs.wal import pitr_drill_run_config, pitr_key
    from pg_ops.operations.recover import check_recovery, parse_target_time
    from pg_ops.stores import wal_archive as wa

    ctx = ClusterContext.for_spec(spec)
    target = args.point_in_time or None
    if target:  # refused before a run exists, naming the window or the gap
        check_recovery(ctx, parse_target_time(target))
    result = run_job("pitr_drill", spec.name, pitr_drill_run_config(spec.name, target), {"pg_ops/cluster": spec.name},
                     execute_kwargs={"asset_selection": [pitr_key(spec.name)]})
    from pg_ops.operations.wal import open_store

    report = {**wa.list_drills(open_store(ctx), spec.name)[-1], "run_id": result.run_id}
    emit(args, report, f"point-in-time drill of {spec.name} to {report['target_time']}: {report['result'].upper()} "
                       f"(base backup {report['base_backup']}; restore {report['restore_seconds']:.1f} s, replay "
                       f"{report['replay_seconds']:.1f} s; {report['heartbeat_rows_before']} heartbeat rows before the "
                       f"target, {report['heartbeat_rows_after']} after)")


@command("recover")
def cmd_recover(args, spec):
    from pg_ops.defs.wal import recover_run_config
    from pg_ops.operations.recover import parse_target_time, validate_recover

    target = parse_target_time(args.to)
    validate_recover(ClusterContext.for_spec(spec), target, args.as_name)  # before a run exists
    result = run_job("recover_cluster", spec.name, recover_run_config(spec.name, target.isoformat(), args.as_name),
                     {"pg_ops/cluster": args.as_name})
    out = result.output_for_node("run_recover")
    emit(args, out, f"recovered {out['source']} to {out['target']} as cluster {out['cluster']} "
                    f"({', '.join(out['members'])}; base backup {out['base_backup']}, replay {out['replay_seconds']} s, "
                    f"total {out['seconds']} s); spec written to {out['spec_path']}")


@command("base-backup")
def cmd_base_backup(args, spec):
    from pg_ops.defs.wal import base_key
    from pg_ops.operations.wal import recovery_window

    result = run_job("base_backup", spec.name, tags={"pg_ops/cluster": spec.name},
                     execute_kwargs={"asset_selection": [base_key(spec.name)]})
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == base_key(spec.name)]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    window = recovery_window(ClusterContext.for_spec(spec))
    emit(args, {**meta, "recovery_window": window.as_dict(), "run_id": result.run_id},
         f"base backup {meta['backup_id']} of {spec.name}: {meta['size_mb']} MB in {meta['duration_seconds']} s "
         f"(run {result.run_id[:8]})\n{window.text()}")


def _wal_parsers(sub, common) -> None:
    p = sub.add_parser("recover", parents=[common], help="recover the cluster to a point in time as a NEW cluster")
    p.add_argument("--to", required=True, help="target time, ISO 8601 (UTC when no offset is given)")
    p.add_argument("--as", dest="as_name", required=True, help="name of the new cluster")
    sub.add_parser("base-backup", parents=[common], help="take a base backup for point-in-time recovery now")


EXTENSIONS.append(_wal_parsers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "render" and "PG_OPS_CLUSTERS" not in os.environ:
            os.environ["PG_OPS_CLUSTERS"] = "deploy/clusters"  # offline: every spec, not just local
        spec = select_spec(load_specs(), args.cluster)
        COMMANDS[args.command](args, spec)
    except PgOpsError as exc:
        print(f"pg-ops {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pg-ops {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
