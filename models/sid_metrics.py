"""Quality metrics of semantic-ID codes: collisions, codebook usage, prefix purity, churn, near-duplicates.

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


def _purity(prefix: np.ndarray, pair_item: np.ndarray, pair_label: np.ndarray) -> float:
    """Share of items carrying their prefix group's most common label (items may carry several labels).

    (pair_item, pair_label) lists every (item, label id) pair; an item without labels has no pair.
    """
    _, group = np.unique(prefix, axis=0, return_inverse=True)
    width = int(pair_label.max()) + 1
    pair = group.reshape(-1)[pair_item].astype(np.int64) * width + pair_label
    pair_ids, pair_counts = np.unique(pair, return_counts=True)
    best = np.zeros(int(group.max()) + 1, dtype=np.int64)
    np.maximum.at(best, pair_ids // width, pair_counts)
    return float(best.sum() / len(prefix))


def _label_pairs(labels, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(item index, label id) pairs: a label is a hashable value, or a tuple/list/set/frozenset of them."""
    if len(labels) != n:
        raise ValueError(f"labels must have one entry per item ({n}), got {len(labels)}.")
    items, values = [], []
    for i, label in enumerate(labels):
        for value in (sorted(set(label), key=str) if isinstance(label, (tuple, list, set, frozenset)) else (label,)):
            items.append(i)
            values.append(value)
    if not values:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    _, label_ids = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return np.asarray(items, np.int64), label_ids.reshape(-1).astype(np.int64)


def prefix_purity(codes: np.ndarray, labels, prefix_len: int, rng: np.random.Generator | None = None) -> dict:
    """Purity of items grouped by their first `prefix_len` codes, against a shuffled baseline.

    Purity = share of items that carry their group's most common label. Returns {"purity",
    "shuffled_purity", "lift" = purity - shuffled_purity, "groups"}. The baseline deals the same
    prefixes to items at random (same group sizes), so small groups being trivially pure does not
    count as lift. `labels` has one entry per item: a hashable value (e.g. a genre string), or a
    tuple/list/set of values for multi-label items (ML-1M movies have several genres each).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not 1 <= prefix_len <= codes.shape[1]:
        raise ValueError(f"prefix_len must be between 1 and the number of levels; got {prefix_len} for codes "
                         f"of shape {codes.shape}.")
    pair_item, pair_label = _label_pairs(labels, codes.shape[0])
    if codes.shape[0] == 0 or len(pair_item) == 0:
        return {"purity": 0.0, "shuffled_purity": 0.0, "lift": 0.0, "groups": 0}
    rng = rng if rng is not None else np.random.default_rng(0)
    prefix = codes[:, :prefix_len]
    purity = _purity(prefix, pair_item, pair_label)
    shuffled = _purity(prefix[rng.permutation(len(prefix))], pair_item, pair_label)
    groups = len(np.unique(prefix, axis=0))
    return {"purity": purity, "shuffled_purity": shuffled, "lift": purity - shuffled, "groups": groups}


def code_quality(codes: np.ndarray, codes_per_level: int | list[int]) -> dict[str, float]:
    """The standard outputs of every codebook build, as one flat dict of numbers.

    collision_rate_before_dedup, largest_bucket, and per level l: level{l}_used_codes,
    level{l}_perplexity, level{l}_utilisation (used / K_l) and level{l}_perplexity_share
    (perplexity / K_l). `codes_per_level` is K, or one K_l per level (a small catalog fits fewer codes).
    """
    codes = np.asarray(codes)
    ks = [codes_per_level] * codes.shape[1] if isinstance(codes_per_level, int) else list(codes_per_level)
    out = {"collision_rate_before_dedup": collision_rate(codes), "largest_bucket": float(largest_bucket(codes))}
    for level, (usage, k) in enumerate(zip(level_usage(codes, max(ks)), ks)):
        out[f"level{level}_used_codes"] = float(usage["used"])
        out[f"level{level}_perplexity"] = usage["perplexity"]
        out[f"level{level}_utilisation"] = usage["used"] / k
        out[f"level{level}_perplexity_share"] = usage["perplexity"] / k
    return out


def near_duplicate_pairs(vectors: np.ndarray, threshold: float = 0.95, chunk_rows: int = 2048) -> np.ndarray:
    """(P, 2) index pairs i < j of unit vectors with cosine >= threshold. Exact, O(N^2 D): catalogs up to ~1e5."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    pairs = []
    for start in range(0, len(x), chunk_rows):
        sims = x[start : start + chunk_rows] @ x.T  # (chunk, N)
        rows, cols = np.nonzero(sims >= threshold)
        rows += start
        keep = cols > rows
        pairs.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.empty((0, 2), np.int64)


def near_duplicate_report(vectors: np.ndarray, codes: np.ndarray, threshold: float = 0.95) -> dict:
    """How near-duplicate items (cosine >= threshold) relate to full-code collisions.

    near_duplicate_item_share: items with at least one near-duplicate; near_duplicate_pairs;
    pairs_sharing_full_code: share of those pairs that collide (true near-duplicates should);
    pairs_sharing_level1: share that share the first code; collisions_explained: share of colliding
    items that collide with at least one of their near-duplicates.
    """
    codes = np.asarray(codes)
    pairs = near_duplicate_pairs(vectors, threshold)
    group, counts = _full_code_counts(codes)
    colliding = counts[group] > 1 if len(group) else np.zeros(0, bool)
    has_dup = np.zeros(len(codes), bool)
    has_dup[pairs.ravel()] = True
    same = group[pairs[:, 0]] == group[pairs[:, 1]] if len(pairs) else np.zeros(0, bool)
    explained = np.zeros(len(codes), bool)
    explained[pairs[same].ravel()] = True
    return {
        "threshold": threshold, "near_duplicate_pairs": int(len(pairs)),
        "near_duplicate_item_share": float(has_dup.mean()) if len(codes) else 0.0,
        "pairs_sharing_full_code": float(same.mean()) if len(pairs) else 1.0,
        "pairs_sharing_level1": float((codes[pairs[:, 0], 0] == codes[pairs[:, 1], 0]).mean()) if len(pairs) else 1.0,
        "collisions_explained": float(explained[colliding].mean()) if colliding.any() else 1.0,
    }


def sid_change_share(old: Mapping[Hashable, str], new: Mapping[Hashable, str]) -> float:
    """Share of items present in both `old` and `new` (item_id -> SID string) whose SID changed."""
    common = old.keys() & new.keys()
    if not common:
        return 0.0
    return sum(old[i] != new[i] for i in common) / len(common)
