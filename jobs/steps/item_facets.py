"""Catalog facets of every item, as codes for the encoder's item table (train.item_facets).

An item's vector is the sum of one learned vector per facet plus its own residual
(models.user_encoder, `item_facets`). The facets are what the catalog says of every item from its
first day: level 0 its genre (a music genre or a podcast topic), level 1 its creator (the artist of
a track, the show of an episode). Each facet value is hashed into `train.facet_buckets` buckets
per level, so the codes need no vocabulary table and stay the same across days, reruns and
clusters; two values that share a bucket share a vector (the residual tells their items apart).

Why: on a 50k-item generated catalog the per-item table learns almost nothing in a 10-minute
nightly budget (next-day HR@10 1.0x popularity's), because most items have a few plays each; with
facets, items of one artist learn together (1.9x in 2 minutes; docs/benchmarks.md, issue 17).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from jobs.config import FactoryConfig
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_VOCAB, ITEMS

LEVELS = ("genre", "creator")  # what each facet level holds; UserEncoderConfig.item_facets = len(LEVELS)


def hashed(values: pa.Array, level: str, buckets: int) -> np.ndarray:
    """Bucket of each value (null = its own value "") in [0, buckets): blake2b of "level:value",
    computed once per distinct value (a catalog has far fewer artists than items)."""
    encoded = pc.dictionary_encode(pc.fill_null(values.cast(pa.string()), ""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    per_value = np.array([int.from_bytes(hashlib.blake2b(f"{level}:{v}".encode(), digest_size=8).digest(), "little")
                          % buckets for v in encoded.dictionary.to_pylist()], dtype=np.int64)
    return per_value[encoded.indices.to_numpy(zero_copy_only=False)] if len(per_value) else np.zeros(0, np.int64)


def codes_of(item_idx: np.ndarray, genre: pa.Array, creator: pa.Array, num_items: int, buckets: int) -> torch.Tensor:
    """(num_items + 1, len(LEVELS)) codes: row item_idx holds its item's buckets; items without a
    catalog row (and the padding row 0) get the buckets of empty values."""
    empty = [int(hashed(pa.array([None], pa.string()), level, buckets)[0]) for level in LEVELS]
    codes = np.tile(np.array(empty, np.int64), (num_items + 1, 1))
    known = (item_idx >= 1) & (item_idx <= num_items)
    for level, values in enumerate((genre, creator)):
        codes[item_idx[known], level] = hashed(values, LEVELS[level], buckets)[known]
    return torch.from_numpy(codes)


def facet_codes(cfg: FactoryConfig, num_items: int, buckets: int) -> torch.Tensor:
    """Today's codes of items 0..num_items from item_vocab and the items catalog (both small tables
    read on the driver: one row of four strings per item)."""
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"])
    items = delta.read(cfg, ITEMS, columns=["item_id", "genre", "artist", "show"])
    joined = vocab.join(items, "item_id", join_type="left outer")
    creator = pc.coalesce(joined.column("artist"), joined.column("show"))
    return codes_of(joined.column("item_idx").to_numpy(zero_copy_only=False).astype(np.int64),
                    joined.column("genre"), creator, num_items, buckets)
