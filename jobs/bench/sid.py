"""`factory bench sid`: semantic-ID quality, stability and speed on any item catalog.

Input, one of:
  --items PATH      JSONL (objects with id, text[, label]) or CSV (header id,text[,label]); a label
                    may hold several values separated by "|" (purity then counts an item as matching
                    its group's most common value if it carries it).
  --movielens DIR   DIR/movies.dat (latin-1, MovieID::Title::Genres) restricted to the movie ids in
                    DIR/item_map.csv (SASRec's ML-1M); text = the title only, label = the genres. If
                    DIR/ml-1m.txt (SASRec's `user item` lines) exists, it also measures fusion with a
                    collaborative vector (truncated SVD of the item-user matrix, a stand-in for the
                    encoder's item embeddings). Research-only data is read where it lies, never copied.
  --lake-ds DS      the factory lake's catalog on DS (item text, genre as label) fused with that day's
                    item_embeddings (the encoder's collaborative vectors): fusion on generated data.

Codes are what the pipeline's refit writes (jobs.steps.semantic_ids.refit_tokens: balanced residual
k-means fit, nearest-centroid codes, de-duplication token). Reported for each --levels x --codes,
mean/min/max over --seeds: collision rate before de-duplication, largest bucket, used codes and
perplexity per level, prefix purity lift at levels 1 and 2 for the label (text as given, and with the
label appended to the text), near-duplicates (cosine >= 0.95, and 0.9) and whether they collide.
Stability: the pipeline's own catalog and semantic_ids steps in a scratch lake over generated days
(jobs.synthetic.generate, ~2% new and ~1% edited items a day), SIDs compared day by day, the cadence refit of
the last day replayed warm, warm without stickiness and cold. Speed: text encoding (cold and through
the text-hash cache) and quantiser build time (a refit: fit + assign) on synthetic 384-d vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.bench.common import LoadSampler, benchmark_run, flat_metrics, machine, summary_row, write_result
from jobs.bench.sid_catalogs import ItemCatalog
from jobs.bench.text_encoding import text_encoder_roofline, text_encoder_rows
from jobs.config import FactoryConfig, GeneratorConfig, load_config
from jobs.steps import semantic_ids
from jobs.steps.text_encoder import EncodeStats
from models import sid_metrics
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig

log = logging.getLogger(__name__)
BARS = {"max_collision_rate_3x256": 0.03, "aim_collision_rate_3x256": 0.015, "min_perplexity_share": 0.9,
        "aim_refit_change_share": 0.05, "max_build_seconds_1m": 300.0}


class TextCache:
    """Vectors by text hash, as the content_vectors table keeps them; counts what it had to encode."""

    def __init__(self, batch_size: int = 256):
        self.batch_size, self.vectors, self.encoded, self.encode_seconds = batch_size, {}, 0, 0.0
        self.stats = EncodeStats()  # tokens, padding and FLOPs of what it encoded

    def __call__(self, texts: list[str]) -> np.ndarray:
        hashes = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        missing = {h: t for h, t in zip(hashes, texts) if h not in self.vectors}
        if missing:
            started = time.perf_counter()
            encoded = semantic_ids.encode_texts(list(missing.values()), self.batch_size, stats=self.stats)
            self.encode_seconds += time.perf_counter() - started
            self.encoded += len(missing)
            self.vectors.update(zip(missing, encoded))
        return np.stack([self.vectors[h] for h in hashes])


def codes_for(vectors: np.ndarray, levels: int, codes: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(tokens (N, L+1) as the pipeline's refit writes them, the balanced fit's own codes, seconds)."""
    qcfg = ResidualQuantizerConfig(levels=levels, codes_per_level=codes, seed=seed)
    started = time.perf_counter()
    quantizer = ResidualQuantizer(qcfg).fit(vectors)
    tokens = semantic_ids.assign_tokens(quantizer, vectors, np.full((len(vectors), levels + 1), -1),
                                        np.empty((0, levels + 1)), 0.0)
    return tokens, quantizer.fit_codes, time.perf_counter() - started


