"""Cluster status as one dict: what `pg-ops status --json` prints (DESIGN.md, Interfaces)."""

from __future__ import annotations

from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.postgres.topology import MemberProbe


def member_role(name: str, probe: MemberProbe, fenced: tuple[str, ...]) -> str:
    if not probe.reachable:
        return "fenced" if name in fenced else "down"
    return "primary" if probe.writable else "replica"


def replication_row(primary: MemberProbe | None, name: str) -> dict | None:
    if primary is None or not primary.writable:
        return None
    return next((r for r in primary.replication if r["application_name"] == name), None)


def cluster_status(ctx: ClusterContext, probes: dict[str, MemberProbe] | None = None) -> dict:
    state = ctx.platform.state_store().read()
    if state is None:
        raise PgOpsError(f"cluster {ctx.name} is not deployed (no desired-state record); run `pg-ops deploy`")
    probes = probes or ctx.probe()
    writable = [n for n, p in probes.items() if p.writable]
    primary_probe = probes.get(state.primary) if state.primary in writable else (
        probes[writable[0]] if len(writable) == 1 else None)
    members = []
    for name, probe in probes.items():
        row = replication_row(primary_probe, name)
        role = member_role(name, probe, state.fenced)
        streaming = probe.streaming
        lag_bytes = row["lag_bytes"] if row else None
        lag_seconds = row["replay_lag_seconds"] if row else None
        if role == "replica" and row is None:
            lag_bytes = None  # not connected to the primary: unknown, never "0"
        elif role == "replica" and lag_seconds is None:
            lag_seconds = 0.0  # connected and nothing to replay (replay_lag is NULL when idle)
        members.append({
            "name": name,
            "role": role,
            "designated_primary": name == state.primary,
            "host": probe.host,
            "port": probe.port,
            "timeline": probe.timeline,
            "lsn": probe.lsn,
            "replay_lsn": probe.replay_lsn,
            "lag_bytes": lag_bytes if role == "replica" else (0 if role == "primary" else None),
            "lag_seconds": lag_seconds if role == "replica" else (0.0 if role == "primary" else None),
            "sync_state": row["sync_state"] if row else None,
            "streaming": streaming if role == "replica" else None,
            "sender": probe.sender,
            "connections": probe.connections,
            "max_connections": probe.max_connections,
            "error": probe.error,
            # Health data (operations/health.py assesses it; `pg-ops status` shows it).
            "receiver_status": probe.receiver_status,
            "replication_state": row["state"] if row else None,
            **storage_fields(ctx, name),
        })
    out = {
        "cluster": ctx.name,
        "platform": ctx.platform.kind,
        "epoch": state.epoch,
        "designated_primary": state.primary,
        "system_identifier": state.system_identifier,
        "replication": ctx.spec.postgres.replication,
        "primary_dsn": ctx.platform.primary_dsn("postgres", "postgres"),
        "writable_members": writable,
        "fenced": list(state.fenced),
        "lock": state.lock.model_dump() if state.lock and not state.lock.expired() else None,
        "members": members,
    }
    passfile = ctx.platform.passfile()
    if passfile is not None:
        out["passfile"] = str(passfile)
    from pg_ops.operations.health import assess  # health builds on this module

    out["alerts"] = [a.model_dump(exclude={"fired_at", "resolved_at"}) for a in assess(ctx.spec, out).alerts]
    return out


def storage_fields(ctx: ClusterContext, name: str) -> dict:
    """Disk use of the filesystem holding the member's data, as the platform sees it (known
    even when the member is down)."""
    try:
        usage = ctx.platform.data_dir_usage(name)
    except Exception:  # noqa: BLE001 - storage is reported as unknown, never breaks status
        usage = None
    if not usage or not usage[1]:
        return {"data_dir_used_bytes": None, "data_dir_total_bytes": None, "storage_ratio": None}
    used, total = usage
    return {"data_dir_used_bytes": used, "data_dir_total_bytes": total, "storage_ratio": round(used / total, 4)}
