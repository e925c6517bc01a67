"""The Ray actor of step embed that writes user_embeddings data files itself.

`UserEmbeddingWriter` embeds a batch (jobs.steps.user_predictor.UserEmbeddingPredictor), writes it
as one Parquet file into a writer folder of the table (jobs.lakehouse.commit.writer_folder) and
returns only that file's metadata (path, rows): the vectors never travel to the driver, which
commits the folder's files in one transaction. Import-light like user_predictor (numpy, pyarrow,
torch, models/): Ray actors load only these two modules. Used by the `ray_data` inference engine
(a Ray Data map_batches job per call); the default long-lived pool is jobs/steps/inference_pool.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.steps.user_predictor import OUTPUT_SCHEMA, UserEmbeddingPredictor

FILE_METADATA = pa.schema([("path", pa.string()), ("rows", pa.int64())])


class UserEmbeddingWriter:
    """Callable for Ray Data's map_batches: {user_id, item_idx, event_type} -> one row {path, rows}."""

    def __init__(self, folder_uri: str, **predictor_kwargs):
        self.predictor = UserEmbeddingPredictor(**predictor_kwargs)
        self.folder_uri = folder_uri

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.write(batch, self.folder_uri)

    def write(self, batch: pa.Table, folder_uri: str) -> pa.Table:
        """Embed `batch`, write it as part-<uuid>.parquet under folder_uri; return its path and row count."""
        return write_part(folder_uri, [self.predictor(batch)])


def write_part(folder_uri: str, tables: Iterable[pa.Table]) -> pa.Table:
    """Write user_embeddings rows (user_id, embedding, model_version), streamed table by table, as one
    part-<uuid>.parquet under folder_uri; return its (path, rows) as one FILE_METADATA row."""
    fs, folder = pafs.FileSystem.from_uri(folder_uri if "://" in folder_uri else f"file://{folder_uri}")
    fs.create_dir(folder, recursive=True)
    name, rows = f"part-{uuid.uuid4().hex}.parquet", 0
    with pq.ParquetWriter(f"{folder.rstrip('/')}/{name}", OUTPUT_SCHEMA, filesystem=fs) as writer:
        for table in tables:
            writer.write_table(table)
            rows += table.num_rows
    return pa.table({"path": [f"{folder_uri.rstrip('/')}/{name}"], "rows": [rows]}, schema=FILE_METADATA)