def quality(vectors: np.ndarray, labels, levels: int, codes: int, seeds: list[int]) -> dict:
    """Code quality at levels x codes for each seed, with the summary over seeds."""
    runs = []
    for seed in seeds:
        tokens, fit_codes, seconds = codes_for(vectors, levels, codes, seed)
        run = {"seed": seed, "build_seconds": seconds, **sid_metrics.code_quality(tokens[:, :-1], codes),
               "collision_rate_balanced_fit_codes": sid_metrics.collision_rate(fit_codes),
               "full_sid_duplicates": len(tokens) - len(np.unique(tokens, axis=0))}
        if labels is not None:
            for prefix_len in (1, 2):
                purity = sid_metrics.prefix_purity(tokens[:, :-1], labels, prefix_len)
                run[f"purity_level{prefix_len}"], run[f"purity_level{prefix_len}_lift"] = purity["purity"], purity["lift"]
        if seed == seeds[0]:  # cosine 0.95 = near-duplicates (they bound collisions from below); 0.9 for context
            run["near_duplicates"] = {str(t): sid_metrics.near_duplicate_report(vectors, tokens[:, :-1], t) for t in (0.95, 0.9)}
        runs.append(run)
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and k != "seed"]
    summary = {k: {"mean": float(np.mean([r[k] for r in runs])), "min": float(np.min([r[k] for r in runs])),
                   "max": float(np.max([r[k] for r in runs]))} for k in keys}
    min_share = min(summary[f"level{level}_perplexity_share"]["min"] for level in range(levels))
    return {"levels": levels, "codes_per_level": codes, "items": len(vectors), "seeds": runs, "summary": summary,
            "near_duplicates": runs[0]["near_duplicates"], "min_perplexity_share": min_share}


def stability(gen: GeneratorConfig, days: int, levels: int, codes: int, stickiness: float, folder: Path,
              tracking: dict[str, str] | None = None) -> dict:
    """The pipeline's catalog and semantic_ids steps over days + 1 generated days in a scratch lake
    (`folder`): unchanged items' SIDs compared day by day; the last day refits (cadence), and that
    refit is replayed on the same vectors warm with and without stickiness, and cold. The steps log
    to a scratch MLflow store in `folder` (or `tracking` overrides), never to the factory's own."""
    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import CONTENT_VECTORS, ITEMS
    from jobs.pipeline import run_step
    from jobs.synthetic.generate import generate_drops, generated_days
    from jobs.tracking import day_runs
    from jobs.tracking.runs import new_run_key

    tracking = tracking or {"mlflow.tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
                            "mlflow.artifact_uri": (folder / "mlartifacts").as_uri()}
    cfg = load_config(overrides={"paths.state_dir": str(folder), **tracking, "mlflow.experiment": "bench_sid_stability",
                                 "sid.levels": str(levels), "sid.codes_per_level": str(codes),
                                 "sid.refit_every_days": str(days), "sid.refit_stickiness": str(stickiness)})
    gen = dataclasses.replace(gen, days=days + 1)
    generate_drops(gen, Path(cfg.landing_uri))
    daily, before = [], {}
    for ds in generated_days(gen):
        run_key = new_run_key()  # through the pipeline, so the day's MLflow parent run ends like a real one
        run_step("catalog", ds, cfg, run_key)
        book, previous_tokens = semantic_ids.latest_codebook(cfg), before  # what the last day's refit starts from
        step = run_step("semantic_ids", ds, cfg, run_key)
        day_runs.invocation_ended(cfg, ds, run_key, ["catalog", "semantic_ids"])
        now = semantic_ids.version_tokens(cfg, int(step.metrics["codebook_version"]))
        kept = [i for i, (_, h) in before.items() if now[i][1] == h]  # text unchanged since yesterday
        daily.append({"ds": ds, "refit_reason": step.params["refit_reason"], "items": len(now),
                      "texts_encoded": step.metrics["texts_encoded"], "wall_seconds": step.wall_seconds,
                      "unchanged_items": len(kept), "unchanged_sid_changes": sum(now[i][0] != before[i][0] for i in kept),
                      **{k: step.metrics[k] for k in ("collision_rate_before_dedup", "genre_purity_level1_lift",
                                                      "genre_purity_level2_lift", "full_sid_duplicates")}})
        before = now
    items = delta.read(cfg, ITEMS, columns=["item_id", "text_hash", "first_seen_ds", "genre"]).sort_by(
        [("first_seen_ds", "ascending"), ("item_id", "ascending")]).to_pylist()  # the step's row order
    cache = delta.read(cfg, CONTENT_VECTORS, columns=["text_hash", "vector"])
    by_hash = dict(zip(cache.column("text_hash").to_pylist(), cache.column("vector").to_pylist()))
    x = np.array([by_hash[r["text_hash"]] for r in items], np.float32)
    previous = np.array([previous_tokens[r["item_id"]][0] if r["item_id"] in previous_tokens else [-1] * (levels + 1)
                         for r in items], np.int64)
    same = np.array([previous_tokens.get(r["item_id"], (None, None))[1] == r["text_hash"] for r in items])
    stored = np.array([before[r["item_id"]][0] for r in items], np.int64)
    labels = [r["genre"] for r in items]
    refit = {"ds": daily[-1]["ds"], "reason": daily[-1]["refit_reason"], "unchanged_items": int(same.sum()),
             "before": _purity_and_collisions(previous[previous[:, -1] >= 0],
                                              [label for label, p in zip(labels, previous) if p[-1] >= 0])}
    for name, warm, sticky in (("warm", True, stickiness), ("warm_not_sticky", True, 0.0), ("cold", False, 0.0)):
        qcfg = dataclasses.replace(semantic_ids.quantizer_config(cfg), seed=cfg.sid.seed + (0 if warm else 1))
        started = time.perf_counter()
        _, after = semantic_ids.refit_tokens(qcfg, x, book.centroids if warm else None, previous, sticky)
        refit[name] = {"stickiness": sticky, "seconds": time.perf_counter() - started,
                       "unchanged_sid_change_share": float((after[same] != previous[same]).any(axis=1).mean()),
                       "after": _purity_and_collisions(after, labels)}
        if name == "warm":
            refit[name]["equals_what_the_step_wrote"] = bool((after == stored).all())
    return {"generator": dataclasses.asdict(gen), "levels": levels, "codes_per_level": codes, "stickiness": stickiness,
            "daily": daily, "refit": refit,
            "unchanged_sid_changes_between_refits": sum(d["unchanged_sid_changes"] for d in daily[:-1])}


