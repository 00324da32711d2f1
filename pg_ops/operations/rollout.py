"""Rollout: every member brought to the server configuration and binaries its spec renders, at
the least cost each change allows (docs/architecture/design.md, "Changes to a running cluster").

- PostgreSQL's own verdict first: the rendered postgresql.conf is checked by the cluster's
  server binaries (`postgres -C`) before anything is written, so a value it refuses is one
  line naming the parameter and its reason, and nothing is written, reloaded or restarted.
- Reload-only changes: the files are written, every member reloads, and each is verified
  (its load time moved, and `pg_file_settings` has no entry it refused or left unapplied).
- What needs a restart (`pg_settings.pending_restart` after the reload) and new binaries go
  through `rolling_restart`: replicas one at a time, a switchover, then the old primary, so no
  restart is a failover.
- The writes it cost are measured as applications see them (operations/write_probe.py): the run's
  metadata has the pauses per step and in all.
- What a member runs is read from the member itself, so `pg-ops status`, the asset check and
  the sensor see a change that is written but not applied, and one not written at all."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pg_ops.credentials import PG_OPS_DATABASE, SUPERUSER
from pg_ops.errors import PgOpsError
from pg_ops.operations.context import ClusterContext
from pg_ops.operations.failover import LOCK_TTL_S, rolling_restart
from pg_ops.operations.members import lease_kept
from pg_ops.operations.steps import StepLog
from pg_ops.operations.write_probe import WriteProbe
from pg_ops.poll import poll
from pg_ops.postgres import running_config
from pg_ops.postgres.config import stamp_of
from pg_ops.postgres.session import with_connection
from pg_ops.state import topology_lock

RELOAD_TIMEOUT_S = 10  # the postmaster re-reads its files within milliseconds of the signal
# Until every member reads the written file: at once locally; a kubelet refreshes a mounted
# ConfigMap at its periodic pod sync (about a minute, plus its cache's TTL).
FILES_TIMEOUT_S = 180
FRESH_BACKUP_HOURS = 26  # as the backup_is_fresh check: a nightly backup and two hours of slack


@dataclass(frozen=True)
class MemberConfig:
    """What one member runs against what its spec renders."""

    name: str
    pending_restart: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    binaries: str | None = None       # what runs (None: unknown, or the member is down)
    binaries_differ: bool = False
    file_current: bool = True         # its postgresql.conf is the rendered one
    error: str | None = None          # why it could not be read

    @property
    def pending(self) -> list[str]:
        """What keeps this member from running the rendered configuration, one phrase each."""
        why = []
        if not self.file_current:
            why.append("its configuration file is not the rendered one yet")
        if self.pending_restart:
            why.append(f"restart for {', '.join(self.pending_restart)}")
        if self.rejected:
            why.append(f"refused {'; '.join(self.rejected)}")
        if self.binaries_differ:
            why.append(f"restart for new binaries (runs {self.binaries})")
        if self.error:
            why.append(f"unknown: {self.error}")
        return why


@dataclass(frozen=True)
class ClusterConfig:
    """A cluster's configuration state, member by member."""

    members: dict[str, MemberConfig]

    @property
    def pending(self) -> dict[str, list[str]]:
        """Member -> what is pending on it (members with nothing pending left out)."""
        return {name: m.pending for name, m in self.members.items() if m.pending}

    def summary(self) -> str:
        pending = self.pending
        if not pending:
            return "every member runs the rendered configuration"
        return "; ".join(f"{name}: {', '.join(why)}" for name, why in pending.items())


@dataclass
class RolloutResult:
    cluster: str
    reloaded: list[str]
    restarted: list[str]
    primary: str
    epoch: int
    seconds: float
    shown: dict[str, dict[str, str]]  # member -> the spec's parameters as SHOW reports them
    steps: dict[str, float] = field(default_factory=dict)  # step name -> seconds (StepLog.timings)
    write_pauses: dict[str, float] = field(default_factory=dict)  # step name -> writes paused in it (WriteProbe)
    write_paused_s: float = 0.0  # writes through the primary endpoint paused this long in all

    def settings(self) -> dict[str, str]:
        """Member -> its parameters as one line ("work_mem=16MB, ...")."""
        return {name: ", ".join(f"{k}={v}" for k, v in values.items()) for name, values in self.shown.items()}


def _read_member(conn) -> tuple[running_config.AppliedConfig, str]:
    return running_config.read_applied(conn), running_config.config_file_text(conn)


