"""Ask the published outputs: a user's nearest items (faiss over the day's index), with titles and SIDs.

The user's profile edits in force on the day apply: the steered vector where more/less edits exist,
and no item a forget edit names (jobs/serving/taste_profile.py).
"""

from __future__ import annotations

import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_TOKENS, ITEM_VOCAB, ITEMS
from jobs.serving.taste_profile import forgotten_item_ids, serving_vector
from jobs.steps.index import index_uri, read_index
from jobs.steps.publish import latest_published


def nearest_items(cfg: FactoryConfig, user_id: str, ds: str | None = None, k: int = 10) -> list[dict]:
    """The k items closest to the user's embedding of ds (default: the latest published day)."""
    ds = ds or (latest_published(cfg) or {}).get("ds")
    if ds is None:
        raise FactoryError("Nothing is published yet; run a day first (factory run --ds ...).")
    vector = serving_vector(cfg, user_id, ds)  # steered where the user's more/less edits are in force
    if vector is None:
        raise FactoryError(f"User {user_id!r} has no embedding on {ds} (no plays in the feature window).")
    index = read_index(index_uri(cfg, ds))
    if index is None:
        raise FactoryError(f"No item index for ds={ds}; run the index step for that day.")
    forgotten = forgotten_item_ids(cfg, user_id, ds)  # the user's forget edits: never recommended
    scores, ids = index.search(vector[None, :], k + len(forgotten))
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_id", "item_idx"])
    by_idx = dict(zip(vocab.column("item_idx").to_pylist(), vocab.column("item_id").to_pylist()))
    kept = [(s, i) for s, i in zip(scores[0], ids[0]) if i >= 0 and by_idx.get(int(i)) not in forgotten][:k]
    items = delta.read(cfg, ITEMS, columns=["item_id", "item_type", "title", "genre"])
    meta = {row["item_id"]: row for row in items.to_pylist()}
    sids = _latest_sids(cfg)
    return [
        {"rank": rank + 1, "score": float(score), **meta.get(by_idx.get(int(idx)), {"item_id": by_idx.get(int(idx))}),
         "sid": sids.get(by_idx.get(int(idx)))}
        for rank, (score, idx) in enumerate(kept)
    ]


def _latest_sids(cfg: FactoryConfig) -> dict[str, str]:
    tokens = delta.read(cfg, ITEM_TOKENS, columns=["codebook_version", "item_id", "sid"])
    if tokens.num_rows == 0:
        return {}
    latest = tokens.filter(pc.equal(tokens.column("codebook_version"), pc.max(tokens.column("codebook_version"))))
    return dict(zip(latest.column("item_id").to_pylist(), latest.column("sid").to_pylist()))
