"""Step `embed` (Ray Data): embed every user of the day with the champion; write item vectors too.

Users come from the day's user_sequences files (one Delta version), flow through a pool of
`UserEmbeddingPredictor` actors (the model is loaded once per actor), and land in user_embeddings.
Item vectors are the champion's normalised item table, so users and items share one hypersphere.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from jobs import lake, plots, registry
from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.ray_runtime import ensure_ray
from jobs.tables import ITEM_EMBEDDINGS, ITEM_VOCAB, ITEMS, USER_EMBEDDINGS, USER_SEQUENCES
from jobs.tracking import StepResult, track_step
from models.sequences import pad_left
from models.user_encoder import UserEncoder, UserEncoderConfig


class UserEmbeddingPredictor:
    """Callable batch predictor: the same class runs in a plain loop and in Ray Data's actor pool."""

    def __init__(self, state_dict: dict, encoder_config: dict, model_version: str, threads: int = 1):
        torch.set_num_threads(threads)
        self.model = UserEncoder(UserEncoderConfig(**encoder_config))
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.model_version = model_version

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """{user_id (B,), item_idx (B,) arrays, event_type (B,) arrays} -> user_id, embedding (B, D)."""
        max_len, known = self.model.cfg.max_len, self.model.cfg.num_items
        # Items newer than the model's vocabulary have no row in its table: they are left out of
        # the history until the next retrain learns them.
        keep = [np.asarray(s) <= known for s in batch["item_idx"]]
        item_seqs = [np.asarray(s)[k] for s, k in zip(batch["item_idx"], keep)]
        event_seqs = [np.asarray(s)[k] for s, k in zip(batch["event_type"], keep)]
        # Every row is padded to max_len so a user's vector does not depend on its batch-mates.
        items = torch.from_numpy(pad_left(item_seqs, max_len))
        events = torch.from_numpy(pad_left(event_seqs, max_len))
        with torch.inference_mode():
            vectors = self.model.user_embeddings(items, events).numpy()  # (B, D) float32
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.table({
            "user_id": pa.array(batch["user_id"], pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32())),
            "model_version": pa.array([self.model_version] * len(vectors), pa.string()),
        })


def embed_users(cfg: FactoryConfig, files: list[str], champion: registry.RegisteredEncoder) -> pa.Table:
    """user_id, embedding, model_version for every user in the sequence files (Ray Data)."""
    ensure_ray(cfg)
    actors = cfg.ray.inference_actors
    threads = max(1, (os.cpu_count() or 1) // actors) if not cfg.ray.address else max(1, int(cfg.ray.actor_num_cpus))
    dataset = ray.data.read_parquet(files).select_columns(["user_id", "item_idx", "event_type"])
    embedded = dataset.map_batches(
        UserEmbeddingPredictor,
        fn_constructor_kwargs={
            "state_dict": champion.model.state_dict(), "encoder_config": dataclasses.asdict(champion.model.cfg),
            "model_version": champion.version, "threads": threads,
        },
        batch_size=cfg.ray.inference_batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cfg.ray.actor_num_cpus,
    )
    tables = ray.get(embedded.to_arrow_refs())
    if not tables:
        return pa.table({"user_id": pa.array([], pa.string()), "embedding": pa.array([], pa.list_(pa.float32())),
                         "model_version": pa.array([], pa.string())})
    return pa.concat_tables(tables).sort_by("user_id")


def item_vectors(cfg: FactoryConfig, champion: registry.RegisteredEncoder) -> pa.Table:
    """item_id, item_idx, embedding for every vocabulary item the champion has a row for."""
    vocab = lake.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"]).sort_by("item_idx")
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
    types = dict(zip(*(lake.read(cfg, ITEMS, columns=["item_id", "item_type"]).column(c).to_pylist() for c in ("item_id", "item_type"))))

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
        version, files = lake.snapshot_files(cfg, USER_SEQUENCES, where_in={"ds": [ds]})
        step.read(USER_SEQUENCES, version)
        step.read(ITEM_VOCAB, lake.current_version(cfg, ITEM_VOCAB))
        step.params(model_version=champion.version, actors=cfg.ray.inference_actors,
                    batch_size=cfg.ray.inference_batch_size)
        users = embed_users(cfg, files, champion) if files else None
        if users is None or users.num_rows == 0:
            raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
        users = users.append_column("ds", pa.array([ds] * users.num_rows, pa.string()))
        step.wrote(USER_EMBEDDINGS, lake.replace_partition(cfg, USER_EMBEDDINGS, users, {"ds": ds}))
        items = item_vectors(cfg, champion)
        items = items.append_column("ds", pa.array([ds] * items.num_rows, pa.string()))
        step.wrote(ITEM_EMBEDDINGS, lake.replace_partition(cfg, ITEM_EMBEDDINGS, items, {"ds": ds}))
        with tempfile.TemporaryDirectory() as folder:
            step.artifact(sphere_plot(cfg, users, items, Path(folder), ds, champion.version), "plots")
        vocab_size = lake.read(cfg, ITEM_VOCAB, columns=["item_idx"]).num_rows
        step.metrics(users_embedded=users.num_rows, items_embedded=items.num_rows,
                     items_without_embedding=vocab_size - items.num_rows)
        return step.result
