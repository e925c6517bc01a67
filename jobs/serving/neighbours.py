"""Ask the published outputs: a user's nearest items (faiss over the day's index), with titles and SIDs."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_TOKENS, ITEM_VOCAB, ITEMS, USER_EMBEDDINGS
from jobs.steps.index import index_uri, read_index
from jobs.steps.publish import latest_published


def nearest_items(cfg: FactoryConfig, user_id: str, ds: str | None = None, k: int = 10) -> list[dict]:
    """The k items closest to the user's embedding of ds (default: the latest published day)."""
    ds = ds or (latest_published(cfg) or {}).get("ds")
    if ds is None:
        raise FactoryError("Nothing is published yet; run a day first (factory run --ds ...).")
    users = delta.read(cfg, USER_EMBEDDINGS, where={"ds": ds, "user_id": user_id})
    if users.num_rows == 0:
        raise FactoryError(f"User {user_id!r} has no embedding on {ds} (no plays in the feature window).")
    index = read_index(index_uri(cfg, ds))
    if index is None:
        raise FactoryError(f"No item index for ds={ds}; run the index step for that day.")
    vector = np.asarray(users.column("embedding")[0].values.to_numpy(), dtype=np.float32)[None, :]
    scores, ids = index.search(vector, k)
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"])
    by_idx = dict(zip(vocab.column("item_idx").to_pylist(), vocab.column("item_id").to_pylist()))
    items = delta.read(cfg, ITEMS, columns=["item_id", "item_type", "title", "genre"])
    meta = {row["item_id"]: row for row in items.to_pylist()}
    sids = _latest_sids(cfg)
    return [
        {"rank": rank + 1, "score": float(score), **meta.get(by_idx.get(int(idx)), {"item_id": by_idx.get(int(idx))}),
         "sid": sids.get(by_idx.get(int(idx)))}
        for rank, (score, idx) in enumerate(zip(scores[0], ids[0])) if idx >= 0
    ]


def _latest_sids(cfg: FactoryConfig) -> dict[str, str]:
    tokens = delta.read(cfg, ITEM_TOKENS, columns=["codebook_version", "item_id", "sid"])
    if tokens.num_rows == 0:
        return {}
    latest = tokens.filter(pc.equal(tokens.column("codebook_version"), pc.max(tokens.column("codebook_version"))))
    return dict(zip(latest.column("item_id").to_pylist(), latest.column("sid").to_pylist()))
