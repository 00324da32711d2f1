"""The deployment checks are the cluster now: `cluster_health/<cluster>`'s checks, reported by the
deploy and kept current by the cluster's health sensor `cluster_health_<cluster>` (evaluated in
process here, its cursor carried from tick to tick, its asset events written to a real instance
as the daemon would). A primary lost and failed over leaves the old primary fenced and down:
`every_member_up` turns red and says it rejoins by itself, and stays red until the sensor has
started it again and it streams from the new primary (nobody runs `deploy`); then every check is
green again. A healthy cluster whose checks do not change is not reported again at every tick
(only when something changes, and hourly)."""

from __future__ import annotations

import dagster as dg

from pg_ops.definitions import build_defs
from pg_ops.defs.deployment import CHECK_MEMBERS_UP, CHECK_ONE_PRIMARY, HEALTH_CHECKS, health_key
from pg_ops.defs.health import sensor_name
from pg_ops.defs.resources import AlertsResource, PgOpsResource
from pg_ops_tests.support.helpers import kill_member, running_cluster, wait_for


class HealthSensor:
    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, cluster: str):
        self.name = sensor_name(cluster)
        self.sensor = defs.get_sensor_def(self.name)
        self.defs, self.instance, self.cursor = defs, instance, None
        self.resources = {"pg_ops": PgOpsResource(), "alerts": AlertsResource()}

    def tick(self) -> tuple[dict[str, dg.AssetCheckEvaluation], list[dg.RunRequest], list]:
        """One evaluation: (the cluster_health checks it reported by name, its run requests,
        its observations of cluster_health/<cluster>)."""
        result = self.sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                                     resources=self.resources, sensor_name=self.name))
        self.cursor = result.cursor
        events = list(result.asset_events or [])
        for event in events:
            self.instance.report_runless_asset_event(event)
        checks = {e.check_name: e for e in events if isinstance(e, dg.AssetCheckEvaluation)
                  and e.asset_key.path[0] == "cluster_health"}
        observed = [e for e in events if isinstance(e, dg.AssetObservation) and e.asset_key.path[0] == "cluster_health"]
        return checks, list(result.run_requests or []), observed

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(request.job_name or self.sensor.job_name)
        return job.execute_in_process(run_config=request.run_config, tags=request.tags,
                                      partition_key=request.partition_key, instance=self.instance,
                                      raise_on_error=False)


def test_a_member_down_after_a_failover_is_red_until_it_rejoins_by_itself(make_spec):
    spec = make_spec("ch", monitoring={"interval_seconds": 1})
    defs = build_defs([spec])
    with running_cluster(spec) as ctx, dg.instance_for_test() as instance:
        sensor = HealthSensor(defs, instance, spec.name)
        checks, requests, observed = sensor.tick()
        assert set(checks) == set(HEALTH_CHECKS) and all(c.passed for c in checks.values()), checks
        assert all(c.asset_key == health_key("ch") for c in checks.values())
        assert observed and observed[0].metadata["healthy"].value is True
        again, _, _ = sensor.tick()
        assert again == {}  # unchanged: not reported at every tick

        old = ctx.state().primary
        kill_member(ctx.platform, old)
        failover = wait_for(lambda: sensor.tick()[1], "the sensor's failover request", timeout=60, interval=0.5)
        assert sensor.launch(failover[0]).success
        new = ctx.state().primary
        assert new != old

        def down_reported():
            reported, _, seen = sensor.tick()
            up = reported.get(CHECK_MEMBERS_UP)
            return (up, seen) if up is not None and not up.passed and reported[CHECK_ONE_PRIMARY].passed else None

        up, seen = wait_for(down_reported, "every_member_up red with the new primary writable", timeout=60)
        assert f"{old} is fenced and does not answer" in up.description
        assert "rejoins by itself as a replica" in up.description
        assert up.metadata["down"].value == f"{old} (fenced)"
        assert seen[0].metadata["healthy"].value is False and new in seen[0].metadata["summary"].value

        def all_green():
            reported, _, _ = sensor.tick()
            return reported if reported and all(c.passed for c in reported.values()) else None

        green = wait_for(all_green, "every cluster_health check green, the old primary back by itself", timeout=90)
        assert set(green) == set(HEALTH_CHECKS)
        state = ctx.state()
        assert state.primary == new and state.fenced == ()  # back as a replica, streaming: unfenced
        assert ctx.platform.member_running(old)
