"""Step `evaluate`: how well yesterday's embeddings predict today's plays.

For every user with an embedding on ds-1 who plays anything on ds, the faiss index of ds-1 ranks the
whole catalog; HR@K and NDCG@K count the items played on ds. The popularity baseline recommends
the K most played items of ds-1 to everyone. Drift: the mean cosine between a user's vector on ds-1
and on ds when both come from the same model version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVAL_METRICS, EVENTS, ITEM_VOCAB, USER_EMBEDDINGS
from jobs.steps.index import index_uri, read_index
from jobs.tracking import plots
from jobs.tracking.runs import StepResult, track_step
from models.ranking_metrics import hit_rate_multi, ndcg_multi


def plays_by_user(cfg: FactoryConfig, ds: str) -> tuple[dict[str, set[int]], list[int]]:
    """({user_id: item_idx set played on ds}, item_idx list of ds's plays) for vocabulary items."""
    events = delta.read(cfg, EVENTS, where={"ds": ds}, columns=["user_id", "item_id", "event_type"])
    events = events.filter(pc.equal(events.column("event_type"), "play"))
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"])
    joined = events.join(vocab, "item_id", join_type="inner")
    targets: dict[str, set[int]] = {}
    for user, item in zip(joined.column("user_id").to_pylist(), joined.column("item_idx").to_pylist()):
        targets.setdefault(user, set()).add(item)
    return targets, joined.column("item_idx").to_pylist()


def embeddings_of(cfg: FactoryConfig, ds: str) -> tuple[list[str], np.ndarray, str | None]:
    table = delta.read(cfg, USER_EMBEDDINGS, where={"ds": ds})
    if table.num_rows == 0:
        return [], np.zeros((0, 0), np.float32), None
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return table.column("user_id").to_pylist(), vectors, table.column("model_version")[0].as_py()


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    k = cfg.evaluate.k
    with track_step(cfg, ds, "evaluate", run_key) as step:
        previous = shift(ds, -1)
        step.read(USER_EMBEDDINGS, delta.current_version(cfg, USER_EMBEDDINGS))
        step.read(EVENTS, delta.current_version(cfg, EVENTS))
        users, vectors, model_version = embeddings_of(cfg, previous)
        index = read_index(index_uri(cfg, previous))
        rows: list[dict] = []

        def record(method: str, metric: str, value: float) -> None:
            rows.append({"ds": ds, "embeddings_ds": previous, "model_version": model_version or "",
                         "method": method, "metric": metric, "value": float(value)})
            step.metrics(**{f"{method}.{metric}": value})

        if not users or index is None:
            step.note(f"no embeddings or index for {previous}: nothing to evaluate against {ds}'s plays")
            record("encoder", "users_evaluated", 0)
        else:
            targets, _ = plays_by_user(cfg, ds)
            _, yesterday_plays = plays_by_user(cfg, previous)
            keep = [i for i, user in enumerate(users) if user in targets]
            target_sets = [targets[users[i]] for i in keep]
            record("encoder", "users_evaluated", len(keep))
            if keep:
                _, top = index.search(vectors[keep], k)  # (U, K) item_idx, -1 where fewer than K
                record("encoder", f"hr_at_{k}", hit_rate_multi(top, target_sets))
                record("encoder", f"ndcg_at_{k}", ndcg_multi(top, target_sets))
                popular = _most_common(yesterday_plays, k)
                top_pop = np.tile(np.array(popular + [-1] * (k - len(popular)), dtype=np.int64), (len(keep), 1))
                record("popularity", f"hr_at_{k}", hit_rate_multi(top_pop, target_sets))
                record("popularity", f"ndcg_at_{k}", ndcg_multi(top_pop, target_sets))
            today_users, today_vectors, today_version = embeddings_of(cfg, ds)
            if today_version is not None and today_version == model_version:
                position = {u: i for i, u in enumerate(users)}
                both = [(position[u], j) for j, u in enumerate(today_users) if u in position]
                if both:
                    a, b = (np.array(x) for x in zip(*both))
                    record("encoder", "drift_mean_cosine", float((vectors[a] * today_vectors[b]).sum(1).mean()))
        metrics = pa.Table.from_pylist(rows, schema=EVAL_METRICS.schema)
        step.wrote(EVAL_METRICS, delta.replace_partition(cfg, EVAL_METRICS, metrics, {"ds": ds}))
        _plot_history(cfg, step, f"hr_at_{k}")
        return step.result


def _plot_history(cfg: FactoryConfig, step, metric: str) -> None:
    """The metric of every evaluated day so far, encoder against popularity."""
    history = delta.read(cfg, EVAL_METRICS)
    history = history.filter(pc.equal(history.column("metric"), metric)).sort_by("ds").to_pylist()
    days = sorted({row["ds"] for row in history})
    if not days:
        return
    series = {method: [next((r["value"] for r in history if r["ds"] == d and r["method"] == method), float("nan")) for d in days]
              for method in ("encoder", "popularity")}
    with tempfile.TemporaryDirectory() as folder:
        step.artifact(plots.metric_over_days(days, series, metric, Path(folder)), "plots")


def _most_common(items: list[int], k: int) -> list[int]:
    if not items:
        return []
    ids, counts = np.unique(np.asarray(items), return_counts=True)
    order = np.lexsort((ids, -counts))  # most played first, ties by id for determinism
    return ids[order][:k].tolist()
