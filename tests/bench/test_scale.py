"""The scaling benchmark's arithmetic (jobs/bench/scale.py)."""

import pytest

from jobs.bench.scale import driver_peaks, linearity


def test_linearity_separates_fixed_start_up_from_the_cost_per_user():
    worlds = [{"world": {"users": u}, "steady_day": {"per_user_steps_seconds": 30 + 0.5e-3 * u + (5 if u == 10**6 else 0)}}
              for u in (10_000, 100_000, 1_000_000)]
    fit = linearity(worlds)
    assert fit["marginal"][0]["ms_per_user"] == pytest.approx(0.5)
    assert fit["marginal"][1]["relative_to_first"] == pytest.approx((0.5 + 5e3 / 9e5) / 0.5)
    assert 25 < fit["fit_fixed_seconds"] < 35


def test_driver_peaks_compare_each_world_with_the_one_ten_times_smaller():
    def world(users, features_mb):
        steps = {"features": {"peak_rss_driver_mb": features_mb}, "embed": {"peak_rss_driver_mb": 800.0}}
        return {"world": {"users": users}, "days": [{"steps": {}}, {"steps": steps}]}

    peaks = driver_peaks([world(10_000, 500.0), world(100_000, 600.0), world(1_000_000, 1200.0)])
    by_pair = {(p["step"], p["users"]): p["ratio"] for p in peaks}
    assert by_pair == {("features", 100_000): pytest.approx(1.2), ("embed", 100_000): 1.0,
                       ("features", 1_000_000): pytest.approx(2.0), ("embed", 1_000_000): 1.0}
