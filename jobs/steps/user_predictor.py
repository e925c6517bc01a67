"""The user-embedding batch predictor of step embed, import-light: Ray actors import only this module
(numpy, pyarrow, torch, models/, and [compute]'s resolution), not the step's MLflow / Delta / plotting
dependencies.

[compute] reaches it as constructor arguments (`compute_kwargs`) and the actor pool's resources
(`actor_num_gpus`): device "cuda" runs the model on the actor's GPU; inference_dtype "bf16" runs it
under bf16 autocast, refused on the first batch if that moves vectors below cosine 0.999 of fp32.

A model with time gaps (n_time_buckets > 0) also reads each row's ts list (`input_columns`): its
buckets come from `gap_buckets`, the function the training data is built with.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pyarrow as pa
import torch

from jobs.config import FactoryConfig
from jobs.runtime.compute import DTYPES, check_bf16_cosine, device_name, uses_gpu
from models.sequences import left_pad_index, time_gap_buckets_flat
from models.user_encoder import UserEncoder, UserEncoderConfig

INPUT_COLUMNS = ["user_id", "item_idx", "event_type"]  # what a model without time gaps reads
TS_COLUMN = "ts"  # user_sequences' event times (ms since epoch), read too by a model with time gaps
OUTPUT_SCHEMA = pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32())),
                           ("model_version", pa.string())])


def flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (values, offsets from 0): row i is values[offsets[i]:offsets[i + 1]]."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy().astype(np.int64)
    return array.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]


def sequence_columns(time_buckets: int) -> list[str]:
    """The user_sequences columns an encoder with `time_buckets` time-gap buckets reads (0 = none):
    INPUT_COLUMNS, and ts when it has time gaps."""
    return INPUT_COLUMNS + ([TS_COLUMN] if time_buckets else [])


def input_columns(cfg: UserEncoderConfig) -> list[str]:
    """The user_sequences columns a model of `cfg` reads (sequence_columns)."""
    return sequence_columns(cfg.n_time_buckets)


def gap_buckets(ts: pa.ChunkedArray | pa.Array, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """A ts list column (ms since epoch, oldest first in each row) as the encoder's time input:
    (time-gap bucket of every event, int64, flat; offsets from 0), each row's buckets computed over
    the whole row in whole seconds (models.sequences.time_gap_buckets_flat). Training and inference
    both take their buckets from here."""
    values, offsets = flat_lists(ts)
    return time_gap_buckets_flat(values.astype(np.int64) // 1000, offsets, n_buckets), offsets


class UserEmbeddingPredictor:
    """Callable batch predictor: the same class runs in a plain loop and in Ray Data's actor pool.

    A batch is sorted by history length and cut into model calls of about `tokens_per_forward`
    (rows x padded width) each, every call padded only to its own longest row, so short histories
    go many to a call and the matrix products keep a useful size. Positions count from the end and
    padding is masked, so a user's vector does not depend on its batch-mates (tests pin it against
    full padding).
    """

    BF16_CHECK_ROWS = 256  # rows of the first batch embedded both ways before bf16 is trusted

    def __init__(self, state_dict: dict, encoder_config: dict, model_version: str, threads: int = 1,
                 tokens_per_forward: int = 4096, device: str = "cpu", dtype: str = "fp32"):
        torch.set_num_threads(threads)
        self.device, self.dtype = torch.device(device), dtype
        self.model = UserEncoder(UserEncoderConfig(**encoder_config))
        self.model.load_state_dict(state_dict)
        self.model.eval().to(self.device)
        self.model_version = model_version
        self.tokens_per_forward = tokens_per_forward
        self.bf16_min_cosine: float | None = None  # measured on the first batch when dtype is bf16

    def vectors(self, batch: pa.Table) -> np.ndarray:
        """(B,) rows with item_idx / event_type list columns (and ts for a model with time gaps) ->
        (B, D) float32 unit vectors, in row order."""
        if self.dtype == "bf16" and self.bf16_min_cosine is None:
            sample = batch.slice(0, self.BF16_CHECK_ROWS)
            self.bf16_min_cosine = min_cosine(self._vectors(sample, "fp32"), self._vectors(sample, "bf16"))
            check_bf16_cosine(self.bf16_min_cosine, "user vectors")
        return self._vectors(batch, self.dtype)

    def _vectors(self, batch: pa.Table, dtype: str) -> np.ndarray:
        max_len, known = self.model.cfg.max_len, self.model.cfg.num_items
        items, offsets = flat_lists(batch.column("item_idx"))
        events, event_offsets = flat_lists(batch.column("event_type"))
        if not np.array_equal(offsets, event_offsets):
            raise ValueError("item_idx and event_type lists must have the same length in every row.")
        gaps = self._gaps(batch, offsets)  # None for a model without time gaps
        keep = items <= known
        if not keep.all():
            # Items newer than the model's vocabulary have no row in its table: they are left out of
            # the history until the next retrain learns them. Gaps were measured on the whole row, so
            # the next event keeps the time since the left-out one (as a window's first position does).
            offsets = np.concatenate([[0], np.cumsum(keep)])[offsets]
            items, events = items[keep], events[keep]
            gaps = gaps[keep] if gaps is not None else None
        starts, ends = offsets[:-1], offsets[1:]
        order = np.argsort(np.minimum(ends - starts, max_len), kind="stable")
        widths = np.maximum(np.minimum(ends - starts, max_len), 1)[order]  # ascending
        out = np.empty((batch.num_rows, self.model.cfg.d_model), np.float32)
        first = 0
        autocast = (torch.autocast(self.device.type, dtype=getattr(torch, DTYPES[dtype])) if dtype != "fp32"
                    else contextlib.nullcontext())

        def padded(values: np.ndarray, index: np.ndarray, valid: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.where(valid, values[index] if len(values) else 0, 0).astype(np.int64)).to(self.device)

        with torch.inference_mode(), autocast:
            while first < len(order):
                last = chunk_end(widths, first, self.tokens_per_forward)
                rows, width = order[first:last], int(widths[last - 1])
                index, valid = left_pad_index(starts[rows], ends[rows], width)  # (R, width)
                times = padded(gaps, index, valid) if gaps is not None else None
                vectors = self.model.user_embeddings(padded(items, index, valid), padded(events, index, valid),
                                                     times)  # (R, D)
                out[rows] = vectors.float().cpu().numpy()
                first = last
        return out

    def _gaps(self, batch: pa.Table, offsets: np.ndarray) -> np.ndarray | None:
        """The flat time-gap buckets of the batch's events, or None for a model without time gaps."""
        buckets = self.model.cfg.n_time_buckets
        if not buckets:
            return None
        if TS_COLUMN not in batch.column_names:
            raise ValueError(f"model version {self.model_version} reads time gaps (n_time_buckets={buckets}) but the "
                             f"batch has no '{TS_COLUMN}' column: pass user_sequences' {TS_COLUMN} lists (ms since "
                             "epoch) with item_idx and event_type.")
        gaps, gap_offsets = gap_buckets(batch.column(TS_COLUMN), buckets)
        if not np.array_equal(offsets, gap_offsets):
            raise ValueError(f"item_idx and {TS_COLUMN} lists must have the same length in every row.")
        return gaps

    def __call__(self, batch: pa.Table) -> pa.Table:
        """{user_id, item_idx, event_type[, ts]} -> {user_id, embedding list<float32>(D), model_version}."""
        vectors = self.vectors(batch)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.table({
            "user_id": batch.column("user_id"),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32())),
            "model_version": pa.repeat(pa.scalar(self.model_version, pa.string()), batch.num_rows),
        }).cast(OUTPUT_SCHEMA)


def compute_kwargs(cfg: FactoryConfig) -> dict:
    """UserEmbeddingPredictor's device and dtype arguments for [compute] (resolved in the driver)."""
    return {"device": device_name(cfg.compute, local=False), "dtype": cfg.compute.inference_dtype}


def actor_num_gpus(cfg: FactoryConfig) -> float:
    """GPUs per inference actor for Ray Data's map_batches: one where [compute] runs on cuda."""
    return 1.0 if uses_gpu(cfg.compute) else 0.0


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between (N, D) arrays (1.0 for no rows)."""
    if len(a) == 0:
        return 1.0
    dots = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(dots.min())


def chunk_end(widths: np.ndarray, first: int, tokens: int) -> int:
    """End of the model call starting at row `first` of ascending `widths`: as many rows as fit in
    `tokens` once padded to the call's widest row (at least one row)."""
    ends = np.arange(first + 1, min(len(widths), first + max(1, tokens // int(widths[first]))) + 1)
    fits = (ends - first) * widths[ends - 1] <= tokens  # padded size grows with the end: a prefix fits
    return int(ends[fits][-1]) if fits.any() else first + 1