def member_configs(ctx: ClusterContext) -> ClusterConfig:
    """Each member's applied configuration, configuration file and binaries (one connection
    each, as superuser)."""
    rendered, stamp = ctx.platform.rendered_binaries(), stamp_of(ctx.platform.server_config_text())
    password = ctx.admin_password()
    members = {}
    for name, endpoint in ctx.endpoints().items():
        try:
            applied, current = with_connection(endpoint, SUPERUSER, password, _read_member, timeout=5, name=name)
        except PgOpsError as exc:
            members[name] = MemberConfig(name, error=str(exc))
            continue
        running = ctx.platform.running_binaries(name)
        members[name] = MemberConfig(name, applied.pending_restart, applied.rejected, running,
                                     running is not None and running != rendered, stamp_of(current) == stamp)
    return ClusterConfig(members)


def check_rollout(ctx: ClusterContext) -> None:
    """Everything that refuses a rollout before it writes anything: the platform, PostgreSQL's
    verdict on the rendered configuration, and a member that cannot be read."""
    ctx.platform.check_rollout()
    objection = ctx.platform.server_config_error()
    if objection:
        raise PgOpsError(f"cluster {ctx.name}: PostgreSQL refuses the configuration the spec renders: {objection}; "
                         f"nothing was written, reloaded or restarted")
    down = {name: m.error for name, m in member_configs(ctx).members.items() if m.error}
    if down:
        raise PgOpsError(f"cluster {ctx.name}: cannot roll out while {', '.join(down)} cannot be read "
                         f"({next(iter(down.values()))}); `pg-ops deploy` brings it back")


def _files_current(ctx: ClusterContext) -> None:
    seen: list[str] = []

    def current() -> bool | None:
        seen[:] = [n for n, m in member_configs(ctx).members.items() if not m.file_current]
        return None if seen else True

    gitops = ctx.spec.platform == "kubernetes" and ctx.spec.kubernetes.gitops
    poll(current, timeout=FILES_TIMEOUT_S, interval=1.0, expired=lambda: PgOpsError(
        f"cluster {ctx.name}: {', '.join(seen)} still read(s) another configuration file after {FILES_TIMEOUT_S} s"
        + ("; sync the GitOps application (kubernetes.gitops: pg_ops does not apply the ConfigMap)" if gitops
           else "")))


def _reload(ctx: ClusterContext, name: str) -> None:
    endpoint, password = ctx.endpoints()[name], ctx.admin_password()
    before = with_connection(endpoint, SUPERUSER, password, running_config.reload, name=name)

    def reloaded() -> bool | None:  # a new session sees the postmaster's load time once it reloaded
        after = with_connection(endpoint, SUPERUSER, password, running_config.load_time, name=name)
        return True if after > before else None

    poll(reloaded, timeout=RELOAD_TIMEOUT_S, interval=0.05,
         expired=lambda: PgOpsError(f"member {name}: did not reload its configuration within {RELOAD_TIMEOUT_S} s"))


def rollout(ctx: ClusterContext) -> RolloutResult:
    """Write, reload, verify; restart (replicas first, then a switchover) only what needs it.
    PgOpsError, before anything is written, for a refused value or a member that cannot be read;
    PgOpsError after it when a member still does not run the rendered configuration."""
    check_rollout(ctx)
    steps = StepLog(ctx.log, "rollout", ctx)
    probe = WriteProbe(ctx.platform.primary_dsn(SUPERUSER, PG_OPS_DATABASE), ctx.admin_password())
    with probe:
        result = _rollout(ctx, steps)
    paused = probe.by_step(steps.spans)
    result.write_paused_s = round(sum(paused.values()), 3)
    result.write_pauses = paused
    ctx.log.info("rollout of %s: writes through the primary endpoint paused %.3f s in all (%s)", ctx.name,
                 result.write_paused_s, ", ".join(f"{k} {v} s" for k, v in paused.items()) or "no step")
    return result


