"""The days-to-full forecast from the storage observations (pg_ops/operations/storage_forecast.py)
and its sensor, on a real Dagster instance's observations (pg_ops/defs/storage.py)."""

from __future__ import annotations

import random
import time

import dagster as dg
import pytest

from pg_ops.defs.health import member_asset_key
from pg_ops.defs.storage import evaluate
from pg_ops.operations.storage_forecast import DAY_S, KIND, filling_alert, forecast
from pg_ops.spec import ClusterSpec

HOUR = 3600.0


def growing(start: float, per_day: float, hours: float = 24, every_min: float = 10, noise: float = 0.0):
    rng = random.Random(7)
    n = int(hours * 60 / every_min)
    return [(i * every_min * 60, start + per_day * i * every_min * 60 / DAY_S + rng.uniform(-noise, noise))
            for i in range(n + 1)]


def test_a_filesystem_growing_five_points_a_day_reaches_eighty_percent_in_three_days():
    f = forecast(growing(0.60, 0.05, noise=0.003), threshold=0.8)
    assert f is not None and f.growth_per_day == pytest.approx(0.05, rel=0.05)
    assert f.days_to_threshold == pytest.approx(3.0, abs=0.15)  # 0.65 now, 0.15 to go at 0.05 a day
    assert f.days_to_full == pytest.approx(7.0, abs=0.3)
    alert = filling_alert("c", "c-1", f, 0.8, within_days=3.5)
    assert alert is not None and alert.kind == KIND and alert.details["member"] == "c-1"
    assert "80% in 3.0 days" in alert.summary
    assert filling_alert("c", "c-1", f, 0.8, within_days=2.0) is None  # not within the horizon yet


@pytest.mark.parametrize("points,why", [
    (growing(0.5, 0.0), "flat"),
    (growing(0.7, -0.02), "shrinking"),
    (growing(0.5, 0.05)[:5], "too few points"),
    (growing(0.5, 0.05, hours=0.5, every_min=1), "less than an hour of observations"),
])
def test_no_alert_when_the_observations_do_not_say_it_fills(points, why):
    assert filling_alert("c", "c-1", forecast(points, 0.8), 0.8, within_days=3) is None, why


def test_past_the_threshold_the_storage_alert_speaks_not_the_forecast():
    f = forecast(growing(0.82, 0.05), threshold=0.8)
    assert f is not None and f.days_to_threshold is None and f.days_to_full is not None
    assert filling_alert("c", "c-1", f, 0.8, within_days=3) is None


def test_the_sensor_reads_the_members_observations_alerts_once_and_resolves():
    spec = ClusterSpec(name="fc", postgres={"members": 2})
    key = member_asset_key("fc", "fc-0")
    with dg.DagsterInstance.ephemeral() as instance:
        for i in range(8):  # filling fast: two points of the disk in well under a second
            instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, metadata={
                "storage_ratio": 0.70 + i * 0.0025, "role": "primary"}))
            time.sleep(0.05)
        events, sent, state = evaluate(instance, [spec], {}, time.time(), min_span_s=0.1)
        [alert] = sent
        assert alert.kind == KIND and alert.details["member"] == "fc-0" and not alert.resolved
        [observation] = events  # fc-1 has no observations: no forecast
        assert observation.asset_key == key and observation.metadata["storage_days_to_alert"].value < 1
        events, sent, state = evaluate(instance, [spec], state, time.time(), min_span_s=0.1)
        assert sent == []  # fired once
        for _ in range(8):  # the volume was grown: the ratio drops and stays flat
            instance.report_runless_asset_event(dg.AssetObservation(asset_key=key, metadata={"storage_ratio": 0.35}))
            time.sleep(0.02)
        events, sent, state = evaluate(instance, [spec], state, time.time(), min_span_s=0.1)
        [resolved] = sent
        assert resolved.kind == KIND and resolved.resolved and state == {}
