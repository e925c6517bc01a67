"""Semantic IDs: residual k-means codebooks over content vectors plus a de-duplication token.

An item's semantic ID (SID) is `levels` hierarchical codes followed by a de-duplication token, e.g.
"12-201-7-88-0". Level l clusters what levels < l left unexplained, so items sharing a prefix are
similar. Pure numpy + faiss, no I/O: the pipeline stores `centroids` (one (K_l, D) array per level)
and rebuilds the quantiser with `ResidualQuantizer.from_centroids`.

Three choices keep codes spread out and stable (the measurements behind them: docs/benchmarks.md,
"Why the quantiser normalises, balances and sticks"):

* `normalize_residuals`: each level quantises the L2-normalised residual of the previous level, so
  deeper levels see unit-scale inputs and do not collapse onto the few items with large residuals.
  The next residual is (normalised input - chosen centroid); codes are for IDs, not reconstruction.
* `balanced`: after faiss k-means, balanced k-means rounds (at most `kmeans_iterations`, until codes
  settle): Sinkhorn on the (sample x K) distance matrix with uniform code marginals gives one
  additive bias per code; points take argmin(distance + bias) and centroids move to their means.
  `fit_codes` use these biases for every fitted vector, sample or not. `assign` does NOT: it is
  plain nearest-centroid, for new or edited items between refits (biases are not part of the
  stored codebook), so a few fitted items would get another code from `assign`.
  A warm-started balanced fit skips plain k-means (which would undo the balance) and runs only
  the balanced rounds from the previous centroids, so an unchanged catalog keeps its codes.
* Sticky assignment (`assign(..., previous=, stickiness=)`), for refits: even a warm start moves
  centroids, and deeper levels quantise small residuals, so their codes flip easily. A level keeps
  the previous code unless the nearest code is closer by more than a factor (1 + stickiness) in
  squared distance.

Zero residuals (an item that is its own centroid, common in small catalogs) are left out of the next
level's k-means: as a seed, a zero vector becomes a small-norm centroid that attracts everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

# Rows per matrix product when encoding; (chunk x K) float32 distances stay ~64 MB for K = 256.
_ENCODE_CHUNK_ROWS = 65_536
# Balanced k-means after plain k-means: rounds of (Sinkhorn assignment, centroid update), at most
# kmeans_iterations, until at most this share of codes moves in a round.
_BALANCE_SETTLED_SHARE = 0.001
_SINKHORN_ITERATIONS = 50
_SINKHORN_WARM_ITERATIONS = 10  # when starting from the previous round's bias
_SINKHORN_POINTS_PER_CODE = 64  # the K biases are estimated on at most this many points per code
# Sinkhorn temperature as a fraction of the mean gap between a point's nearest and its 2nd-nearest code.
_SINKHORN_EPS_SCALE = 1.0
_TINY = 1e-12
_ZERO_RESIDUAL = 1e-6


@dataclass(frozen=True)
class ResidualQuantizerConfig:
    levels: int = 4
    codes_per_level: int = 256
    kmeans_iterations: int = 20
    normalize_residuals: bool = True  # cluster L2-normalised residuals (measured to cut collisions)
    balanced: bool = True  # Sinkhorn-balanced assignment + centroid update at fit time (module doc)
    max_train_points: int = 100_000  # fit on a seeded sample of at most this many vectors
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("levels", "codes_per_level", "kmeans_iterations", "max_train_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"ResidualQuantizerConfig.{name} must be >= 1, got {getattr(self, name)}.")


class ResidualQuantizer:
    """Residual k-means with `cfg.levels` codebooks of up to `cfg.codes_per_level` codes each.

    After `fit`: `centroids[l]` is (K_l, D) float32, `effective_codes_per_level[l]` = K_l
    (= min(codes_per_level, N) for the first level and never more than the number of fitted points),
    `fit_codes` is (N, levels) int32 for the vectors passed to `fit`.
    """

    def __init__(self, cfg: ResidualQuantizerConfig):
        self.cfg = cfg
        self.centroids: list[np.ndarray] = []
        self.fit_codes: np.ndarray | None = None

    @property
    def effective_codes_per_level(self) -> list[int]:
        return [int(c.shape[0]) for c in self.centroids]

    @property
    def dim(self) -> int | None:
        return int(self.centroids[0].shape[1]) if self.centroids else None

    @classmethod
    def from_centroids(cls, cfg: ResidualQuantizerConfig, centroids: list[np.ndarray]) -> ResidualQuantizer:
        """Rebuild a fitted quantiser from stored codebooks (one (K_l, D) array per level)."""
        _check_centroids(cfg, centroids, dim=None, name="centroids")
        rq = cls(cfg)
        rq.centroids = [np.ascontiguousarray(c, dtype=np.float32) for c in centroids]
        return rq

    def fit(self, vectors: np.ndarray, init_centroids: list[np.ndarray] | None = None,
            encode: bool = True) -> ResidualQuantizer:
        """Learn the codebooks from `vectors` (N, D) and set `fit_codes` (N, levels) int32.

        Trains on a seeded sample of at most `cfg.max_train_points` rows, then encodes all N rows in
        chunks (skipped with encode=False: `fit_codes` stays None, for callers that `assign`).
        `init_centroids` (the previous codebooks, same shapes) warm-starts every level's k-means so
        an unchanged catalog keeps its codes. Deterministic for a given `cfg.seed`.
        """
        cfg = self.cfg
        x = _check_vectors(vectors, dim=None, name="vectors")
        n, d = x.shape
        if init_centroids is not None:
            _check_centroids(cfg, init_centroids, dim=d, name="init_centroids")
        rng = np.random.default_rng(cfg.seed)
        train_rows = np.sort(rng.choice(n, cfg.max_train_points, replace=False)) if n > cfg.max_train_points else None
        train = x[train_rows] if train_rows is not None else x

        centroids, biases = [], []
        residual = train
        for level in range(cfg.levels):
            level_input = _normalize_rows(residual) if cfg.normalize_residuals else residual
            # Zero residuals carry no direction and would seed an all-attracting centroid (module doc).
            informative = level_input[np.linalg.norm(level_input, axis=1) > _ZERO_RESIDUAL]
            k = max(1, min(cfg.codes_per_level, informative.shape[0]))  # all residuals zero: one zero code
            init = None
            if init_centroids is not None:
                init = np.ascontiguousarray(init_centroids[level], dtype=np.float32)
                if init.shape[0] != k:
                    raise ValueError(
                        f"init_centroids[{level}] has {init.shape[0]} codes but this fit uses {k} at level "
                        f"{level} (min(codes_per_level, points)); refit without init_centroids."
                    )
            if len(informative) == 0:
                c = np.zeros((1, d), dtype=np.float32)
            elif init is not None and cfg.balanced and k > 1:
                c = init  # only balanced rounds: plain k-means would first undo the previous balance
            else:
                c = _kmeans(informative, k, cfg.kmeans_iterations, cfg.seed + level, init)
            bias = np.zeros(k, dtype=np.float32)
            if cfg.balanced and k > 1:
                c, bias = _balance(informative, c, cfg.kmeans_iterations, cfg.seed + level)
            centroids.append(c)
            biases.append(bias)
            codes = _nearest(level_input, c, bias)
            residual = level_input - c[codes]

        self.centroids = centroids
        self.fit_codes = self._encode(x, biases) if encode else None
        return self

    def assign(self, vectors: np.ndarray, previous: np.ndarray | None = None, stickiness: float = 0.0) -> np.ndarray:
        """Codes (N, levels) int32 for `vectors` (N, D) by nearest centroid at each level.

        Equals `fit_codes` for the fitted vectors when `cfg.balanced` is False. With balanced=True the
        fit used per-code balancing biases that are not stored, so codes may differ from `fit_codes`
        for some fitted vectors (~2% on ML-1M titles) at the same collision rate and perplexity.
        `previous` (N, levels), -1 where unknown: an item keeps its previous code at a level unless
        the nearest code's squared distance is smaller by more than a factor (1 + stickiness); the
        residual then continues from the kept code (module doc: stable refits).
        """
        if not self.centroids:
            raise ValueError("ResidualQuantizer.assign needs fitted codebooks: call fit() or from_centroids() first.")
        x = _check_vectors(vectors, dim=self.dim, name="vectors")
        if previous is not None:
            previous = np.asarray(previous, dtype=np.int64)
            if previous.shape != (x.shape[0], len(self.centroids)):
                raise ValueError(f"previous must have shape ({x.shape[0]}, {len(self.centroids)}), got {previous.shape}.")
            if stickiness < 0:
                raise ValueError(f"stickiness must be >= 0, got {stickiness}.")
        return self._encode(x, [None] * len(self.centroids), previous, stickiness)

    def _encode(self, x: np.ndarray, biases: list[np.ndarray | None], previous: np.ndarray | None = None,
                stickiness: float = 0.0) -> np.ndarray:
        codes = np.empty((x.shape[0], len(self.centroids)), dtype=np.int32)
        for start in range(0, x.shape[0], _ENCODE_CHUNK_ROWS):
            residual = x[start : start + _ENCODE_CHUNK_ROWS]
            for level, (c, bias) in enumerate(zip(self.centroids, biases)):
                level_input = _normalize_rows(residual) if self.cfg.normalize_residuals else residual
                if previous is None:
                    level_codes = _nearest(level_input, c, bias)
                else:
                    level_codes = _nearest_sticky(level_input, c, previous[start : start + len(level_input), level], stickiness)
                codes[start : start + len(level_codes), level] = level_codes
                residual = level_input - c[level_codes]
        return codes


def dedup_tokens(
    codes: np.ndarray,
    existing_codes: np.ndarray | None = None,
    existing_tokens: np.ndarray | None = None,
) -> np.ndarray:
    """De-duplication token (N,) int64 for each new row of `codes` (N, L).

    Rows sharing a full code get 0, 1, 2, ... in row order, starting after the largest token that
    existing items (`existing_codes` (M, L), `existing_tokens` (M,)) already use for that code. Existing
    items keep their tokens, and no two items (existing or new) share (codes, token).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D (items, levels) array, got shape {codes.shape}.")
    if (existing_codes is None) != (existing_tokens is None):
        raise ValueError("Pass existing_codes and existing_tokens together (or neither).")
    if existing_codes is None:
        existing_codes = np.empty((0, codes.shape[1]), dtype=codes.dtype)
        existing_tokens = np.empty(0, dtype=np.int64)
    existing_codes, existing_tokens = np.asarray(existing_codes), np.asarray(existing_tokens)
    if existing_codes.ndim != 2 or existing_codes.shape[1] != codes.shape[1]:
        raise ValueError(f"existing_codes must have shape (M, {codes.shape[1]}), got {existing_codes.shape}.")
    if existing_tokens.shape != (existing_codes.shape[0],):
        raise ValueError(
            f"existing_tokens must have shape ({existing_codes.shape[0]},), got {existing_tokens.shape}."
        )
    n, m = codes.shape[0], existing_codes.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)

    _, group = np.unique(np.concatenate([existing_codes, codes]), axis=0, return_inverse=True)
    group = group.reshape(-1)
    n_groups = int(group.max()) + 1
    next_token = np.zeros(n_groups, dtype=np.int64)  # first free token per full code
    np.maximum.at(next_token, group[:m], existing_tokens.astype(np.int64) + 1)

    new_group = group[m:]
    order = np.argsort(new_group, kind="stable")  # rows grouped by code, row order kept inside a group
    sorted_group = new_group[order]
    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_group)) + 1]
    rank_in_group = np.arange(n) - np.repeat(group_start, np.diff(np.r_[group_start, n]))
    tokens = np.empty(n, dtype=np.int64)
    tokens[order] = next_token[sorted_group] + rank_in_group
    return tokens


