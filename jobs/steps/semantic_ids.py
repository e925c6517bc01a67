"""Step `semantic_ids`: content vectors for the catalog, codebooks, and an SID for every item.

* Vectors: all-MiniLM-L6-v2 over the item text, cached by text hash in `content_vectors`, so a day
  encodes only new and edited items. With sid.fuse_collaborative_weight = w > 0 the quantised vector
  is [sqrt(1-w) content, sqrt(w) collaborative] (item_embeddings of the day; zeros for items the
  encoder does not know yet), so both parts keep their share of the unit norm.
* Codes: nearest centroid per level under the stored codebook (ResidualQuantizer.assign, not the
  balanced fit's codes, so an item assigned on the build day and one assigned later are treated
  alike), sticky for items that already have an SID (sid.refit_stickiness: a code is kept unless
  another is clearly nearer). The final de-duplication token makes every full SID unique (the
  step fails if two items ever share one).
* Between refits new and edited items are assigned against the current codebook; every other item
  keeps its SID (its item_tokens row is not touched). An edited item whose codes stay keeps its SID.
* A refit writes a new codebook_version, warm-started from the previous centroids; items whose codes
  come out unchanged keep their de-duplication token, so they keep their whole SID
  (refit_sid_change_share, and _unchanged for items whose text did not change). Why it refits is
  the MLflow param `refit_reason` and part of the codebook's params:
  no_codebook | config_changed (levels, codes per level, fusion weight or vector dimension differ
  from the stored codebook: a cold refit) | forced | cadence (sid.refit_every_days) | drift (after
  today's assignment a sid.refit_* threshold is breached that the codebook met when it was built;
  `refit_drift` says which; one already breached at build time would only churn SIDs if refitted).
  A rerun of the day a codebook was built (or of an earlier day) reuses it: no new version.
* A forced refit (--force-codebook-rebuild, DAG param) always refits, also on a day that already
  built a codebook; the codebook's params and the MLflow run say `forced` (and the run key that forced
  it). Two exceptions, each said in one sentence: a retry of the same invocation (an Airflow task
  retry: same run key) reuses the codebook its first attempt built, and a forced refit of a day before
  the newest codebook's build day fails (an older codebook would be put on top of a newer one).
* The collision policy (sid.collision_policy, jobs/steps/sid_lookup.py) decides what a bare code resolves
  to; with "popular" the step logs the day's resolution (from the events of ds) as an artifact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import ComputeConfig, FactoryConfig, SidConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import CODEBOOKS, CONTENT_VECTORS, ITEM_EMBEDDINGS, ITEM_TOKENS, ITEMS
from jobs.runtime.compute import device_name
from jobs.steps import text_encoder
from jobs.steps.sid_lookup import plays_on, resolve_bare_codes
from jobs.steps.text_encoder import TEXT_DIM, TEXT_ENCODER, EncodeStats
from jobs.tracking import plots
from jobs.tracking.runs import StepResult, track_step
from models import sid_metrics
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig, dedup_tokens, sid_string

log = logging.getLogger(__name__)


def encode_texts(texts: list[str], batch_size: int, compute: ComputeConfig | None = None,
                 stats: EncodeStats | None = None) -> np.ndarray:
    """(N, 384) float32 unit vectors for the texts (jobs/steps/text_encoder.py: length-bucketed
    batches on [compute]'s device and dtype); `stats`, if given, adds up what the encoding took."""
    compute = compute or ComputeConfig()
    vectors, took = text_encoder.encode(texts, batch_size, device_name(compute), compute.inference_dtype)
    if stats is not None:
        stats.add(took)
    return vectors


def content_vectors(cfg: FactoryConfig, ds: str, items: pa.Table, step) -> np.ndarray:
    """Vectors for items (row order kept): cached ones read, the rest encoded and cached."""
    cache = delta.read(cfg, CONTENT_VECTORS, columns=["text_hash", "vector"])
    step.read(CONTENT_VECTORS, delta.current_version(cfg, CONTENT_VECTORS))
    cached = dict(zip(cache.column("text_hash").to_pylist(), cache.column("vector").to_numpy(zero_copy_only=False)))
    hashes, texts = items.column("text_hash").to_pylist(), items.column("text").to_pylist()
    missing = {h: t for h, t in zip(hashes, texts) if h not in cached}
    encoded = encode_texts(list(missing.values()), cfg.sid.encode_batch_size, compute=cfg.compute)
    step.metrics(texts_encoded=len(missing), texts_cached=len(hashes) - len(missing))
    if missing:
        flat = pa.array(encoded.reshape(-1), pa.float32())
        new = pa.table({
            "text_hash": list(missing), "vector": pa.FixedSizeListArray.from_arrays(flat, encoded.shape[1]),
            "encoder": [TEXT_ENCODER] * len(missing), "encoded_ds": [ds] * len(missing),
        })
        step.wrote(CONTENT_VECTORS, delta.upsert(cfg, CONTENT_VECTORS, new)[0])
        cached.update(zip(missing, encoded))
    return np.stack([np.asarray(cached[h], dtype=np.float32) for h in hashes]) if hashes else np.zeros((0, TEXT_DIM), np.float32)


def fuse_vectors(content: np.ndarray, collaborative: np.ndarray, weight: float) -> np.ndarray:
    """[sqrt(1-w) content, sqrt(w) collaborative] (N, Dc + Dk), rows L2-normalised.

    Rows of `collaborative` that are all zero (no embedding yet) leave the content part alone.
    """
    x = np.concatenate([np.sqrt(1.0 - weight) * content, np.sqrt(weight) * collaborative], axis=1).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def collaborative_vectors(cfg: FactoryConfig, ds: str, item_ids: list[str], step) -> np.ndarray:
    """(N, d) item_embeddings of ds in item order; zeros for items without one."""
    rows = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": ds}, columns=["item_id", "embedding"])
    step.read(ITEM_EMBEDDINGS, delta.current_version(cfg, ITEM_EMBEDDINGS))
    if rows.num_rows == 0:
        raise FactoryError(f"ds={ds}: sid.fuse_collaborative_weight > 0 needs the day's item_embeddings; run the "
                           f"embed step first or set sid.fuse_collaborative_weight = 0.")
    by_id = dict(zip(rows.column("item_id").to_pylist(), rows.column("embedding").to_pylist()))
    dim = len(next(iter(by_id.values())))
    out = np.zeros((len(item_ids), dim), np.float32)
    known = [i for i, item in enumerate(item_ids) if item in by_id]
    out[known] = np.array([by_id[item_ids[i]] for i in known], np.float32)
    step.metrics(items_without_collaborative=len(item_ids) - len(known))
    return out


def quantizer_config(cfg: FactoryConfig) -> ResidualQuantizerConfig:
    return ResidualQuantizerConfig(
        levels=cfg.sid.levels, codes_per_level=cfg.sid.codes_per_level,
        kmeans_iterations=cfg.sid.kmeans_iterations, seed=cfg.sid.seed,
    )


@dataclass(frozen=True)
class Codebook:
    version: int
    built_ds: str
    centroids: list[np.ndarray]  # one (K_l, D) array per level
    params: dict  # {"quantizer": ..., "refit_reason": ..., "build_quality": ...}; older codebooks: the quantizer only


def latest_codebook(cfg: FactoryConfig) -> Codebook | None:
    """The newest codebook, or None."""
    books = delta.read(cfg, CODEBOOKS)
    if books.num_rows == 0:
        return None
    version = pc.max(books.column("codebook_version")).as_py()
    rows = books.filter(pc.equal(books.column("codebook_version"), version)).sort_by([("level", "ascending"),
                                                                                      ("code", "ascending")])
    centroids = []
    for level in sorted(set(rows.column("level").to_pylist())):
        level_rows = rows.filter(pc.equal(rows.column("level"), level))
        centroids.append(np.stack(level_rows.column("centroid").to_numpy(zero_copy_only=False)).astype(np.float32))
    return Codebook(version, rows.column("built_ds")[0].as_py(), centroids, json.loads(rows.column("params")[0].as_py() or "{}"))


def scheduled_refit(cfg: FactoryConfig, ds: str, latest: Codebook | None, force: bool, dim: int,
                    run_key: str = "") -> str | None:
    """Why the day refits before any assignment (None: assign against `latest`, then check drift).

    force: "forced" whenever it can be honoured; FactoryError (one sentence) when it cannot."""
    if latest is None:
        return "no_codebook"
    quantizer = latest.params.get("quantizer", latest.params)
    if (len(latest.centroids) != cfg.sid.levels or quantizer.get("codes_per_level") != cfg.sid.codes_per_level
            or latest.centroids[0].shape[1] != dim
            or latest.params.get("fuse_collaborative_weight", 0.0) != cfg.sid.fuse_collaborative_weight):
        return "config_changed"
    if force:
        if latest.built_ds > ds:
            raise FactoryError(
                f"ds={ds}: cannot force a codebook refit: the newest codebook (version {latest.version}) was built "
                f"for a later day, {latest.built_ds}, and a refit for {ds} would put an older codebook on top of it; "
                f"force the refit on {latest.built_ds} or later.")
        if run_key and latest.built_ds == ds and latest.params.get("forced_by") == run_key:
            return None  # a retry of the invocation that already refitted (it may have crashed before its tokens)
        return "forced"
    if latest.built_ds >= ds:  # a rerun of the build day, or of an earlier day: keep what downstream already uses
        return None
    if (parse_ds(ds) - parse_ds(latest.built_ds)).days >= cfg.sid.refit_every_days:
        return "cadence"
    return None


def drift_breaches(sid: SidConfig, now: dict, at_build: dict | None) -> list[str]:
    """Thresholds the quality `now` breaches and the codebook met when built (sid_metrics.code_quality dicts).

    A threshold already breached at build time does not count: refitting would not fix it, only churn SIDs.
    """
    checks = [("collision_rate_before_dedup", ">", sid.refit_max_collision_rate, "refit_max_collision_rate")]
    for key in sorted(k for k in now if k.endswith("_perplexity_share")):
        checks.append((key, "<", sid.refit_min_perplexity_share, "refit_min_perplexity_share"))
    for key in sorted(k for k in now if k.endswith("_utilisation")):
        checks.append((key, "<", sid.refit_min_utilisation, "refit_min_utilisation"))

    def breached(quality: dict, key: str, op: str, limit: float) -> bool:
        return key in quality and (quality[key] > limit if op == ">" else quality[key] < limit)

    return [f"{key} {now[key]:.4f} {op} sid.{name} {limit}" for key, op, limit, name in checks
            if breached(now, key, op, limit) and not breached(at_build or {}, key, op, limit)]


def assign_tokens(quantizer: ResidualQuantizer, vectors: np.ndarray, previous: np.ndarray,
                  kept: np.ndarray, stickiness: float) -> np.ndarray:
    """Tokens (n, L+1) — codes plus de-duplication token — for `vectors` (n, D).

    previous (n, L+1): each item's tokens so far (-1 rows for new items): with `stickiness` it keeps a
    code unless another is clearly nearer, and an item whose codes come out unchanged keeps its token,
    so its whole SID stays. kept (M, L+1): tokens of the version's other items, which do not change;
    new tokens never repeat one of theirs.
    """
    levels = len(quantizer.centroids)
    previous = np.asarray(previous, np.int64).reshape(-1, levels + 1)
    kept = np.asarray(kept, np.int64).reshape(-1, levels + 1)
    codes = quantizer.assign(vectors, previous[:, :-1], stickiness)
    same = (previous[:, :-1] == codes).all(axis=1) & (previous[:, -1] >= 0)
    if same.any() and len(kept):  # a kept row already holding the same full SID wins (cannot happen for valid input)
        both = np.concatenate([kept, previous[same]])
        _, group, counts = np.unique(both, axis=0, return_inverse=True, return_counts=True)
        same[np.flatnonzero(same)[counts[group.reshape(-1)[len(kept):]] > 1]] = False
    tokens = np.empty((len(codes), levels + 1), np.int64)
    tokens[:, :-1] = codes
    tokens[same, -1] = previous[same, -1]
    taken = np.concatenate([kept, tokens[same]])
    tokens[~same, -1] = dedup_tokens(codes[~same], taken[:, :-1], taken[:, -1])
    return tokens


def refit_tokens(qcfg: ResidualQuantizerConfig, vectors: np.ndarray, init: list[np.ndarray] | None,
                 previous: np.ndarray, stickiness: float) -> tuple[ResidualQuantizer, np.ndarray]:
    """Fit a codebook (warm-started from `init`) and assign every row of `vectors` (N, D) against it.

    previous (N, L+1) are the items' tokens in the previous version (-1 rows for items without one).
    """
    quantizer = ResidualQuantizer(qcfg).fit(vectors, init_centroids=init, encode=False)
    return quantizer, assign_tokens(quantizer, vectors, previous, np.empty((0, qcfg.levels + 1), np.int64), stickiness)


def codebook_rows(version: int, ds: str, quantizer: ResidualQuantizer, params: dict) -> pa.Table:
    rows = {"codebook_version": [], "level": [], "code": [], "centroid": [], "built_ds": [], "params": []}
    for level, centroids in enumerate(quantizer.centroids):
        for code, centroid in enumerate(centroids):
            for key, value in zip(rows, (version, level, code, centroid.tolist(), ds, json.dumps(params))):
                rows[key].append(value)
    return pa.table(rows)


def token_rows(version: int, ds: str, items: pa.Table, tokens: np.ndarray) -> pa.Table:
    return pa.table({
        "codebook_version": [version] * items.num_rows, "item_id": items.column("item_id"),
        "tokens": [list(map(int, t)) for t in tokens], "sid": [sid_string(t) for t in tokens.tolist()],
        "text_hash": items.column("text_hash"), "assigned_ds": [ds] * items.num_rows,
    })


def version_tokens(cfg: FactoryConfig, version: int) -> dict[str, tuple[list[int], str]]:
    """item_id -> (tokens, text_hash) of one codebook version."""
    rows = delta.read(cfg, ITEM_TOKENS, where={"codebook_version": version}, columns=["item_id", "tokens", "text_hash"])
    return {i: (t, h) for i, t, h in zip(*(rows.column(c).to_pylist() for c in ("item_id", "tokens", "text_hash")))}


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None, force_refit: bool = False) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "semantic_ids", run_key) as step:
        items = delta.read(cfg, ITEMS, columns=["item_id", "text", "text_hash", "first_seen_ds", "genre"])
        step.read(ITEMS, delta.current_version(cfg, ITEMS))
        items = items.filter(pc.less_equal(items.column("first_seen_ds"), ds)).sort_by(
            [("first_seen_ds", "ascending"), ("item_id", "ascending")])  # older items get the lower dedup tokens
        if items.num_rows == 0:
            raise FactoryError(f"ds={ds}: the catalog has no items on this day; run the catalog step first.")
        item_ids = items.column("item_id").to_pylist()
        vectors = content_vectors(cfg, ds, items, step)
        if cfg.sid.fuse_collaborative_weight > 0:
            vectors = fuse_vectors(vectors, collaborative_vectors(cfg, ds, item_ids, step), cfg.sid.fuse_collaborative_weight)
        latest = latest_codebook(cfg)
        qcfg = quantizer_config(cfg)
        step.params(**dataclasses.asdict(qcfg), text_encoder=TEXT_ENCODER, refit_every_days=cfg.sid.refit_every_days,
                    collision_policy=cfg.sid.collision_policy, fuse_collaborative_weight=cfg.sid.fuse_collaborative_weight,
                    refit_stickiness=cfg.sid.refit_stickiness, vector_dim=vectors.shape[1])
        reason = scheduled_refit(cfg, ds, latest, force_refit, vectors.shape[1], step.run_key)
        if force_refit and reason is None:
            step.note(f"forced refit already done by this run ({step.run_key}): codebook version {latest.version}")
        existing = version_tokens(cfg, latest.version) if latest else {}
        if reason is None:
            reason = _assign_between_refits(cfg, ds, step, items, vectors, latest, existing)
        if reason is not None:
            version = _refit(cfg, ds, step, items, vectors, latest, existing, reason, forced=force_refit)
        else:
            version = latest.version
        step.params(refit_reason=reason or "none", force_refit=force_refit)
        _log_quality(cfg, step, version, items)
        return step.result


