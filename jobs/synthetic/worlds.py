"""The named generated worlds: one place for the sizes that tests, fault scenarios and benchmarks run.

TINY_WORLD and FAULT_WORLD are config overrides (dotted keys, as `load_config(overrides=...)` and
`jobs.config.env_overrides` take them); a ScaleWorld is stated in users, items and events per user,
and its factory.toml is derived from those (`config_toml`).
"""

from __future__ import annotations

from dataclasses import dataclass

# Seconds per step: the end-to-end tests (tests/test_pipeline.py, tests/dags/test_backfill_airflow.py).
TINY_WORLD = {
    "generator.users": "150", "generator.new_users_per_day": "10", "generator.genres": "6",
    "generator.artists_per_genre": "8", "generator.tracks": "240", "generator.shows": "6",
    "generator.episodes": "60", "generator.new_items_per_day": "8", "generator.edited_items_per_day": "4",
    "generator.days": "2", "generator.malformed_share": "0.02",
    "train.d_model": "16", "train.epochs": "2", "train.retrain_every_days": "1",
    "features.max_seq_len": "20", "sid.levels": "3", "sid.codes_per_level": "8",
    "ray.inference_batch_size": "64",
}

# The fault scenarios (jobs/faults): the tiny world over 7 days. Retraining every 3 days and refitting
# codebooks every 2 makes day 3 a refit day and keeps a model across days (drift is measured).
# One torch thread per training worker: fits are then bitwise reproducible from process to process,
# which the "backfill = daily runs" scenario compares (train.threads in jobs/config.py says why).
FAULT_WORLD = {**TINY_WORLD, "generator.days": "7", "train.retrain_every_days": "3", "sid.refit_every_days": "2",
               "train.threads": "1"}


@dataclass(frozen=True)
class ScaleWorld:
    """Sizes of a generated world; the generator's knobs are derived from them in `config_toml`."""

    users: int
    items: int
    events_per_user: float  # per user and day, on average over all users
    train_users: int = 20_000  # the encoder trains on a sample of users (train.max_users)
    train_minutes: float = 2.0

    @property
    def label(self) -> str:
        return f"u{self.users}_i{self.items}_e{self.events_per_user:g}"


# Measured on generated worlds: events per user per day ~= 0.82 x active share x sessions x length.
EVENTS_PER_SESSION_SLOT = 0.82


def config_toml(world: ScaleWorld) -> str:
    active, sessions = (0.7, 3.0) if world.events_per_user >= 20 else (0.5, 1.0)
    length = world.events_per_user / (EVENTS_PER_SESSION_SLOT * active * sessions)
    episodes = max(world.items // 10, 100)
    return f"""# written by jobs/synthetic/worlds.py for world {world.label}
[generator]
days = 2
users = {world.users}
new_users_per_day = {max(world.users // 50, 1)}
tracks = {world.items - episodes}
episodes = {episodes}
shows = {max(episodes // 10, 10)}
new_items_per_day = {max(world.items // 50, 1)}
edited_items_per_day = {max(world.items // 100, 1)}
active_user_share = {active}
sessions_per_active_user = {sessions}
mean_session_length = {length:.2f}

[train]
max_users = {world.train_users}
minutes = {world.train_minutes}
"""
