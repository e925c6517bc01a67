"""The generated world of the retrain benchmarks (compatibility, cold items), held in memory.

The days come from the generator's own simulation (jobs/synthetic: the same catalog, users, new
items every day with a release boost, tastes that drift), stepped here as generate_drops steps it,
without raw lines or defects, so the benchmarks need no lake, Spark or Ray: they measure the model
side of the daily retrain (encoder_training.TrainingRun with the nightly warm start) against true
next-day plays. Item i of the catalog has vocabulary id i + 1 (ids follow publication, as item_vocab's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from jobs.config import GeneratorConfig, TrainConfig
from jobs.days import day_bounds_ms, shift
from jobs.steps import item_facets
from jobs.steps.catalog import item_text
from jobs.steps.compatibility import user_vectors
from jobs.steps.encoder_training import PATIENCE, LoopConfig, TrainingRun, build_training_data
from jobs.steps.train import encoder_config, grown_to, initial_state
from jobs.steps.user_predictor import TS_COLUMN, gap_buckets
from jobs.synthetic.catalog import Catalog, add_new_items, build_catalog, edit_items
from jobs.synthetic.generate import _CATALOG, _DAY
from jobs.synthetic.listening import PLAY, SAVE, SKIP, Users, add_users, drift_tastes, simulate_day
from models.ranking_metrics import hit_rate_multi
from models.sequences import pad_left_flat
from models.space_alignment import top_k
from models.user_encoder import UserEncoder, UserEncoderConfig

EVENT_CODES = {PLAY: 1, SKIP: 2}  # jobs.steps.features.EVENT_TYPE_CODES; saves repeat their play


@dataclass
class World:
    catalog: Catalog
    users: np.ndarray  # (E,) user index of every play/skip, all days, in time order
    items: np.ndarray  # (E,) vocabulary id (catalog index + 1)
    codes: np.ndarray  # (E,) 1 = play, 2 = skip
    day: np.ndarray  # (E,) day index
    ts: np.ndarray  # (E,) event time, ms since epoch (the simulation's)

    def items_by(self, day: int) -> int:
        """The vocabulary size at the end of day `day` (items are published in id order)."""
        return int((self.catalog.first_day <= day).sum())

    def texts(self, count: int) -> list[str]:
        """The text of items 1..count as the catalog step builds it (final text: edits included)."""
        return [item_text(self.catalog.row(i)) for i in range(count)]

    def sequences(self, day: int, max_len: int) -> tuple[np.ndarray, pa.Table]:
        """(user indices, table of item_idx / event_type / ts lists, as user_sequences holds them): each
        user's last max_len plays and skips up to and including `day`, oldest first, for users with any."""
        upto = self.day <= day
        users, items, codes, ts = self.users[upto], self.items[upto], self.codes[upto], self.ts[upto]
        order = np.argsort(users, kind="stable")  # within a user: time order kept
        users, items, codes, ts = users[order], items[order], codes[order], ts[order]
        who, starts = np.unique(users, return_index=True)
        ends = np.append(starts[1:], len(users))
        starts = np.maximum(starts, ends - max_len)
        table = pa.table({"item_idx": pa.array([items[s:e].tolist() for s, e in zip(starts, ends)], pa.list_(pa.int32())),
                          "event_type": pa.array([codes[s:e].tolist() for s, e in zip(starts, ends)], pa.list_(pa.int8())),
                          "ts": pa.array([ts[s:e].tolist() for s, e in zip(starts, ends)], pa.list_(pa.int64()))})
        return who, table

    def facet_codes(self, cfg: UserEncoderConfig, num_items: int | None = None) -> torch.Tensor | None:
        """The facet codes the train step would read from the catalog for items 1..num_items (default
        cfg.num_items) for an encoder shaped `cfg` (jobs/steps/item_facets.py: genre; artist of a track,
        show of an episode); None when cfg has no item facets."""
        if not cfg.item_facets:
            return None
        num_items = cfg.num_items if num_items is None else num_items
        cat = self.catalog
        genre = pa.array([cat.labels[g] for g in cat.genre[:num_items]], pa.string())
        creator = pa.array([cat.show_names[s] if e else cat.artist_names[a]
                            for a, s, e in zip(cat.artist[:num_items], cat.show[:num_items], cat.is_episode[:num_items])],
                           pa.string())
        return item_facets.codes_of(np.arange(1, num_items + 1), genre, creator, num_items, cfg.facet_buckets)

    def plays_on(self, day: int) -> dict[int, set[int]]:
        """user index -> the vocabulary ids they played on `day`."""
        rows = (self.day == day) & (self.codes == EVENT_CODES[PLAY])
        out: dict[int, set[int]] = {}
        for user, item in zip(self.users[rows].tolist(), self.items[rows].tolist()):
            out.setdefault(user, set()).add(item)
        return out


