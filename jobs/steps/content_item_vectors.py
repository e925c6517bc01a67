"""Item vectors for every catalogued item on its first day (a helper of the `embed` step, issue 19).

The champion encoder only has vectors for the items that were in its item table when it was
trained; an item catalogued since has none, so dot-product retrieval and the faiss index cannot
return it until the next retrain. Here a ridge map (models/content_map.py) from the item's text
vector (MiniLM, the `content_vectors` cache the semantic_ids step also reads; items not cached yet
are encoded and cached here) to the champion's item vector is fitted on the items the champion
knows (those with at least cold_items.min_events events in the day's user_sequences: a row the
encoder barely trained is still near its random start), and applied to every catalogued item it
does not know. Such rows are marked `vector_source = "content"` (the encoder's own rows:
"encoder") and carry the champion's model_version: they live in its space. The fit quality (mean
cosine on held-out known items) is a metric of the embed run. item_embeddings is a small table
(TableSpec.scale): this runs in the driver; only the per-item event counts come from Spark.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.lakehouse import delta
from jobs.lakehouse.spark import read_snapshot
from jobs.lakehouse.tables import ITEM_VOCAB, ITEMS, USER_SEQUENCES
from jobs.steps import semantic_ids
from models.content_map import fit_content_map

ENCODER, FACETS, CONTENT = "encoder", "facets", "content"  # item_embeddings.vector_source
DERIVED = (FACETS, CONTENT)  # rows the champion did not train: a new item's vector on its first days
MIN_FIT_ITEMS = 20  # fewer known items with enough events: fit on every known item


def item_event_counts(cfg: FactoryConfig, ds: str) -> dict[int, int]:
    """item_idx -> events of it in ds's user_sequences (Spark; one row per item reaches the driver)."""
    _, sequences = read_snapshot(cfg, USER_SEQUENCES, {"ds": [ds]})
    # Bounded: one row per item of the day (an item table: small, like item_vocab), not per event or user.
    counts = sequences.select(F.explode("item_idx").alias("item_idx")).groupBy("item_idx").count().toArrow()
    return dict(zip(counts.column("item_idx").to_pylist(), counts.column("count").to_pylist()))


def fit_mask(known_idx: list[int], counts: dict[int, int] | None, min_events: int) -> np.ndarray:
    """(K,) bool over the known items: those the map is fitted on (every one without counts, or when
    fewer than MIN_FIT_ITEMS have min_events events)."""
    if counts is None or min_events <= 0:
        return np.ones(len(known_idx), bool)
    mask = np.array([counts.get(i, 0) >= min_events for i in known_idx], bool)
    return mask if mask.sum() >= MIN_FIT_ITEMS else np.ones(len(known_idx), bool)


def vector_column(vectors: np.ndarray) -> pa.Array:
    flat = pa.array(np.asarray(vectors, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))


def catalog_item_vectors(cfg: FactoryConfig, ds: str, encoder_items: pa.Table, model_version: str, step,
                         counts: dict[int, int] | None = None) -> pa.Table:
    """encoder_items (item_id, item_idx, embedding, model_version, vector_source: the champion's rows,
    embed.item_vectors) plus a content-derived row for every item catalogued by ds that has a
    vocabulary id but no row yet (none when the champion has item facets: it has a row for every
    vocabulary item). With cold_items.enabled off: the champion's rows only.
    counts: item_idx -> events in ds's user_sequences (item_event_counts when None)."""
    rows = encoder_items
    if not cfg.cold_items.enabled or encoder_items.num_rows == 0:
        return rows
    items = delta.read(cfg, ITEMS, columns=["item_id", "text", "text_hash", "first_seen_ds"])
    items = items.filter(pc.less_equal(items.column("first_seen_ds"), ds)).sort_by("item_id")
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"])
    item_idx = dict(zip(vocab.column("item_id").to_pylist(), vocab.column("item_idx").to_pylist()))
    known = {item: i for i, item in enumerate(encoder_items.column("item_id").to_pylist())}
    ids = items.column("item_id").to_pylist()
    # An item without a vocabulary id has no index position yet (features has not run for ds).
    keep = np.array([item in known or item in item_idx for item in ids], bool)
    step.metrics(items_catalogued_without_id=int((~keep).sum()))
    if all(item in known for item, k in zip(ids, keep) if k):
        step.metrics(items_content_derived=0)
        return rows  # every item has the champion's row: no text to encode, no map to fit
    items = items.filter(pa.array(keep))
    ids = items.column("item_id").to_pylist()
    content = semantic_ids.content_vectors(cfg, ds, items, step)  # (N, 384), items' order
    # The map learns the champion's trained rows only (not rows it derived itself, e.g. from facets).
    trained = {item for item, source in zip(*(encoder_items.column(c).to_pylist() for c in ("item_id", "vector_source")))
               if source == ENCODER}
    is_known = np.array([item in known for item in ids], bool)
    is_trained = np.array([item in trained for item in ids], bool)
    target = np.stack(encoder_items.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    target = target[[known[item] for item in ids if item in trained]]
    if counts is None and cfg.cold_items.min_events > 0:
        counts = item_event_counts(cfg, ds)
    fit = fit_mask([item_idx[item] for item in ids if item in trained], counts, cfg.cold_items.min_events)
    mapping, quality = fit_content_map(content[is_trained][fit], target[fit], cfg.cold_items.holdout_share,
                                       cfg.cold_items.seed)
    new_ids = [item for item, k in zip(ids, is_known) if not k]
    step.metrics(**{f"content_map_{name}": value for name, value in quality.items() if np.isfinite(value)},
                 items_content_derived=len(new_ids))
    derived = pa.table({
        "item_id": pa.array(new_ids, pa.string()),
        "item_idx": pa.array([item_idx[item] for item in new_ids], pa.int32()),
        "embedding": vector_column(mapping.apply(content[~is_known])),
        "model_version": pa.array([model_version] * len(new_ids), pa.string()),
        "vector_source": pa.array([CONTENT] * len(new_ids), pa.string()),
    })
    return pa.concat_tables([rows.cast(derived.schema), derived]).sort_by("item_idx")
