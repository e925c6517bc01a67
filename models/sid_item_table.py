"""Item vectors built from semantic IDs: a drop-in for UserEncoder.item_emb (issue 19, second option).

An item's vector is the sum of one learned vector per (level, code) of its SID (the level codes, not
the de-duplication token), optionally plus a per-item residual (zero at the start). Parameters:
levels x codes_per_level x D (+ (N + 1) x D with the residual) instead of (N + 1) x D, and an item
catalogued after training gets a vector from its SID alone (`extend`), with no retrain. Like the
nn.Embedding it replaces, `.weight` is the (N + 1, D) table with row 0 (padding) zero and calling
it looks rows up, so the encoder's forward, scores and losses use it unchanged (tied input/output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02  # as models.user_encoder


class SidItemTable(nn.Module):
    def __init__(self, codes: torch.Tensor, codes_per_level: int, d_model: int, residual: bool = False):
        """codes: (N + 1, L) int64 level codes of items 0..N (row 0, padding, is ignored)."""
        super().__init__()
        levels = codes.shape[1]
        self.codes_per_level = codes_per_level
        self.register_buffer("codes", codes.long().clone())
        self.register_buffer("offsets", torch.arange(levels) * codes_per_level)
        self.code_emb = nn.Embedding(levels * codes_per_level, d_model)
        nn.init.normal_(self.code_emb.weight, mean=0.0, std=INIT_STD)
        self.residual = nn.Parameter(torch.zeros(codes.shape[0], d_model)) if residual else None

    @property
    def weight(self) -> torch.Tensor:
        """(N + 1, D): sum of the item's code vectors (+ its residual); row 0 zero."""
        table = self.code_emb(self.codes + self.offsets).sum(1)  # (N + 1, L, D) -> (N + 1, D)
        if self.residual is not None:
            table = table + self.residual
        return table * (torch.arange(table.shape[0], device=table.device) > 0).unsqueeze(1)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(item_ids, self.weight)

    def extend(self, codes: torch.Tensor) -> None:
        """Append items (M, L) codes: their vectors come from their SIDs (residual rows zero)."""
        self.codes = torch.cat([self.codes, codes.long().to(self.codes.device)])
        if self.residual is not None:
            self.residual = nn.Parameter(torch.cat([self.residual.detach(),
                                                    torch.zeros(len(codes), self.residual.shape[1])]))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
