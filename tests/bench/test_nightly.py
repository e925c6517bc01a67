"""`factory bench nightly` on a small generated world: the train cadence, the warm start, the figures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jobs.bench import nightly
from jobs.config import TrainConfig
from jobs.steps.train import passes_gate

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL = nightly.NightlySettings(users=400, items=700, events_per_user=10.0, days=3, max_len=20)
TINY_TRAIN = TrainConfig(d_model=16, epochs=2, minutes=0.0, facet_buckets=256)


def test_the_week_trains_when_due_warm_starts_and_judges_every_day_after_the_first(tmp_path):
    out = tmp_path / "nightly_quality.json"
    result = nightly.run_benchmark(out, "test", SMALL, TINY_TRAIN, progress=lambda line: None)
    days = result["days"]
    assert [d["trained"] for d in days] == [True, False, True]  # retrain_every_days = 2
    assert not days[0]["warm_start"] and days[2]["warm_start"]
    assert days[1]["champion_trained_ds"] == days[0]["ds"]
    for day in days:
        assert 0 <= day["encoder_hr10"] <= 1 and 0 < day["popularity_hr10"] <= 1 and day["users_evaluated"] > 0
        assert day["hr10_ratio"] == pytest.approx(day["encoder_hr10"] / day["popularity_hr10"])
    rows = result["summary"]
    assert [r["figure"] for r in rows[:3]] == [f"nightly next-day HR@10 encoder / popularity, {d['ds']}" for d in days]
    assert rows[0]["met"] is None and rows[1]["met"] == (days[1]["hr10_ratio"] >= nightly.RATIO_BAR)
    assert rows[-1]["figure"] == "nightly training budget, longest day"
    assert json.loads(out.read_text())["summary"] == rows


def test_with_time_buckets_the_nightly_model_trains_and_embeds_on_the_simulated_events_times():
    import dataclasses

    import numpy as np

    from jobs.bench.retrain_world import day_users, simulate

    world = simulate(nightly.generator_config(dataclasses.replace(SMALL, days=1)))
    timed = dataclasses.replace(TINY_TRAIN, epochs=1, time_buckets=24)
    model, facts = nightly.train_day(world, 0, None, timed, SMALL.max_len, progress=lambda line: None)
    assert model.cfg.n_time_buckets == 24 and facts["trained"]
    assert 0 <= nightly.evaluate_day(world, 0, model, SMALL.max_len)["encoder_hr10"] <= 1
    who, before = day_users(world, 0, SMALL.max_len, model)
    world.ts[world.users == who[0]] //= 2  # one user's events closer together (as far as time goes)
    _, after = day_users(world, 0, SMALL.max_len, model)
    assert not np.allclose(before[0], after[0]) and np.array_equal(before[1:], after[1:])


def test_the_gate_allows_a_small_regression_and_refuses_a_larger_one():
    assert passes_gate(0.30, 0.31, max_regression=0.02)
    assert not passes_gate(0.28, 0.31, max_regression=0.02)


def test_the_command_refuses_an_empty_week_with_one_line():
    from jobs.cli import app

    done = CliRunner().invoke(app, ["bench", "nightly", "--days", "0", "--no-mlflow"])
    assert done.exit_code == 1 and "error: --days" in done.output and "Traceback" not in done.output