def _purity_and_collisions(tokens: np.ndarray, labels) -> dict:
    return {"collision_rate_before_dedup": sid_metrics.collision_rate(tokens[:, :-1]),
            **{f"purity_level{n}_lift": sid_metrics.prefix_purity(tokens[:, :-1], labels, n)["lift"] for n in (1, 2)}}


def build_speed(sizes: list[int], levels: int, codes: int, dim: int = 384, seed: int = 0) -> list[dict]:
    """Refit time (fit on <= 100k sampled rows + assign all) on clustered synthetic unit vectors."""
    out = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((2000, dim)).astype(np.float32)
        x = centres[rng.integers(0, 2000, n)]
        for start in range(0, n, 100_000):  # in place, chunked: 1M x 384 float32 is 1.5 GB
            block = x[start : start + 100_000]
            block += 0.7 * rng.standard_normal(block.shape, dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
        started = time.perf_counter()
        quantizer = ResidualQuantizer(ResidualQuantizerConfig(levels=levels, codes_per_level=codes,
                                                              seed=seed)).fit(x, encode=False)
        fitted = time.perf_counter()
        quantizer.assign(x)
        out.append({"items": n, "dim": dim, "levels": levels, "codes_per_level": codes, "fit_seconds": fitted - started,
                    "assign_seconds": time.perf_counter() - fitted, "build_seconds": time.perf_counter() - started})
        del x
    return out


def run_benchmark(catalog: ItemCatalog, *, levels: list[int], codes: int = 256, seeds: list[int] = (0, 1, 2),
                  stability_days: int = 7, speed_sizes: list[int] = (100_000, 1_000_000), fusion_weights=(0.25, 0.5),
                  generator: GeneratorConfig | None = None, stickiness: float = 1.0, cfg: FactoryConfig | None = None,
                  out: Path | None = None, log_to_mlflow: bool = True, command: str | None = None) -> dict:
    """Every measurement of the module doc on `catalog`; returns the result and writes it to `out` as JSON."""
    cfg = cfg or load_config()
    started = time.perf_counter()
    labels = catalog.labels
    with LoadSampler() as load:
        cache = TextCache(cfg.sid.encode_batch_size)
        vectors = cache(catalog.texts)
        cold = {"items": len(catalog.texts), "seconds": cache.encode_seconds,
                "items_per_s": len(catalog.texts) / max(cache.encode_seconds, 1e-9),
                "text_encoder": text_encoder_roofline(cache.stats)}
        t = time.perf_counter()
        cache(catalog.texts)  # every text is cached now: hashing + lookup only
        cached_seconds = time.perf_counter() - t
        encoding = {"cold": cold, "cached": {"items": len(catalog.texts), "seconds": cached_seconds,
                                             "items_per_s": len(catalog.texts) / max(cached_seconds, 1e-9)}}
        result_quality = {f"{n}x{codes}": quality(vectors, labels, n, codes, list(seeds)) for n in levels}
        with_label = None
        if labels is not None:
            texts = [f"{text} | {', '.join(label)}" for text, label in zip(catalog.texts, labels)]
            with_label = {f"{n}x{codes}": quality(cache(texts), labels, n, codes, list(seeds)) for n in levels[:1]}
        fusion = None
        if catalog.collaborative is not None and fusion_weights:
            fusion = {"collaborative": catalog.collaborative_source, "weights": {}}
            for weight in fusion_weights:
                fused = semantic_ids.fuse_vectors(vectors, catalog.collaborative, weight)
                fusion["weights"][str(weight)] = quality(fused, labels, levels[0], codes, list(seeds))
            known = np.linalg.norm(catalog.collaborative, axis=1) > 0
            fusion["weights"]["1.0 (collaborative only)"] = quality(catalog.collaborative[known],
                                                                    [labels[i] for i in np.flatnonzero(known)],
                                                                    levels[0], codes, list(seeds))
        gen = generator or GeneratorConfig(new_items_per_day=60, edited_items_per_day=30)  # 2% / 1% of 3000 items
        stable = None
        if stability_days:
            with tempfile.TemporaryDirectory(prefix="bench-sid-") as folder:
                stable = stability(gen, stability_days, levels[0], codes, stickiness, Path(folder))
        speed = build_speed(list(speed_sizes), levels[0], codes) if speed_sizes else []
    checks = _checks(result_quality[f"{levels[0]}x{codes}"], result_quality, stable, speed)
    result = {
        "benchmark": "sid", "date": time.strftime("%Y-%m-%d"), "command": command,
        "catalog": {"source": catalog.source, "sha256": catalog.sha256, "items": len(catalog.ids),  # no item text: data
                    "labels": labels is not None},                                                   # licences vary
        "params": {"levels": list(levels), "codes_per_level": codes, "seeds": list(seeds), "stickiness": stickiness,
                   "text_encoder": semantic_ids.TEXT_ENCODER, "quantizer": "jobs.steps.semantic_ids.refit_tokens (balanced "
                   "residual k-means, normalised residuals, nearest-centroid codes, de-duplication token)"},
        "bars": BARS, "checks": checks, "encoding": encoding, "quality": result_quality,
        "quality_label_in_text": with_label, "fusion": fusion, "stability": stable, "build_speed": speed,
        "machine": machine(), "load": load.summary(), "wall_seconds": time.perf_counter() - started,
    }
    if log_to_mlflow:
        _log_mlflow(cfg, result, Path(catalog.source).name)
    if out is not None:
        result = write_result(out, result, summary_rows(result))
    return result


def _checks(main: dict, result_quality: dict, stable: dict | None, speed: list[dict]) -> dict:
    """The bars (BARS) checked on the first codebook shape, the stability run and the build speed."""
    collisions = main["summary"]["collision_rate_before_dedup"]["mean"]
    checks = {"collision_rate_le_3pct": collisions <= BARS["max_collision_rate_3x256"],
              "collision_rate_le_1_5pct": collisions <= BARS["aim_collision_rate_3x256"],
              "perplexity_ge_0_9K_every_level": main["min_perplexity_share"] >= BARS["min_perplexity_share"],
              "zero_full_sid_duplicates": all(r["full_sid_duplicates"] == 0 for q in result_quality.values() for r in q["seeds"])}
    if stable:
        checks["unchanged_items_keep_sid_between_refits"] = stable["unchanged_sid_changes_between_refits"] == 0
        warm = stable["refit"]["warm"]["unchanged_sid_change_share"]
        checks["warm_refit_change_share_le_5pct"] = warm <= BARS["aim_refit_change_share"]
    if speed:
        checks["build_1m_under_5min"] = all(s["build_seconds"] < BARS["max_build_seconds_1m"] for s in speed)
    return checks


def summary_rows(result: dict) -> list[dict]:
    """Judged figures of the first codebook shape (collisions, perplexity, duplicates), stability and build speed."""
    bars, checks = result["bars"], result["checks"]
    name = next(iter(result["quality"]))
    main = result["quality"][name]
    collision = main["summary"]["collision_rate_before_dedup"]
    rows = [
        summary_row(f"sid {name}: collision rate before de-duplication (mean over seeds)", collision["mean"], "share",
                    f"≤ {bars['max_collision_rate_3x256']} (aim {bars['aim_collision_rate_3x256']})",
                    checks["collision_rate_le_3pct"], f"min {collision['min']:.4f}, max {collision['max']:.4f}"),
        summary_row(f"sid {name}: lowest perplexity / codes of any level", main["min_perplexity_share"], "share",
                    f"≥ {bars['min_perplexity_share']}", checks["perplexity_ge_0_9K_every_level"]),
        summary_row(f"sid {name}: items sharing a full SID (every shape and seed)",
                    sum(r["full_sid_duplicates"] for q in result["quality"].values() for r in q["seeds"]), "items", "0",
                    checks["zero_full_sid_duplicates"]),
    ]
    stable = result["stability"]
    if stable:
        warm = stable["refit"]["warm"]["unchanged_sid_change_share"]
        rows += [summary_row("sid stability: SID changes of unchanged items between refits",
                             stable["unchanged_sid_changes_between_refits"], "items", "0",
                             checks["unchanged_items_keep_sid_between_refits"]),
                 summary_row("sid stability: unchanged items whose SID a warm refit changed", warm, "share",
                             f"≤ {bars['aim_refit_change_share']}", checks["warm_refit_change_share_le_5pct"])]
    for s in result["build_speed"]:
        rows.append(summary_row(f"sid build {s['levels']}x{s['codes_per_level']} on {s['items']:,} items", s["build_seconds"],
                                "s", f"< {bars['max_build_seconds_1m']:.0f} s", s["build_seconds"] < bars["max_build_seconds_1m"],
                                f"fit {s['fit_seconds']:.0f} s + assign {s['assign_seconds']:.0f} s"))
    enc = result["encoding"]
    rows.append(summary_row("sid: text encoding, cold", enc["cold"]["items_per_s"], "texts/s",
                            detail=f"{enc['cached']['items_per_s']:.0f} texts/s from the cache"))
    rows += text_encoder_rows(enc["cold"].get("text_encoder"))
    return rows


def _log_mlflow(cfg: FactoryConfig, result: dict, name: str) -> None:
    import mlflow

    with benchmark_run(cfg, f"bench sid {name}", "bench_sid.json", result):
        mlflow.log_params({"catalog": result["catalog"]["source"], "catalog_sha256": result["catalog"]["sha256"],
                           "command": result["command"], **{k: str(v) for k, v in result["params"].items()}})
        metrics = {}
        for section in ("checks", "encoding", "quality", "quality_label_in_text", "fusion"):
            flat_metrics(section, result[section] or {}, metrics)
        if result["stability"]:
            flat_metrics("stability.refit", result["stability"]["refit"], metrics)
        for s in result["build_speed"]:
            metrics[f"build_speed.{s['items']}.build_seconds"] = s["build_seconds"]
        metrics = {k.replace(" ", "_").replace("(", "").replace(")", ""): v for k, v in metrics.items()
                   if ".seeds." not in k and not k.endswith((".min", ".max"))}
        mlflow.log_metrics({**metrics, "wall_seconds": result["wall_seconds"], "load1_mean": result["load"]["load1_mean"]})


def render_markdown(result: dict) -> str:
    """The headline numbers as markdown tables."""
    lines = [f"Catalog `{result['catalog']['source']}`: {result['catalog']['items']} items "
             f"(sha256 {result['catalog']['sha256'][:12]}…). Means over seeds {result['params']['seeds']} (min–max).", "",
             "| codebook | text | collisions before dedup | largest bucket | "
             f"perplexity per level (K={result['params']['codes_per_level']}) | purity lift L1 | L2 |",
             "|---|---|---|---|---|---|---|"]

    def row(name: str, text: str, q: dict) -> str:
        s = q["summary"]
        ppl = " / ".join(f"{s[f'level{n}_perplexity']['mean']:.0f}" for n in range(q["levels"]))
        lift = [f"{s[f'purity_level{n}_lift']['mean']:.3f}" if f"purity_level{n}_lift" in s else "–" for n in (1, 2)]
        c = s["collision_rate_before_dedup"]
        return (f"| {name} | {text} | {c['mean']:.2%} ({c['min']:.2%}–{c['max']:.2%}) | {s['largest_bucket']['max']:.0f} | "
                f"{ppl} | {lift[0]} | {lift[1]} |")

    for name, q in result["quality"].items():
        lines.append(row(name, "as given", q))
    for name, q in (result["quality_label_in_text"] or {}).items():
        lines.append(row(name, "label appended", q))
    for weight, q in ((result["fusion"] or {}).get("weights") or {}).items():
        lines.append(row(f"{q['levels']}x{q['codes_per_level']}", f"fused, collaborative weight {weight}", q))
    lines.append("")
    for near in next(iter(result["quality"].values()))["near_duplicates"].values():
        lines.append(f"Near-duplicates at cosine >= {near['threshold']}: {near['near_duplicate_item_share']:.2%} of items, "
                     f"{near['near_duplicate_pairs']} pairs, of which {near['pairs_sharing_full_code']:.0%} share the full code "
                     f"and {near['pairs_sharing_level1']:.0%} the first; {near['collisions_explained']:.0%} of colliding items "
                     f"collide with one of theirs.")
    stable = result["stability"]
    if stable:
        refit, gen = stable["refit"], stable["generator"]
        warm, before, after = refit["warm"], refit["before"], refit["warm"]["after"]
        lines += ["",
                  f"Stability ({stable['levels']}x{stable['codes_per_level']}, the pipeline's catalog + semantic_ids "
                  f"steps on {gen['days']} generated days, {gen['new_items_per_day']} new + "
                  f"{gen['edited_items_per_day']} edited items/day): SID changes of unchanged items on days without "
                  f"refit: {stable['unchanged_sid_changes_between_refits']}. Refit on {refit['ds']} ({refit['reason']}), "
                  f"share of the {refit['unchanged_items']} unchanged items whose SID changed: warm + sticky "
                  f"{warm['unchanged_sid_change_share']:.2%} (what the step wrote: {warm['equals_what_the_step_wrote']}), "
                  f"warm without stickiness {refit['warm_not_sticky']['unchanged_sid_change_share']:.2%}, "
                  f"cold {refit['cold']['unchanged_sid_change_share']:.2%}. Genre purity lift L1/L2 "
                  f"{before['purity_level1_lift']:.3f}/{before['purity_level2_lift']:.3f} before, "
                  f"{after['purity_level1_lift']:.3f}/{after['purity_level2_lift']:.3f} after; collisions "
                  f"{before['collision_rate_before_dedup']:.2%} -> {after['collision_rate_before_dedup']:.2%}."]
        lines.append("Step wall seconds per day (texts encoded): " + ", ".join(
            f"{d['wall_seconds']:.1f} ({d['texts_encoded']:.0f})" for d in stable["daily"]) + ".")
    enc = result["encoding"]
    lines += ["", f"Encoding: {enc['cold']['items_per_s']:.0f} texts/s cold, "
                  f"{enc['cached']['items_per_s']:.0f} texts/s from the cache."]
    for s in result["build_speed"]:
        lines.append(f"Build {s['levels']}x{s['codes_per_level']} on {s['items']:,} synthetic {s['dim']}-d vectors: "
                     f"{s['build_seconds']:.0f} s (fit {s['fit_seconds']:.0f} s + assign {s['assign_seconds']:.0f} s).")
    load, m = result["load"], result["machine"]
    lines += ["", f"Checks: {', '.join(f'{k}={v}' for k, v in result['checks'].items())}.",
              f"Wall {result['wall_seconds'] / 60:.1f} min on {m['nproc']} cores, {m['ram_gib']} GiB; load (1 min) mean "
              f"{load['load1_mean']:.1f}, max {load['load1_max']:.1f}."]
    return "\n".join(lines)
