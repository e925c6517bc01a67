"""Aligning two versions of the space: Procrustes recovers a rotation; overlap and top-k are exact."""

from __future__ import annotations

import numpy as np

from models.space_alignment import (
    alignment_report,
    neighbour_overlap,
    procrustes,
    rotation_angle_degrees,
    top_k,
    unit_rows,
)


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_known_rotation():
    old = unit_rows(np.random.default_rng(0).standard_normal((300, 16)))
    rotation = random_rotation(16, 1)
    found = procrustes(old, old @ rotation)
    np.testing.assert_allclose(found, rotation, atol=1e-4)
    np.testing.assert_allclose(found @ found.T, np.eye(16), atol=1e-5)


def test_rotation_angle_is_zero_for_identity_and_the_plane_angle_for_a_planar_rotation():
    assert rotation_angle_degrees(np.eye(8)) < 1e-6
    theta = np.radians(30)
    planar = np.eye(2)
    planar[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    assert abs(rotation_angle_degrees(planar) - 30) < 1e-4


def test_alignment_report_says_a_rotated_space_is_far_apart_but_aligns_exactly():
    old = unit_rows(np.random.default_rng(3).standard_normal((200, 8)))
    rotation, facts = alignment_report(old, old @ random_rotation(8, 4))
    assert facts["aligned_cosine"] > 0.9999
    assert facts["shared_cosine"] < 0.5
    assert facts["rotation_angle_deg"] > 10
    assert rotation.shape == (8, 8)


def test_top_k_orders_by_score_and_overlap_counts_shared_ids():
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [-1.0, 0.0]])
    assert top_k(users, items, 2).tolist() == [[0, 2], [1, 2]]
    assert top_k(users, items, 1, item_ids=np.array([10, 11, 12, 13])).tolist() == [[10], [11]]
    assert neighbour_overlap(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75
