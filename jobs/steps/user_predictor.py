"""The user-embedding batch predictor of step embed, import-light: Ray actors import only this module
(numpy, pyarrow, torch, models/), not the step's MLflow / Delta / plotting dependencies.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from models.sequences import left_pad_index
from models.user_encoder import UserEncoder, UserEncoderConfig

INPUT_COLUMNS = ["user_id", "item_idx", "event_type"]
OUTPUT_SCHEMA = pa.schema([("user_id", pa.string()), ("embedding", pa.list_(pa.float32())),
                           ("model_version", pa.string())])


def flat_lists(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (values, offsets from 0): row i is values[offsets[i]:offsets[i + 1]]."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy().astype(np.int64)
    return array.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]


class UserEmbeddingPredictor:
    """Callable batch predictor: the same class runs in a plain loop and in Ray Data's actor pool.

    A batch is sorted by history length and cut into model calls of about `tokens_per_forward`
    (rows x padded width) each, every call padded only to its own longest row, so short histories
    go many to a call and the matrix products keep a useful size. Positions count from the end and
    padding is masked, so a user's vector does not depend on its batch-mates (tests pin it against
    full padding).
    """

    def __init__(self, state_dict: dict, encoder_config: dict, model_version: str, threads: int = 1,
                 tokens_per_forward: int = 4096):
        torch.set_num_threads(threads)
        self.model = UserEncoder(UserEncoderConfig(**encoder_config))
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.model_version = model_version
        self.tokens_per_forward = tokens_per_forward

    def vectors(self, batch: pa.Table) -> np.ndarray:
        """(B,) rows with item_idx / event_type list columns -> (B, D) float32 unit vectors, in row order."""
        max_len, known = self.model.cfg.max_len, self.model.cfg.num_items
        items, offsets = flat_lists(batch.column("item_idx"))
        events, event_offsets = flat_lists(batch.column("event_type"))
        if not np.array_equal(offsets, event_offsets):
            raise ValueError("item_idx and event_type lists must have the same length in every row.")
        keep = items <= known
        if not keep.all():
            # Items newer than the model's vocabulary have no row in its table: they are left out of
            # the history until the next retrain learns them.
            offsets = np.concatenate([[0], np.cumsum(keep)])[offsets]
            items, events = items[keep], events[keep]
        starts, ends = offsets[:-1], offsets[1:]
        order = np.argsort(np.minimum(ends - starts, max_len), kind="stable")
        widths = np.maximum(np.minimum(ends - starts, max_len), 1)[order]  # ascending
        out = np.empty((batch.num_rows, self.model.cfg.d_model), np.float32)
        first = 0
        with torch.inference_mode():
            while first < len(order):
                last = chunk_end(widths, first, self.tokens_per_forward)
                rows, width = order[first:last], int(widths[last - 1])
                index, valid = left_pad_index(starts[rows], ends[rows], width)  # (R, width)
                ids = torch.from_numpy(np.where(valid, items[index] if len(items) else 0, 0).astype(np.int64))
                evs = torch.from_numpy(np.where(valid, events[index] if len(events) else 0, 0).astype(np.int64))
                out[rows] = self.model.user_embeddings(ids, evs).numpy()  # (R, D)
                first = last
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        """{user_id, item_idx, event_type} -> {user_id, embedding list<float32>(D), model_version}."""
        vectors = self.vectors(batch)
        flat = pa.array(vectors.reshape(-1), pa.float32())
        return pa.table({
            "user_id": batch.column("user_id"),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32())),
            "model_version": pa.repeat(pa.scalar(self.model_version, pa.string()), batch.num_rows),
        }).cast(OUTPUT_SCHEMA)


def chunk_end(widths: np.ndarray, first: int, tokens: int) -> int:
    """End of the model call starting at row `first` of ascending `widths`: as many rows as fit in
    `tokens` once padded to the call's widest row (at least one row)."""
    ends = np.arange(first + 1, min(len(widths), first + max(1, tokens // int(widths[first]))) + 1)
    fits = (ends - first) * widths[ends - 1] <= tokens  # padded size grows with the end: a prefix fits
    return int(ends[fits][-1]) if fits.any() else first + 1
