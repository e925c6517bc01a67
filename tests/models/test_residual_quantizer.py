"""Semantic-ID quantiser (models/residual_quantizer.py) and its metrics (models/sid_metrics.py)."""

import faiss
import numpy as np
import pytest

import models.residual_quantizer as rq_module
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig, dedup_tokens, sid_string
from models.sid_metrics import (
    code_quality,
    collision_rate,
    largest_bucket,
    level_usage,
    near_duplicate_pairs,
    near_duplicate_report,
    prefix_purity,
    sid_change_share,
)

SMALL = ResidualQuantizerConfig(levels=3, codes_per_level=16, kmeans_iterations=10)


@pytest.fixture(autouse=True)
def single_threaded_faiss():
    # On data this small, OpenMP threads cost more than the work and are erratic on a busy machine.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def clustered(n: int = 500, dim: int = 32, n_clusters: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around Zipf-sized clusters of different spreads: (n, dim) float32 and labels (n,)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim))
    weights = 1.0 / np.arange(1, n_clusters + 1)
    labels = rng.choice(n_clusters, n, p=weights / weights.sum())
    spread = rng.uniform(0.05, 0.6, n_clusters)[labels, None]
    x = centers[labels] + spread * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def full_sids(codes: np.ndarray, tokens: np.ndarray) -> list[str]:
    return [sid_string([*row, token]) for row, token in zip(codes, tokens)]


# --- quantiser -------------------------------------------------------------------------------------


def test_fit_is_deterministic_for_a_seed():
    x, _ = clustered()
    a = ResidualQuantizer(SMALL).fit(x)
    b = ResidualQuantizer(SMALL).fit(x)
    np.testing.assert_array_equal(a.fit_codes, b.fit_codes)
    for ca, cb in zip(a.centroids, b.centroids):
        np.testing.assert_array_equal(ca, cb)


def test_codes_have_levels_columns_int32_and_valid_range():
    x, _ = clustered()
    rq = ResidualQuantizer(SMALL).fit(x)
    codes = rq.assign(x)
    assert codes.shape == (len(x), SMALL.levels) and codes.dtype == np.int32
    assert rq.fit_codes.shape == codes.shape and rq.fit_codes.dtype == np.int32
    assert rq.effective_codes_per_level == [16, 16, 16]
    assert all(c.shape == (16, 32) and c.dtype == np.float32 for c in rq.centroids)
    assert codes.min() >= 0 and (codes < np.array(rq.effective_codes_per_level)).all()


@pytest.mark.parametrize("balanced", [False, True])
def test_assign_reproduces_fit_codes_when_unbalanced_even_with_sampled_training(balanced, monkeypatch):
    monkeypatch.setattr(rq_module, "_ENCODE_CHUNK_ROWS", 64)  # exercise chunked encoding
    x, _ = clustered(n=600)
    cfg = ResidualQuantizerConfig(levels=3, codes_per_level=16, max_train_points=300, balanced=balanced)
    rq = ResidualQuantizer(cfg).fit(x)
    agree = (rq.assign(x) == rq.fit_codes).all(axis=1).mean()
    if balanced:
        assert agree > 0.5  # balancing biases move some points off their nearest centroid, by design
    else:
        assert agree == 1.0


@pytest.mark.parametrize("balanced", [False, True])
def test_warm_start_from_previous_centroids_keeps_codes_on_unchanged_data(balanced):
    x, _ = clustered()
    first = ResidualQuantizer(ResidualQuantizerConfig(levels=3, codes_per_level=16, balanced=balanced)).fit(x)
    other_seed = ResidualQuantizerConfig(levels=3, codes_per_level=16, balanced=balanced, seed=7)
    warm = ResidualQuantizer(other_seed).fit(x, init_centroids=first.centroids)
    cold = ResidualQuantizer(other_seed).fit(x)
    kept_warm = (warm.fit_codes == first.fit_codes).all(axis=1).mean()
    kept_cold = (cold.fit_codes == first.fit_codes).all(axis=1).mean()
    assert kept_warm >= 0.95
    assert kept_cold < 0.5  # without the warm start a refit relabels the codes


def test_warm_start_with_wrong_codebook_shapes_is_rejected():
    x, _ = clustered()
    first = ResidualQuantizer(SMALL).fit(x)
    with pytest.raises(ValueError, match="levels"):
        ResidualQuantizer(SMALL).fit(x, init_centroids=first.centroids[:2])
    with pytest.raises(ValueError, match="dimension|shape"):
        ResidualQuantizer(SMALL).fit(x[:, :16], init_centroids=first.centroids)


