"""Step `embed` (Ray actors): embed the day's users with the champion; write item vectors too.

Users come from the day's user_sequences files (one Delta version) and flow through Ray actors that
write the user_embeddings Parquet files themselves and return only (path, rows); the driver commits
the day's files in one Delta transaction (jobs.lakehouse.commit). The actors are a long-lived pool
that loads the model once per process (`ray.inference_engine = "pool"`, jobs/steps/inference_pool.py),
or a Ray Data map_batches job of `UserEmbeddingWriter` actors per call ("ray_data",
jobs/steps/embedding_writer.py). Item vectors are the
champion's normalised item table (a small table: the Arrow path), so users and items share one
hypersphere.

Incremental days: when yesterday's user_embeddings partition was computed by today's champion, a
user whose model input (the item_idx and event_type lists of user_sequences, and the ts lists for a
champion with time gaps: `input_columns`) is identical to yesterday's keeps yesterday's vector: Spark
finds those users (a join of the two days' sequences), its executors copy their rows from yesterday's
partition into a writer folder, and write the other users' sequences to a staging folder that the
actors embed. Any other case (new champion, yesterday
missing or mixed versions) embeds everyone. No per-user row passes through the driver.

`embed_users` and `embed_day` are the in-memory forms the inference benchmark compares (they return
Arrow tables); the step itself uses `embed_day_to_folders`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.errors import FactoryError
from jobs.lakehouse import commit, delta
from jobs.lakehouse.spark import read_snapshot, write_files
from jobs.lakehouse.tables import ITEM_EMBEDDINGS, ITEM_VOCAB, ITEMS, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.runtime.ray_cluster import ensure_ray
from jobs.steps import inference_pool, item_facets, train
from jobs.steps.compatibility import log_version_change
from jobs.steps.content_item_vectors import ENCODER, FACETS, catalog_item_vectors
from jobs.steps.embedding_writer import UserEmbeddingWriter
from jobs.steps.user_predictor import (
    INPUT_COLUMNS,
    OUTPUT_SCHEMA,
    UserEmbeddingPredictor,
    actor_num_gpus,
    compute_kwargs,
    flat_lists,
    input_columns,
)
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
            "tokens_per_forward": cfg.ray.inference_tokens_per_forward, **compute_kwargs(cfg)}


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

    source: user_sequences Parquet files, or a table with user_id, item_idx, event_type (and ts for a
    champion with time gaps: input_columns).
    """
    ensure_ray(cfg)
    columns = input_columns(champion.model.cfg)
    if cfg.ray.inference_engine == "pool":
        if not isinstance(source, list):  # the pool's actors read files: stage the table as one
            return _embed_table_with_pool(cfg, source, champion)
        tables = inference_pool.embed(source, predictor_kwargs(cfg, champion), **_pool_resources(cfg))
        return pa.concat_tables(tables).sort_by("user_id") if tables else OUTPUT_SCHEMA.empty_table()
    dataset = (ray.data.read_parquet(source).select_columns(columns) if isinstance(source, list)
               else ray.data.from_arrow(source.select(columns)))
    # A day's file is one block, and one block goes to one actor: cut it so every actor gets work.
    dataset = dataset.repartition(target_num_rows_per_block=cfg.ray.inference_batch_size)
    embedded = dataset.map_batches(
        UserEmbeddingPredictor, fn_constructor_kwargs=predictor_kwargs(cfg, champion),
        batch_size=cfg.ray.inference_batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actor_count(cfg)), num_cpus=cfg.ray.actor_num_cpus,
        num_gpus=actor_num_gpus(cfg),  # [compute].device: one GPU per actor on cuda
    )
    tables = ray.get(embedded.to_arrow_refs())
    if not tables:
        return OUTPUT_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by("user_id")