def _assign_between_refits(cfg: FactoryConfig, ds: str, step, items: pa.Table, vectors: np.ndarray,
                           latest: Codebook, existing: dict) -> str | None:
    """Assign new and edited items against `latest` and write them, unless that breaches a drift
    threshold: then nothing is written and "drift" is returned (the caller refits)."""
    levels = cfg.sid.levels
    item_ids, hashes = items.column("item_id").to_pylist(), items.column("text_hash").to_pylist()
    needs = np.array([existing.get(i, (None, None))[1] != h for i, h in zip(item_ids, hashes)])
    todo_ids = [i for i, n in zip(item_ids, needs) if n]
    # An item's tokens so far: this version's (an edited item), or, if the version has no tokens at
    # all (a crash between the codebook and the token write), the previous version's, as its refit used.
    before = existing or (version_tokens(cfg, latest.version - 1) if latest.version > 1 else {})
    previous = np.array([before[i][0] if len(before.get(i, ((),))[0]) == levels + 1 else [-1] * (levels + 1)
                         for i in todo_ids], np.int64).reshape(-1, levels + 1)
    todo_set = set(todo_ids)
    # Every other row of the version stays (also items first seen after ds, when an older day is rerun).
    kept = np.array([t for i, (t, _) in existing.items() if i not in todo_set], np.int64).reshape(-1, levels + 1)
    quantizer = ResidualQuantizer.from_centroids(quantizer_config(cfg), latest.centroids)
    new_tokens = assign_tokens(quantizer, vectors[needs], previous, kept, cfg.sid.refit_stickiness) if todo_ids else kept[:0]
    now = sid_metrics.code_quality(np.concatenate([kept, new_tokens])[:, :-1], quantizer.effective_codes_per_level)
    breaches = drift_breaches(cfg.sid, now, latest.params.get("build_quality"))
    if breaches:
        step.params(refit_drift="; ".join(breaches))
        return "drift"
    if todo_ids:
        step.wrote(ITEM_TOKENS, delta.upsert(cfg, ITEM_TOKENS, token_rows(latest.version, ds,
                                                                          items.filter(pa.array(needs)), new_tokens),
                                            update_when="s.text_hash != t.text_hash")[0])
    step.note(f"codebook version {latest.version} (built {latest.built_ds}): {len(todo_ids)} new or edited items assigned")
    step.metrics(refit=0, items_assigned=len(todo_ids))
    return None


