"""A long-lived pool of Ray actors that embed users for step embed (`ray.inference_engine = "pool"`).

Each actor imports torch and loads the champion once, and the pool is reused by every inference call
of the process: a backfill's days, an incremental day's changed users, the benchmark's repetitions.
Ray Data's `map_batches` (`ray.inference_engine = "ray_data"`) starts a new actor pool for every
dataset (ray-project/ray#46479, open): actor processes, torch import, model load and planning cost
about 3 s per call here, 1.5-2.3x the whole plain-loop time of 100k users (docs/benchmarks.md). That
fixed cost is why this module exists.

Work items are row ranges of the input Parquet files, sized from their footers; the actors read them
themselves (a row group decoded once per actor and kept while its ranges last), so no user row
passes through the driver. `ray.util.ActorPool` hands each item to whichever actor is free. Output:
one Parquet file per item written into a writer folder (the driver commits the folder), or, for the
benchmark's in-memory form, the item's Arrow table.

Resources: every actor holds `ray.actor_num_cpus` (and a GPU on cuda) while it lives. A step that
needs the cluster's CPUs for something else (train's Ray Train workers) calls `release()` first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.util import ActorPool

from jobs.steps.embedding_writer import write_part
from jobs.steps.user_predictor import OUTPUT_SCHEMA, UserEmbeddingPredictor, input_columns

MAX_ITEM_BATCHES = 64  # an item is at most this many inference batches (bounds an actor's memory)


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """Rows [first, first + rows) of one Parquet file."""

    path: str
    first: int
    rows: int


def plan_items(paths: list[str], batch_size: int, actors: int) -> list[WorkItem]:
    """Row ranges covering every row of `paths` (footers only): about four items per actor so a slow
    actor does not hold up the end, each a whole number of batches, 1 to MAX_ITEM_BATCHES of them."""
    counts = [_open(path).metadata.num_rows for path in paths]
    per_item = math.ceil(sum(counts) / max(4 * actors, 1) / batch_size) * batch_size
    per_item = min(max(per_item, batch_size), MAX_ITEM_BATCHES * batch_size)
    return [WorkItem(path, first, min(per_item, count - first))
            for path, count in zip(paths, counts) for first in range(0, count, per_item)]


def _open(path: str) -> pq.ParquetFile:
    fs, name = pafs.FileSystem.from_uri(path if "://" in path else f"file://{path}")
    return pq.ParquetFile(fs.open_input_file(name))


@ray.remote
class EmbeddingActor:
    """Holds one UserEmbeddingPredictor (reloaded only when the model or its settings change)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.predictor: UserEmbeddingPredictor | None = None
        self.cached: tuple[tuple, pa.Table] | None = None  # (path, row groups) -> their decoded rows

    def load(self, key: str, predictor_kwargs: dict) -> None:
        if key != self.key:
            self.predictor = UserEmbeddingPredictor(**predictor_kwargs)
            self.key = key

    def embed(self, item: WorkItem, batch_size: int, folder_uri: str | None) -> pa.Table:
        """Embed the item's rows batch by batch: written as one Parquet file under folder_uri (returns
        its path and rows), or returned as the embeddings themselves when folder_uri is None."""
        rows = self._read(item)
        batches = (self.predictor(rows.slice(first, batch_size)) for first in range(0, rows.num_rows, batch_size))
        if folder_uri is None:
            return pa.concat_tables(list(batches)) if rows.num_rows else OUTPUT_SCHEMA.empty_table()
        return write_part(folder_uri, batches)

    def _read(self, item: WorkItem) -> pa.Table:
        """The item's rows: the row groups that hold them, decoded once and kept for the next item."""
        parquet = _open(item.path)
        starts = [0]
        for group in range(parquet.metadata.num_row_groups):
            starts.append(starts[-1] + parquet.metadata.row_group(group).num_rows)
        groups = tuple(g for g in range(len(starts) - 1) if starts[g] < item.first + item.rows and starts[g + 1] > item.first)
        columns = input_columns(self.predictor.model.cfg)  # with ts for a model with time gaps
        key = (item.path, groups, tuple(columns))
        if self.cached is None or self.cached[0] != key:
            self.cached = (key, parquet.read_row_groups(list(groups), columns=columns))
        return self.cached[1].slice(item.first - starts[groups[0]] if groups else 0, item.rows)


@dataclasses.dataclass
class _Pool:
    key: tuple  # (Ray session, job, actors, CPUs, GPUs): a different one needs new actors
    actors: list
    model_key: str | None = None


_pool: _Pool | None = None


def embed(paths: list[str], predictor_kwargs: dict, actors: int, num_cpus: float, num_gpus: float,
          batch_size: int, folder_uri: str | None = None) -> list[pa.Table]:
    """Every row of `paths` embedded by the pool: one (path, rows) table per file written into
    folder_uri, or the embeddings themselves when folder_uri is None. Ray must be initialised."""
    pool = _actors(actors, num_cpus, num_gpus)
    model_key = json.dumps({k: v for k, v in predictor_kwargs.items() if k != "state_dict"}, sort_keys=True, default=str)
    model_key += "/" + weights_fingerprint(predictor_kwargs["state_dict"])
    if pool.model_key != model_key:
        kwargs = ray.put(predictor_kwargs)  # one copy of the weights in the object store for all actors
        ray.get([actor.load.remote(model_key, kwargs) for actor in pool.actors])
        pool.model_key = model_key
    items = plan_items(paths, batch_size, len(pool.actors))
    work = ActorPool(pool.actors)
    # map() (in order) rather than map_unordered: items of one file go to actors in sequence, so an
    # actor's cached row group serves its next item of that file.
    return list(work.map(lambda actor, item: actor.embed.remote(item, batch_size, folder_uri), items))


def weights_fingerprint(state_dict: dict) -> str:
    """A hash of every tensor's name, shape and a strided sample of at most 4,096 of its values, at a
    cost independent of the item table's size. Training moves every sampled value, so two trained
    models differ here; a hand edit of a few unsampled values would not (the model version and the
    settings are in the pool's key too)."""
    digest = hashlib.sha1()
    for name, tensor in state_dict.items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(flat[:: max(1, flat.numel() // 4096)].cpu().numpy().tobytes())
    return digest.hexdigest()


def release() -> None:
    """Stop the pool's actors (their CPUs go back to the cluster); the next embed() starts new ones."""
    global _pool
    if _pool is not None and ray.is_initialized() and _pool.key[0] == ray.get_runtime_context().get_session_name():
        for actor in _pool.actors:
            ray.kill(actor)
    _pool = None


def _actors(actors: int, num_cpus: float, num_gpus: float) -> _Pool:
    global _pool
    context = ray.get_runtime_context()  # a new local Ray restarts job ids: the session tells them apart
    key = (context.get_session_name(), context.get_job_id(), actors, num_cpus, num_gpus)
    if _pool is None or _pool.key != key:
        release()
        options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "scheduling_strategy": "SPREAD"}
        _pool = _Pool(key, [EmbeddingActor.options(**options).remote() for _ in range(actors)])
    return _pool
