"""Semantic-ID lookups for one codebook version: item -> SID, SID -> item, and a prefix trie.

    lookup = load_lookup(cfg)                       # latest codebook version, policy from sid.collision_policy
    lookup.sid("trk_000123")                        # '12-201-7-0'
    lookup.item("12-201-7-0")                       # 'trk_000123' (a full SID always resolves to its item)
    lookup.item("12-201-7")                         # a bare code: see the collision policy below
    lookup.trie.next_tokens([12, 201])              # valid next tokens after the prefix 12-201
    lookup.trie.items([12, 201])                    # every item whose SID starts with 12-201

Collision policy (sid.collision_policy; item_tokens is the same under both, every full SID unique):
* "dedup": a SID is levels codes + its de-duplication token. The trie holds full SIDs (depth
  levels + 1), so a decoder constrained by it generates the token too. A bare code resolves only if
  one item has it.
* "popular" (Spotify's choice): a bare code resolves to the day's most played item among those
  sharing it (plays of `ds` in the events table; ties and days without plays go to the lowest
  token, i.e. the item that had the code first). The trie holds bare codes (depth = levels), each
  mapped to that item: a decoder generates codes only. The other items sharing the code keep their
  full SID in item_tokens and still resolve by it, but generation cannot reach them that day.

The trie is a lexicographically sorted (N, depth) token matrix: a prefix is a row range found by
binary search one column at a time, so memory is the matrix itself and a query is O(depth log N).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVENTS, ITEM_TOKENS
from models.residual_quantizer import sid_string

log = logging.getLogger(__name__)
POLICIES = ("dedup", "popular")


class SidTrie:
    """Valid token sequences of one depth, each mapped to an item id."""

    def __init__(self, tokens: np.ndarray, item_ids: list[str]):
        tokens = np.asarray(tokens, dtype=np.int64).reshape(len(item_ids), -1)
        order = np.lexsort(tokens.T[::-1]) if len(tokens) else np.zeros(0, np.int64)
        self.tokens = tokens[order]  # (N, depth), rows sorted lexicographically
        self.item_ids = [item_ids[i] for i in order]
        self.depth = int(tokens.shape[1])
        if len(tokens) > 1 and not (np.diff(self.tokens, axis=0) != 0).any(axis=1).all():
            raise ValueError("SidTrie: two items have the same token sequence; every complete sequence must be unique.")

    def __len__(self) -> int:
        return len(self.item_ids)

    def _range(self, prefix) -> tuple[int, int]:
        """Rows [lo, hi) whose first len(prefix) tokens equal prefix."""
        prefix = [int(t) for t in prefix]
        if len(prefix) > self.depth:
            return 0, 0
        lo, hi = 0, len(self.item_ids)
        for level, token in enumerate(prefix):
            column = self.tokens[lo:hi, level]  # sorted inside the range of the previous levels
            lo, hi = lo + int(np.searchsorted(column, token, "left")), lo + int(np.searchsorted(column, token, "right"))
            if lo == hi:
                break
        return lo, hi

    def next_tokens(self, prefix) -> list[int]:
        """Sorted valid tokens after `prefix` (empty if the prefix is complete or no SID starts with it)."""
        lo, hi = self._range(prefix)
        if lo == hi or len(prefix) >= self.depth:
            return []
        return np.unique(self.tokens[lo:hi, len(prefix)]).tolist()

    def items(self, prefix) -> list[str]:
        """Item ids of every complete sequence starting with `prefix`, in token order."""
        lo, hi = self._range(prefix)
        return self.item_ids[lo:hi]

    def item(self, tokens) -> str | None:
        """The item of a complete sequence, or None."""
        if len(tokens) != self.depth:
            return None
        lo, hi = self._range(tokens)
        return self.item_ids[lo] if hi > lo else None


def resolve_bare_codes(tokens: np.ndarray, plays: np.ndarray) -> np.ndarray:
    """Row index (G,) of the item each distinct bare code resolves to under the "popular" policy.

    tokens: (N, levels + 1) codes plus de-duplication token; plays: (N,) plays of each item on the day.
    The winner of a code is the item with the most plays, ties broken by the lowest de-duplication
    token. Returned in the order of np.unique(codes, axis=0).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) == 0:
        return np.zeros(0, np.int64)
    _, group = np.unique(tokens[:, :-1], axis=0, return_inverse=True)
    group = group.reshape(-1)
    # Sort by (group, -plays, token): the first row of each group wins.
    order = np.lexsort((tokens[:, -1], -np.asarray(plays, dtype=np.int64), group))
    first = np.r_[True, np.diff(group[order]) != 0]
    return order[first]


def plays_on(cfg: FactoryConfig, ds: str) -> dict[str, int]:
    """item_id -> number of `play` events on ds."""
    events = delta.read(cfg, EVENTS, where={"ds": ds}, columns=["item_id", "event_type"])
    played = events.filter(pc.equal(events.column("event_type"), "play"))
    counts = pc.value_counts(played.column("item_id")).to_pylist() if played.num_rows else []
    return {c["values"]: int(c["counts"]) for c in counts}


