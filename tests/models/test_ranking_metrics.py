"""Ranking metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.ranking_metrics import (
    hit_rate_at_k,
    hit_rate_multi,
    ndcg_at_k,
    ndcg_multi,
    ranking_summary,
    target_ranks,
)

INF = float("inf")


def test_target_rank_counts_items_scored_above_the_target():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.1, 0.9, 0.5, 0.3]])
    ranks = target_ranks(scores, torch.tensor([2, 1]))
    assert ranks.tolist() == [1, 0]
    assert ranks.dtype == np.int64


def test_target_rank_counts_ties_pessimistically():
    scores = torch.ones(1, 4)
    assert target_ranks(scores, torch.tensor([0])).tolist() == [3]
    scores = torch.tensor([[0.2, 0.5, 0.5, 0.9]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [2]  # 0.9 and the tied 0.5 ahead


def test_target_rank_puts_a_nan_scored_target_last():
    scores = torch.tensor([[-INF, float("nan"), 0.2, float("nan")], [-INF, float("nan"), float("nan"), float("nan")]])
    assert target_ranks(scores, torch.tensor([1, 2])).tolist() == [3, 3]


def test_target_rank_excludes_seen_items_but_never_the_target():
    scores = torch.tensor([[-INF, 0.9, 0.8, 0.7, 0.1], [-INF, 0.9, 0.8, 0.7, 0.1]])
    original = scores.clone()
    exclude = [np.array([1, 2]), np.array([3, 1])]  # row 1 lists its own target 3 as seen
    ranks = target_ranks(scores, torch.tensor([3, 3]), exclude=exclude)
    assert ranks.tolist() == [0, 1]  # row 1: only 0.8 (item 2) is still ahead
    assert torch.equal(scores, original)


def test_target_rank_accepts_empty_exclusions():
    scores = torch.tensor([[0.3, 0.2, 0.1]])
    assert target_ranks(scores, torch.tensor([2]), exclude=[np.array([], dtype=np.int64)]).tolist() == [2]


def test_hit_rate_at_k_is_share_of_ranks_below_k():
    ranks = np.array([0, 3, 10, 1])
    assert hit_rate_at_k(ranks, 2) == 0.5
    assert hit_rate_at_k(ranks, 4) == 0.75


def test_ndcg_at_k_discounts_by_log2_of_rank_plus_two():
    ranks = np.array([0, 1, 5])
    assert ndcg_at_k(ranks, 3) == pytest.approx((1.0 + 1.0 / math.log2(3) + 0.0) / 3)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1.0 + 1.0 / math.log2(3) + 1.0 / math.log2(7)) / 3)


def test_single_target_metrics_reject_empty_input():
    with pytest.raises(ValueError):
        hit_rate_at_k(np.array([], dtype=np.int64), 10)


def test_hit_rate_multi_counts_rows_with_any_target_in_top_k():
    topk = np.array([[5, 3, 9], [1, 2, 4]])
    assert hit_rate_multi(topk, [{9, 11}, {7}]) == 0.5


def test_ndcg_multi_divides_by_ideal_dcg_of_min_targets_and_k():
    d = [1.0, 1.0 / math.log2(3), 0.5]  # discounts at positions 0, 1, 2
    topk = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    targets = [
        {2, 3, 8},  # hits at positions 1, 2; ideal: 3 relevant
        {4},  # hit at position 0; ideal: 1 relevant -> perfect
        np.array([9, 20, 21, 22, 23]),  # hit at position 2; 5 targets but K = 3 -> ideal = all 3
    ]
    expected = [(d[1] + d[2]) / sum(d), 1.0, d[2] / sum(d)]
    assert ndcg_multi(topk, targets) == pytest.approx(np.mean(expected))


def test_ndcg_multi_counts_a_repeated_top_k_item_once():
    assert ndcg_multi(np.array([[2, 2, 3]]), [{2}]) == pytest.approx(1.0)
    # A repeated target counts once too: 2 distinct targets, hits at positions 0 and 2.
    expected = (1.0 + 0.5) / (1.0 + 1.0 / math.log2(3))
    assert ndcg_multi(np.array([[2, 2, 3]]), [np.array([2, 2, 3])]) == pytest.approx(expected)


def test_multi_target_metrics_handle_missing_results_marked_minus_one():
    topk = np.array([[-1, 4, -1]])  # faiss pads with -1 when it has fewer than K results
    assert hit_rate_multi(topk, [{4}]) == 1.0
    assert ndcg_multi(topk, [{4}]) == pytest.approx(1.0 / math.log2(3))


def test_multi_target_metrics_reject_rows_without_targets():
    with pytest.raises(ValueError, match="at least one target"):
        ndcg_multi(np.array([[1, 2]]), [set()])


def test_multi_target_ndcg_matches_single_target_ndcg_for_one_target_per_row():
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(32, 50, generator=gen)  # continuous: no ties
    targets = torch.randint(0, 50, (32,), generator=gen)
    k = 10
    ranks = target_ranks(scores, targets)
    topk = scores.topk(k, dim=1).indices.numpy()
    sets = [{int(t)} for t in targets]
    assert ndcg_multi(topk, sets) == pytest.approx(ndcg_at_k(ranks, k))
    assert hit_rate_multi(topk, sets) == pytest.approx(hit_rate_at_k(ranks, k))


def test_ranking_summary_names_every_cutoff():
    ranks = np.array([0, 9, 10, 49, 199, 500])
    summary = ranking_summary(ranks)
    assert list(summary) == ["hr10", "ndcg10", "hr50", "ndcg50", "hr200"]
    assert summary["hr10"] == pytest.approx(2 / 6) and summary["hr50"] == pytest.approx(4 / 6)
    assert summary["hr200"] == pytest.approx(5 / 6)
    assert summary["ndcg10"] == pytest.approx(ndcg_at_k(ranks, 10))