def test_normalised_balanced_residuals_collide_less_than_plain_residual_kmeans():
    # Zipf-sized clusters of mixed spread: plain residual k-means spends deeper levels on the few
    # items with large residuals (measured here: ~0.81 collision rate vs ~0.38 over 8 seeds).
    x, _ = clustered(n=500, dim=32, n_clusters=20, seed=0)
    plain_cfg = ResidualQuantizerConfig(levels=3, codes_per_level=16, normalize_residuals=False, balanced=False)
    plain = ResidualQuantizer(plain_cfg).fit(x).fit_codes
    default = ResidualQuantizer(ResidualQuantizerConfig(levels=3, codes_per_level=16)).fit(x).fit_codes
    assert collision_rate(default) < 0.6 * collision_rate(plain)
    plain_ppl = [u["perplexity"] for u in level_usage(plain, 16)]
    default_ppl = [u["perplexity"] for u in level_usage(default, 16)]
    assert min(default_ppl) > min(plain_ppl)


def test_fewer_points_than_codes_uses_one_code_per_point():
    x, _ = clustered(n=5)
    rq = ResidualQuantizer(SMALL).fit(x)
    assert rq.effective_codes_per_level[0] == 5
    assert all(1 <= k <= 5 for k in rq.effective_codes_per_level)
    assert sorted(rq.fit_codes[:, 0]) == [0, 1, 2, 3, 4]
    tokens = dedup_tokens(rq.fit_codes)
    assert len(set(full_sids(rq.fit_codes, tokens))) == 5
    np.testing.assert_array_equal(rq.assign(x), rq.fit_codes)


def test_single_vector_fits():
    x, _ = clustered(n=1)
    rq = ResidualQuantizer(SMALL).fit(x)
    assert rq.effective_codes_per_level == [1, 1, 1]
    np.testing.assert_array_equal(rq.assign(x), [[0, 0, 0]])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 32), np.float32), "empty"),
        (np.full((10, 32), np.nan, np.float32), "NaN"),
        (np.zeros(32, np.float32), "2-D"),
    ],
)
def test_fit_rejects_empty_nan_and_non_matrix_input_with_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        ResidualQuantizer(SMALL).fit(bad)


def test_assign_rejects_wrong_dimension_and_unfitted_use():
    x, _ = clustered()
    with pytest.raises(ValueError, match="fit"):
        ResidualQuantizer(SMALL).assign(x)
    rq = ResidualQuantizer(SMALL).fit(x)
    with pytest.raises(ValueError, match="dimension 16 but the codebooks have 32"):
        rq.assign(x[:, :16])


def test_config_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="codes_per_level"):
        ResidualQuantizerConfig(codes_per_level=0)


def test_sticky_assign_keeps_previous_codes_unless_another_is_clearly_nearer():
    x, _ = clustered()
    rq = ResidualQuantizer(SMALL).fit(x)
    plain = rq.assign(x)
    np.testing.assert_array_equal(rq.assign(x, np.full_like(plain, -1), 5.0), plain)  # nothing to keep
    np.testing.assert_array_equal(rq.assign(x, plain, 0.0), plain)
    shifted = (plain + 1) % 16  # a wrong previous code at every level
    assert (rq.assign(x, shifted, 0.0) == plain).all()  # stickiness 0: nearest wins
    very_sticky = rq.assign(x, shifted, 1e9)
    np.testing.assert_array_equal(very_sticky[:, 0], shifted[:, 0])
    some = rq.assign(x, shifted, 1.0)
    assert 0 < (some[:, 0] == shifted[:, 0]).mean() < 1


def test_sticky_assign_rejects_a_previous_of_the_wrong_shape():
    x, _ = clustered()
    rq = ResidualQuantizer(SMALL).fit(x)
    with pytest.raises(ValueError, match="previous must have shape"):
        rq.assign(x, np.zeros((3, 3), int), 1.0)


def test_fit_without_encoding_leaves_fit_codes_unset_and_the_same_codebook():
    x, _ = clustered()
    encoded = ResidualQuantizer(SMALL).fit(x)
    bare = ResidualQuantizer(SMALL).fit(x, encode=False)
    assert bare.fit_codes is None
    for a, b in zip(encoded.centroids, bare.centroids):
        np.testing.assert_array_equal(a, b)


def test_from_centroids_round_trip_gives_the_same_assign():
    x, _ = clustered()
    rq = ResidualQuantizer(SMALL).fit(x)
    stored = [c.tolist() for c in rq.centroids]  # as if read back from the codebooks table
    rebuilt = ResidualQuantizer.from_centroids(SMALL, [np.asarray(c) for c in stored])
    np.testing.assert_array_equal(rebuilt.assign(x), rq.assign(x))
    assert rebuilt.effective_codes_per_level == rq.effective_codes_per_level


# --- de-duplication tokens and SID strings -----------------------------------------------------------


def test_dedup_makes_full_sids_unique_even_with_many_identical_vectors():
    x, _ = clustered(n=300)
    x[:60] = x[0]  # 60 identical items share every code
    rq = ResidualQuantizer(SMALL).fit(x)
    tokens = dedup_tokens(rq.fit_codes)
    assert collision_rate(rq.fit_codes) > 0.2
    assert len(set(full_sids(rq.fit_codes, tokens))) == len(x)
    assert sorted(tokens[:60]) == list(range(60))


def test_dedup_tokens_count_up_in_row_order_within_a_code():
    codes = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4]])
    np.testing.assert_array_equal(dedup_tokens(codes), [0, 0, 1, 2, 1])


