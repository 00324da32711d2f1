"""Password rotation: the `rotate_password` job (one partition per cluster, the topology lock
inside), launched by `pg-ops rotate-password ROLE`, and a schedule per role whose spec sets
`rotation_schedule`. The run config names the role, never a password."""

from typing import Any

import dagster as dg

from pg_ops.defs.partitions import (
    QUICK_TOPOLOGY_SECONDS,
    cluster_partitions,
    topology_config,
    topology_job_tags,
    topology_run_tags,
)
from pg_ops.defs.resources import PgOpsResource
from pg_ops.operations import catalog
from pg_ops.spec import ClusterSpec

JOB_NAME = "rotate_password"
OP_NAME = "run_rotate_password"


class RotatePasswordConfig(dg.Config):
    role: str
    terminate_old: bool = False  # end the sessions that logged in with the old password


def run_config(role: str, terminate_old: bool = False) -> dg.RunConfig:
    return dg.RunConfig(ops={OP_NAME: RotatePasswordConfig(role=role, terminate_old=terminate_old)})


def schedule_name(cluster: str, role: str) -> str:
    return f"rotate_password_{cluster.replace('-', '_')}_{role}"


def build(specs: list[ClusterSpec]) -> dg.Definitions:
    partitions = cluster_partitions(specs)

    @dg.op(name=OP_NAME, description="A new password for a role: stored, set as a SCRAM verifier, delivered, a "
                                     "login with it verified, the old sessions listed (ended with terminate_old).")
    def run_rotate_password(context: dg.OpExecutionContext, config: RotatePasswordConfig,
                            pg_ops: PgOpsResource) -> dict:
        ctx = pg_ops.cluster(context.partition_key, context.log)
        metadata = catalog.rotate_password(ctx, config.role, terminate_old=config.terminate_old)
        context.add_output_metadata(metadata)
        return metadata

    common: dict[str, Any] = {"partitions_def": partitions, "config": topology_config(partitions),
                              "executor_def": dg.in_process_executor,
                              "tags": topology_job_tags(QUICK_TOPOLOGY_SECONDS)}

    @dg.job(name=JOB_NAME, **common, description="Rotate one role's password (pg-ops rotate-password).")
    def rotate_password_job():
        run_rotate_password()

    schedules = []
    for spec in specs:
        for role in spec.roles:
            if not (role.rotation_schedule and role.has_password):
                continue

            @dg.schedule(name=schedule_name(spec.name, role.name), cron_schedule=role.rotation_schedule,
                         job=rotate_password_job, execution_timezone="UTC",
                         default_status=dg.DefaultScheduleStatus.RUNNING,
                         description=f"Rotate the password of {role.name} on {spec.name} "
                                     f"({role.rotation_schedule} UTC).")
            def scheduled(context: dg.ScheduleEvaluationContext, cluster: str = spec.name, name: str = role.name):
                stamp = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
                return dg.RunRequest(run_key=f"{cluster}-{name}-{stamp}", partition_key=cluster,
                                     run_config=run_config(name), tags=topology_run_tags(cluster))

            schedules.append(scheduled)
    return dg.Definitions(jobs=[rotate_password_job], schedules=schedules)
