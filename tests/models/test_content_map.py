"""The content -> item-vector ridge map: it recovers a linear map and reports honest held-out quality."""

from __future__ import annotations

import numpy as np
import pytest

from models.content_map import fit_content_map, fit_ridge, mean_cosine


def test_ridge_map_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 24))
    w = rng.standard_normal((24, 8))
    y = x @ w + 0.5
    fitted = fit_ridge(x, y, ridge=1e-6)
    np.testing.assert_allclose(fitted.weights, w, atol=1e-4)
    mapped = fitted.apply(x[:5])
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)
    assert mean_cosine(mapped, y[:5]) > 0.9999


def test_held_out_cosine_is_high_for_a_linear_truth_and_near_zero_for_noise():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 32))
    linear = x @ rng.standard_normal((32, 16)) + 0.1 * rng.standard_normal((500, 16))
    _, good = fit_content_map(x, linear, seed=0)
    _, noise = fit_content_map(x, rng.standard_normal((500, 16)), seed=0)
    assert good["holdout_cosine"] > 0.95
    assert abs(noise["holdout_cosine"]) < 0.2
    assert good["holdout_items"] > 0 and good["fit_items"] == 500


def test_a_handful_of_items_fits_without_a_holdout_and_no_items_is_one_sentence():
    rng = np.random.default_rng(2)
    fitted, quality = fit_content_map(rng.standard_normal((4, 6)), rng.standard_normal((4, 3)))
    assert quality["holdout_items"] == 0 and np.isnan(quality["holdout_cosine"])
    assert fitted.apply(np.zeros((1, 6))).shape == (1, 3)
    with pytest.raises(ValueError, match="at least one known item"):
        fit_content_map(np.zeros((0, 6)), np.zeros((0, 3)))
