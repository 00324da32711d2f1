"""When a member's data filesystem will be full, from the storage observations pg_ops already
keeps (`storage_ratio` on `health/<c>/<m>`, written by the health sensor), so the alert comes
while there is time to grow the volume, not when the `storage` alert's threshold is crossed.

A least-squares line through the last WINDOW_S of observations; no forecast from fewer than
MIN_POINTS points, a span shorter than MIN_SPAN_S, or a filesystem that is not filling. The
alert `storage_filling` (warning) fires when the threshold (`monitoring.storage_alert_ratio`)
is forecast within `monitoring.storage_forecast_days` and not reached yet (reached: the
`storage` alert says so); it resolves when the forecast moves out or the threshold is reached."""

from __future__ import annotations

from dataclasses import dataclass

from pg_ops.operations.alert_model import Alert

WINDOW_S = 24 * 3600.0
MIN_POINTS = 6
MIN_SPAN_S = 3600.0
DAY_S = 86400.0
KIND = "storage_filling"


@dataclass(frozen=True)
class Forecast:
    ratio: float                    # the newest observation
    growth_per_day: float           # of the ratio (0.05: five points of the filesystem a day)
    days_to_threshold: float | None  # None: not filling, or past it already
    days_to_full: float | None
    points: int
    span_s: float


def forecast(points: list[tuple[float, float]], threshold: float, min_span_s: float = MIN_SPAN_S) -> Forecast | None:
    """`points`: (unix time, used ratio). None when they say too little to forecast from."""
    points = sorted(points)
    if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < min_span_s:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    slope = sum((t - mean_t) * (r - mean_r) for t, r in points) / var  # ratio per second
    newest_t, newest = points[-1]
    if slope <= 0:
        return Forecast(newest, round(slope * DAY_S, 6), None, None, n, points[-1][0] - points[0][0])
    fitted = mean_r + slope * (newest_t - mean_t)  # where the line is now: one noisy point moves it little

    def days_to(level: float) -> float | None:
        return round(max(0.0, (level - fitted) / slope / DAY_S), 3) if newest < level else None

    return Forecast(newest, round(slope * DAY_S, 6), days_to(threshold), days_to(1.0), n,
                    points[-1][0] - points[0][0])


def filling_alert(cluster: str, member: str, f: Forecast | None, threshold: float, within_days: float) -> Alert | None:
    if f is None or f.days_to_threshold is None or f.days_to_threshold > within_days:
        return None
    full = f" and full in {f.days_to_full:.1f} days" if f.days_to_full is not None else ""
    return Alert(cluster=cluster, severity="warning", kind=KIND,
                 summary=f"{member}: data filesystem {f.ratio:.0%} full and growing {f.growth_per_day * 100:.1f} "
                         f"points a day: {threshold:.0%} in {f.days_to_threshold:.1f} days{full}; grow the volume "
                         f"(postgres storage) or free space before then",
                 details={"member": member, "ratio": round(f.ratio, 4), "growth_per_day": f.growth_per_day,
                          "days_to_threshold": f.days_to_threshold, "days_to_full": f.days_to_full})