def sid_string(tokens) -> str:
    """A SID (or SID prefix) as text: tokens (12, 201, 7, 88, 0) -> '12-201-7-88-0'. The one place
    the format is written; jobs.steps.sid_lookup.parse_sid reads it back."""
    return "-".join(str(int(t)) for t in tokens)


def _check_vectors(vectors: np.ndarray, dim: int | None, name: str) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items, dim) array, got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: pass at least one vector.")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]} but the codebooks have {dim}; use the same encoder.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad_rows = sum(int((~np.isfinite(x[i : i + _ENCODE_CHUNK_ROWS])).any(axis=1).sum())
                   for i in range(0, x.shape[0], _ENCODE_CHUNK_ROWS))  # chunked: no (N, D) bool copy
    if bad_rows:
        raise ValueError(f"{name} contain NaN or infinite values in {bad_rows} rows; drop or re-embed those items.")
    return x


def _check_centroids(cfg: ResidualQuantizerConfig, centroids: list[np.ndarray], dim: int | None, name: str) -> None:
    if len(centroids) != cfg.levels:
        raise ValueError(f"{name} has {len(centroids)} levels but the config asks for {cfg.levels}.")
    dim = dim if dim is not None else np.asarray(centroids[0]).shape[-1]
    for level, c in enumerate(centroids):
        c = np.asarray(c)
        if c.ndim != 2 or c.shape[1] != dim or not 1 <= c.shape[0] <= cfg.codes_per_level:
            raise ValueError(
                f"{name}[{level}] must have shape (K, {dim}) with 1 <= K <= {cfg.codes_per_level}, got {c.shape}."
            )
        if not np.isfinite(c).all():
            raise ValueError(f"{name}[{level}] contains NaN or infinite values.")


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, _TINY)).astype(np.float32, copy=False)  # zero residuals stay zero