def _refit(cfg: FactoryConfig, ds: str, step, items: pa.Table, vectors: np.ndarray, latest: Codebook | None,
           existing: dict, reason: str, forced: bool = False) -> int:
    qcfg = quantizer_config(cfg)
    version = latest.version + 1 if latest else 1
    shapes = [c.shape[0] for c in latest.centroids] if latest else []
    init = latest.centroids if reason != "config_changed" and shapes == [min(qcfg.codes_per_level,
                                                                             len(vectors))] * qcfg.levels else None
    item_ids = items.column("item_id").to_pylist()
    width = qcfg.levels + 1
    previous = np.array([existing[i][0] if i in existing and len(existing[i][0]) == width else [-1] * width
                         for i in item_ids], np.int64).reshape(-1, width)
    quantizer, tokens = refit_tokens(qcfg, vectors, init, previous, cfg.sid.refit_stickiness)
    build_quality = sid_metrics.code_quality(tokens[:, :-1], quantizer.effective_codes_per_level)
    params = {"quantizer": dataclasses.asdict(qcfg), "refit_reason": reason, "build_quality": build_quality,
              "vector_dim": int(vectors.shape[1]), "fuse_collaborative_weight": cfg.sid.fuse_collaborative_weight,
              "refit_stickiness": cfg.sid.refit_stickiness}
    if forced:  # the run key that forced it: a retry of that invocation finds its refit done
        params["forced_by"] = step.run_key
    step.wrote(CODEBOOKS, delta.upsert(cfg, CODEBOOKS, codebook_rows(version, ds, quantizer, params))[0])
    new_rows = token_rows(version, ds, items, tokens)
    step.wrote(ITEM_TOKENS, delta.upsert(cfg, ITEM_TOKENS, new_rows)[0])
    if existing:
        old = {i: sid_string(t) for i, (t, _) in existing.items()}
        new = dict(zip(item_ids, new_rows.column("sid").to_pylist()))
        same_text = {i for i, h in zip(item_ids, items.column("text_hash").to_pylist()) if i in existing and existing[i][1] == h}
        step.metrics(refit_sid_change_share=sid_metrics.sid_change_share(old, new),
                     refit_sid_change_share_unchanged=sid_metrics.sid_change_share({i: old[i] for i in same_text}, new))
    step.note(f"built codebook version {version} ({'warm start' if init else 'cold start'}; reason: {reason})")
    step.metrics(refit=1, items_assigned=items.num_rows)
    return version


