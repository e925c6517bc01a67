"""`factory recommend USER`: ask the generative model for a user's next items, and say why each survived.

The model of the requested day (or the latest before it; from this host's state folder, else from
the generative step's MLflow run) generates `generative.beams` SIDs by
constrained beam search from the user's sequence, embedding (soft token) and prompt of that day;
the SIDs map back to items; the business rules (models/reranking.py) keep the first k. Items the
user already consumed are masked inside the search, so every beam goes to a new item. The user's
profile edits apply: the soft token is the steered vector where more/less edits are in force, and
items a forget edit names are dropped (reason "forgotten").
"""

from __future__ import annotations

import numpy as np

from jobs.config import FactoryConfig
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEMS
from jobs.serving.taste_profile import forgotten_item_ids, serving_vector
from jobs.steps.generative_data import load_day, load_model, serving_model_folder
from jobs.steps.generative_training import Examples, generate
from models.generative import TrieTables
from models.reranking import Candidate, Decision, RerankRules, rerank
from models.residual_quantizer import sid_string


def recommend(cfg: FactoryConfig, user_id: str, ds: str | None = None, k: int = 10, model_from: str = "auto") -> dict:
    """{'user_id', 'ds', 'model', 'history', 'decisions': [{sid, item_id, type, title, score, kept, reason}]}.
    model_from: "local" (this host's state folder), "mlflow" (the generative run's logged artifact) or "auto"."""
    folder = serving_model_folder(cfg, ds, model_from)
    model, meta = load_model(folder)
    ds = ds or meta["ds"]
    day = load_day(cfg, ds, embedding_days=(0,))
    if user_id not in day.sequences:
        raise FactoryError(f"User {user_id!r} has no listening sequence on {ds}; pick a user from user_sequences of that day.")
    items, _ = day.sequences[user_id]
    history = [s[:-1] for s in (day.sid(i) for i in items) if s is not None][-meta["history"]:]
    users = None
    if meta["user_dim"]:
        vector = day.embeddings[ds].get(user_id)
        if vector is not None:  # the steered vector where the user's more/less edits are in force
            vector = serving_vector(cfg, user_id, ds)
        if vector is None:
            raise FactoryError(f"User {user_id!r} has no embedding on {ds}; run the embed step for that day.")
        users = vector[None, :]
    vocab = model.vocab
    fits = (day.lookup.tokens < np.array(vocab.level_sizes)).all(1)  # items coded after the model was trained may not fit
    rows_of = np.flatnonzero(fits)
    trie = TrieTables(day.lookup.tokens[rows_of], vocab.level_sizes)
    example = Examples([np.array(history, np.int64).reshape(len(history), vocab.depth - 1)],
                       [day.prompt(items, user_id=user_id)] if meta["prompt"] else None, users, None)
    trie_row = {day.lookup.item_ids[r]: t for t, r in enumerate(rows_of)}
    consumed = np.array(sorted({trie_row[i] for i in items if i in trie_row}), dtype=np.int64)
    rows, scores = generate(model, example, trie, max(cfg.generative.beams, k), exclude=[consumed])  # no beam on them
    titles = dict(zip(*(delta.read(cfg, ITEMS, columns=["item_id",
                                                        "title"]).column(c).to_pylist() for c in ("item_id", "title"))))
    candidates = []
    for row, score in zip(rows[0], scores[0]):
        if row < 0:
            continue
        item = day.lookup.item_ids[rows_of[row]]
        candidates.append(Candidate(item, tuple(int(t) for t in day.lookup.tokens[rows_of[row]]), float(score),
                                    day.item_type.get(item, "")))
    g = cfg.generative
    rules = RerankRules(k=k, type_quotas={"episode": g.max_episodes} if g.max_episodes >= 0 else {},
                        prefix_len=g.prefix_len, max_per_prefix=g.max_per_prefix)
    forgotten = forgotten_item_ids(cfg, user_id, ds)  # the user's forget edits: dropped before re-ranking
    decisions = rerank([c for c in candidates if c.item_id not in forgotten], set(items), rules)
    decisions += [Decision(c, False, "forgotten: the user's profile edit") for c in candidates if c.item_id in forgotten]
    return {"user_id": user_id, "ds": ds, "model": str(folder), "history_items": len(history),
            "soft_token": bool(meta["user_dim"]), "prompt": day.prompt(items, user_id=user_id) if meta["prompt"] else [],
            "decisions": [{"sid": sid_string(d.candidate.sid), "item_id": d.candidate.item_id,
                           "type": d.candidate.item_type, "title": titles.get(d.candidate.item_id, ""),
                           "score": d.candidate.score, "kept": d.kept, "reason": d.reason} for d in decisions]}
