"""Ranking metrics for next-item evaluation: HR@K and NDCG@K, single and multiple targets.

Single target per row (leave-one-out benchmarks): compute each target's 0-based rank among all
items with `target_ranks`, then `hit_rate_at_k` / `ndcg_at_k`.
Several targets per row (daily eval: every item a user plays on ds+1): take top-K item ids (e.g.
from the faiss index) and use `hit_rate_multi` / `ndcg_multi`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """0-based rank of each row's target among all N candidates (0 = ranked first).

    scores: (B, N) float, higher is better (e.g. UserEncoder.scores, column 0 already -inf).
    targets: (B,) int column index of each row's target.
    exclude: optional B arrays of item ids to push to -inf first (e.g. items the user has already
        seen); a row's own target is never excluded.
    Ties are counted PESSIMISTICALLY: items scoring exactly the target's score rank ahead of it, so
    a model that gives every item the same score gets rank N-1, not 0.
    NaN scores count as -inf, so a diverged model ranks every target last.
    Returns (B,) int64 ranks. `scores` is not modified.
    """
    # NaN scores (a diverged model) rank last, like -inf: a NaN target must never look like rank 0.
    scores = torch.nan_to_num(torch.as_tensor(scores).detach().float(), nan=float("-inf"))  # (B, N), a copy
    targets = torch.as_tensor(targets, dtype=torch.long, device=scores.device)  # (B,)
    B = scores.shape[0]
    if targets.shape != (B,):
        raise ValueError(f"targets must have shape ({B},) to match scores, got {tuple(targets.shape)}.")
    if exclude is not None:
        if len(exclude) != B:
            raise ValueError(
                f"exclude has {len(exclude)} rows but scores has {B}; pass one array per row."
            )
        sizes = [len(e) for e in exclude]
        if sum(sizes):
            rows = torch.from_numpy(np.repeat(np.arange(B), sizes)).to(scores.device)
            cols = torch.from_numpy(np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]))
            cols = cols.to(scores.device)
            keep = cols != targets[rows]  # never hide the item we are looking for
            scores[rows[keep], cols[keep]] = float("-inf")
    target_score = scores.gather(1, targets[:, None])  # (B, 1)
    ahead = (scores > target_score).sum(1)
    ties = (scores == target_score).sum(1) - 1  # minus the target itself
    return (ahead + ties).cpu().numpy().astype(np.int64)


def _check_k(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("ranks is empty; there are no rows to evaluate.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    return ranks


def hit_rate_at_k(ranks: np.ndarray, k: int) -> float:
    """HR@K for one target per row: share of rows whose target rank (0-based) is < k."""
    ranks = _check_k(ranks, k)
    return float(np.mean(ranks < k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """NDCG@K for one target per row: mean of 1/log2(rank + 2) if rank < k else 0 (ideal DCG = 1)."""
    ranks = _check_k(ranks, k)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float(np.mean(gains))


def ranking_summary(ranks: np.ndarray, hr_ks: Sequence[int] = (10, 50, 200),
                    ndcg_ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """Single-target metrics by name, e.g. {"hr10": .., "ndcg10": .., "hr50": .., "ndcg50": .., "hr200": ..}."""
    out = {}
    for k in sorted(set(hr_ks) | set(ndcg_ks)):
        if k in hr_ks:
            out[f"hr{k}"] = hit_rate_at_k(ranks, k)
        if k in ndcg_ks:
            out[f"ndcg{k}"] = ndcg_at_k(ranks, k)
    return out


def _relevance(topk_items: np.ndarray, target_sets: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Binary relevance (B, K) of top-K ids against per-row target sets, and (B,) set sizes.

    Vectorised by encoding (row, item) pairs as one int64 key. A duplicate id in a row's top-K
    counts once (its first position), and duplicate targets count once.
    """
    topk = np.asarray(topk_items, dtype=np.int64)
    if topk.ndim != 2 or topk.shape[1] == 0:
        raise ValueError(f"topk_items must be a (B, K) array with K >= 1, got shape {topk.shape}.")
    B, K = topk.shape
    if len(target_sets) != B:
        raise ValueError(f"target_sets has {len(target_sets)} rows but topk_items has {B}.")
    targets = [
        np.fromiter(t, dtype=np.int64) if isinstance(t, (set, frozenset)) else np.asarray(t, np.int64).ravel()
        for t in target_sets
    ]
    raw_sizes = np.array([len(t) for t in targets])
    if B == 0 or (raw_sizes == 0).any():
        bad = np.flatnonzero(raw_sizes == 0)[:5].tolist()
        raise ValueError(
            f"every row needs at least one target (empty rows: {bad}); drop those users first."
        )
    flat_targets = np.concatenate(targets)
    lo = min(topk.min(), flat_targets.min())  # ids may be -1 (faiss: no result)
    base = max(topk.max(), flat_targets.max()) - lo + 1
    target_keys = np.unique(np.repeat(np.arange(B), raw_sizes) * base + (flat_targets - lo))
    sizes = np.bincount(target_keys // base, minlength=B)  # distinct targets per row
    topk_keys = (np.arange(B)[:, None] * base + (topk - lo)).ravel()  # (B*K,)
    first = np.zeros(B * K, dtype=bool)
    first[np.unique(topk_keys, return_index=True)[1]] = True
    rel = (np.isin(topk_keys, target_keys) & first).reshape(B, K)
    return rel, sizes


def hit_rate_multi(topk_items: np.ndarray, target_sets: Sequence) -> float:
    """Share of rows with at least one target among their top-K items.

    topk_items: (B, K) item ids, best first. target_sets: B non-empty sets/arrays of item ids.
    """
    rel, _ = _relevance(topk_items, target_sets)
    return float(np.mean(rel.any(axis=1)))


def ndcg_multi(topk_items: np.ndarray, target_sets: Sequence) -> float:
    """Mean NDCG@K with binary relevance and several targets per row.

    DCG = sum over top-K positions p (0-based) holding a target of 1/log2(p + 2); the ideal DCG puts
    min(|targets|, K) relevant items first. topk_items: (B, K), best first; target_sets: B non-empty
    sets/arrays of item ids. Returns a float in [0, 1].
    """
    rel, sizes = _relevance(topk_items, target_sets)
    K = rel.shape[1]
    discounts = 1.0 / np.log2(np.arange(K) + 2.0)  # (K,)
    dcg = rel @ discounts  # (B,)
    idcg = np.cumsum(discounts)[np.minimum(sizes, K) - 1]  # (B,)
    return float(np.mean(dcg / idcg))