def _log_quality(cfg: FactoryConfig, step, version: int, items: pa.Table) -> None:
    """Collision rate before de-duplication, per-level usage, prefix purity by genre, full-SID uniqueness,
    and what bare codes resolve to under the collision policy."""
    # Sorted: delta-rs returns a multi-file table's rows in varying order, and the shuffled purity baseline
    # below permutes rows, so an unsorted read made the lift metric differ between reruns.
    rows = delta.read(cfg, ITEM_TOKENS, where={"codebook_version": version}, columns=["item_id", "tokens", "sid"])
    rows = rows.sort_by("item_id")
    tokens = np.array(rows.column("tokens").to_pylist(), dtype=np.int64)
    codes = tokens[:, :-1]
    row_ids = rows.column("item_id").to_pylist()
    genre = dict(zip(items.column("item_id").to_pylist(), items.column("genre").to_pylist()))
    labels = [genre.get(i) or "" for i in row_ids]
    metrics = {
        "codebook_version": version, "items_with_sid": rows.num_rows,
        "full_sid_duplicates": rows.num_rows - len(set(rows.column("sid").to_pylist())),
        "max_dedup_token": int(tokens[:, -1].max()),
        **sid_metrics.code_quality(codes, cfg.sid.codes_per_level),
    }
    usage = sid_metrics.level_usage(codes, cfg.sid.codes_per_level)
    with tempfile.TemporaryDirectory() as folder:
        bucket_sizes = np.unique(codes, axis=0, return_counts=True)[1]
        step.artifact(plots.codebook_usage([u["used"] for u in usage], [u["perplexity"] for u in usage],
                                           cfg.sid.codes_per_level, Path(folder), bucket_sizes), "plots")
    for prefix_len in range(1, min(2, codes.shape[1]) + 1):
        purity = sid_metrics.prefix_purity(codes, labels, prefix_len, np.random.default_rng(0))
        metrics[f"genre_purity_level{prefix_len}"] = purity["purity"]
        metrics[f"genre_purity_level{prefix_len}_lift"] = purity["lift"]
    plays = plays_on(cfg, step.result.ds)
    counts = np.array([plays.get(i, 0) for i in row_ids], np.int64)
    winners = resolve_bare_codes(tokens, counts)
    shared = len(row_ids) - len(winners)
    metrics.update(items_sharing_a_code=int(sid_metrics.collision_rate(codes) * len(row_ids)),
                   items_unreachable_by_bare_code=shared,
                   bare_codes_won_by_later_token=int((tokens[winners, -1] > 0).sum()))
    step.metrics(**metrics)
    if cfg.sid.collision_policy == "popular" and shared:
        group_size = np.bincount(np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1))
        resolution = {sid_string(codes[w]): row_ids[w] for w, size in zip(winners, group_size) if size > 1}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "sid_resolution.json"
            path.write_text(json.dumps({"ds": step.result.ds, "codebook_version": version, "bare_code_to_item": resolution}))
            step.artifact(path)
    if metrics["full_sid_duplicates"]:
        raise RuntimeError(f"codebook {version}: {metrics['full_sid_duplicates']} items share a full SID")
