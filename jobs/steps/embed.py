"""Step `embed` (Ray Data): embed the day's users with the champion; write item vectors too.

Users come from the day's user_sequences files (one Delta version), flow through a pool of
`UserEmbeddingPredictor` actors (the model is loaded once per actor), and land in user_embeddings.
Item vectors are the champion's normalised item table, so users and items share one hypersphere.

Incremental days: when yesterday's user_embeddings partition was computed by today's champion, a
user whose model input (the item_idx and event_type lists of user_sequences) is identical to
yesterday's keeps yesterday's vector, copied from that partition; only the other users are
inferred. Any other case (new champion, yesterday missing or mixed versions) recomputes everyone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_EMBEDDINGS, ITEM_VOCAB, ITEMS, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.runtime.ray_cluster import ensure_ray
from jobs.steps.user_predictor import INPUT_COLUMNS, OUTPUT_SCHEMA, UserEmbeddingPredictor, flat_lists
from jobs.tracking import plots, registry
from jobs.tracking.runs import StepResult, track_step

log = logging.getLogger(__name__)


def predictor_kwargs(cfg: FactoryConfig, champion: registry.RegisteredEncoder) -> dict:
    """Constructor arguments of UserEmbeddingPredictor for this config (threads matched to the actor)."""
    threads = cfg.ray.inference_threads or (
        max(1, (os.cpu_count() or 1) // cfg.ray.inference_actors) if not cfg.ray.address
        else max(1, int(cfg.ray.actor_num_cpus)))
    return {"state_dict": champion.model.state_dict(), "encoder_config": dataclasses.asdict(champion.model.cfg),
            "model_version": champion.version, "threads": threads,
            "tokens_per_forward": cfg.ray.inference_tokens_per_forward}


def actor_count(cfg: FactoryConfig) -> int:
    """[ray].inference_actors, lowered so the actors leave one CPU of the Ray cluster free: the
    upstream read and repartition tasks need a whole CPU, and without one the job deadlocks."""
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    fits = math.floor((cpus - 1) / cfg.ray.actor_num_cpus + 1e-9) if cfg.ray.actor_num_cpus > 0 else cfg.ray.inference_actors
    if fits < 1:
        raise FactoryError(f"The Ray cluster has {cpus:g} CPU(s); embedding needs one for reading plus "
                           f"ray.actor_num_cpus={cfg.ray.actor_num_cpus} per actor. Raise ray.num_cpus or lower "
                           "ray.actor_num_cpus.")
    if fits < cfg.ray.inference_actors:
        log.warning("ray.inference_actors=%d x actor_num_cpus=%s leaves no CPU of %g for the read tasks; using %d actor(s).",
                    cfg.ray.inference_actors, cfg.ray.actor_num_cpus, cpus, fits)
    return min(cfg.ray.inference_actors, fits)


def embed_users(cfg: FactoryConfig, source: list[str] | pa.Table, champion: registry.RegisteredEncoder) -> pa.Table:
    """user_id, embedding, model_version for every user of `source`, sorted by user_id (Ray Data).

    source: user_sequences Parquet files, or a table with user_id, item_idx, event_type.
    """
    ensure_ray(cfg)
    dataset = (ray.data.read_parquet(source).select_columns(INPUT_COLUMNS) if isinstance(source, list)
               else ray.data.from_arrow(source.select(INPUT_COLUMNS)))
    # A day's file is one block, and one block goes to one actor: cut it so every actor gets work.
    dataset = dataset.repartition(target_num_rows_per_block=cfg.ray.inference_batch_size)
    embedded = dataset.map_batches(
        UserEmbeddingPredictor, fn_constructor_kwargs=predictor_kwargs(cfg, champion),
        batch_size=cfg.ray.inference_batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actor_count(cfg)), num_cpus=cfg.ray.actor_num_cpus,
    )
    tables = ray.get(embedded.to_arrow_refs())
    if not tables:
        return OUTPUT_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by("user_id")


def unchanged_inputs(today: pa.Table, before: pa.Table) -> np.ndarray:
    """(N,) bool over today's rows: the user has a row in `before` with identical item_idx and
    event_type lists (the model's whole input). Both tables hold user_id, item_idx, event_type."""
    position = pc.index_in(today.column("user_id"), value_set=before.column("user_id"))
    same = position.is_valid().to_numpy(zero_copy_only=False).copy()
    matched = pa.array(np.flatnonzero(same))
    if not len(matched):
        return same
    for column in ("item_idx", "event_type"):
        now, now_offsets = flat_lists(today.column(column).take(matched))
        then, then_offsets = flat_lists(before.column(column).take(position.take(matched)))
        lengths = np.diff(now_offsets)
        equal = lengths == np.diff(then_offsets)
        # Rows of equal length: compare their values in one flat pass, count mismatches per row.
        rows = np.flatnonzero(equal)
        differs = now[_positions(now_offsets[rows], lengths[rows])] != then[_positions(then_offsets[rows], lengths[rows])]
        mismatches = np.bincount(np.repeat(np.arange(len(rows)), lengths[rows]), weights=differs, minlength=len(rows))
        equal[rows] = mismatches == 0
        same[matched.to_numpy()] &= equal
    return same


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions starts[i] .. starts[i] + lengths[i] - 1 of every row, concatenated."""
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def embed_day(cfg: FactoryConfig, ds: str, sequences_version: int, files: list[str],
              champion: registry.RegisteredEncoder) -> tuple[pa.Table, dict[str, int], str]:
    """Every user of ds's user_sequences embedded: (user_id, embedding, model_version sorted by
    user_id, {users_inferred, users_carried_forward}, why this plan).

    Carries a user forward (copies yesterday's row) only when yesterday's partition was computed
    entirely by this champion version and the user's item_idx and event_type lists equal yesterday's.
    """
    yesterday = shift(ds, -1)
    previous = delta.read(cfg, USER_EMBEDDINGS, where={"ds": yesterday}, columns=OUTPUT_SCHEMA.names)
    versions = set(pc.unique(previous.column("model_version")).to_pylist())
    if previous.num_rows == 0 or versions != {champion.version}:
        why = (f"full: no user_embeddings for {yesterday}" if previous.num_rows == 0 else
               f"full: {yesterday} was embedded by model version(s) {sorted(versions)}, champion is {champion.version}")
        users = embed_users(cfg, files, champion)
        return users, {"users_inferred": users.num_rows, "users_carried_forward": 0}, why
    today = delta.read(cfg, USER_SEQUENCES, where={"ds": ds}, columns=INPUT_COLUMNS, version=sequences_version)
    before = delta.read(cfg, USER_SEQUENCES, where={"ds": yesterday}, columns=INPUT_COLUMNS)
    carry = unchanged_inputs(today, before) & pc.is_in(
        today.column("user_id"), value_set=previous.column("user_id")).to_numpy(zero_copy_only=False)
    carried = previous.filter(pc.is_in(previous.column("user_id"), value_set=today.column("user_id").filter(carry)))
    changed = today.filter(pa.array(~carry))
    inferred = embed_users(cfg, changed, champion) if changed.num_rows else OUTPUT_SCHEMA.empty_table()
    users = pa.concat_tables([carried.cast(OUTPUT_SCHEMA), inferred]).sort_by("user_id")
    why = f"incremental: model version {champion.version} also embedded {yesterday}"
    return users, {"users_inferred": inferred.num_rows, "users_carried_forward": carried.num_rows}, why


def item_vectors(cfg: FactoryConfig, champion: registry.RegisteredEncoder) -> pa.Table:
    """item_id, item_idx, embedding for every vocabulary item the champion has a row for."""
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"]).sort_by("item_idx")
    table = champion.model.item_embeddings().detach().numpy()  # (num_items + 1, D)
    known = vocab.filter(pa.compute.less_equal(vocab.column("item_idx"), champion.model.cfg.num_items))
    vectors = table[known.column("item_idx").to_numpy()]
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return known.append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))
    ).append_column("model_version", pa.array([champion.version] * known.num_rows, pa.string()))


def sphere_plot(cfg: FactoryConfig, users: pa.Table, items: pa.Table, folder: Path, ds: str, version: str) -> Path:
    """Up to 2,000 users, tracks and episodes each, projected together (the talk's shared-sphere picture)."""
    rng = np.random.default_rng(0)
    types = dict(zip(*(delta.read(cfg, ITEMS, columns=["item_id",
                                                       "item_type"]).column(c).to_pylist() for c in ("item_id", "item_type"))))

    def sample(table: pa.Table, keep=None) -> np.ndarray:
        rows = [i for i in range(table.num_rows) if keep is None or keep(i)]
        rows = rng.choice(rows, size=min(2000, len(rows)), replace=False) if rows else []
        return np.stack([table.column("embedding")[int(i)].values.to_numpy() for i in rows]) if len(rows) else np.zeros((0, 1))

    item_ids = items.column("item_id").to_pylist()
    return plots.shared_sphere(
        sample(users), sample(items, lambda i: types.get(item_ids[i]) == "track"),
        sample(items, lambda i: types.get(item_ids[i]) == "episode"), folder,
        f"users, tracks and episodes on one sphere (ds={ds}, model v{version})",
    )


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "embed", run_key) as step:
        champion = registry.load_alias(cfg, registry.CHAMPION)
        if champion is None:
            raise FactoryError(f"No '{registry.CHAMPION}' version of {cfg.mlflow.registered_model} in the MLflow "
                               f"registry at {cfg.mlflow_tracking_uri}; run the train step first.")
        version, files = delta.snapshot_files(cfg, USER_SEQUENCES, where_in={"ds": [ds]})
        step.read(USER_SEQUENCES, version)
        step.read(ITEM_VOCAB, delta.current_version(cfg, ITEM_VOCAB))
        if not files:
            raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
        kwargs = predictor_kwargs(cfg, champion)
        step.params(model_version=champion.version, actors=cfg.ray.inference_actors,
                    batch_size=cfg.ray.inference_batch_size, threads=kwargs["threads"],
                    tokens_per_forward=kwargs["tokens_per_forward"])
        users, counts, plan = embed_day(cfg, ds, version, files, champion)
        log.info("ds=%s %s: %s", ds, plan, counts)
        step.params(plan=plan)
        if users.num_rows == 0:
            raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
        users = users.append_column("ds", pa.array([ds] * users.num_rows, pa.string()))
        step.wrote(USER_EMBEDDINGS, delta.replace_partition(cfg, USER_EMBEDDINGS, users, {"ds": ds}))
        items = item_vectors(cfg, champion)
        items = items.append_column("ds", pa.array([ds] * items.num_rows, pa.string()))
        step.wrote(ITEM_EMBEDDINGS, delta.replace_partition(cfg, ITEM_EMBEDDINGS, items, {"ds": ds}))
        with tempfile.TemporaryDirectory() as folder:
            step.artifact(sphere_plot(cfg, users, items, Path(folder), ds, champion.version), "plots")
        vocab_size = delta.read(cfg, ITEM_VOCAB, columns=["item_idx"]).num_rows
        step.metrics(users_embedded=users.num_rows, **counts, items_embedded=items.num_rows,
                     items_without_embedding=vocab_size - items.num_rows)
        return step.result
