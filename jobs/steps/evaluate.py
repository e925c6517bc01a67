"""Step `evaluate`: how well yesterday's embeddings predict today's plays (Spark).

For users with an embedding on ds-1 who play anything on ds, the faiss index of ds-1 ranks the
whole catalog; HR@K and NDCG@K count the items played on ds, and new_item_recall_at_K the share of
a user's plays of items at most 2 days old (first seen on ds-2 or ds-1) that were in their top K.
The popularity baseline recommends the K most played items of ds-1 to everyone. Drift: the mean
cosine between a user's vector on ds-1 and on ds when both come from the same model version.

Everything per user runs on Spark, linear in users: the day's play sets (events joined with the
vocabulary, grouped by user), the users eligible (a semi-join with ds-1's embeddings), the drift
(a join of the two days' vectors). A seeded sample of the eligible users is evaluated:
`evaluate.max_users` with the smallest xxhash64(user_id, evaluate.seed) (all users when 0 or fewer);
only the sample's play sets and vectors reach the driver, at most max_users x (K..plays + dim)
numbers (100,000 users x 64 floats = 25 MB), for the faiss search. The sample size is the metric
`users_evaluated`, the eligible users `users_eligible`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.lakehouse import delta
from jobs.lakehouse.spark import read_snapshot
from jobs.lakehouse.tables import EVAL_METRICS, EVENTS, ITEM_VOCAB, USER_EMBEDDINGS
from jobs.steps.index import index_uri, read_index
from jobs.tracking import plots
from jobs.tracking.runs import StepResult, track_step
from models.ranking_metrics import hit_rate_multi, ndcg_multi


def play_sets(cfg: FactoryConfig, ds: str, events_version: int | None) -> DataFrame:
    """user_id, items (the distinct item_idx the user played on ds), for vocabulary items (Spark)."""
    _, events = read_snapshot(cfg, EVENTS, {"ds": [ds]}, events_version)
    _, vocab = read_snapshot(cfg, ITEM_VOCAB)
    plays = events.where(F.col("event_type") == "play").select("user_id", "item_id")
    joined = plays.join(F.broadcast(vocab.select("item_id", "item_idx")), "item_id")
    return joined.groupBy("user_id").agg(F.array_sort(F.collect_set("item_idx")).alias("items"))


def most_played(cfg: FactoryConfig, ds: str, events_version: int | None, k: int) -> list[int]:
    """The K most played vocabulary items of ds, ties by item_idx (Spark; K rows reach the driver)."""
    _, events = read_snapshot(cfg, EVENTS, {"ds": [ds]}, events_version)
    _, vocab = read_snapshot(cfg, ITEM_VOCAB)
    plays = events.where(F.col("event_type") == "play").join(F.broadcast(vocab.select("item_id", "item_idx")), "item_id")
    top = plays.groupBy("item_idx").count().orderBy(F.desc("count"), "item_idx").limit(k)
    return [int(i) for i in top.toArrow().column("item_idx").to_pylist()]  # K rows


def sampled_users(cfg: FactoryConfig, eligible: DataFrame) -> DataFrame:
    """The seeded sample of `eligible` users: evaluate.max_users with the smallest hash (all if 0)."""
    if cfg.evaluate.max_users <= 0:
        return eligible
    hashed = eligible.withColumn("_h", F.xxhash64("user_id", F.lit(cfg.evaluate.seed)))
    return hashed.orderBy("_h", "user_id").limit(cfg.evaluate.max_users).drop("_h")


def drift_mean_cosine(yesterday: DataFrame, today: DataFrame) -> float | None:
    """Mean dot product of the unit vectors of users embedded on both days (Spark), None if none."""
    both = yesterday.select("user_id", F.col("embedding").alias("a")).join(
        today.select("user_id", F.col("embedding").alias("b")), "user_id")
    dots = both.select(F.aggregate(F.zip_with("a", "b", lambda x, y: x * y), F.lit(0.0).cast("double"),
                                   lambda acc, x: acc + x).alias("dot"))
    value = dots.agg(F.avg("dot")).first()[0]
    return None if value is None else float(value)


def new_items(cfg: FactoryConfig, ds: str) -> set[int]:
    """item_idx of the items at most 2 days old on ds that the index of ds-1 can hold: first seen on
    ds-2 or ds-1 (item_vocab is small; issue 19: they have content-derived vectors until a retrain)."""
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_idx", "first_seen_ds"])
    fresh = pc.is_in(vocab.column("first_seen_ds"), value_set=pa.array([shift(ds, -2), shift(ds, -1)]))
    return set(vocab.column("item_idx").filter(fresh).to_pylist())


def recall_of(top: np.ndarray, target_sets: list[set], items: set[int]) -> tuple[float, int]:
    """(mean over rows with targets among `items` of the share of those targets in the row's top-K, rows)."""
    shares = [len(set(row.tolist()) & (t & items)) / len(t & items) for row, t in zip(top, target_sets) if t & items]
    return (float(np.mean(shares)) if shares else 0.0), len(shares)


def _model_version(frame: DataFrame) -> str | None:
    row = frame.select("model_version").limit(1).first()
    return None if row is None else row[0]


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    k = cfg.evaluate.k
    with track_step(cfg, ds, "evaluate", run_key) as step:
        previous = shift(ds, -1)
        embeddings_version, events_version = delta.current_version(cfg, USER_EMBEDDINGS), delta.current_version(cfg, EVENTS)
        step.read(USER_EMBEDDINGS, embeddings_version)
        step.read(EVENTS, events_version)
        _, yesterday = read_snapshot(cfg, USER_EMBEDDINGS, {"ds": [previous]}, embeddings_version)
        model_version = _model_version(yesterday)
        index = read_index(index_uri(cfg, previous))
        rows: list[dict] = []

        def record(method: str, metric: str, value: float) -> None:
            rows.append({"ds": ds, "embeddings_ds": previous, "model_version": model_version or "",
                         "method": method, "metric": metric, "value": float(value)})
            step.metrics(**{f"{method}.{metric}": value})

        if model_version is None or index is None:
            step.note(f"no embeddings or index for {previous}: nothing to evaluate against {ds}'s plays")
            record("encoder", "users_evaluated", 0)
        else:
            eligible = play_sets(cfg, ds, events_version).join(yesterday.select("user_id"), "user_id", "left_semi")
            record("encoder", "users_eligible", eligible.count())
            sample = sampled_users(cfg, eligible).join(yesterday.select("user_id", "embedding"), "user_id")
            # Bounded by evaluate.max_users rows (module docstring); sorted for a deterministic order.
            sample = sample.select("user_id", "items", "embedding").toArrow().sort_by("user_id")
            record("encoder", "users_evaluated", sample.num_rows)
            if sample.num_rows:
                vectors = pc.list_flatten(sample.column("embedding")).to_numpy().astype(np.float32).reshape(sample.num_rows, -1)
                target_sets = [set(items) for items in sample.column("items").to_pylist()]
                _, top = index.search(vectors, k)  # (U, K) item_idx, -1 where fewer than K
                record("encoder", f"hr_at_{k}", hit_rate_multi(top, target_sets))
                record("encoder", f"ndcg_at_{k}", ndcg_multi(top, target_sets))
                popular = most_played(cfg, previous, events_version, k)
                top_pop = np.tile(np.array(popular + [-1] * (k - len(popular)), dtype=np.int64), (sample.num_rows, 1))
                record("popularity", f"hr_at_{k}", hit_rate_multi(top_pop, target_sets))
                record("popularity", f"ndcg_at_{k}", ndcg_multi(top_pop, target_sets))
                fresh = new_items(cfg, ds)  # plays of items at most 2 days old: can the day's vectors find them?
                for method, ranked in (("encoder", top), ("popularity", top_pop)):
                    recall, users = recall_of(ranked, target_sets, fresh)
                    record(method, f"new_item_recall_at_{k}", recall)
                record("encoder", "new_item_users", users)  # users who played a new item: the same for both
            _, today = read_snapshot(cfg, USER_EMBEDDINGS, {"ds": [ds]}, embeddings_version)
            if _model_version(today) == model_version:
                drift = drift_mean_cosine(yesterday, today)
                if drift is not None:
                    record("encoder", "drift_mean_cosine", drift)
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
