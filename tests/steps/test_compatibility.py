"""Compatibility across retrains (issue 19): what a promotion measures, and the alignment training option."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.steps import encoder_training
from jobs.steps.compatibility import compatibility_report, log_promotion
from models.space_alignment import unit_rows
from models.user_encoder import UserEncoder, UserEncoderConfig

NUM_ITEMS = 30

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def training():
    """TrainingData where every user walks the items in order (next item = current + 1, cyclically),
    each validation user holding out the last item: a task a tiny encoder learns in a few epochs."""
    rng = np.random.default_rng(0)
    starts, lengths = rng.integers(0, NUM_ITEMS, 300), rng.integers(4, 14, 300)
    items = [[(s + j) % NUM_ITEMS + 1 for j in range(n)] for s, n in zip(starts, lengths)]
    table = pa.table({"item_idx": pa.array(items, pa.list_(pa.int32())),
                      "event_type": pa.array([[1] * len(s) for s in items], pa.list_(pa.int8()))})
    return encoder_training.build_training_data(table, 12, seed=0)


def encoder(num_items: int = NUM_ITEMS, seed: int = 0) -> UserEncoder:
    torch.manual_seed(seed)
    return UserEncoder(UserEncoderConfig(num_items=num_items, max_len=12, d_model=16, n_layers=1, n_heads=2,
                                         dropout=0.0))


def trained(data, start: UserEncoder | None = None, seed: int = 0, **loop) -> UserEncoder:
    model = copy.deepcopy(start) if start is not None else encoder(seed=seed)
    settings = {"lr": 1e-2, "batch_size": 16, "max_epochs": 3, "patience": 5, "seed": seed, **loop}
    run = encoder_training.TrainingRun(model, data, encoder_training.LoopConfig(**settings))
    run.run()
    model.load_state_dict(run.best_weights)
    return model.eval()


def test_a_model_compared_with_itself_is_fully_compatible(training):
    model = trained(training)
    metrics, rotation = compatibility_report(model, model, training.val_inputs, training.val_events, training.val_targets)
    assert metrics["compat_users"] == len(training.val_targets)
    assert metrics["compat_hr10_same_new"] > 0.3
    for name in ("new_users_old_items", "old_users_new_items", "new_users_aligned_old_items"):
        assert metrics[f"compat_ratio_{name}"] == pytest.approx(1.0)
    assert metrics["compat_neighbour_overlap10"] == pytest.approx(1.0)
    assert metrics["compat_rotation_angle_deg"] < 1e-2 and metrics["compat_shared_cosine"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(rotation, np.eye(16), atol=1e-4)


def test_independently_trained_versions_are_incompatible_until_aligned(training):
    old, new = trained(training, seed=0), trained(training, seed=1)
    metrics, _ = compatibility_report(old, new, training.val_inputs, training.val_events, training.val_targets)
    assert metrics["compat_ratio_new_users_old_items"] < 0.5  # a fresh space: the old index is useless
    assert metrics["compat_aligned_cosine"] > metrics["compat_shared_cosine"] + 0.3
    assert metrics["compat_hr10_new_users_aligned_old_items"] > metrics["compat_hr10_new_users_old_items"]


def test_only_items_both_versions_know_are_compared_and_new_items_in_histories_are_dropped_for_the_old(training):
    old = trained(training)
    grown = encoder(num_items=NUM_ITEMS + 5)
    grown.load_state_dict({k: (torch.cat([v, torch.zeros(5, v.shape[1])]) if k == "item_emb.weight" else v)
                           for k, v in old.state_dict().items()})
    inputs = training.val_inputs.copy()
    inputs[:, -1] = np.where(inputs[:, -1] > 0, NUM_ITEMS + 3, 0)  # a new item in every history
    targets = training.val_targets.copy()
    targets[:3] = NUM_ITEMS + 2  # targets the old version cannot rank are left out
    metrics, _ = compatibility_report(old, grown.eval(), inputs, training.val_events, targets)
    assert metrics["compat_shared_items"] == NUM_ITEMS and metrics["compat_users"] == len(targets) - 3


def test_alignment_option_keeps_item_vectors_closer_to_the_old_ones_than_without_it(training):
    start = trained(training)
    before = unit_rows(start.item_embeddings().detach()[1:].numpy())

    def moved(weight: float) -> tuple[float, float]:
        model = trained(training, start, seed=3, lr=3e-2, max_epochs=3, compat_weight=weight, compat_items=NUM_ITEMS)
        after = unit_rows(model.item_embeddings().detach()[1:].numpy())
        return float((before * after).sum(1).mean()), encoder_training.validation_metrics(model, training)["val_hr10"]

    (free, free_hr), (anchored, anchored_hr) = moved(0.0), moved(20.0)
    assert anchored > free and anchored > 0.95
    assert anchored_hr > 0.5 * free_hr  # still learns


def test_a_promotion_logs_metrics_the_plot_and_the_alignment_map(training, monkeypatch):
    logged: dict = {}
    artifacts: list[str] = []

    class Step:
        def metrics(self, **values):
            logged.update(values)

        def artifact(self, path, folder=""):
            artifacts.append(f"{folder}/{path.name}")

    old, new = trained(training, seed=0), trained(training, seed=1)
    log_promotion(Step(), old, new, training.val_inputs, training.val_events, training.val_targets, "4")
    assert {"compat_hr10_new_users_old_items", "compat_rotation_angle_deg", "compat_neighbour_overlap10"} <= set(logged)
    assert sorted(artifacts) == ["alignment/alignment.json", "alignment/rotation_old_to_new.npy", "plots/compatibility.png"]


def item_rows(vectors: np.ndarray, version: str, ds: str, sources: list[str] | None = None) -> pa.Table:
    n = len(vectors)
    return pa.table({"item_id": [f"trk_{i:03d}" for i in range(n)], "item_idx": pa.array(range(1, n + 1), pa.int32()),
                     "embedding": pa.array(vectors.tolist(), pa.list_(pa.float32())), "model_version": [version] * n,
                     "vector_source": sources or ["encoder"] * n, "ds": [ds] * n})


def test_embed_logs_how_far_a_new_champion_moved_the_items_and_the_map_back(lake_cfg):
    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import ITEM_EMBEDDINGS
    from jobs.steps.compatibility import log_version_change

    rng = np.random.default_rng(0)
    yesterday = unit_rows(rng.standard_normal((40, 8)))
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    delta.replace_partition(lake_cfg, ITEM_EMBEDDINGS, item_rows(yesterday, "4", "2026-01-01"), {"ds": "2026-01-01"})
    logged, artifacts = {}, []

    class Step:
        def metrics(self, **values):
            logged.update(values)

        def params(self, **values):
            logged.update(values)

        def artifact(self, path, folder=""):
            artifacts.append(np.load(path))

    today = item_rows(np.concatenate([yesterday @ q, unit_rows(rng.standard_normal((3, 8)))]), "5", "2026-01-02",
                      ["encoder"] * 40 + ["content"] * 3)
    metrics = log_version_change(lake_cfg, "2026-01-02", today, Step())
    assert metrics["version_change_shared_items"] == 40 and metrics["version_change_aligned_cosine"] > 0.9999
    assert logged["version_change_from"] == "4"
    np.testing.assert_allclose(yesterday @ artifacts[0], yesterday @ q, atol=1e-4)
    same_version = item_rows(yesterday, "4", "2026-01-02")
    assert log_version_change(lake_cfg, "2026-01-02", same_version, Step()) == {}


def test_negative_compat_weight_or_evidence_threshold_is_one_sentence():
    from jobs.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.compat_weight must be >= 0"):
        load_config(overrides={"train.compat_weight": "-1"})
    with pytest.raises(ConfigError, match="cold_items.min_events must be >= 0"):
        load_config(overrides={"cold_items.min_events": "-2"})
    assert load_config(overrides={"train.compat_weight": "10"}).train.compat_weight == 10.0
