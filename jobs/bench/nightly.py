"""`factory bench nightly`: the nightly encoder over a week of generated days, against popularity (issue 17).

The world is the end-to-end world of `make bench` (jobs/bench/perf.py FULL.e2e: 100k users, 50k
items, ~50 events per user a day), its days simulated in memory by the generator's own simulation
(jobs/bench/retrain_world.py). Each day d does what the nightly steps do for the model, with [train]'s
defaults (what a user gets without flags):
- train: when due (train.is_due's rule, `retrain_every_days`), on the day's sequences (train.max_users
  users, validation users held out by build_training_data), the train step's model shape and start
  (`encoder_config`, `initial_state`: warm from the champion, its item table grown, the day's facet
  codes) and loop (loop_config: the clock budget `train.minutes`, epochs, loss); the train step's
  gate (`passes_gate`) promotes it or not; with `train.time_buckets` the model reads the simulated
  events' time gaps, as the train step reads user_sequences' ts;
- embed: every user with a history, under the champion;
- evaluate: as jobs/steps/evaluate.py, users who play on d+1 are ranked against the champion's items
  (no filter: replays count), HR@10 / NDCG@10 of their d+1 plays, against the 10 most played items
  of day d for everyone.
What differs from `factory run`: one process (torch on every core) instead of Ray Train workers,
no Spark or Delta (the cost of the same day through the pipeline is `factory bench all --only e2e`),
and items published after the champion was trained are not ranked (the pipeline gives them
content-derived vectors from MiniLM, whose 50k-item encoding alone takes ~11 minutes here).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from jobs.bench.common import machine, summary_row, write_result
from jobs.bench.retrain_world import World, day_users, simulate
from jobs.config import GeneratorConfig, TrainConfig, load_config
from jobs.days import shift
from jobs.steps.compatibility import item_table
from jobs.steps.encoder_training import TrainingRun, build_training_data, loop_config, validation_metrics
from jobs.steps.train import data_time_buckets, encoder_config, grown_to, initial_state, passes_gate
from models.ranking_metrics import hit_rate_multi, ndcg_multi
from models.space_alignment import top_k
from models.user_encoder import UserEncoder

K = 10
RATIO_BAR = 1.5  # issue 17: encoder HR@10 >= 1.5x popularity's on every day after the first
EVAL_CHUNK = 2_000  # users per scoring block (2,000 x 50k items x 4 bytes = 400 MB)


@dataclasses.dataclass(frozen=True)
class NightlySettings:
    users: int = 100_000
    items: int = 50_000
    events_per_user: float = 50.0
    days: int = 7  # evaluated days: the world is simulated for days + 1
    max_len: int = 50  # [features].max_seq_len
    seed: int = 7  # the generated world's seed (the generator's default)


def generator_config(settings: NightlySettings) -> GeneratorConfig:
    """The e2e world's generator settings (jobs/synthetic/worlds.py), for days + 1 days."""
    import tempfile

    from jobs.synthetic.worlds import ScaleWorld, config_toml

    world = ScaleWorld(settings.users, settings.items, settings.events_per_user)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "factory.toml"
        path.write_text(config_toml(world))
        generator = load_config(path).generator
    return dataclasses.replace(generator, days=settings.days + 1, seed=settings.seed)


def train_day(world: World, day: int, champion: UserEncoder | None, t: TrainConfig, max_len: int,
              progress) -> tuple[UserEncoder, dict]:
    """The train step's model work on day `day`: (the fitted model, what happened)."""
    num_items = world.items_by(day)
    encoder_cfg = encoder_config(t, num_items, max_len)
    codes = world.facet_codes(encoder_cfg)
    _, table = world.sequences(day, max_len)
    if t.max_users and t.max_users < table.num_rows:
        rng = np.random.default_rng([t.seed, day])
        table = table.take(np.sort(rng.choice(table.num_rows, t.max_users, replace=False)))
    data = build_training_data(table, max_len, t.seed + day, data_time_buckets(t, champion))
    torch.manual_seed(t.seed + day)
    model = UserEncoder(encoder_cfg)
    start, warm = initial_state(encoder_cfg, champion, codes)
    if start is not None:
        model.load_state_dict(start)
    loop = loop_config(t, threads=torch.get_num_threads())
    if warm:
        loop = dataclasses.replace(loop, compat_items=champion.cfg.num_items)
    run = TrainingRun(model, data, loop)
    started = time.perf_counter()
    run.run(on_epoch=lambda r: progress(f"  epoch {r.state.epoch} at {r.state.elapsed / 60:.1f} min: "
                                        f"val NDCG@10 {r.state.history[-1]['val_ndcg10']:.4f}"))
    model.load_state_dict(run.best_weights)
    model.eval()
    new = validation_metrics(model, data)
    promoted = True
    if champion is not None:
        old_ndcg = validation_metrics(grown_to(champion, num_items, codes), data)["val_ndcg10"]
        promoted = run.state.stop_reason != "diverged" and passes_gate(new["val_ndcg10"], old_ndcg, t.max_regression)
    facts = {"trained": True, "warm_start": warm, "training_users": int(table.num_rows),
             "train_seconds": time.perf_counter() - started, "epochs": run.state.epoch, "steps": run.state.step,
             "stop_reason": run.state.stop_reason, "val_hr10": new["val_hr10"], "val_ndcg10": new["val_ndcg10"],
             "promoted": promoted}
    return model, facts


