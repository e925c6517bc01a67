"""evaluate's new-item figure (issue 19): recall of next-day plays of items at most 2 days old."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_VOCAB
from jobs.steps.evaluate import new_items, recall_of


def test_new_items_are_those_first_seen_the_two_days_before_the_played_day(lake_cfg):
    days = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    delta.append(lake_cfg, ITEM_VOCAB, pa.table({"item_id": [f"i{n}" for n in range(4)],
                                                 "item_idx": pa.array([1, 2, 3, 4], pa.int32()), "first_seen_ds": days}))
    assert new_items(lake_cfg, "2026-01-04") == {2, 3}  # first seen 01-02 and 01-03; 01-04's are not indexed yet


def test_recall_counts_only_new_targets_and_only_users_who_played_one():
    top = np.array([[5, 1, 2], [7, 8, 9], [2, 3, 4]])
    targets = [{1, 5, 6}, {7}, {3, 6, 9}]
    recall, users = recall_of(top, targets, items={5, 6, 3})
    assert users == 2  # the second user played no new item
    assert recall == (1 / 2 + 1 / 2) / 2
    assert recall_of(top, targets, items=set()) == (0.0, 0)
