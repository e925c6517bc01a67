"""The scaling benchmark's arithmetic (jobs/bench/scale.py)."""

import pytest

from jobs.bench.scale import linearity


def test_linearity_separates_fixed_start_up_from_the_cost_per_user():
    worlds = [{"world": {"users": u}, "steady_day": {"per_user_steps_seconds": 30 + 0.5e-3 * u + (5 if u == 10**6 else 0)}}
              for u in (10_000, 100_000, 1_000_000)]
    fit = linearity(worlds)
    assert fit["marginal"][0]["ms_per_user"] == pytest.approx(0.5)
    assert fit["marginal"][1]["relative_to_first"] == pytest.approx((0.5 + 5e3 / 9e5) / 0.5)
    assert 25 < fit["fit_fixed_seconds"] < 35
