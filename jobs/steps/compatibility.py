"""How compatible a newly promoted encoder is with the one it replaces (a helper of `train`, issue 19).

Consumers hold yesterday's vectors (an index, caches, models trained on them) while today's arrive.
At a promotion, for the validation users (a fixed, seeded sample: encoder_training.VALIDATION_USERS)
and their held-out next item, ranked among the items both versions know:
- same-version HR@10 of each model (new users x new items, old users x old items);
- cross-version HR@10 both ways: new users against the old item vectors (a consumer still serving
  the old index) and old users against the new item vectors (a consumer holding old user vectors);
- the same with the alignment map: the old item vectors translated by R (orthogonal Procrustes from
  old to new over the shared items, models/space_alignment.py), which is published with the version
  (an artifact `alignment/rotation_old_to_new.npy` of the train run) so consumers can translate;
- neighbour overlap@10 of each user's top 10 under the two versions, and the rotation between them.
`compatibility_report` is plain numpy/torch (also used by the benchmark); `log_promotion` logs it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from jobs.steps.encoder_training import gap_input
from jobs.tracking import plots
from models.ranking_metrics import hit_rate_at_k, ndcg_at_k
from models.sequences import pad_left
from models.space_alignment import alignment_report, neighbour_overlap, top_k
from models.user_encoder import UserEncoder

K = 10
CROSS_VERSION = "compat_hr10_new_users_old_items"  # the headline: new users served by the old index


@torch.inference_mode()
def user_vectors(model: UserEncoder, inputs: np.ndarray, events: np.ndarray, gaps: np.ndarray | None = None,
                 batch_size: int = 512) -> np.ndarray:
    """(N, D) unit user vectors of left-padded (N, L) histories under `model`; items the model does not
    know (ids above its num_items) are dropped from the history first, as embed's predictor does.
    gaps: (N, L) time-gap buckets aligned with inputs, needed by a model with time gaps
    (encoder_training.gap_input); a dropped item's gap goes with it, as in the predictor."""
    gaps = gap_input(model, gaps)
    keep = (inputs > 0) & (inputs <= model.cfg.num_items)  # (N, L)
    items = pad_left([row[k] for row, k in zip(inputs, keep)], inputs.shape[1])
    kinds = pad_left([ev[k] for ev, k in zip(events, keep)], inputs.shape[1])
    times = pad_left([g[k] for g, k in zip(gaps, keep)], inputs.shape[1]) if gaps is not None else None
    out = [model.user_embeddings(torch.from_numpy(items[s:s + batch_size]), torch.from_numpy(kinds[s:s + batch_size]),
                                 torch.from_numpy(times[s:s + batch_size]) if times is not None else None)
           for s in range(0, len(items), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.d_model), np.float32)


def item_table(model: UserEncoder, items: int) -> np.ndarray:
    """(items, D) unit vectors of item ids 1..items."""
    return model.item_embeddings().detach()[1:items + 1].numpy()


