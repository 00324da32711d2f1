"""Maintenance mode: for a planned job (a K3s upgrade, disk work) a cluster's automatic actions
hold: no automatic failover (operations/ha/decide.py alerts with the command instead, as in
manual mode) and no automatic rollout (operations/rollout.py `why_wait`). Every alert goes on,
people's commands still run, and it ends by itself at its time: a forgotten `off` cannot leave
a cluster without automatic failover. Kept in the desired-state record, so the health sensor
reads it in the same read as the rest of its tick, on both platforms."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.state import DesiredState, update_state

MAX_SECONDS = 7 * 24 * 3600  # a week: longer is a change of failover.mode in the spec, not maintenance
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """"90m", "2h", "1d", "45s" (or a sum such as "1h30m") as seconds; PgOpsError otherwise."""
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise PgOpsError(f"maintenance duration {text!r}: write it as 90m, 2h, 1d or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 < seconds <= MAX_SECONDS:
        raise PgOpsError(f"maintenance duration {text!r}: at most 7 days (longer: failover.mode manual in the spec)")
    return seconds


def one_line(reason: str) -> str:
    """The record holds one line per key: a reason is kept to one line of 200 characters."""
    return " ".join(reason.split())[:200]


def set_maintenance(ctx: ClusterContext, seconds: float | None, reason: str = "") -> DesiredState:
    """Turn maintenance mode on for `seconds` from now (None: off). Returns the record."""
    ctx.state()  # a cluster that is not deployed: its one-line error
    until = time.time() + seconds if seconds else 0.0
    text = one_line(reason) if seconds else ""
    state = update_state(ctx.platform.state_store(), lambda s: s.model_copy(
        update={"maintenance_until": until, "maintenance_reason": text}))
    if seconds:
        ctx.log.warning("cluster %s in maintenance mode until %s%s: no automatic failover or rollout", ctx.name,
                        until_text(until), f" ({text})" if text else "")
    else:
        ctx.log.info("cluster %s: maintenance mode off; automatic failover and rollouts resume", ctx.name)
    return state


def until_text(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
