"""`factory bench compatibility`: do embeddings stay usable across retrains? (issue 19)

On a generated world (jobs/bench/retrain_world.py) a first encoder is trained on day `first_day`;
then every day a retrain warm-started from the previous one is promoted (no gate: every retrain
counts). At each promotion, users embedded from their history up to that day are scored against
item vectors and the hits counted among the items they play the next day (HR@10), for:
same version (new users x new items), cross version (new users x the previous version's items: a
consumer still serving yesterday's index; and previous-version users x new items), and the new
users against the previous items translated by the Procrustes alignment map. Next-day targets are
restricted to items both versions know. Neighbour overlap@10 and the rotation angle per promotion.
All of it with train.compat_weight off and on: the quality cost of compatibility is
1 - same-version HR@10 (on) / same-version HR@10 (off), over the promotions.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from jobs.bench.common import LoadSampler, machine, summary_row, write_result
from jobs.bench.retrain_world import ModelSettings, World, day_users, next_day_hr, simulate, train
from jobs.config import GeneratorConfig
from models.space_alignment import alignment_report, neighbour_overlap, top_k
from models.user_encoder import UserEncoder

RATIO_BAR = 0.95  # cross-version HR@10 >= 95% of same-version
COST_BAR = 0.02  # same-version HR@10 may lose at most 2% with compatibility on
SMALL_WORLD = {"users": 1500, "new_users_per_day": 30, "genres": 8, "artists_per_genre": 10, "tracks": 600,
               "shows": 12, "episodes": 120, "new_items_per_day": 15, "edited_items_per_day": 5,
               "active_user_share": 0.7, "sessions_per_active_user": 2.0, "mean_session_length": 10.0}


def promotion(world: World, day: int, old: UserEncoder, new: UserEncoder, max_len: int) -> dict:
    """The cross- and same-version figures of promoting `new` over `old` on `day` (next day: day + 1)."""
    plays = world.plays_on(day + 1)
    shared = old.cfg.num_items
    who, u_new = day_users(world, day, max_len, new)
    _, u_old = day_users(world, day, max_len, old)
    targets = [{i for i in plays.get(int(u), ()) if i <= shared} for u in who]
    rows = np.array([bool(t) for t in targets])
    u_new, u_old, targets = u_new[rows], u_old[rows], [t for t in targets if t]
    ids = np.arange(1, shared + 1)
    i_old = old.item_embeddings().detach()[1:shared + 1].numpy()
    i_new = new.item_embeddings().detach()[1:shared + 1].numpy()
    rotation, facts = alignment_report(i_old, i_new)
    out = {"day": day, "users": int(rows.sum()), "shared_items": shared, **facts,
           "hr10_same_new": next_day_hr(u_new, i_new, ids, targets),
           "hr10_same_old": next_day_hr(u_old, i_old, ids, targets),
           "hr10_new_users_old_items": next_day_hr(u_new, i_old, ids, targets),
           "hr10_old_users_new_items": next_day_hr(u_old, i_new, ids, targets),
           "hr10_new_users_aligned_old_items": next_day_hr(u_new, i_old @ rotation, ids, targets),
           "neighbour_overlap10": neighbour_overlap(top_k(u_new, i_new, 10), top_k(u_old, i_old, 10))}
    same = out["hr10_same_new"]
    for name in ("new_users_old_items", "old_users_new_items", "new_users_aligned_old_items"):
        out[f"ratio_{name}"] = out[f"hr10_{name}"] / same if same else 0.0
    out["ratio_cross_version"] = min(out["ratio_new_users_old_items"], out["ratio_old_users_new_items"])
    return out


def run_chain(world: World, first_day: int, promotions: int, settings: ModelSettings, compat_weight: float,
              first: UserEncoder) -> list[dict]:
    """`promotions` daily warm-started retrains after `first` (trained on first_day), each measured."""
    results, old = [], first
    for day in range(first_day + 1, first_day + 1 + promotions):
        new = train(world, day, settings, start=old, compat_weight=compat_weight)
        results.append(promotion(world, day, old, new, settings.max_len))
        old = new
    return results


def run(world_settings: dict, first_day: int, promotions: int, compat_weight: float, settings: ModelSettings,
        seed: int = 7, progress=print) -> dict:
    """Both chains (compatibility off and on) from the same first model; the result dict."""
    cfg = GeneratorConfig(**{**world_settings, "days": first_day + promotions + 2, "seed": seed})
    started = time.perf_counter()
    with LoadSampler() as load:
        world = simulate(cfg)
        progress(f"world: {cfg.days} days, {len(world.items):,} plays and skips, {world.catalog.size} items")
        first = train(world, first_day, settings)
        chains = {}
        for name, weight in (("off", 0.0), ("on", compat_weight)):
            chains[name] = run_chain(world, first_day, promotions, settings, weight, first)
            progress(f"compatibility {name}: " + ", ".join(f"{p['ratio_cross_version']:.3f}" for p in chains[name]))
    same = {name: float(np.mean([p["hr10_same_new"] for p in chain])) for name, chain in chains.items()}
    return {"world": dataclasses.asdict(cfg), "model": dataclasses.asdict(settings), "first_day": first_day,
            "compat_weight": compat_weight, "chains": chains, "same_version_hr10_mean": same,
            "cost_of_compatibility": 1.0 - same["on"] / same["off"] if same["off"] else 0.0,
            "seconds": time.perf_counter() - started, "machine": machine(), "load": load.summary()}


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for name in ("on", "off"):
        for n, p in enumerate(result["chains"][name], start=1):
            label = f"cross-version / same-version next-day HR@10, promotion {n}" + ("" if name == "on" else ", compat off")
            rows.append(summary_row(
                label, p["ratio_cross_version"], "ratio", f">= {RATIO_BAR}", p["ratio_cross_version"] >= RATIO_BAR,
                f"train.compat_weight={result['compat_weight'] if name == 'on' else 0}: new users x old items "
                f"{p['ratio_new_users_old_items']:.3f}, old users x new items {p['ratio_old_users_new_items']:.3f} "
                f"(the smaller is judged), aligned old items {p['ratio_new_users_aligned_old_items']:.3f}; same-version "
                f"HR@10 {p['hr10_same_new']:.4f}; overlap@10 {p['neighbour_overlap10']:.2f}; "
                f"rotation {p['rotation_angle_deg']:.1f} deg"))
    cost = result["cost_of_compatibility"]
    rows.append(summary_row("same-version HR@10 cost of compatibility", cost, "share", f"<= {COST_BAR}", cost <= COST_BAR,
                            f"mean same-version next-day HR@10 over the promotions: on "
                            f"{result['same_version_hr10_mean']['on']:.4f}, off {result['same_version_hr10_mean']['off']:.4f}"))
    return rows


def run_benchmark(out: Path, command: str, first_day: int = 3, promotions: int = 3, compat_weight: float = 10.0,
                  settings: ModelSettings | None = None, world: dict | None = None, seed: int = 7,
                  progress=print, log=None) -> dict:
    result = run(world or SMALL_WORLD, first_day, promotions, compat_weight, settings or ModelSettings(), seed, progress)
    result["command"] = command
    if log is not None:
        log(result)
    return write_result(out, result, summary_rows(result))


def render_markdown(result: dict) -> str:
    lines = ["| figure | value | bar | met |", "|---|---|---|---|"]
    lines += [f"| {r['figure']} | {r['value']:.4f} | {r['bar']} | {r['met']} |" for r in result["summary"]]
    return "\n".join(lines)
