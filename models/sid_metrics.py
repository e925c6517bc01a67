"""Quality metrics of semantic-ID codes: collisions, codebook usage, prefix purity, churn.

All functions take plain arrays: `codes` is (N, L) integer codes before de-duplication.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np


def _full_code_counts(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id per row (N,) and group sizes (G,) for identical full code rows."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D (items, levels) array, got shape {codes.shape}.")
    if codes.shape[0] == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    _, group, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return group.reshape(-1), counts


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full code (before de-duplication) is shared with at least one other item."""
    group, counts = _full_code_counts(codes)
    return float((counts[group] > 1).mean()) if len(group) else 0.0


def largest_bucket(codes: np.ndarray) -> int:
    """Number of items in the most crowded full code (1 means no collisions; 0 for no items)."""
    _, counts = _full_code_counts(codes)
    return int(counts.max()) if len(counts) else 0


def level_usage(codes: np.ndarray, codes_per_level: int) -> list[dict]:
    """Per level: {"level", "used" codes, "perplexity" = exp(entropy of code usage), "utilisation" = used / K}.

    Perplexity equals K when every code is used equally and 1 when all items share one code.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D (items, levels) array, got shape {codes.shape}.")
    out = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codes_per_level)
        p = counts[counts > 0] / max(codes.shape[0], 1)
        entropy = float(-(p * np.log(p)).sum())
        used = int((counts > 0).sum())
        out.append({"level": level, "used": used, "perplexity": float(np.exp(entropy)),
                    "utilisation": used / codes_per_level})
    return out


def _purity(prefix: np.ndarray, label_ids: np.ndarray) -> float:
    """Weighted share of each prefix group's items carrying the group's most common label."""
    _, group = np.unique(prefix, axis=0, return_inverse=True)
    pair = group.reshape(-1).astype(np.int64) * (int(label_ids.max()) + 1) + label_ids
    pair_ids, pair_counts = np.unique(pair, return_counts=True)
    best = np.zeros(int(group.max()) + 1, dtype=np.int64)
    np.maximum.at(best, pair_ids // (int(label_ids.max()) + 1), pair_counts)
    return float(best.sum() / len(label_ids))


def prefix_purity(codes: np.ndarray, labels, prefix_len: int, rng: np.random.Generator | None = None) -> dict:
    """Purity of items grouped by their first `prefix_len` codes, against a shuffled baseline.

    Returns {"purity", "shuffled_purity", "lift" = purity - shuffled_purity, "groups"}. The baseline
    deals the same prefixes to items at random (same group sizes), so small groups being trivially
    pure does not count as lift. `labels` (N,) may be any hashable values (e.g. a genre string).
    """
    codes = np.asarray(codes)
    labels = np.asarray(labels)
    if codes.ndim != 2 or not 1 <= prefix_len <= codes.shape[1]:
        raise ValueError(f"prefix_len must be between 1 and the number of levels; got {prefix_len} for codes "
                         f"of shape {codes.shape}.")
    if labels.shape != (codes.shape[0],):
        raise ValueError(f"labels must have shape ({codes.shape[0]},), got {labels.shape}.")
    if codes.shape[0] == 0:
        return {"purity": 0.0, "shuffled_purity": 0.0, "lift": 0.0, "groups": 0}
    rng = rng if rng is not None else np.random.default_rng(0)
    _, label_ids = np.unique(labels, return_inverse=True)
    label_ids = label_ids.reshape(-1).astype(np.int64)
    prefix = codes[:, :prefix_len]
    purity = _purity(prefix, label_ids)
    shuffled = _purity(prefix[rng.permutation(len(prefix))], label_ids)
    groups = len(np.unique(prefix, axis=0))
    return {"purity": purity, "shuffled_purity": shuffled, "lift": purity - shuffled, "groups": groups}


def sid_change_share(old: Mapping[Hashable, str], new: Mapping[Hashable, str]) -> float:
    """Share of items present in both `old` and `new` (item_id -> SID string) whose SID changed."""
    common = old.keys() & new.keys()
    if not common:
        return 0.0
    return sum(old[i] != new[i] for i in common) / len(common)
