"""How two versions of the shared space relate, and how to translate one into the other.

A retrain moves the space: the same item gets a different vector. Orthogonal Procrustes finds the
rotation R minimising ||A R - B|| over items both versions know (A old, B new), so a consumer holding
old vectors can translate them (old @ R) into the new space. The rotation angle and the cosine of
shared items before and after alignment say how far the space moved. `top_k` and
`neighbour_overlap` compare what two versions retrieve for the same users. Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(D, D) orthogonal R minimising ||source @ R - target||_F; source, target (N, D) row-aligned."""
    u, _, vt = np.linalg.svd(np.asarray(source, np.float64).T @ np.asarray(target, np.float64))
    return (u @ vt).astype(np.float32)


def rotation_angles_degrees(rotation: np.ndarray) -> np.ndarray:
    """The principal rotation angles of an orthogonal (D, D) matrix, in degrees, (D,) in [0, 180]:
    its eigenvalues are e^{±iθ}; a reflection shows as 180."""
    eigenvalues = np.linalg.eigvals(np.asarray(rotation, np.float64))
    return np.degrees(np.abs(np.angle(eigenvalues)))


def rotation_angle_degrees(rotation: np.ndarray) -> float:
    """The mean principal rotation angle in degrees (0 = identity)."""
    return float(rotation_angles_degrees(rotation).mean())


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k(users: np.ndarray, items: np.ndarray, k: int, item_ids: np.ndarray | None = None) -> np.ndarray:
    """(U, k) ids of each user's k highest-scoring items by dot product (ids: row numbers or `item_ids`)."""
    scores = np.asarray(users, np.float32) @ np.asarray(items, np.float32).T  # (U, N)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
    top = np.take_along_axis(top, order, 1)
    return top if item_ids is None else np.asarray(item_ids)[top]


def neighbour_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of ids two (U, k) top-k lists have in common, per user (1.0 = the same sets)."""
    if len(a) == 0:
        return 0.0
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / max(len(x), 1) for x, y in zip(a, b)]))


def alignment_report(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """(R mapping old -> new, facts): `rotation_angle_deg`, `shared_cosine` (mean cosine of an item's
    old and new vectors), `aligned_cosine` (the same after old @ R). old, new (N, D) unit rows, row-aligned."""
    rotation = procrustes(old, new)
    return rotation, {"rotation_angle_deg": rotation_angle_degrees(rotation),
                      "shared_cosine": float((unit_rows(old) * unit_rows(new)).sum(1).mean()),
                      "aligned_cosine": float((unit_rows(old @ rotation) * unit_rows(new)).sum(1).mean())}