def _scores(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n, K) squared L2 distance minus the per-row constant ||x||^2 (argmin is unchanged)."""
    return (c * c).sum(axis=1)[None, :] - 2.0 * (x @ c.T)


def _nearest(x: np.ndarray, c: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.int32)
    for start in range(0, x.shape[0], _ENCODE_CHUNK_ROWS):
        s = _scores(x[start : start + _ENCODE_CHUNK_ROWS], c)
        if bias is not None:
            s += bias[None, :]
        out[start : start + len(s)] = s.argmin(axis=1)
    return out


def _nearest_sticky(x: np.ndarray, c: np.ndarray, previous: np.ndarray, stickiness: float) -> np.ndarray:
    """Nearest code, except that a valid previous code (>= 0) within (1 + stickiness) x the nearest
    squared distance is kept. x is (n, D), c (K, D), previous (n,); one chunk (n <= _ENCODE_CHUNK_ROWS)."""
    d = _scores(x, c) + (x * x).sum(axis=1, keepdims=True)  # (n, K) squared distances
    best = d.argmin(axis=1).astype(np.int32)
    rows = np.flatnonzero((previous >= 0) & (previous < c.shape[0]))
    keep = d[rows, previous[rows]] <= (1.0 + stickiness) * np.maximum(d[rows, best[rows]], 0.0)
    best[rows[keep]] = previous[rows[keep]]
    return best


def _kmeans(x: np.ndarray, k: int, iterations: int, seed: int, init: np.ndarray | None) -> np.ndarray:
    km = faiss.Kmeans(
        x.shape[1], k, niter=iterations, seed=seed, verbose=False,
        max_points_per_centroid=x.shape[0] // k + 1,  # we sample ourselves; stop faiss subsampling again
        min_points_per_centroid=1,  # small catalogs are expected; no warning
    )
    km.train(x, init_centroids=init)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _balance(x: np.ndarray, c: np.ndarray, max_rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced k-means from centroids `c` (K, D) over `x` (n, D): returns centroids and per-code bias.

    Each round: Sinkhorn with uniform code marginals on exp(-distance / eps) yields column scalings v;
    argmax_k P[i, k] equals argmin_k (distance[i, k] + bias[k]) with bias = -eps * log v, so K numbers
    estimated on a seeded subsample balance every point. Points take that code, centroids move to the
    means. Stops once codes settle, so a warm start from the result reproduces it.
    """
    k = c.shape[0]
    rows = np.random.default_rng(seed).permutation(x.shape[0])[: _SINKHORN_POINTS_PER_CODE * k]
    sub = x[np.sort(rows)]
    codes, bias = None, None
    for _ in range(max_rounds):
        bias = _sinkhorn_bias(_scores(sub, c), init_bias=bias)
        new_codes = _nearest(x, c, bias)
        if codes is not None and (new_codes != codes).mean() <= _BALANCE_SETTLED_SHARE:
            return c, bias
        codes = new_codes
        order = np.argsort(codes, kind="stable")
        used, starts, counts = np.unique(codes[order], return_index=True, return_counts=True)
        c = c.copy()  # codes left empty keep their centroid
        c[used] = np.add.reduceat(x[order], starts, axis=0) / counts[:, None]
    return c, _sinkhorn_bias(_scores(sub, c), init_bias=bias)


