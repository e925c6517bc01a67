"""New items on day one: every catalogued item gets a vector in item_embeddings (and the faiss index),
content-derived ones for items the champion has not seen, marked as such."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.config import load_config
from jobs.lakehouse import delta
from jobs.lakehouse.tables import CONTENT_VECTORS, ITEM_EMBEDDINGS, ITEM_VOCAB, ITEMS
from jobs.steps import embed, item_facets
from jobs.steps.content_item_vectors import (
    CONTENT,
    ENCODER,
    FACETS,
    MIN_FIT_ITEMS,
    catalog_item_vectors,
    fit_mask,
)
from jobs.steps.index import build_index
from jobs.tracking import registry
from models.user_encoder import UserEncoder, UserEncoderConfig
from tests.conftest import hashed_unit_vectors

D1, D2 = "2026-03-01", "2026-03-02"
KNOWN, NEW, DIM = 60, 8, 8
TRUTH = np.random.default_rng(7).standard_normal((16, DIM))  # content (16-d fake text vectors) -> item space


class Step:
    """What a tracked step offers the helper: metrics, and the tables it read and wrote."""

    def __init__(self):
        self.logged, self.reads, self.writes = {}, [], []

    def metrics(self, **values):
        self.logged.update(values)

    def read(self, spec, version):
        self.reads.append(spec.name)

    def wrote(self, spec, version):
        self.writes.append(spec.name)


def text(i: int) -> str:
    return f"item text number {i}"


def truth(ids: range) -> np.ndarray:
    y = hashed_unit_vectors([text(i) for i in ids], 8) @ TRUTH
    return y / np.linalg.norm(y, axis=1, keepdims=True)


@pytest.fixture
def cfg(tmp_path, fake_text_encoder):
    """A lake with KNOWN items catalogued on D1 and NEW more on D2, all with vocabulary ids."""
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path)})
    rows = [{"item_id": f"trk_{i:04d}", "item_type": "track", "title": text(i), "text": text(i),
             "text_hash": hashlib.sha1(text(i).encode()).hexdigest(), "first_seen_ds": D1 if i < KNOWN else D2,
             "genre": f"genre {i % 3}", "artist": f"artist {i % 5}",
             "updated_ds": D1} for i in range(KNOWN + NEW)]
    delta.upsert(cfg, ITEMS, pa.Table.from_pylist(rows, schema=ITEMS.schema))
    delta.append(cfg, ITEM_VOCAB, pa.table({"item_id": [r["item_id"] for r in rows],
                                            "item_idx": pa.array(range(1, KNOWN + NEW + 1), pa.int32()),
                                            "first_seen_ds": [r["first_seen_ds"] for r in rows]}))
    return cfg


def champion() -> registry.RegisteredEncoder:
    """A champion trained before D2: it has rows for the KNOWN items only, a linear function of their text."""
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig(num_items=KNOWN, max_len=8, d_model=DIM, n_heads=2)).eval()
    with torch.no_grad():
        model.item_emb.weight[1:] = torch.from_numpy(truth(range(KNOWN)).astype(np.float32))
    return registry.RegisteredEncoder("5", model, {"trained_ds": D1})


def test_every_catalogued_item_has_a_vector_on_its_first_day_and_new_ones_are_marked_content(cfg):
    step, model = Step(), champion()
    counts = {i: 50 for i in range(1, KNOWN + 1)}  # every known item well trained
    rows = catalog_item_vectors(cfg, D2, embed.item_vectors(cfg, model), model.version, step, counts)
    assert rows.num_rows == KNOWN + NEW
    assert rows.column("item_idx").to_pylist() == list(range(1, KNOWN + NEW + 1))
    sources = rows.column("vector_source").to_pylist()
    assert sources == [ENCODER] * KNOWN + [CONTENT] * NEW
    assert set(rows.column("model_version").to_pylist()) == {"5"}
    vectors = np.stack(rows.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The map learnt on known items puts the new ones near their truth (linear up to the normalisation).
    cosines = (vectors[KNOWN:] * truth(range(KNOWN, KNOWN + NEW))).sum(1)
    assert cosines.mean() > 0.95 and cosines.min() > 0.9
    assert step.logged["items_content_derived"] == NEW and step.logged["content_map_holdout_cosine"] > 0.9
    assert CONTENT_VECTORS.name in step.writes  # uncached texts are encoded once and cached
    # The day's rows fit the table, and the index built from them covers every catalogued item.
    day = rows.append_column("ds", pa.array([D2] * rows.num_rows))
    delta.replace_partition(cfg, ITEM_EMBEDDINGS, day, {"ds": D2})
    stored = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": D2})
    assert stored.num_rows == KNOWN + NEW and stored.column("vector_source").to_pylist().count(CONTENT) == NEW
    index = build_index(vectors, rows.column("item_idx").to_numpy().astype(np.int64), "Flat")
    assert index.ntotal == KNOWN + NEW


def test_a_champion_with_item_facets_gives_new_items_its_own_genre_and_creator_vectors_without_text(cfg):
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig(num_items=KNOWN, max_len=8, d_model=DIM, n_heads=2, item_facets=2,
                                          facet_buckets=64)).eval()
    model.set_item_facets(item_facets.facet_codes(cfg, KNOWN, 64))
    with torch.no_grad():
        model.item_emb.residual[1:] = torch.randn(KNOWN, DIM)  # trained items are more than their facets
    step, champion_ = Step(), registry.RegisteredEncoder("6", model, {"trained_ds": D1})
    rows = catalog_item_vectors(cfg, D2, embed.item_vectors(cfg, champion_), "6", step)
    assert rows.column("vector_source").to_pylist() == [ENCODER] * KNOWN + [FACETS] * NEW
    vectors = np.stack(rows.column("embedding").to_numpy(zero_copy_only=False))
    codes = item_facets.facet_codes(cfg, KNOWN + NEW, 64)[KNOWN + 1:]  # the new items' (genre, creator) buckets
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.item_emb.code_emb(codes + model.item_emb.offsets).sum(1), dim=-1)
    np.testing.assert_allclose(vectors[KNOWN:], expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(vectors[:KNOWN], model.item_embeddings()[1:].detach().numpy(), atol=1e-6)
    assert step.logged["items_content_derived"] == 0 and CONTENT_VECTORS.name not in step.writes  # no text encoded
    off = load_config(overrides={"paths.state_dir": cfg.paths.state_dir, "cold_items.enabled": "false"})
    assert embed.item_vectors(off, champion_).column("vector_source").to_pylist() == [ENCODER] * KNOWN


def test_before_new_items_arrive_every_vector_is_the_encoders(cfg):
    step, model = Step(), champion()
    rows = catalog_item_vectors(cfg, D1, embed.item_vectors(cfg, model), model.version, step, counts={})
    assert rows.column("vector_source").to_pylist() == [ENCODER] * KNOWN
    assert step.logged["items_content_derived"] == 0


def test_with_cold_items_off_only_the_encoders_rows_are_written(cfg):
    off = load_config(overrides={"paths.state_dir": cfg.paths.state_dir, "cold_items.enabled": "false"})
    model = champion()
    rows = catalog_item_vectors(off, D2, embed.item_vectors(off, model), model.version, Step())
    assert rows.num_rows == KNOWN and set(rows.column("vector_source").to_pylist()) == {ENCODER}


def test_the_map_is_fitted_on_items_the_encoder_has_evidence_for_when_enough_have_it():
    known = list(range(1, 101))
    counts = {i: (30 if i <= MIN_FIT_ITEMS else 2) for i in known}
    assert fit_mask(known, counts, min_events=10).sum() == MIN_FIT_ITEMS
    assert fit_mask(known, {1: 30}, min_events=10).all()  # too few: every known item
    assert fit_mask(known, None, min_events=10).all() and fit_mask(known, counts, min_events=0).all()


def test_a_lake_written_before_vector_source_existed_takes_the_new_column(tmp_path):
    from deltalake import write_deltalake

    cfg = load_config(overrides={"paths.state_dir": str(tmp_path)})
    old_schema = pa.schema([f for f in ITEM_EMBEDDINGS.schema if f.name != "vector_source"])
    old_day = pa.table({"item_id": ["a"], "item_idx": pa.array([1], pa.int32()), "embedding": [[1.0, 0.0]],
                        "model_version": ["1"], "ds": [D1]}, schema=old_schema)
    write_deltalake(delta.table_uri(cfg, ITEM_EMBEDDINGS), old_day, partition_by=["ds"])
    new_day = pa.table({"item_id": ["a", "b"], "item_idx": pa.array([1, 2], pa.int32()), "embedding": [[1.0, 0.0], [0.0, 1.0]],
                        "model_version": ["1", "1"], "vector_source": [ENCODER, CONTENT], "ds": [D2, D2]})
    delta.replace_partition(cfg, ITEM_EMBEDDINGS, new_day, {"ds": D2})
    assert delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": D2}).column("vector_source").to_pylist() == [ENCODER, CONTENT]
    assert delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": D1}).column("vector_source").to_pylist() == [None]