def ranks_of(users: np.ndarray, items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target id (1-based, into `items` rows) by dot product, ties pessimistic."""
    scores = users @ items.T  # (U, N)
    target = scores[np.arange(len(targets)), targets - 1][:, None]
    return (scores >= target).sum(1) - 1


def compatibility_report(old: UserEncoder, new: UserEncoder, inputs: np.ndarray, events: np.ndarray,
                         targets: np.ndarray, gaps: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """({metric: value}, R (D, D) old -> new) over the users whose target both versions know.

    inputs, events (N, L): histories without the target; targets (N,) item ids; gaps (N, L): their
    time-gap buckets, needed when either version reads time gaps. Needs equal d_model.
    """
    shared = min(old.cfg.num_items, new.cfg.num_items)
    rows = (targets >= 1) & (targets <= shared)
    old_items, new_items = item_table(old, shared), item_table(new, shared)
    rotation, facts = alignment_report(old_items, new_items)
    metrics = {f"compat_{k}": v for k, v in facts.items()}
    metrics.update(compat_users=float(rows.sum()), compat_shared_items=float(shared))
    if not rows.any():
        return metrics, rotation
    gaps = gaps[rows] if gaps is not None else None
    u_old = user_vectors(old, inputs[rows], events[rows], gaps)
    u_new = user_vectors(new, inputs[rows], events[rows], gaps)
    t = targets[rows]
    pairs = {"hr10_same_new": (u_new, new_items), "hr10_same_old": (u_old, old_items),
             "hr10_new_users_old_items": (u_new, old_items), "hr10_old_users_new_items": (u_old, new_items),
             "hr10_new_users_aligned_old_items": (u_new, old_items @ rotation)}
    for name, (users, items) in pairs.items():
        ranks = ranks_of(users, items, t)
        metrics[f"compat_{name}"] = hit_rate_at_k(ranks, K)
        metrics[f"compat_{name.replace('hr10', 'ndcg10')}"] = ndcg_at_k(ranks, K)
    same = metrics["compat_hr10_same_new"]
    for name in ("new_users_old_items", "old_users_new_items", "new_users_aligned_old_items"):
        metrics[f"compat_ratio_{name}"] = metrics[f"compat_hr10_{name}"] / same if same else float("nan")
    metrics["compat_neighbour_overlap10"] = neighbour_overlap(top_k(u_new, new_items, K), top_k(u_old, old_items, K))
    return metrics, rotation


def log_promotion(step, old: UserEncoder, new: UserEncoder, inputs: np.ndarray, events: np.ndarray,
                  targets: np.ndarray, old_version: str, gaps: np.ndarray | None = None) -> dict[str, float]:
    """compatibility_report logged to the step's run: metrics, a plot, and the alignment map."""
    metrics, rotation = compatibility_report(old, new, inputs, events, targets, gaps)
    step.metrics(**{k: v for k, v in metrics.items() if np.isfinite(v)})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rotation_old_to_new.npy"
        np.save(path, rotation)
        step.artifact(path, "alignment")
        about = Path(folder) / "alignment.json"
        about.write_text(json.dumps({"from_version": old_version, "shared_items": int(metrics["compat_shared_items"]),
                                     "use": "old_item_vectors @ R gives vectors in the new version's space",
                                     **{k: metrics[k] for k in ("compat_rotation_angle_deg", "compat_shared_cosine",
                                                                "compat_aligned_cosine")}}, indent=2))
        step.artifact(about, "alignment")
        if "compat_hr10_same_new" in metrics:
            bars = {"same version (new)": metrics["compat_hr10_same_new"],
                    "same version (old)": metrics["compat_hr10_same_old"],
                    "new users x old items": metrics["compat_hr10_new_users_old_items"],
                    "old users x new items": metrics["compat_hr10_old_users_new_items"],
                    "new users x aligned old items": metrics["compat_hr10_new_users_aligned_old_items"]}
            step.artifact(plots.compatibility(bars, metrics["compat_rotation_angle_deg"],
                                              metrics["compat_neighbour_overlap10"], Path(folder), old_version), "plots")
    return metrics


def log_version_change(cfg, ds: str, items, step) -> dict[str, float]:
    """When ds's item vectors (an Arrow table: item_id, embedding, model_version, vector_source) come from
    another model version than yesterday's: how far the space moved over the items both days have from
    the encoder (rotation, cosine before / after alignment), and the map R (yesterday @ R -> today) as an
    artifact `alignment/rotation_previous_to_current.npy` of the step's run. {} when nothing changed."""
    from jobs.days import shift
    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import ITEM_EMBEDDINGS
    from jobs.steps.content_item_vectors import DERIVED

    before = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": shift(ds, -1)},
                        columns=["item_id", "embedding", "model_version", "vector_source"])  # a small table
    versions = set(before.column("model_version").to_pylist())
    current = set(items.column("model_version").to_pylist())
    if before.num_rows == 0 or versions == current:
        return {}
    old = {i: v for i, v, s in zip(*(before.column(c).to_pylist() for c in ("item_id", "embedding", "vector_source")))
           if s not in DERIVED}
    new = {i: v for i, v, s in zip(*(items.column(c).to_pylist() for c in ("item_id", "embedding", "vector_source")))
           if s not in DERIVED}
    shared = sorted(old.keys() & new.keys())
    if not shared or len(old[shared[0]]) != len(new[shared[0]]):
        return {}
    rotation, facts = alignment_report(np.array([old[i] for i in shared], np.float32),
                                       np.array([new[i] for i in shared], np.float32))
    metrics = {f"version_change_{k}": v for k, v in facts.items()} | {"version_change_shared_items": float(len(shared))}
    step.metrics(**metrics)
    step.params(version_change_from=",".join(sorted(versions)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rotation_previous_to_current.npy"
        np.save(path, rotation)
        step.artifact(path, "alignment")
    return metrics