def _sinkhorn_bias(scores: np.ndarray, init_bias: np.ndarray | None = None) -> np.ndarray:
    """Per-code bias (K,) that spreads argmin(scores + bias) evenly over codes; scores is (n, K).

    `init_bias` (last round's answer) warm-starts the column scalings, so fewer iterations suffice.
    """
    n, k = scores.shape
    s = (scores - scores.min(axis=1, keepdims=True)).astype(np.float64)  # row shift is absorbed by u
    gap = np.partition(s, 1, axis=1)[:, 1].mean()  # mean distance gap to a point's 2nd-nearest code
    eps = max(float(gap) * _SINKHORN_EPS_SCALE, _TINY)
    kernel = np.exp(-s / eps)  # float64: far codes may underflow to 0, which is harmless
    v = np.ones(k) if init_bias is None else np.exp(-(init_bias.astype(np.float64) - init_bias.min()) / eps)
    for _ in range(_SINKHORN_ITERATIONS if init_bias is None else _SINKHORN_WARM_ITERATIONS):
        u = (1.0 / n) / np.maximum(kernel @ v, _TINY)
        col = kernel.T @ u
        v = np.where(col > 0, (1.0 / k) / np.maximum(col, _TINY), 0.0)
    alive = v > 0  # a code no point can reach keeps the largest bias: it is not pushed onto anyone
    bias = np.full(k, 0.0)
    bias[alive] = -eps * np.log(v[alive])
    bias[~alive] = bias[alive].max() if alive.any() else 0.0
    return (bias - bias.min()).astype(np.float32)
