"""The named worlds (jobs/synthetic/worlds.py): a scale world generates what it states."""

import dataclasses

import pytest

from jobs.config import load_config
from jobs.synthetic.generate import generate_drops
from jobs.synthetic.worlds import ScaleWorld, config_toml


@pytest.mark.parametrize("events_per_user", [6.0, 50.0])
def test_a_world_generates_about_the_events_per_user_it_states(tmp_path, events_per_user):
    world = ScaleWorld(users=1_000, items=600, events_per_user=events_per_user)
    (tmp_path / "factory.toml").write_text(config_toml(world))
    gen = dataclasses.replace(load_config(tmp_path / "factory.toml").generator, days=1)
    summary = generate_drops(gen, tmp_path / "landing")
    per_user = summary.days[0].raw_lines / world.users
    assert events_per_user * 0.75 < per_user < events_per_user * 1.25


def test_a_world_trains_on_a_sample_of_users_within_a_budget(tmp_path):
    (tmp_path / "factory.toml").write_text(config_toml(ScaleWorld(users=1_000_000, items=5_000, events_per_user=6)))
    cfg = load_config(tmp_path / "factory.toml")
    assert cfg.train.max_users == 20_000 and cfg.train.minutes == 2.0
    assert cfg.generator.tracks + cfg.generator.episodes == 5_000
