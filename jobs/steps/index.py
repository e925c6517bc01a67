"""Step `index`: a faiss inner-product index over the day's item embeddings.

Vectors are unit-norm, so inner product is cosine. The index maps to item_idx (vocabulary ids);
it is written next to the lake (any pyarrow filesystem) and logged to the step's MLflow run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow.fs as pafs

from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_EMBEDDINGS
from jobs.tracking.runs import StepResult, track_step


def index_uri(cfg: FactoryConfig, ds: str) -> str:
    return f"{cfg.lake_uri.rstrip('/')}/_indexes/ds={ds}/items.faiss"


def build_index(vectors: np.ndarray, ids: np.ndarray, factory: str) -> faiss.Index:
    """(N, D) unit vectors with (N,) int64 ids -> a trained faiss index searched by inner product."""
    index = faiss.index_factory(vectors.shape[1], f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, ids)
    return index


def write_index(cfg: FactoryConfig, index: faiss.Index, uri: str) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(faiss.serialize_index(index).tobytes())


def read_index(uri: str) -> faiss.Index | None:
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return faiss.deserialize_index(np.frombuffer(stream.read(), dtype=np.uint8))


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "index", run_key) as step:
        items = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": ds}, columns=["item_idx", "embedding"])
        step.read(ITEM_EMBEDDINGS, delta.current_version(cfg, ITEM_EMBEDDINGS))
        if items.num_rows == 0:
            raise FactoryError(f"ds={ds}: item_embeddings has no rows for this day; run the embed step first.")
        vectors = np.stack(items.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        started = time.perf_counter()
        index = build_index(vectors, items.column("item_idx").to_numpy().astype(np.int64), cfg.index.factory)
        build_seconds = time.perf_counter() - started
        uri = index_uri(cfg, ds)
        write_index(cfg, index, uri)
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "items.faiss"
            faiss.write_index(index, str(local))
            step.artifact(local, "index")
            step.params(index_factory=cfg.index.factory, index_uri=uri)
            step.metrics(items_indexed=index.ntotal, build_seconds=build_seconds, dimension=vectors.shape[1])
            return step.result