def embed_to_folder(cfg: FactoryConfig, source: str | list[str], champion: registry.RegisteredEncoder,
                    folder: commit.WriterFolder) -> int:
    """Embed the users of `source` (Parquet files or a folder) on Ray: the actors write the vectors into
    `folder` and return only (path, rows) per file. Returns the rows written."""
    ensure_ray(cfg)
    if cfg.ray.inference_engine == "pool":
        paths = source if isinstance(source, list) else [f"{source.rstrip('/')}/{n}" for n in _parquet_names(source)]
        written = inference_pool.embed(paths, predictor_kwargs(cfg, champion), **_pool_resources(cfg),
                                       folder_uri=folder.uri)
        return sum(int(table.column("rows")[0].as_py()) for table in written)  # one (path, rows) per file
    dataset = ray.data.read_parquet(source).select_columns(input_columns(champion.model.cfg))
    dataset = dataset.repartition(target_num_rows_per_block=cfg.ray.inference_batch_size)
    written = dataset.map_batches(
        UserEmbeddingWriter, fn_constructor_kwargs={"folder_uri": folder.uri, **predictor_kwargs(cfg, champion)},
        batch_size=cfg.ray.inference_batch_size, batch_format="pyarrow", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actor_count(cfg)), num_cpus=cfg.ray.actor_num_cpus,
        num_gpus=actor_num_gpus(cfg),  # [compute].device: one GPU per actor on cuda
    )
    # Bounded: one (path, rows) row per file, i.e. per inference batch.
    return sum(int(row["rows"]) for row in written.take_all())


def _staging_uri(cfg: FactoryConfig) -> str:
    """A fresh folder under the lake for users to embed that live in no table file (removed after use)."""
    return f"{cfg.lake_uri.rstrip('/')}/_staging/embed-{uuid.uuid4().hex}"


def _pool_resources(cfg: FactoryConfig) -> dict:
    return {"actors": actor_count(cfg), "num_cpus": cfg.ray.actor_num_cpus, "num_gpus": actor_num_gpus(cfg),
            "batch_size": cfg.ray.inference_batch_size}


def _embed_table_with_pool(cfg: FactoryConfig, table: pa.Table, champion: registry.RegisteredEncoder) -> pa.Table:
    """embed_users of an in-memory table (the benchmark's incremental day): staged as one Parquet file."""
    if table.num_rows == 0:
        return OUTPUT_SCHEMA.empty_table()
    staging = _staging_uri(cfg)
    fs, folder = pafs.FileSystem.from_uri(staging if "://" in staging else f"file://{staging}")
    fs.create_dir(folder, recursive=True)
    try:
        pq.write_table(table.select(input_columns(champion.model.cfg)), f"{folder}/part-0.parquet", filesystem=fs)
        return embed_users(cfg, [f"{staging}/part-0.parquet"], champion)
    finally:
        _remove_folder(staging)


def embed_day_to_folders(cfg: FactoryConfig, ds: str, sequences_version: int, files: list[str],
                         champion: registry.RegisteredEncoder) -> tuple[list[commit.WriterFolder], dict[str, int], str]:
    """Every user of ds's user_sequences embedded into writer folders of user_embeddings, uncommitted:
    (folders, {users_inferred, users_carried_forward}, why this plan). The same plan as embed_day."""
    yesterday = shift(ds, -1)
    _, previous = read_snapshot(cfg, USER_EMBEDDINGS, {"ds": [yesterday]})
    versions = sorted(r[0] for r in previous.select("model_version").distinct().limit(2).collect())  # <= 2 rows
    inferred = commit.writer_folder(cfg, USER_EMBEDDINGS, {"ds": ds})
    if versions != [champion.version]:
        why = (f"full: no user_embeddings for {yesterday}" if not versions else
               f"full: {yesterday} was embedded by model version(s) {versions}, champion is {champion.version}")
        return [inferred], {"users_inferred": embed_to_folder(cfg, files, champion, inferred),
                            "users_carried_forward": 0}, why
    _, today = read_snapshot(cfg, USER_SEQUENCES, {"ds": [ds]}, sequences_version)
    _, before = read_snapshot(cfg, USER_SEQUENCES, {"ds": [yesterday]})
    columns = input_columns(champion.model.cfg)  # user_id and the champion's whole input
    today = today.select(*columns)
    equal = [F.col(f"t.{c}") == F.col(f"b.{c}") for c in columns[1:]]
    same = today.alias("t").join(before.select(*columns).alias("b"), "user_id").where(
        functools.reduce(lambda a, b: a & b, equal)).select("user_id")
    carried_rows = previous.join(same, "user_id", "left_semi")
    carried = write_files(cfg, carried_rows, USER_EMBEDDINGS, {"ds": ds})  # executors copy yesterday's rows
    staging = _staging_uri(cfg)
    try:
        today.join(carried_rows.select("user_id"), "user_id", "left_anti").write.parquet(staging)
        changed = [f"{staging}/{name}" for name in _parquet_names(staging)]
        users_inferred = embed_to_folder(cfg, changed, champion, inferred) if changed else 0
    finally:
        _remove_folder(staging)
    why = f"incremental: model version {champion.version} also embedded {yesterday}"
    return [inferred, carried], {"users_inferred": users_inferred, "users_carried_forward": _rows(carried)}, why