def test_dedup_continues_after_existing_tokens_and_never_changes_them():
    existing_codes = np.array([[1, 2], [1, 2], [5, 5]])
    existing_tokens = np.array([0, 3, 0])  # a gap (token 1, 2 of deleted items) is never reused
    new_codes = np.array([[1, 2], [7, 7], [5, 5], [1, 2]])
    tokens = dedup_tokens(new_codes, existing_codes, existing_tokens)
    np.testing.assert_array_equal(tokens, [4, 0, 1, 5])
    np.testing.assert_array_equal(existing_tokens, [0, 3, 0])
    all_sids = full_sids(existing_codes, existing_tokens) + full_sids(new_codes, tokens)
    assert len(set(all_sids)) == len(all_sids)


def test_dedup_requires_existing_codes_and_tokens_together():
    with pytest.raises(ValueError, match="together"):
        dedup_tokens(np.zeros((2, 2), int), existing_codes=np.zeros((1, 2), int))


def test_sid_string_joins_codes_and_token_with_dashes():
    assert sid_string([*np.array([12, 201, 7, 88], np.int32), np.int64(0)]) == "12-201-7-88-0"
    assert sid_string((12, 201)) == "12-201"  # a prefix


# --- metrics on hand-computed cases ------------------------------------------------------------------


def test_collision_rate_and_largest_bucket_on_a_hand_computed_case():
    codes = np.array([[0, 0], [0, 0], [0, 1], [2, 2], [2, 2], [2, 2]])
    assert collision_rate(codes) == pytest.approx(5 / 6)
    assert largest_bucket(codes) == 3
    assert collision_rate(np.array([[0], [1]])) == 0.0 and largest_bucket(np.array([[0], [1]])) == 1


def test_level_usage_reports_used_codes_perplexity_and_utilisation():
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 1]])
    first, second = level_usage(codes, codes_per_level=8)
    assert first == {"level": 0, "used": 4, "perplexity": pytest.approx(4.0), "utilisation": 0.5}
    p = np.array([0.75, 0.25])
    assert second["used"] == 2
    assert second["perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_prefix_purity_weights_groups_and_compares_with_shuffled_codes():
    codes = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    labels = np.array(["rock", "rock", "jazz", "jazz", "jazz", "jazz"])
    result = prefix_purity(codes, labels, prefix_len=1, rng=np.random.default_rng(0))
    assert result["purity"] == pytest.approx(5 / 6)  # group 0: 2 of 3 rock, group 1: 3 of 3 jazz
    assert result["groups"] == 2
    assert result["lift"] == pytest.approx(result["purity"] - result["shuffled_purity"])
    full = prefix_purity(codes, labels, prefix_len=2)
    assert full["purity"] == 1.0 and full["shuffled_purity"] == 1.0 and full["lift"] == 0.0


def test_prefix_purity_lift_is_positive_for_codes_fitted_on_clustered_data():
    x, labels = clustered(n=500)
    codes = ResidualQuantizer(SMALL).fit(x).fit_codes
    assert prefix_purity(codes, labels, prefix_len=1)["lift"] > 0.3


def test_sid_change_share_counts_only_items_present_in_both():
    old = {"a": "1-2-0", "b": "1-3-0", "c": "4-4-0"}
    new = {"a": "1-2-0", "b": "1-3-1", "d": "9-9-0"}
    assert sid_change_share(old, new) == 0.5
    assert sid_change_share({}, new) == 0.0


def test_prefix_purity_counts_an_item_with_several_labels_as_matching_any_of_them():
    codes = np.array([[0], [0], [0], [1]])
    labels = [("drama", "war"), ("war",), ("comedy",), ("drama",)]
    assert prefix_purity(codes, labels, prefix_len=1)["purity"] == pytest.approx(3 / 4)  # "war" in group 0: 2 of 3


def test_code_quality_reports_collisions_and_per_level_shares():
    codes = np.array([[0, 0], [0, 0], [1, 1], [2, 3]])
    q = code_quality(codes, [4, 8])
    assert q["collision_rate_before_dedup"] == 0.5 and q["largest_bucket"] == 2
    assert q["level0_used_codes"] == 3 and q["level0_utilisation"] == 0.75
    assert q["level1_utilisation"] == 3 / 8
    assert q["level1_perplexity_share"] == pytest.approx(q["level1_perplexity"] / 8)


def test_near_duplicates_are_found_exactly_and_related_to_collisions():
    x = np.array([[1, 0], [0.999, 0.045], [0, 1], [-1, 0]], np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert near_duplicate_pairs(x, 0.95, chunk_rows=1).tolist() == [[0, 1]]
    report = near_duplicate_report(x, np.array([[0], [0], [1], [1]]), 0.95)
    assert report["near_duplicate_item_share"] == 0.5 and report["pairs_sharing_full_code"] == 1.0
    assert report["collisions_explained"] == 0.5  # items 2 and 3 collide without being near-duplicates