def _rollout(ctx: ClusterContext, steps: StepLog) -> RolloutResult:
    with topology_lock(ctx.platform.state_store(), "rollout", ttl_seconds=LOCK_TTL_S) as lock, lease_kept(ctx):
        steps.guard = lock.check
        state = ctx.state()
        with steps.step("write configuration"):
            ctx.platform.prepare(state)
        with steps.step("every member reads the written file"):
            _files_current(ctx)
        for name in ctx.spec.member_names:
            with steps.step(f"reload {name}"):
                _reload(ctx, name)
        with steps.step("verify"):
            after_reload = member_configs(ctx)
    refused = {n: m.rejected for n, m in after_reload.members.items() if m.rejected}
    if refused:  # the check above makes this rare: a value valid alone but not on that server
        raise PgOpsError(f"cluster {ctx.name}: {', '.join(refused)} refused {'; '.join(next(iter(refused.values())))} "
                         f"after the reload (see the member's log); nothing was restarted")
    needs_restart = [n for n, m in after_reload.members.items() if m.pending_restart or m.binaries_differ]
    primary, epoch, restarted = state.primary, state.epoch, []
    if needs_restart:
        ctx.log.info("rollout of %s: %s need a restart (%s): rolling restart", ctx.name, ", ".join(needs_restart),
                     after_reload.summary())
        restart = rolling_restart(ctx, steps)
        primary, epoch, restarted = restart.primary, restart.epoch, restart.restarted
    final = member_configs(ctx)
    if final.pending:
        raise PgOpsError(f"cluster {ctx.name}: after the rollout, not every member runs the rendered "
                         f"configuration: {final.summary()}")
    names = sorted(ctx.spec.postgres.parameters)
    password = ctx.admin_password()
    shown = {name: with_connection(ep, SUPERUSER, password, lambda c: running_config.settings_shown(c, names),
                                   name=name) for name, ep in ctx.endpoints().items()}
    return RolloutResult(ctx.name, list(ctx.spec.member_names), restarted, primary, epoch,
                         round(steps.elapsed, 3), shown, steps.timings())


# -- when the sensor may start one ----------------------------------------------------------------
def window_open(spec, now: datetime) -> tuple[bool, datetime | None]:
    """(whether `now` is inside the spec's maintenance window, when the next one opens). No
    window: always open."""
    from croniter import croniter

    window = spec.maintenance.window
    if window is None:
        return True, None
    opened = croniter(window, now.astimezone(UTC)).get_prev(datetime)
    if now < opened + timedelta(hours=spec.maintenance.window_hours):
        return True, None
    return False, croniter(window, now.astimezone(UTC)).get_next(datetime)


def target_signature(ctx: ClusterContext) -> str:
    """What the members are being brought to (rendered configuration and binaries): the run key
    of the sensor's rollout, so one change is rolled out once, and a failed one not retried."""
    text = f"{ctx.platform.rendered_binaries()}\0{ctx.platform.server_config_text()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def why_wait(ctx: ClusterContext, configs: ClusterConfig, now: datetime) -> str | None:
    """Why an automatic rollout of a pending change must not start now, or None when it may:
    maintenance mode, a value PostgreSQL refuses (a person must fix the spec), a member that cannot be read or a
    replica that does not stream (a restart would leave no standby), no recent backup, outside
    the maintenance window."""
    from pg_ops.operations.due import not_due_yet
    from pg_ops.operations.retention import freshness

    record = ctx.state()
    if record.in_maintenance(now.timestamp()):
        from pg_ops.operations.maintenance import until_text

        return f"maintenance mode until {until_text(record.maintenance_until)}"
    objection = ctx.platform.server_config_error()
    if objection:
        return f"PostgreSQL refuses the configuration the spec renders: {objection}"
    unknown = [n for n, m in configs.members.items() if m.error]
    if unknown:
        return f"{', '.join(unknown)} cannot be read"
    if ctx.spec.platform == "kubernetes" and ctx.spec.kubernetes.gitops:
        behind = [n for n, m in configs.members.items() if not m.file_current]
        if behind:  # ArgoCD writes the ConfigMap, not pg_ops: the rollout starts once the members read it
            return f"{', '.join(behind)} read(s) another configuration file: waiting for the GitOps sync"
    primary = record.primary
    not_streaming = [n for n, p in ctx.probe().items() if n != primary and not p.streaming]
    if not_streaming:
        return f"{', '.join(not_streaming)} not streaming"
    newest, age_hours = freshness(ctx)
    if (age_hours is None or age_hours > FRESH_BACKUP_HOURS) and not_due_yet(ctx, "backup") is None:
        return (f"the newest good backup is {age_hours:.0f} h old" if age_hours is not None else "no good backup yet") \
            + f" (a rollout waits for one within {FRESH_BACKUP_HOURS} h)"
    open_now, next_open = window_open(ctx.spec, now)
    if not open_now:
        return f"outside the maintenance window (next opens {next_open:%Y-%m-%d %H:%M} UTC)"
    return None