def evaluate_day(world: World, day: int, model: UserEncoder, max_len: int) -> dict:
    """Next-day HR@10 / NDCG@10 of the champion's vectors of `day` and of day `day`'s popularity."""
    nxt = world.plays_on(day + 1)
    with torch.inference_mode():
        who, users = day_users(world, day, max_len, model)
        known = model.cfg.num_items
        item_vectors = item_table(model, known)
    keep = np.array([u in nxt for u in who.tolist()])
    who, users = who[keep], users[keep]
    top = np.concatenate([top_k(users[s:s + EVAL_CHUNK], item_vectors, K) + 1 for s in range(0, len(users), EVAL_CHUNK)])
    targets = [nxt[u] for u in who.tolist()]
    plays = (world.day == day) & (world.codes == 1)
    counts = np.bincount(world.items[plays], minlength=world.items_by(day) + 1)
    counts[0] = -1
    popular = np.tile(np.argsort(-counts, kind="stable")[:K], (len(who), 1))
    return {"users_evaluated": len(who), "items_ranked": known,
            "encoder_hr10": hit_rate_multi(top, targets), "encoder_ndcg10": ndcg_multi(top, targets),
            "popularity_hr10": hit_rate_multi(popular, targets), "popularity_ndcg10": ndcg_multi(popular, targets)}


def run(settings: NightlySettings, t: TrainConfig, progress=print) -> dict:
    """Every day of the week: train when due, embed, evaluate against the next day's plays."""
    generator = generator_config(settings)
    progress(f"simulating {settings.users:,} users, {settings.items:,} items, {generator.days} days")
    world = simulate(generator)
    champion, champion_day, days = None, None, []
    for day in range(settings.days):
        ds = shift(generator.start_date, day)
        record = {"ds": ds, "trained": False}
        if champion is None or day - champion_day >= t.retrain_every_days:
            progress(f"{ds}: training ({'warm start' if champion is not None else 'first model'}, "
                     f"budget {t.minutes:g} min)")
            model, facts = train_day(world, day, champion, t, settings.max_len, progress)
            record.update(facts)
            if facts["promoted"]:
                champion, champion_day = model, day
        record.update(champion_trained_ds=shift(generator.start_date, champion_day),
                      **evaluate_day(world, day, champion, settings.max_len))
        record["hr10_ratio"] = record["encoder_hr10"] / max(record["popularity_hr10"], 1e-12)
        progress(f"{ds}: next-day HR@10 encoder {record['encoder_hr10']:.3f} vs popularity "
                 f"{record['popularity_hr10']:.3f} ({record['hr10_ratio']:.2f}x)")
        days.append(record)
    return {"world": dataclasses.asdict(settings), "generator": {"users": generator.users, "days": generator.days,
                                                                 "new_items_per_day": generator.new_items_per_day},
            "train": dataclasses.asdict(t), "days": days, "machine": machine()}


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for i, day in enumerate(result["days"]):
        judged = i > 0  # the bar holds on every day after the first
        rows.append(summary_row(f"nightly next-day HR@10 encoder / popularity, {day['ds']}", day["hr10_ratio"], "x",
                                f">= {RATIO_BAR}" if judged else "", day["hr10_ratio"] >= RATIO_BAR if judged else None,
                                f"encoder {day['encoder_hr10']:.4f} vs popularity {day['popularity_hr10']:.4f}, "
                                f"NDCG@10 {day['encoder_ndcg10']:.4f} vs {day['popularity_ndcg10']:.4f}"))
    trained = [d["train_seconds"] for d in result["days"] if d.get("trained")]
    rows.append(summary_row("nightly training budget, longest day", max(trained) / 60 if trained else 0.0, "min",
                            "<= 10", bool(trained) and max(trained) / 60 <= 10.0))
    return rows


def run_benchmark(out: Path, command: str, settings: NightlySettings, t: TrainConfig, progress=print, log=None) -> dict:
    result = run(settings, t, progress)
    result["command"] = command
    if log is not None:
        log(result)
    return write_result(out, result, summary_rows(result))


def render_markdown(result: dict) -> str:
    lines = ["| day | trained | encoder HR@10 | popularity HR@10 | ratio | encoder NDCG@10 | popularity NDCG@10 |",
             "|---|---|---|---|---|---|---|"]
    for d in result["days"]:
        trained = f"{d['train_seconds'] / 60:.1f} min, {d['stop_reason']}" if d.get("trained") else "no"
        lines.append(f"| {d['ds']} | {trained} | {d['encoder_hr10']:.4f} | {d['popularity_hr10']:.4f} | "
                     f"{d['hr10_ratio']:.2f}x | {d['encoder_ndcg10']:.4f} | {d['popularity_ndcg10']:.4f} |")
    return "\n".join(lines)
