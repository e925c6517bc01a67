"""The direction of a more/less edit: the facet's catalog direction, the user's own plays of it, or a blend."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jobs.config import ConfigError, load_config
from jobs.steps import taste_feedback

# Four items on the unit circle (2-d space): jazz = a1 (x axis), a2 (y axis); rock = r1, r2.
VECTORS = pa.table({"item_id": ["a1", "a2", "r1", "r2"],
                    "embedding": [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]})
ITEMS = pa.table({"item_id": ["a1", "a2", "r1", "r2"], "genre": ["jazz", "jazz", "rock", "rock"],
                  "artist": ["x", "y", "z", "w"], "show": [None] * 4})
EDITS = pa.table({"user_id": ["u", "v"], "action": ["more", "more"], "kind": ["genre", "genre"], "name": ["jazz", "jazz"]})
# u played jazz item a2 (and rock r1); v played no jazz.
PLAYS = pa.table({"user_id": ["u", "u", "v"], "item_id": ["a2", "r1", "r2"], "genre": ["jazz", "rock", "rock"],
                  "artist": ["y", "z", "w"], "show": [None] * 3})


def moves(weight: float) -> dict[str, np.ndarray]:
    catalog = taste_feedback.facet_directions([("genre", "jazz")], ITEMS, VECTORS)
    personal = taste_feedback.personal_directions(EDITS, PLAYS, VECTORS)
    return taste_feedback.steer_moves(EDITS, catalog, 1.0, personal, weight)


def test_a_personal_direction_is_the_mean_of_the_users_own_plays_of_the_facet():
    personal = taste_feedback.personal_directions(EDITS, PLAYS, VECTORS)
    assert set(personal) == {("u", "genre", "jazz")}  # v played no jazz: no personal direction
    np.testing.assert_allclose(personal[("u", "genre", "jazz")], [0.0, 1.0], atol=1e-7)


@pytest.mark.parametrize("weight, expected_u", [(0.0, [0.7071068, 0.7071068]),  # catalog: mean of a1, a2
                                                (1.0, [0.0, 1.0]),  # u's own jazz: a2
                                                (0.5, [0.3826834, 0.9238795])])  # halfway on the arc
def test_the_personal_weight_blends_catalog_and_personal_directions(weight, expected_u):
    steered = moves(weight)
    np.testing.assert_allclose(steered["u"], expected_u, atol=1e-6)
    np.testing.assert_allclose(steered["v"], [0.7071068, 0.7071068], atol=1e-6)  # no jazz plays: catalog


def test_a_personal_weight_outside_zero_to_one_is_a_clear_error():
    with pytest.raises(ConfigError, match="profile.personal_weight must be in"):
        load_config(overrides={"profile.personal_weight": "1.5"})
