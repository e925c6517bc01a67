"""Step features: executors write user_sequences, and the daily increment equals the full recompute."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.lakehouse import delta
from jobs.lakehouse.spark import to_arrow
from jobs.lakehouse.tables import USER_SEQUENCES
from jobs.pipeline import run_day
from jobs.steps import features
from jobs.synthetic.generate import generate_drops, generated_days
from jobs.synthetic.worlds import TINY_WORLD

# Six tiny days through a three-day window: from day 4 on, a day leaves the window every day.
# full_rebuild_every_days=0: every day after the first is an increment.
WORLD = {**TINY_WORLD, "generator.days": "6", "features.window_days": "3", "features.max_seq_len": "6",
         "features.full_rebuild_every_days": "0"}


class Recorder:
    """A StepRun stand-in for calling the step's builders directly."""

    def read(self, spec, version) -> None:
        pass


def rows(frame) -> list[dict]:
    return sorted(to_arrow(frame, USER_SEQUENCES).to_pylist(), key=lambda r: r["user_id"])


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_store):
    """The lake after six days; per day: (mode the step ran in, the day's committed rows, the full recompute's rows)."""
    overrides = {**WORLD, **mlflow_store, "paths.state_dir": str(tmp_path_factory.mktemp("state"))}
    cfg = load_config(overrides=overrides)
    generate_drops(cfg.generator, Path(cfg.landing_uri))
    days = {}
    for ds in generated_days(cfg.generator):
        [*_, result] = run_day(ds, cfg, steps=["catalog", "ingest", "features"])
        full = rows(features.build_user_sequences(cfg, ds, Recorder()))
        days[ds] = (result.params["mode"], committed(cfg, ds), full)
    return overrides, days


def committed(cfg, ds: str) -> list[dict]:
    return sorted(delta.read(cfg, USER_SEQUENCES, where={"ds": ds}).to_pylist(), key=lambda r: r["user_id"])


def test_the_daily_increment_equals_the_full_recompute_over_sliding_windows(world):
    _, days = world
    assert [mode for mode, _, _ in days.values()] == ["full"] + ["incremental"] * 5
    for ds, (_, written, full) in days.items():
        assert len(written) > 50, ds
        assert written == full, ds
    # The window slid: users left the table as their old days left the window.
    users = [{r["user_id"] for r in written} for _, written, _ in days.values()]
    assert any(before - after for before, after in zip(users, users[1:]))


def test_a_full_rebuild_day_rereads_the_window_and_finds_no_drift_in_the_increment(world):
    overrides, days = world
    last = list(days)[-1]
    cfg = load_config(overrides={**overrides, "features.full_rebuild_every_days": "1"})
    assert features.full_rebuild_day(cfg, last)
    assert features.full_rebuild_day(load_config(overrides={**overrides, "features.incremental": "false"}), last)
    result = features.run(last, cfg)
    assert result.params["mode"] == "full" and result.metrics["incremental_drift_rows"] == 0
    assert committed(cfg, last) == days[last][1]


def test_no_step_code_collects_user_sequences_to_the_driver():
    source = Path(features.__file__).read_text()
    assert "to_arrow(build_user_sequences" not in source and ".toArrow()" not in source
