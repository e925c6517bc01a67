"""`factory bench cold-items`: can new items be recommended on their first days? (issue 19)

On a generated world (jobs/bench/retrain_world.py; new items every day, played at once thanks to a
release boost) a champion is trained on day `champion_day` and keeps serving for `stale_days` days.
On each of those days, users embedded from their history up to that day rank the whole catalog, and
we count how many of their next-day plays of items at most 2 days old (published that day or the
day before) land in their top 10 (recall@10), for:
- `facets` (a champion with item facets, [train]'s default): the champion's table grown with the new
  items' genre and creator codes, so a new item's vector is its facets' (zero residual): what embed
  writes for such a champion;
- `content`: the champion's item vectors plus, for items it has not seen, vectors mapped from their
  text (models/content_map.py, fitted on the items it trained): what embed writes for a champion
  without facets;
- `no_content`: the champion's item vectors only (before issue 19);
- `retrained`: a model warm-started from the champion and retrained on that day (a full nightly
  retrain, which has the new items in its table and their plays so far).
The judged ratio is the pipeline's day-one vectors (`day_one_source`) over the retrained model's.
Text vectors come from MiniLM (jobs/steps/text_encoder.py) unless a stand-in `encode` is passed.

Second option (`sid_levels` > 0): the encoder with SID-based item vectors (models/sid_item_table.py:
the sum of the item's code vectors, with and without a per-item residual), SIDs from residual
k-means over the known items' text vectors; new items are assigned codes against that codebook (as
the semantic_ids step does between refits) and get their vectors from them, with no retrain. Its
parameters, warm next-day HR@10 (plays of items the champion knows) and new-item recall are reported
beside those of an encoder with per-item ids (trained for the comparison when [train] has facets); not judged.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from jobs.bench.common import LoadSampler, machine, summary_row, write_result
from jobs.bench.compatibility import SMALL_WORLD
from jobs.bench.retrain_world import (
    ModelSettings,
    World,
    day_users,
    grown,
    next_day_hr,
    recall_at_k,
    simulate,
    train,
)
from jobs.config import ColdItemsConfig, GeneratorConfig
from jobs.steps.content_item_vectors import fit_mask
from models.content_map import fit_content_map
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig
from models.sid_item_table import SidItemTable
from models.user_encoder import UserEncoder

MAX_AGE_DAYS = 2  # "new": published on the evaluated day or the day before


def minilm(texts: list[str]) -> np.ndarray:
    from jobs.steps.text_encoder import encode

    return encode(texts, batch_size=256)[0]


def new_item_recall(world: World, day: int, model: UserEncoder, items: np.ndarray, ids: np.ndarray,
                    max_len: int) -> tuple[float, int]:
    """(recall@10 of day + 1's plays of items published on day - 1 or day, users with such plays)."""
    first_day = world.catalog.first_day  # index = vocabulary id - 1
    plays = world.plays_on(day + 1)
    fresh = {int(i) + 1 for i in np.flatnonzero((first_day >= day - MAX_AGE_DAYS + 1) & (first_day <= day))}
    who, users = day_users(world, day, max_len, model)
    targets = [plays.get(int(u), set()) & fresh for u in who]
    return recall_at_k(users, items, ids, targets), sum(bool(t) for t in targets)


def content_item_table(model: UserEncoder, content: np.ndarray, known: int, total: int, counts: dict[int, int],
                       min_events: int, holdout: float = 0.2, seed: int = 0) -> tuple[np.ndarray, dict]:
    """(total, D) item vectors: the model's for ids 1..known, content-mapped for known+1..total (the map
    fitted on the known items with min_events events in the sequences, as the embed step does)."""
    encoder_items = model.item_embeddings().detach()[1:known + 1].numpy()
    fit = fit_mask(list(range(1, known + 1)), counts, min_events)
    mapping, quality = fit_content_map(content[:known][fit], encoder_items[fit], holdout, seed)
    return np.concatenate([encoder_items, mapping.apply(content[known:total])]), quality


def sequence_event_counts(world: World, day: int, max_len: int) -> dict[int, int]:
    """item id -> events of it in the users' sequences of `day` (what embed counts in user_sequences)."""
    _, table = world.sequences(day, max_len)
    ids, counts = np.unique(table.column("item_idx").combine_chunks().flatten().to_numpy(), return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


def warm_hr10(world: World, day: int, model: UserEncoder, known: int, max_len: int) -> float:
    """Next-day HR@10 (plays on day + 1 of items 1..known) of `model`'s users and items of `day`."""
    plays = world.plays_on(day + 1)
    who, users = day_users(world, day, max_len, model)
    targets = [{i for i in plays.get(int(u), ()) if i <= known} for u in who]
    rows = np.array([bool(t) for t in targets])
    items = model.item_embeddings().detach()[1:known + 1].numpy()
    return next_day_hr(users[rows], items, np.arange(1, known + 1), [t for t in targets if t])


def sid_arm(world: World, settings: ModelSettings, content: np.ndarray, champion: UserEncoder, champion_day: int,
            stale_days: int, levels: int, codes_per_level: int, progress=print) -> dict:
    """The SID-based item representation against the champion (per-item ids): parameters, warm HR@10,
    new-item recall on the stale days."""
    known = champion.cfg.num_items
    settings = dataclasses.replace(settings, item_facets=False)  # the SID tables replace per-item ids
    if champion.cfg.item_facets:
        champion = train(world, champion_day, settings)
    quantizer = ResidualQuantizer(ResidualQuantizerConfig(levels=levels, codes_per_level=codes_per_level,
                                                          seed=settings.seed)).fit(content[:known], encode=False)
    codes = torch.from_numpy(quantizer.assign(content).astype(np.int64))  # (total, L), row i = item id i + 1
    out = {"levels": levels, "codes_per_level": codes_per_level,
           "per_item_ids": {"item_parameters": int(champion.item_emb.weight.numel()),
                            "warm_hr10": warm_hr10(world, champion_day, champion, known, settings.max_len)}}
    for name, residual in (("sid", False), ("sid_residual", True)):
        table = SidItemTable(torch.cat([torch.zeros(1, levels, dtype=torch.int64), codes[:known]]), codes_per_level,
                             settings.d_model, residual=residual)
        model = train(world, champion_day, settings, item_table=table)
        arm = {"item_parameters": table.parameter_count(),
               "warm_hr10": warm_hr10(world, champion_day, model, known, settings.max_len), "new_item_recall10": []}
        for day in range(champion_day + 1, champion_day + 1 + stale_days):
            now = world.items_by(day)
            model.item_emb.extend(codes[model.item_emb.codes.shape[0] - 1:now])
            items = model.item_embeddings().detach()[1:now + 1].numpy()
            arm["new_item_recall10"].append(new_item_recall(world, day, model, items, np.arange(1, now + 1),
                                                            settings.max_len)[0])
        arm["new_item_recall10_mean"] = float(np.mean(arm["new_item_recall10"]))
        out[name] = arm
        progress(f"{name}: {arm['item_parameters']:,} item parameters, warm HR@10 {arm['warm_hr10']:.4f}, "
                 f"new-item recall@10 {arm['new_item_recall10_mean']:.4f}")
    return out


def run(world_settings: dict, champion_day: int, stale_days: int, settings: ModelSettings, seed: int = 7,
        encode: Callable[[list[str]], np.ndarray] = minilm, progress=print,
        min_events: int = ColdItemsConfig.min_events, sid_levels: int = 3, sid_codes: int = 32) -> dict:
    cfg = GeneratorConfig(**{**world_settings, "days": champion_day + stale_days + 2, "seed": seed})
    started = time.perf_counter()
    with LoadSampler() as load:
        world = simulate(cfg)
        total = world.items_by(champion_day + stale_days)
        content = encode(world.texts(total))
        champion = train(world, champion_day, settings)
        known = champion.cfg.num_items
        days = []
        for day in range(champion_day + 1, champion_day + 1 + stale_days):
            now = world.items_by(day)
            counts = sequence_event_counts(world, day, settings.max_len)
            with_content, quality = content_item_table(champion, content, known, now, counts, min_events,
                                                       seed=settings.seed)
            ids = np.arange(1, now + 1)
            plain = champion.item_embeddings().detach()[1:known + 1].numpy()
            retrained = train(world, day, settings, start=champion)
            fresh_table = retrained.item_embeddings().detach()[1:now + 1].numpy()
            figures = {
                "content": new_item_recall(world, day, champion, with_content, ids, settings.max_len),
                "no_content": new_item_recall(world, day, champion, plain, ids[:known], settings.max_len),
                "retrained": new_item_recall(world, day, retrained, fresh_table, ids, settings.max_len),
            }
            if champion.cfg.item_facets:  # new items' genre + creator vectors: the champion's own table, grown
                facet_table = grown(champion, world, day).item_embeddings().detach()[1:now + 1].numpy()
                figures["facets"] = new_item_recall(world, day, champion, facet_table, ids, settings.max_len)
            row = {"day": day, "items": now, "items_content_derived": now - known,
                   "users_with_new_item_plays": figures["content"][1],
                   **{f"recall10_{k}": v[0] for k, v in figures.items()},
                   **{f"content_map_{k}": v for k, v in quality.items()}}
            row["day_one_over_retrained"] = (row[f"recall10_{day_one_source(champion)}"] / row["recall10_retrained"]
                                             if row["recall10_retrained"] else 0.0)
            days.append(row)
            progress(f"day {day}: recall@10 of new-item plays: " + ", ".join(f"{k} {v[0]:.4f}" for k, v in figures.items()))
        sid_items = (sid_arm(world, settings, content, champion, champion_day, stale_days, sid_levels, sid_codes, progress)
                     if sid_levels > 0 else None)
    mean = {k: float(np.mean([d[f"recall10_{k}"] for d in days])) for k in ("content", "no_content", "retrained", "facets")
            if f"recall10_{k}" in days[0]}
    source = day_one_source(champion)
    return {"world": dataclasses.asdict(cfg), "model": dataclasses.asdict(settings), "champion_day": champion_day,
            "champion_warm_hr10": warm_hr10(world, champion_day, champion, known, settings.max_len),
            "min_events": min_events, "days": days, "mean_recall10": mean, "sid_items": sid_items,
            "day_one_source": source,
            "day_one_over_retrained": mean[source] / mean["retrained"] if mean["retrained"] else 0.0,
            "seconds": time.perf_counter() - started, "machine": machine(), "load": load.summary()}


def day_one_source(champion: UserEncoder) -> str:
    """Where the embed step takes a new item's vector from (jobs/steps/embed.item_vectors): the champion's
    genre + creator vectors when it has item facets, else the content map from its text."""
    return "facets" if champion.cfg.item_facets else "content"


def summary_rows(result: dict) -> list[dict]:
    mean = result["mean_recall10"]
    return [*_day_one_rows(mean, result), *_sid_rows(result.get("sid_items"), mean)]


def _sid_rows(sid: dict | None, mean: dict) -> list[dict]:
    if not sid:
        return []
    ids = sid["per_item_ids"]
    rows = []
    for name, label in (("sid", "SID item vectors"), ("sid_residual", "SID item vectors + residual")):
        arm = sid[name]
        rows += [summary_row(f"{label}: warm next-day HR@10 / per-item ids", arm["warm_hr10"] / ids["warm_hr10"]
                             if ids["warm_hr10"] else 0.0, "ratio", "", None,
                             f"{arm['warm_hr10']:.4f} vs {ids['warm_hr10']:.4f}"),
                 summary_row(f"{label}: item parameters / per-item ids", arm["item_parameters"] / ids["item_parameters"],
                             "ratio", "", None, f"{arm['item_parameters']:,} vs {ids['item_parameters']:,}"),
                 summary_row(f"{label}: new-item recall / retrained", arm["new_item_recall10_mean"] / mean["retrained"]
                             if mean["retrained"] else 0.0, "ratio", "", None,
                             f"new-item recall@10 {arm['new_item_recall10_mean']:.4f} with no retrain; retrained "
                             f"per-item ids {mean['retrained']:.4f}; content vectors {mean['content']:.4f}")]
    return rows


def _day_one_rows(mean: dict, result: dict) -> list[dict]:
    """The judged row (named as issue 19 names it) is the pipeline's day-one vectors: facet vectors for a
    champion with item facets, the text map's otherwise; the text map beside it, unjudged."""
    source, ratio = result["day_one_source"], result["day_one_over_retrained"]
    label = {"facets": "facet vectors (genre + creator, the champion's table)", "content": "text-map vectors"}
    found = f"next-day recall@10 of plays of items <= {MAX_AGE_DAYS} days old, mean over {len(result['days'])} days the " \
            f"champion kept serving"
    rows = [summary_row(
        "new-item recall, content vectors / retrained", ratio, "ratio", ">= 0.5 and content recall > 0",
        ratio >= 0.5 and mean[source] > 0,
        f"{found}: day-one vectors = {label[source]} {mean[source]:.4f}, retrained {mean['retrained']:.4f}, "
        f"no new-item vectors {mean['no_content']:.4f}")]
    if source != "content":
        rows.append(summary_row(
            "new-item recall, text-map vectors / retrained", mean["content"] / mean["retrained"] if mean["retrained"]
            else 0.0, "ratio", "", None, f"{found}: ridge map from MiniLM text vectors {mean['content']:.4f} (used only "
            f"for a champion without item facets)"))
    return rows


def run_benchmark(out: Path, command: str, champion_day: int = 3, stale_days: int = 2,
                  settings: ModelSettings | None = None, world: dict | None = None, seed: int = 7,
                  encode: Callable[[list[str]], np.ndarray] = minilm, progress=print, log=None,
                  min_events: int = ColdItemsConfig.min_events, sid_levels: int = 3, sid_codes: int = 32) -> dict:
    result = run(world or SMALL_WORLD, champion_day, stale_days, settings or ModelSettings(), seed, encode, progress,
                 min_events, sid_levels, sid_codes)
    result["command"] = command
    if log is not None:
        log(result)
    return write_result(out, result, summary_rows(result))


def render_markdown(result: dict) -> str:
    arms = [k for k in ("facets", "content", "no_content", "retrained") if f"recall10_{k}" in result["days"][0]]
    lines = ["| day | new items | " + " | ".join(f"recall@10 {k}" for k in arms) + " | day-one / retrained |",
             "|---|---|" + "---|" * (len(arms) + 1)]
    lines += [f"| {d['day']} | {d['items_content_derived']} | " + " | ".join(f"{d[f'recall10_{k}']:.4f}" for k in arms)
              + f" | {d['day_one_over_retrained']:.3f} |" for d in result["days"]]
    rows = result["summary"] if "summary" in result else summary_rows(result)
    return "\n".join(lines + [""] + [f"- {r['figure']}: {r['value']:.3f}" + (f" (bar {r['bar']}: met {r['met']})" if r["bar"]
                                                                          else f" ({r['detail']})") for r in rows])