def simulate(cfg: GeneratorConfig) -> World:
    """cfg.days days of the generator's world (the loop of jobs.synthetic.generate.generate_drops)."""
    catalog = build_catalog(cfg, np.random.default_rng([cfg.seed, _CATALOG]))
    users = Users.empty(catalog.n_music_genres)
    parts = []
    for day in range(cfg.days):
        rng = np.random.default_rng([cfg.seed, _DAY, day])
        if day > 0:
            existing = catalog.size
            add_new_items(catalog, cfg.new_items_per_day, day, rng)
            edit_items(catalog, cfg.edited_items_per_day, existing, rng)
        first_new_user = users.n
        add_users(users, catalog, cfg.users if day == 0 else cfg.new_users_per_day, day, rng)
        start_ms, _ = day_bounds_ms(shift(cfg.start_date, day))
        events, _ = simulate_day(cfg, catalog, users, day, start_ms, first_new_user, rng)
        drift_tastes(users, rng)
        keep = events["etype"] != SAVE
        parts.append((events["user"][keep], events["item"][keep] + 1,
                      np.where(events["etype"][keep] == PLAY, 1, 2), np.full(int(keep.sum()), day), events["ts"][keep]))
    users_, items, codes, days, ts = (np.concatenate(p).astype(np.int64) for p in zip(*parts))
    return World(catalog, users_, items, codes, days, ts)


TRAIN = TrainConfig()  # the nightly job's defaults: the benchmarks train what the pipeline trains


@dataclass(frozen=True)
class ModelSettings:
    """The encoder and loop of the benchmarks: [train]'s defaults (a warm start trains as long as a cold one)."""

    d_model: int = TRAIN.d_model
    max_len: int = 30
    epochs: int = TRAIN.epochs
    warm_epochs: int = TRAIN.epochs
    patience: int = PATIENCE
    lr: float = TRAIN.lr
    batch_size: int = TRAIN.batch_size
    seed: int = 0
    item_facets: bool = TRAIN.item_facets  # the item table: facets + residual (default) or per-item ids


def train(world: World, day: int, settings: ModelSettings, start: UserEncoder | None = None,
          compat_weight: float = 0.0, item_table: torch.nn.Module | None = None) -> UserEncoder:
    """An encoder trained on the sequences of `day`, over every item published by then, with [train]'s
    item table (facets from the catalog unless settings.item_facets is off); warm-started from `start`
    (its item table grown, today's facet codes, as the train step does) with the compatibility term
    if asked; `item_table` (e.g. models.sid_item_table.SidItemTable) replaces a fresh model's table."""
    num_items = world.items_by(day)
    t = dataclasses.replace(TRAIN, d_model=settings.d_model, item_facets=settings.item_facets)
    cfg = encoder_config(t, num_items, settings.max_len)
    torch.manual_seed(settings.seed + day)
    model = UserEncoder(cfg)
    if item_table is not None and start is None:
        model.item_emb = item_table
    else:
        weights, _ = initial_state(cfg, start, world.facet_codes(cfg))
        if weights is not None:
            model.load_state_dict(weights)
    _, table = world.sequences(day, settings.max_len)
    data = build_training_data(table, settings.max_len, settings.seed + day, cfg.n_time_buckets)
    loop = LoopConfig(lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed + day,
                      max_epochs=settings.warm_epochs if start is not None else settings.epochs, patience=settings.patience,
                      compat_weight=compat_weight if start is not None else 0.0,
                      compat_items=start.cfg.num_items if start is not None else 0)
    run = TrainingRun(model, data, loop)
    run.run()
    model.load_state_dict(run.best_weights)
    return model.eval()


def grown(model: UserEncoder, world: World, day: int) -> UserEncoder:
    """`model` with its item table grown to the items published by `day`, as the train step grows a
    warm start: with facets, a new item's row is its genre + creator vectors (zero residual), a
    vector on its first day with no retrain; with per-item ids, a random row."""
    num_items = world.items_by(day)
    return grown_to(model, num_items, world.facet_codes(model.cfg, num_items))


def day_users(world: World, day: int, max_len: int, model: UserEncoder) -> tuple[np.ndarray, np.ndarray]:
    """(user indices, (U, D) vectors under `model`) of every user with a history up to `day` (with
    their time-gap buckets, as embed's predictor computes them, for a model with time gaps)."""
    who, table = world.sequences(day, max_len)
    items = _padded(table.column("item_idx").to_pylist(), max_len)
    codes = _padded(table.column("event_type").to_pylist(), max_len)
    gaps = None
    if model.cfg.n_time_buckets:
        values, offsets = gap_buckets(table.column(TS_COLUMN), model.cfg.n_time_buckets)
        gaps = pad_left_flat(values, offsets[:-1], offsets[1:], max_len)
    return who, user_vectors(model, items, codes, gaps)


def _padded(rows: list[list[int]], max_len: int) -> np.ndarray:
    out = np.zeros((len(rows), max_len), np.int64)
    for i, row in enumerate(rows):
        tail = row[-max_len:]
        out[i, max_len - len(tail):] = tail
    return out


def next_day_hr(users: np.ndarray, items: np.ndarray, item_ids: np.ndarray, targets: list[set[int]],
                k: int = 10) -> float:
    """HR@k of next-day plays: (U, D) user vectors against (N, D) item vectors with ids `item_ids`."""
    return hit_rate_multi(top_k(users, items, k, item_ids), targets)


def recall_at_k(users: np.ndarray, items: np.ndarray, item_ids: np.ndarray, targets: list[set[int]],
                k: int = 10) -> float:
    """Mean over users of |top-k ∩ targets| / |targets| (users with targets only)."""
    top = top_k(users, items, k, item_ids)
    shares = [len(set(row.tolist()) & t) / len(t) for row, t in zip(top, targets) if t]
    return float(np.mean(shares)) if shares else 0.0
