"""Step `semantic_ids` on a tiny catalog written straight into a temporary lake.

A fake text encoder (deterministic vectors around one centre per genre) stands in for MiniLM, so
the tests exercise the step's own logic: versions, refit reasons, stability, uniqueness, policies.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from jobs.config import SidConfig, load_config
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import CODEBOOKS, EVENTS, ITEM_EMBEDDINGS, ITEM_TOKENS, ITEMS
from jobs.steps import semantic_ids
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig
from models.sid_metrics import code_quality

DIM = 16
GENRES = ("jazz", "metal", "techno", "folk", "blues")
D1, D2, D3, D4 = "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"


def fake_encode(texts: list[str], batch_size: int, **_) -> np.ndarray:
    """Unit vectors: the genre's centre plus noise seeded by the text; "... #N" copies share a vector."""
    out = []
    for text in texts:
        genre = next(g for g in GENRES if g in text)
        centre = np.random.default_rng(GENRES.index(genre)).standard_normal(DIM)
        seed = int(hashlib.sha1(re.sub(r" #\d+$", "", text).encode()).hexdigest()[:8], 16)
        v = centre + 0.6 * np.random.default_rng(seed).standard_normal(DIM)
        out.append(v / np.linalg.norm(v))
    return np.array(out, np.float32).reshape(-1, DIM)


@pytest.fixture
def make_cfg(tmp_path, mlflow_store, fake_text_encoder):
    fake_text_encoder(fake_encode)

    def make(**sid):
        overrides = {"paths.state_dir": str(tmp_path), **mlflow_store, "sid.levels": "3", "sid.codes_per_level": "8",
                     "sid.kmeans_iterations": "10", "sid.refit_every_days": "7"}
        overrides.update({f"sid.{k}": str(v) for k, v in sid.items()})
        return load_config(overrides=overrides)

    return make


def add_items(cfg, ds: str, rows: list[tuple[str, str]]) -> None:
    """Catalog rows (item_id, text) first seen or edited on ds, merged like the catalog step does."""
    table = pa.Table.from_pylist([
        {"item_id": i, "item_type": "track", "title": text, "genre": next(g for g in GENRES if g in text),
         "text": text, "text_hash": hashlib.sha1(text.encode()).hexdigest(), "first_seen_ds": ds, "updated_ds": ds}
        for i, text in rows], schema=ITEMS.schema)
    delta.upsert(cfg, ITEMS, table, update_when="s.text_hash != t.text_hash", preserve=("first_seen_ds",))