def latest_events_ds(cfg: FactoryConfig) -> str | None:
    table = delta.open_table(cfg, EVENTS)
    if table is None:
        return None
    days = [p["ds"] for p in table.partitions()]
    return max(days) if days else None


@dataclass
class SidLookup:
    """Both directions of one codebook version, and the trie of what a decoder may generate."""

    codebook_version: int
    levels: int
    policy: str
    ds: str | None  # the day whose plays resolve bare codes ("popular"); None under "dedup"
    item_ids: list[str]
    tokens: np.ndarray  # (N, levels + 1), row i belongs to item_ids[i]
    trie: SidTrie

    def __post_init__(self) -> None:
        self._row = {item: i for i, item in enumerate(self.item_ids)}
        self._full = SidTrie(self.tokens, self.item_ids) if self.trie.depth != self.levels + 1 else self.trie

    def sid(self, item_id: str) -> str:
        row = self._row.get(item_id)
        if row is None:
            raise FactoryError(f"Item {item_id!r} has no SID in codebook version {self.codebook_version}.")
        return sid_string(self.tokens[row])

    def item(self, sid: str) -> str:
        """The item of a full SID, or of a bare code (levels tokens) as the collision policy resolves it."""
        tokens = parse_sid(sid)
        if len(tokens) == self.levels + 1:
            found = self._full.item(tokens)
        elif len(tokens) == self.levels and self.policy == "popular":
            found = self.trie.item(tokens)
        elif len(tokens) == self.levels:
            candidates = self._full.items(tokens)
            if len(candidates) > 1:
                raise FactoryError(f"{len(candidates)} items share the code {sid} in codebook version "
                                   f"{self.codebook_version}; add the de-duplication token (e.g. {sid}-0) or use "
                                   f"sid.collision_policy = \"popular\".")
            found = candidates[0] if candidates else None
        else:
            raise FactoryError(f"SID {sid!r} has {len(tokens)} tokens; codebook version {self.codebook_version} "
                               f"has {self.levels} levels plus a de-duplication token.")
        if found is None:
            raise FactoryError(f"No item with SID {sid} in codebook version {self.codebook_version}.")
        return found

    def items_under(self, prefix: str | list[int]) -> list[str]:
        """Every item whose full SID starts with the prefix (all items sharing a code, whatever the policy)."""
        return self._full.items(parse_sid(prefix) if isinstance(prefix, str) else prefix)


def parse_sid(text: str) -> list[int]:
    """'12-201-7' -> [12, 201, 7]; '' -> []."""
    if text == "":
        return []
    parts = text.split("-")
    if not all(p.isdigit() for p in parts):
        raise FactoryError(f"{text!r} is not a SID or SID prefix; write tokens joined by dashes, e.g. 12-201.")
    return [int(p) for p in parts]


def build_lookup(version: int, item_ids: list[str], tokens: np.ndarray, policy: str,
                 plays: dict[str, int] | None = None, ds: str | None = None) -> SidLookup:
    """A SidLookup from arrays (tokens (N, levels + 1)); `plays` (item -> plays of ds) for "popular"."""
    if policy not in POLICIES:
        raise FactoryError(f"Unknown collision policy {policy!r}; use one of {', '.join(POLICIES)}.")
    tokens = np.asarray(tokens, dtype=np.int64).reshape(len(item_ids), -1)
    levels = tokens.shape[1] - 1
    if policy == "popular":
        counts = np.array([(plays or {}).get(i, 0) for i in item_ids], dtype=np.int64)
        winners = resolve_bare_codes(tokens, counts)
        trie = SidTrie(tokens[winners, :-1], [item_ids[i] for i in winners])
    else:
        trie, ds = SidTrie(tokens, item_ids), None
    return SidLookup(version, levels, policy, ds, list(item_ids), tokens, trie)


def load_lookup(cfg: FactoryConfig, version: int | None = None, policy: str | None = None,
                ds: str | None = None) -> SidLookup:
    """The lookup of codebook `version` (default: the latest) read from item_tokens.

    Under the "popular" policy bare codes resolve by the plays of `ds` (default: the latest day in events).
    """
    policy = policy or cfg.sid.collision_policy
    rows = delta.read(cfg, ITEM_TOKENS, columns=["codebook_version", "item_id", "tokens"])
    if rows.num_rows == 0:
        raise FactoryError("No semantic IDs yet; run the semantic_ids step first (factory run --ds D --step semantic_ids).")
    known = sorted(set(rows.column("codebook_version").to_pylist()))
    version = version if version is not None else known[-1]
    rows = rows.filter(pc.equal(rows.column("codebook_version"), pa.scalar(version, pa.int64())))
    if rows.num_rows == 0:
        raise FactoryError(f"Codebook version {version} has no item tokens; versions with tokens: {known}.")
    tokens = np.array(rows.column("tokens").to_pylist(), dtype=np.int64)
    plays = None
    if policy == "popular":
        ds = ds or latest_events_ds(cfg)
        if ds is not None:
            parse_ds(ds)
            plays = plays_on(cfg, ds)
    return build_lookup(version, rows.column("item_id").to_pylist(), tokens, policy, plays, ds)