def _parquet_names(folder_uri: str) -> list[str]:
    """The Parquet files Spark wrote into a folder that hold rows (Spark may write an empty one)."""
    fs, base = pafs.FileSystem.from_uri(folder_uri if "://" in folder_uri else f"file://{folder_uri}")
    infos = fs.get_file_info(pafs.FileSelector(base))
    return sorted(i.base_name for i in infos if i.base_name.endswith(".parquet")
                  and pq.read_metadata(i.path, filesystem=fs).num_rows)


def _remove_folder(folder_uri: str) -> None:
    fs, base = pafs.FileSystem.from_uri(folder_uri if "://" in folder_uri else f"file://{folder_uri}")
    if fs.get_file_info(base).type != pafs.FileType.NotFound:
        fs.delete_dir(base)


def _rows(folder: commit.WriterFolder) -> int:
    """Rows in a writer folder's files, from their footers."""
    return sum(json.loads(action.stats)["numRecords"] for action in commit.file_actions(folder))


def unchanged_inputs(today: pa.Table, before: pa.Table, columns: Sequence[str] = INPUT_COLUMNS[1:]) -> np.ndarray:
    """(N,) bool over today's rows: the user has a row in `before` with identical lists in every one of
    `columns` (the model's whole input: input_columns(cfg)[1:], with ts for a model with time gaps).
    Both tables hold user_id and those list columns."""
    position = pc.index_in(today.column("user_id"), value_set=before.column("user_id"))
    same = position.is_valid().to_numpy(zero_copy_only=False).copy()
    matched = pa.array(np.flatnonzero(same))
    if not len(matched):
        return same
    for column in columns:
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
    entirely by this champion version and the user's input lists (item_idx and event_type, and ts for a
    champion with time gaps) equal yesterday's.
    """
    yesterday = shift(ds, -1)
    previous = delta.read(cfg, USER_EMBEDDINGS, where={"ds": yesterday}, columns=OUTPUT_SCHEMA.names)
    versions = set(pc.unique(previous.column("model_version")).to_pylist())
    if previous.num_rows == 0 or versions != {champion.version}:
        why = (f"full: no user_embeddings for {yesterday}" if previous.num_rows == 0 else
               f"full: {yesterday} was embedded by model version(s) {sorted(versions)}, champion is {champion.version}")
        users = embed_users(cfg, files, champion)
        return users, {"users_inferred": users.num_rows, "users_carried_forward": 0}, why
    columns = input_columns(champion.model.cfg)
    today = delta.read(cfg, USER_SEQUENCES, where={"ds": ds}, columns=columns, version=sequences_version)
    before = delta.read(cfg, USER_SEQUENCES, where={"ds": yesterday}, columns=columns)
    carry = unchanged_inputs(today, before, columns[1:]) & pc.is_in(
        today.column("user_id"), value_set=previous.column("user_id")).to_numpy(zero_copy_only=False)
    carried = previous.filter(pc.is_in(previous.column("user_id"), value_set=today.column("user_id").filter(carry)))
    changed = today.filter(pa.array(~carry))
    inferred = embed_users(cfg, changed, champion) if changed.num_rows else OUTPUT_SCHEMA.empty_table()
    users = pa.concat_tables([carried.cast(OUTPUT_SCHEMA), inferred]).sort_by("user_id")
    why = f"incremental: model version {champion.version} also embedded {yesterday}"
    return users, {"users_inferred": inferred.num_rows, "users_carried_forward": carried.num_rows}, why


def item_vectors(cfg: FactoryConfig, champion: registry.RegisteredEncoder) -> pa.Table:
    """item_id, item_idx, embedding, model_version, vector_source for every vocabulary item the champion
    has a row for: its trained rows ('encoder'); with item facets and cold_items.enabled, also every item
    catalogued since, from its genre and creator vectors ('facets': the champion's table grown with
    today's codes, as a warm start grows it, so a new item has the model's own vector on its first day)."""
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"]).sort_by("item_idx")
    model, trained = champion.model, champion.model.cfg.num_items
    vocab_size = max(vocab.column("item_idx").to_pylist(), default=0)
    if model.cfg.item_facets and vocab_size > trained and cfg.cold_items.enabled:
        codes = item_facets.facet_codes(cfg, vocab_size, model.cfg.facet_buckets)
        model = train.grown_to(model, vocab_size, codes)
    table = model.item_embeddings().detach().numpy()  # (rows + 1, D)
    known = vocab.filter(pc.less_equal(vocab.column("item_idx"), model.cfg.num_items))
    idx = known.column("item_idx").to_numpy()
    vectors = table[idx]
    flat = pa.array(vectors.reshape(-1), pa.float32())
    return known.append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))
    ).append_column("model_version", pa.array([champion.version] * known.num_rows, pa.string())).append_column(
        "vector_source", pa.array(np.where(idx <= trained, ENCODER, FACETS).tolist(), pa.string()))


def plot_sample(cfg: FactoryConfig, ds: str, version: int, size: int = 2000) -> pa.Table:
    """Up to `size` of ds's user_embeddings rows, the ones with the smallest hash of user_id (Spark;
    only those rows reach the driver)."""
    _, users = read_snapshot(cfg, USER_EMBEDDINGS, {"ds": [ds]}, version)
    # Bounded: `size` rows (2,000 by default) reach the driver, for the plot only.
    return users.orderBy(F.xxhash64("user_id"), "user_id").limit(size).select("user_id", "embedding").toArrow()


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
        folders, counts, plan = embed_day_to_folders(cfg, ds, version, files, champion)
        log.info("ds=%s %s: %s", ds, plan, counts)
        step.params(plan=plan)
        embedded = counts["users_inferred"] + counts["users_carried_forward"]
        if embedded == 0:
            raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
        written = commit.commit_replace(cfg, folders, where={"ds": ds})  # one transaction: the whole day or nothing
        step.wrote(USER_EMBEDDINGS, written)
        # Every catalogued item: the champion's rows (with facets: new items' too), content-derived ones for the rest.
        items = catalog_item_vectors(cfg, ds, item_vectors(cfg, champion), champion.version, step)
        log_version_change(cfg, ds, items, step)  # a new champion moved the space: how far, and the map back
        items = items.append_column("ds", pa.array([ds] * items.num_rows, pa.string()))
        step.wrote(ITEM_EMBEDDINGS, delta.replace_partition(cfg, ITEM_EMBEDDINGS, items, {"ds": ds}))
        with tempfile.TemporaryDirectory() as folder:
            users = plot_sample(cfg, ds, written)
            step.artifact(sphere_plot(cfg, users, items, Path(folder), ds, champion.version), "plots")
        vocab_size = delta.read(cfg, ITEM_VOCAB, columns=["item_idx"]).num_rows
        step.metrics(users_embedded=embedded, **counts, items_embedded=items.num_rows,
                     items_without_embedding=vocab_size - items.num_rows)
        return step.result