def catalog(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [(f"trk_{i:04d}", f"{GENRES[i % len(GENRES)]} song number {i}") for i in range(start, start + n)]


def sids(cfg, version: int | None = None) -> dict[str, str]:
    rows = delta.read(cfg, ITEM_TOKENS, columns=["codebook_version", "item_id", "sid"])
    version = version or pc.max(rows.column("codebook_version")).as_py()
    rows = rows.filter(pc.equal(rows.column("codebook_version"), version))
    return dict(zip(rows.column("item_id").to_pylist(), rows.column("sid").to_pylist()))


def versions(cfg) -> list[int]:
    return sorted(set(delta.read(cfg, CODEBOOKS, columns=["codebook_version"]).column(0).to_pylist()))


# --- the step --------------------------------------------------------------------------------------


def test_first_day_builds_version_1_with_a_unique_sid_per_item(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    result = semantic_ids.run(D1, cfg)
    assert versions(cfg) == [1] and result.params["refit_reason"] == "no_codebook"
    current = sids(cfg)
    assert len(current) == 60 and len(set(current.values())) == 60
    assert result.metrics["full_sid_duplicates"] == 0
    assert all(len(s.split("-")) == 4 for s in current.values())


def test_rerun_of_the_build_day_writes_no_new_version_and_no_table_commit(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    tables_before = [delta.current_version(cfg, spec) for spec in (CODEBOOKS, ITEM_TOKENS)]
    again = semantic_ids.run(D1, cfg)
    assert again.params["refit_reason"] == "none" and versions(cfg) == [1]
    assert [delta.current_version(cfg, spec) for spec in (CODEBOOKS, ITEM_TOKENS)] == tables_before


def test_forced_refit_on_a_day_that_already_built_a_codebook_refits_and_says_so(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    forced = semantic_ids.run(D1, cfg, run_key="manual__second", force_refit=True)
    assert forced.params["refit_reason"] == "forced" and forced.params["force_refit"] == "True"
    assert versions(cfg) == [1, 2]
    book = semantic_ids.latest_codebook(cfg)
    assert (book.version, book.built_ds, book.params["refit_reason"], book.params["forced_by"]) == (
        2, D1, "forced", "manual__second")
    assert len(set(sids(cfg, 2).values())) == 60


def test_a_retry_of_the_invocation_that_forced_a_refit_reuses_its_codebook(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    semantic_ids.run(D2, cfg, run_key="scheduled__d2", force_refit=True)
    retry = semantic_ids.run(D2, cfg, run_key="scheduled__d2", force_refit=True)  # an Airflow task retry
    assert retry.params["refit_reason"] == "none" and versions(cfg) == [1, 2]
    assert any("already done by this run" in note for note in retry.notes)


def test_a_forced_refit_of_a_day_before_the_newest_codebook_fails_with_the_reason(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    semantic_ids.run(D2, cfg, force_refit=True)
    with pytest.raises(FactoryError, match=f"built for a later day, {D2}"):
        semantic_ids.run(D1, cfg, force_refit=True)
    assert versions(cfg) == [1, 2]


def test_day_without_a_due_refit_assigns_new_and_edited_items_and_keeps_every_other_sid(make_cfg):
    cfg = make_cfg(refit_max_collision_rate=0.2)  # 64 items in 512 codes: a few collisions are chance
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    before = sids(cfg)
    add_items(cfg, D2, catalog(4, start=60) + [("trk_0003", "blues song number 3 (Live)")])
    result = semantic_ids.run(D2, cfg)
    after = sids(cfg)
    assert versions(cfg) == [1] and result.params["refit_reason"] == "none"
    assert result.metrics["items_assigned"] == 5
    assert {i: after[i] for i in before if i != "trk_0003"} == {i: s for i, s in before.items() if i != "trk_0003"}
    assert len(after) == 64 and len(set(after.values())) == 64


def test_cadence_refit_writes_a_warm_started_version_that_keeps_most_sids(make_cfg):
    cfg = make_cfg(refit_every_days=2)
    add_items(cfg, D1, catalog(80))
    semantic_ids.run(D1, cfg)
    version_1 = sids(cfg)
    add_items(cfg, D3, catalog(2, start=80))
    result = semantic_ids.run(D3, cfg)
    assert versions(cfg) == [1, 2] and result.params["refit_reason"] == "cadence"
    assert "warm start" in result.notes[-1]
    assert result.metrics["refit_sid_change_share_unchanged"] <= 0.1
    assert len(set(sids(cfg, 2).values())) == 82
    assert sids(cfg, 1) == version_1  # readers of version 1 see exactly what they saw


def test_forced_refit_bumps_the_version_and_records_the_reason_in_the_codebook(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    result = semantic_ids.run(D2, cfg, force_refit=True)
    assert result.params["refit_reason"] == "forced" and versions(cfg) == [1, 2]
    assert semantic_ids.latest_codebook(cfg).params["refit_reason"] == "forced"


def test_rerun_after_a_crash_between_codebook_and_token_writes_restores_the_refits_sids(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    add_items(cfg, D2, catalog(3, start=60))
    semantic_ids.run(D2, cfg, force_refit=True)
    written = sids(cfg, 2)
    delta.open_table(cfg, ITEM_TOKENS).delete("codebook_version = 2")  # as if killed before the token commit
    assert semantic_ids.run(D2, cfg).params["refit_reason"] == "none"
    assert sids(cfg, 2) == written


def test_quality_drift_past_a_threshold_refits_once_and_says_why(make_cfg):
    cfg = make_cfg(refit_max_collision_rate=0.3, refit_min_perplexity_share=0.0, refit_min_utilisation=0.0)
    add_items(cfg, D1, catalog(60))
    first = semantic_ids.run(D1, cfg)
    assert first.metrics["collision_rate_before_dedup"] <= 0.3
    add_items(cfg, D2, [(f"cl_{n:03d}", f"metal clone #{n}") for n in range(40)])  # 40 identical vectors
    drifted = semantic_ids.run(D2, cfg)
    assert drifted.params["refit_reason"] == "drift" and versions(cfg) == [1, 2]
    assert "collision_rate_before_dedup" in drifted.params["refit_drift"]
    assert len(set(sids(cfg).values())) == 100
    # The refit could not fix identical items: the breach was there at build time, so no refit loop.
    add_items(cfg, D3, catalog(1, start=60))
    assert semantic_ids.run(D3, cfg).params["refit_reason"] == "none" and versions(cfg) == [1, 2]


def test_a_changed_codebook_shape_refits_cold(make_cfg):
    cfg = make_cfg()
    add_items(cfg, D1, catalog(60))
    semantic_ids.run(D1, cfg)
    result = semantic_ids.run(D2, make_cfg(codes_per_level=4))
    assert result.params["refit_reason"] == "config_changed" and versions(cfg) == [1, 2]
    assert max(int(t) for s in sids(cfg, 2).values() for t in s.split("-")[:-1]) < 4


def test_an_empty_catalog_is_a_clear_error(make_cfg):
    with pytest.raises(FactoryError, match="no items on this day"):
        semantic_ids.run(D1, make_cfg())


def test_fusion_needs_the_days_item_embeddings_and_widens_the_vectors(make_cfg):
    cfg = make_cfg(fuse_collaborative_weight=0.3)
    add_items(cfg, D1, catalog(40))
    with pytest.raises(FactoryError, match="item_embeddings"):
        semantic_ids.run(D1, cfg)
    rng = np.random.default_rng(0)
    embeddings = pa.Table.from_pylist([{"item_id": i, "item_idx": n + 1, "embedding": rng.standard_normal(8).tolist(),
                                        "model_version": "1", "ds": D1} for n, (i, _) in enumerate(catalog(30))],
                                      schema=ITEM_EMBEDDINGS.schema)
    delta.replace_partition(cfg, ITEM_EMBEDDINGS, embeddings, {"ds": D1})
    result = semantic_ids.run(D1, cfg)
    assert result.params["vector_dim"] == str(DIM + 8)
    assert result.metrics["items_without_collaborative"] == 10 and len(set(sids(cfg).values())) == 40


def test_popular_policy_logs_how_bare_codes_resolve_on_the_day(make_cfg):
    cfg = make_cfg(collision_policy="popular")
    add_items(cfg, D1, [(f"cl_{n}", f"jazz clone #{n}") for n in range(3)] + catalog(20))
    plays = [{"event_id": f"e{n}", "user_id": "u1", "item_id": "cl_2", "item_type": "track", "event_type": "play",
              "ts": 0, "ms_played": 1000, "ds": D1} for n in range(3)]
    delta.replace_partition(cfg, EVENTS, pa.Table.from_pylist(plays, schema=EVENTS.schema), {"ds": D1})
    result = semantic_ids.run(D1, cfg)
    assert result.metrics["items_unreachable_by_bare_code"] >= 2
    assert result.metrics["bare_codes_won_by_later_token"] >= 1  # cl_2 (token 2) out-played cl_0 (token 0)


# --- the functions behind it -----------------------------------------------------------------------


def test_refit_is_deterministic_for_a_seed():
    x = fake_encode([t for _, t in catalog(80)], 0)
    qcfg = ResidualQuantizerConfig(levels=3, codes_per_level=8)
    none = np.full((80, 4), -1)
    a = semantic_ids.refit_tokens(qcfg, x, None, none, 1.0)
    b = semantic_ids.refit_tokens(qcfg, x, None, none, 1.0)
    np.testing.assert_array_equal(a[1], b[1])


def test_assign_tokens_keeps_unchanged_codes_tokens_and_never_repeats_a_kept_sid():
    x = fake_encode([t for _, t in catalog(80)], 0)
    rq = ResidualQuantizer(ResidualQuantizerConfig(levels=3, codes_per_level=8)).fit(x)
    first = semantic_ids.assign_tokens(rq, x, np.full((80, 4), -1), np.empty((0, 4)), 1.0)
    # Items 70.. are re-assigned (e.g. edited) while the others stay: same vectors, same SIDs.
    again = semantic_ids.assign_tokens(rq, x[70:], first[70:], first[:70], 1.0)
    np.testing.assert_array_equal(again, first[70:])
    # New copies of existing vectors get the same codes and fresh tokens.
    copies = semantic_ids.assign_tokens(rq, x[:10], np.full((10, 4), -1), first, 1.0)
    every = np.concatenate([first, copies])
    assert len(np.unique(every, axis=0)) == 90


def test_drift_counts_only_thresholds_the_codebook_met_when_built():
    sid = SidConfig(refit_max_collision_rate=0.1, refit_min_perplexity_share=0.5, refit_min_utilisation=0.0)
    codes_ok = np.arange(16).reshape(16, 1) % 8
    built = code_quality(np.column_stack([codes_ok, np.arange(16)]), [8, 16])
    now = code_quality(np.column_stack([np.zeros(16, int), np.zeros(16, int)]), [8, 16])
    breaches = semantic_ids.drift_breaches(sid, now, built)
    assert any(b.startswith("collision_rate_before_dedup") for b in breaches)
    assert any(b.startswith("level0_perplexity_share") for b in breaches)
    assert semantic_ids.drift_breaches(sid, now, now) == []


def test_fused_vectors_are_unit_length_and_content_only_without_an_embedding():
    content = fake_encode(["jazz a", "metal b"], 0)
    fused = semantic_ids.fuse_vectors(content, np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), 0.25)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fused[1, :DIM], content[1], rtol=1e-5)
    assert fused[0, DIM] == pytest.approx(0.5)


def test_full_sids_stay_unique_through_random_days_of_new_edited_and_copied_items_and_refits():
    """The invariant: whatever happens (copies of one vector, edits, sticky or plain refits), no two
    items of a version ever share a full SID."""
    rng = np.random.default_rng(3)
    qcfg = ResidualQuantizerConfig(levels=2, codes_per_level=4, kmeans_iterations=5)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    quantizer, tokens = semantic_ids.refit_tokens(qcfg, x, None, np.full((40, 3), -1), 1.0)
    for day in range(12):
        assert len(np.unique(tokens, axis=0)) == len(tokens), f"day {day}"
        new = np.concatenate([rng.standard_normal((3, 8)), np.repeat(x[:1], 4, axis=0)]).astype(np.float32)
        edited = rng.choice(len(x), 3, replace=False)
        x[edited] += 0.3 * rng.standard_normal((3, 8)).astype(np.float32)
        if day % 4 == 3:  # refit, alternately sticky and plain
            x = np.concatenate([x, new])
            previous = np.concatenate([tokens, np.full((len(new), 3), -1)])
            quantizer, tokens = semantic_ids.refit_tokens(qcfg, x, quantizer.centroids, previous, 1.0 * (day % 8 == 3))
            continue
        todo = np.zeros(len(x), bool)
        todo[edited] = True
        kept = tokens[~todo]
        fresh = semantic_ids.assign_tokens(quantizer, np.concatenate([x[todo], new]),
                                           np.concatenate([tokens[todo], np.full((len(new), 3), -1)]), kept, 1.0)
        x = np.concatenate([x[~todo], x[todo], new])
        tokens = np.concatenate([kept, fresh])
    assert len(np.unique(tokens, axis=0)) == len(tokens)
