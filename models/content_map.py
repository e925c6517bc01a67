"""A linear map from item content vectors (text) to the encoder's item vectors: new items get a
vector in the shared space on their first day, before any retrain has seen them.

Ridge regression, closed form: W = (XᵀX + λI)⁻¹ XᵀY over the known items, with the means removed
(an intercept). λ is picked from a small grid on a seeded held-out share of the known items; the
map is then refitted on all of them. Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class ContentMap:
    weights: np.ndarray  # (Dc, D)
    x_mean: np.ndarray  # (Dc,)
    y_mean: np.ndarray  # (D,)
    ridge: float  # the λ chosen

    def apply(self, content: np.ndarray) -> np.ndarray:
        """(N, Dc) content vectors -> (N, D) L2-normalised vectors in the encoder's item space."""
        y = (np.asarray(content, np.float64) - self.x_mean) @ self.weights + self.y_mean
        return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_ridge(content: np.ndarray, target: np.ndarray, ridge: float) -> ContentMap:
    """The ridge map of (N, Dc) content vectors onto (N, D) target vectors, with an intercept."""
    x, y = np.asarray(content, np.float64), np.asarray(target, np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    weights = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ yc)  # (Dc, D)
    return ContentMap(weights, x_mean, y_mean, float(ridge))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean row-wise cosine of two (N, D) arrays (0.0 for no rows)."""
    if len(a) == 0:
        return 0.0
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(1).mean())


def fit_content_map(content: np.ndarray, target: np.ndarray, holdout_share: float = 0.2, seed: int = 0,
                    grid: tuple[float, ...] = RIDGE_GRID) -> tuple[ContentMap, dict[str, float]]:
    """Fit the map on known items: (map refitted on all rows, fit quality).

    content (N, Dc), target (N, D). Quality: `holdout_cosine` (mean cosine of mapped vs true vectors
    on the held-out share, for the λ chosen on it), `train_cosine`, `ridge`, `fit_items`, `holdout_items`.
    With fewer than 10 rows nothing is held out and the middle of the grid is used.
    """
    n = len(content)
    if n == 0:
        raise ValueError("fit_content_map needs at least one known item with both a content and a target vector.")
    rng = np.random.default_rng(seed)
    held = rng.random(n) < holdout_share if n >= 10 else np.zeros(n, bool)
    if held.all() or not held.any():
        ridge, holdout = grid[len(grid) // 2], float("nan")
    else:
        scores = {lam: mean_cosine(fit_ridge(content[~held], target[~held], lam).apply(content[held]), target[held])
                  for lam in grid}
        ridge = max(scores, key=scores.get)
        holdout = scores[ridge]
    fitted = fit_ridge(content, target, ridge)
    return fitted, {"holdout_cosine": holdout, "train_cosine": mean_cosine(fitted.apply(content), target),
                    "ridge": ridge, "fit_items": float(n), "holdout_items": float(held.sum())}
