"""The taste-profile benchmark's pure parts: exact top-k and the judged summary rows."""

import numpy as np

from jobs.bench.taste_profile import summary_rows, top_k


def test_top_k_ranks_the_whole_catalog_by_dot_product():
    items = np.eye(4, dtype=np.float32)
    vectors = np.array([[0.1, 0.9, 0.5, 0.0], [1.0, 0.0, 0.0, 0.2]], np.float32)
    assert top_k(vectors, items, 2).tolist() == [[1, 2], [0, 3]]


def test_summary_judges_each_figure_against_its_bar_and_says_none_when_unmeasurable():
    result = {"steer_more": {"users": 3, "share_raw": 0.1, "share_steered": 0.3, "ratio": 3.0},
              "steer_less": {"users": 3, "share_raw": 0.0, "share_steered": 0.0, "ratio": None},
              "forget": {"users": 2, "in_sequences": 0, "in_recommendations": 0, "leakage": 0},
              "shifted_hr": {"users": 4, "hr_with_edits": 0.5, "hr_without_edits": 0.5, "ratio": 1.0,
                             "shifted_without_edit_users": 4, "shifted_without_edit_hr": 0.25},
              "unedited_users_steered": 0}
    rows = {r["figure"]: r for r in summary_rows(result)}
    assert rows["steer more: top-10 share after / before"]["met"] is True
    assert rows["steer less: top-10 share after / before"] | {"detail": ""} == {
        "figure": "steer less: top-10 share after / before", "value": None, "unit": "x", "bar": "≤ 0.5", "met": False,
        "detail": ""}
    assert rows["forget leakage"]["met"] is True and rows["shifted users HR@10 with / without edits"]["met"] is False
    assert rows["unedited users with a steered vector"]["value"] == 0.0
