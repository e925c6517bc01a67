"""Business-rule re-ranking of generated candidates: consumed items, type quotas, a diversity cap.

Candidates arrive best first (beam score order); the rules only remove, never reorder:
1. an item the user already consumed is dropped ("consumed");
2. an item whose type already filled its quota is dropped ("quota <type>"), e.g. at most 3 episodes;
3. an item whose first `prefix_len` SID tokens already appear `max_per_prefix` times among the kept
   items is dropped ("prefix cap <prefix>"): items sharing a SID prefix are near-duplicates in
   content, so the cap spreads the list over the catalog;
and the first k survivors are kept. Every candidate gets a reason, kept or dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from models.residual_quantizer import sid_string


@dataclass(frozen=True)
class RerankRules:
    k: int = 10
    type_quotas: dict[str, int] = field(default_factory=dict)  # item type -> most items of that type; absent = no limit
    prefix_len: int = 1  # SID tokens that make a "prefix" for the diversity cap
    max_per_prefix: int = 0  # 0 = no cap

    def __post_init__(self) -> None:
        if self.k < 1 or self.prefix_len < 0 or self.max_per_prefix < 0 or min(self.type_quotas.values(), default=0) < 0:
            raise ValueError(f"RerankRules need k >= 1 and non-negative quotas, prefix_len and cap, got {self}.")


@dataclass(frozen=True)
class Candidate:
    item_id: str
    sid: tuple[int, ...]
    score: float
    item_type: str = ""


@dataclass(frozen=True)
class Decision:
    candidate: Candidate
    kept: bool
    reason: str


def rerank(candidates: list[Candidate], consumed: set[str], rules: RerankRules) -> list[Decision]:
    """One decision per candidate, in the candidates' order; at most rules.k are kept."""
    decisions, per_type, per_prefix, kept = [], Counter(), Counter(), 0
    for c in candidates:
        prefix = c.sid[:rules.prefix_len]
        quota = rules.type_quotas.get(c.item_type)
        if kept >= rules.k:
            decision = Decision(c, False, f"list full (k={rules.k})")
        elif c.item_id in consumed:
            decision = Decision(c, False, "consumed: already in the user's history")
        elif quota is not None and per_type[c.item_type] >= quota:
            decision = Decision(c, False, f"quota {c.item_type}: {quota} already kept")
        elif rules.max_per_prefix and per_prefix[prefix] >= rules.max_per_prefix:
            decision = Decision(c, False, f"prefix cap {sid_string(prefix)}: {rules.max_per_prefix} already kept")
        else:
            per_type[c.item_type] += 1
            per_prefix[prefix] += 1
            kept += 1
            decision = Decision(c, True, f"kept: rank {kept}, new to the user"
                                + (f", {c.item_type} {per_type[c.item_type]}/{quota}" if quota is not None else "")
                                + (f", prefix {sid_string(prefix)} {per_prefix[prefix]}/{rules.max_per_prefix}"
                                   if rules.max_per_prefix else ""))
        decisions.append(decision)
    return decisions
