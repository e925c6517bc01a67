"""User encoder: a causal transformer over a user's item-id history (SASRec/HSTU family).

Read top to bottom: config -> attention -> MLP -> block -> UserEncoder -> losses -> warm start.

Conventions (every caller relies on them):
- Item ids are dense integers 1..num_items; 0 is padding. Event types: 0 = padding, 1 = play,
  2 = skip, 3 = save.
- Sequences are LEFT-padded, so position T-1 always holds the most recent item and a batch can be
  trimmed to its longest sequence by dropping leading columns.
- Positions are counted from the end (the most recent item is position 0), so left-padding more or
  trimming padding never changes an item's position embedding.
- The output layer is the item table itself (weight tying). Users (normalised last hidden state) and
  items (normalised table rows) live on one unit hypersphere; score = cosine / temperature.
- With `item_facets` > 0 an item's row is the sum of learned vectors of its catalog facets (e.g.
  genre, artist or show; hashed into `facet_buckets` per level by the caller) plus a per-item
  residual (models.sid_item_table.SidItemTable with facet codes): items that share an artist share
  most of their vector, so a large catalog with few plays per item still gets a structured space.
- With `history_bias` one learned number is added to the score of every item in the history the
  model read (UserEncoder.scores(..., history), full_softmax_loss(..., history)): it learns whether
  users take an item again. The vectors alone stay cosine, so an ANN index over them ignores it.
No I/O here: training loops, data loading and model registries live in jobs/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.sid_item_table import SidItemTable

INIT_STD = 0.02  # nanoGPT/SASRec-style init; also used for rows added by expand_item_table
ITEM_TABLE_KEY = "item_emb.weight"  # the only parameter whose shape depends on num_items
FACET_CODES_KEY, FACET_RESIDUAL_KEY = "item_emb.codes", "item_emb.residual"  # their twins with item_facets


@dataclass(frozen=True)
class UserEncoderConfig:
    num_items: int  # item ids are 1..num_items; 0 is padding
    max_len: int = 50  # longest history the model sees (positions table size)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2  # on embeddings, residual branches and the MLP
    # Dropout on attention probabilities. Off by default: any value > 0 forces PyTorch's unfused
    # attention on CPU (about 3x slower forward), and ML-1M trains as well without it.
    attention_dropout: float = 0.0
    n_event_types: int = 4  # 0 = padding, 1 = play, 2 = skip, 3 = save
    use_event_types: bool = True
    # Optional time-gap feature: bucket ids from sequences.time_gap_buckets (0 = padding); 0 = off.
    n_time_buckets: int = 0
    temperature: float = 0.05  # scores = cos(user, item) / temperature
    # Catalog facets per item (0 = per-item ids only): the item table is SidItemTable over
    # (num_items + 1, item_facets) codes in [0, facet_buckets), set with UserEncoder.set_item_facets.
    item_facets: int = 0
    facet_buckets: int = 0
    # Learn one score added to the items of a user's own history when ranking (and in the loss):
    # negative where users never take an item twice (purchases), positive where they replay (music).
    # A cosine model cannot express either alone, since a history's items sit near the user vector.
    history_bias: bool = False

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"UserEncoderConfig.num_items must be >= 1, got {self.num_items}.")
        if self.max_len < 1:
            raise ValueError(f"UserEncoderConfig.max_len must be >= 1, got {self.max_len}.")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"UserEncoderConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"UserEncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}.")
        if self.n_time_buckets < 0 or self.n_time_buckets == 1:
            raise ValueError(f"UserEncoderConfig.n_time_buckets must be 0 (off) or >= 2, got {self.n_time_buckets}.")
        if self.temperature <= 0:
            raise ValueError(f"UserEncoderConfig.temperature must be > 0, got {self.temperature}.")
        if self.item_facets < 0 or (self.item_facets > 0 and self.facet_buckets < 1):
            raise ValueError("UserEncoderConfig.item_facets must be >= 0 (0 = off) and, when on, facet_buckets >= 1; "
                             f"got {self.item_facets} and {self.facet_buckets}.")


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU masks come from 16 random bits per element, not a float draw each.

    PyTorch's CPU dropout draws one Bernoulli per element (bernoulli_, ~8% of an ML-1M training
    step for the five masks of a forward); one int64 draw gives four 16-bit uniforms, and comparing
    them with a threshold makes the same mask distribution (p rounded to 1/65536) several times
    faster. Other devices use PyTorch's own fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu" or x.numel() % 4:
            return super().forward(x)
        bits = torch.empty(x.numel() // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)  # all 64 bits
        threshold = round(self.p * 65536) - 32768  # P(int16 uniform < threshold) = p
        scale = torch.tensor(1.0 / (1.0 - self.p), dtype=x.dtype)
        mask = torch.where(bits.view(torch.int16).view(x.shape) >= threshold, scale, 0.0)  # (x.shape) 0 or scale
        return x * mask


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.attention_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with last_only, only the last position's output (B, 1, D)
        (and attn_mask then holds only the last query's row: (B, 1, 1, T))."""
        B, T, D = x.shape
        if last_only:  # keys and values for every position, a query for the last one only
            q = F.linear(x[:, -1:], self.qkv.weight[:D], self.qkv.bias[:D])  # (B, 1, D)
            k, v = F.linear(x, self.qkv.weight[D:], self.qkv.bias[D:]).split(D, dim=2)
        else:
            q, k, v = self.qkv(x).split(D, dim=2)
        # (B, T, D) -> (B, H, T, D/H); the query may have 1 position
        q, k, v = (t.view(B, t.shape[1], self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, Tq, D/H)
        y = y.transpose(1, 2).contiguous().view(B, q.shape[2], D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), or (B, 1, D) for the last position only (see CausalSelfAttention)."""
        x = (x[:, -1:] if last_only else x) + self.drop(self.attn(self.ln1(x), attn_mask, last_only))
        return x + self.mlp(self.ln2(x))


class UserEncoder(nn.Module):
    def __init__(self, cfg: UserEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = (  # tied output
            SidItemTable(torch.zeros(cfg.num_items + 1, cfg.item_facets, dtype=torch.long), cfg.facet_buckets,
                         cfg.d_model, residual=True)
            if cfg.item_facets else nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0))
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)  # index 0 = most recent item
        self.event_emb = (
            nn.Embedding(cfg.n_event_types, cfg.d_model, padding_idx=0) if cfg.use_event_types else None
        )
        self.time_emb = nn.Embedding(cfg.n_time_buckets, cfg.d_model, padding_idx=0) if cfg.n_time_buckets else None
        self.history_bias = nn.Parameter(torch.zeros(())) if cfg.history_bias else None
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)
        # Residual projections scaled down with depth (GPT-2) so the residual stream starts small.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * cfg.n_layers))

    def __setstate__(self, state: dict) -> None:
        """Unpickle (MLflow stores models pickled): a model pickled before history_bias existed has none."""
        super().__setstate__(state)
        if "history_bias" not in self._parameters:
            self.__dict__.setdefault("history_bias", None)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def set_item_facets(self, codes: torch.Tensor) -> None:
        """Items' facet codes, (num_items + 1, item_facets) in [0, facet_buckets) (row 0 = padding)."""
        if not self.cfg.item_facets:
            raise ValueError("set_item_facets needs a model with item_facets > 0.")
        _check_facet_codes(codes, self.cfg.num_items, self.cfg.item_facets, self.cfg.facet_buckets)
        self.item_emb.codes = codes.long().to(self.item_emb.codes.device)

    def forward(self, item_ids: torch.Tensor, event_types: torch.Tensor | None = None,
                time_buckets: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states for every position.

        item_ids: (B, T) integer ids, left-padded with 0, T <= cfg.max_len.
        event_types: (B, T) integer event types aligned with item_ids, or None to add no event
            feature (a model trained with event types then sees a shifted input: pass them).
        time_buckets: (B, T) time-gap buckets (sequences.time_gap_buckets), used only when the
            model has cfg.n_time_buckets > 0; same caveat as event_types.
        Returns (B, T, D) float hidden states; position t depends only on positions <= t.
        """
        x, attn_mask = self._inputs(item_ids, event_types, time_buckets)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)  # (B, T, D)

    def _inputs(self, item_ids: torch.Tensor, event_types: torch.Tensor | None,
                time_buckets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input states (B, T, D) and the attention mask (B, 1, T, T) of a left-padded batch."""
        B, T = item_ids.shape
        if T > self.cfg.max_len:
            raise ValueError(
                f"item_ids has {T} positions but the model was built for max_len={self.cfg.max_len}; "
                "keep the last max_len items (sequences.pad_left does)."
            )
        pos = torch.arange(T - 1, -1, -1, device=item_ids.device)  # (T,) distance from the end
        x = self.item_emb(item_ids) + self.pos_emb(pos)  # (B, T, D)
        if self.event_emb is not None and event_types is not None:
            x = x + self.event_emb(event_types)
        if self.time_emb is not None and time_buckets is not None:
            x = x + self.time_emb(time_buckets)
        x = self.drop(x)
        # Attend to earlier-or-same positions that hold an item. A padding query also sees itself,
        # so no softmax row is empty (that would give NaN); padding outputs are never used.
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        is_item = (item_ids != 0)[:, None, None, :]  # (B, 1, 1, T) key mask
        eye = torch.eye(T, dtype=torch.bool, device=x.device)
        return x, causal & (is_item | eye)  # (B, 1, T, T), broadcast over heads

    def user_embeddings(
        self, item_ids: torch.Tensor, event_types: torch.Tensor | None = None,
        time_buckets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T) left-padded history -> (B, D) unit-norm user vectors (last position's state).

        Same numbers as normalising forward(...)[:, -1], but the last block computes only the last
        position (keys and values still cover every position): about 40% fewer FLOPs with 2 blocks.
        A row with no items at all gives a meaningless vector: drop empty histories before calling.
        Runs with autograd as the caller set it; wrap in torch.inference_mode() for batch inference.
        """
        x, attn_mask = self._inputs(item_ids, event_types, time_buckets)
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, attn_mask[:, :, -1:] if last else attn_mask, last_only=last)  # last: (B, 1, D)
        return F.normalize(self.ln_f(x[:, -1]), dim=-1)  # (B, D)

    def item_embeddings(self) -> torch.Tensor:
        """(num_items + 1, D) unit-norm item vectors; row 0 (padding) is all zeros."""
        return F.normalize(self.item_emb.weight, dim=-1)

    def scores(self, user_emb: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) unit user vectors -> (B, num_items + 1) cosine / temperature; column 0 is -inf.

        history: optional (B, T) item ids each user has read (0 = padding); with cfg.history_bias
        the learned bias is added once to each row's history items.
        """
        logits = (user_emb * (1.0 / self.cfg.temperature)) @ self.item_embeddings().T  # (B, V)
        if self.history_bias is not None and history is not None:
            read = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, history, True)  # an item read twice: once
            logits = logits + read * self.history_bias
        logits[:, 0] = float("-inf")  # padding is never a recommendation
        return logits


def _valid_positions(
    hidden: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep positions with a real target: (B, T, D), (B, T) -> (M, D) unit vectors, (M,) ids."""
    keep = targets != 0
    if not bool(keep.any()):
        raise ValueError("targets has no non-zero entries; there is nothing to train on in this batch.")
    return F.normalize(hidden[keep], dim=-1), targets[keep]


def item_logits(model: UserEncoder, users: torch.Tensor) -> torch.Tensor:
    """(M, D) unit user vectors -> (M, num_items) cos / temperature; column j is item j + 1.

    The padding item has no column, and the temperature scales the (M, D) side rather than the
    (M, num_items) logits: same numbers as UserEncoder.scores without two passes over the big matrix.
    """
    table = F.normalize(model.item_emb.weight[1:], dim=-1)  # (V, D) without padding
    return (users * (1.0 / model.cfg.temperature)) @ table.T  # (M, V)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (users @ table.T) against targets, with one reusable logits buffer.

    Same numbers as F.cross_entropy(users @ table.T, targets), about 2x faster on CPU: the
    (M, V) logits are written once into a buffer kept between steps (a fresh 350 MB tensor per
    step costs more in page faults than the matmul itself), softmax and its gradient are computed
    in place, and nothing else of size (M, V) is allocated. The logits at (rows, cols) are set to
    -inf when `bias` is None (hidden), else `bias` (a 0-dim tensor) is added to them; with a bias
    the (rows, cols) pairs must be distinct.
    """

    _free: list[torch.Tensor] = []  # at most one idle buffer, reused by the next forward

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, users, table, targets, rows, cols, bias):
        M, V = users.shape[0], table.shape[0]
        spare = _SoftmaxCrossEntropy._free.pop() if _SoftmaxCrossEntropy._free else torch.empty(0)
        if spare.numel() < M * V or spare.device != users.device:
            spare = torch.empty(M * V, device=users.device)
        logits = spare[: M * V].view(M, V)
        torch.mm(users, table.T, out=logits)  # (M, V)
        if rows is not None:
            logits[rows, cols] = float("-inf") if bias is None else logits[rows, cols] + bias
        target_logit = logits.gather(1, targets[:, None]).squeeze(1)  # (M,)
        if _exp_in_range(users, bias):  # exp(logit) needs no shift: no amax, no subtraction pass
            top = torch.zeros_like(target_logit)
        else:
            top = logits.amax(1)  # (M,)
            logits.sub_(top[:, None])
        total = logits.exp_().sum(1)  # logits now hold exp(logit - top)
        loss = (top + total.log() - target_logit).mean()
        if any(ctx.needs_input_grad[:2]) or ctx.needs_input_grad[5]:
            ctx.save_for_backward(users, table, targets, total, rows, cols)
            ctx.buffer = (spare, logits)
        else:
            _SoftmaxCrossEntropy._free[:] = [spare]
        return loss

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_loss):
        users, table, targets, total, rows, cols = ctx.saved_tensors
        spare, grad = ctx.buffer
        scale = grad_loss / users.shape[0]
        grad.mul_((scale / total)[:, None])  # softmax * scale
        grad[torch.arange(len(targets), device=grad.device), targets] -= scale
        grad_bias = grad[rows, cols].sum() if ctx.needs_input_grad[5] else None  # d loss / d logit, summed
        grad_users, grad_table = grad @ table, grad.T @ users  # (M, D), (V, D)
        del ctx.buffer
        _SoftmaxCrossEntropy._free[:] = [spare]
        return grad_users, grad_table, None, None, None, grad_bias


EXP_SAFE = 60.0  # exp(60) ~ 1e26: a sum over 1e9 items stays far below float32's 3e38


def _exp_in_range(users: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether exp of every logit is safe without subtracting each row's max first.

    A logit is a user row dotted with a unit item vector (at most the row's norm, 1 / temperature)
    plus the bias where it applies, so |logit| <= norm + max(bias, 0) bounds it from above; from
    below, a hidden (-inf) or very negative logit only underflows to 0, and each row's target keeps
    its sum above 0. Skipping the max saves two passes over the (M, V) logits, ~5% of an ML-1M step.
    """
    bound = float(users.detach().norm(dim=1).max())
    if bias is not None:
        bound += max(float(bias.detach()), 0.0)
    return bound < EXP_SAFE


def _history_pairs(history: torch.Tensor, keep: torch.Tensor, y: torch.Tensor,
                   with_targets: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the logits of each position's earlier-or-same input items (each pair once with_targets).

    history: (B, T) input ids; keep: (B, T) positions with a target, whose logits rows are in
    row-major order; y: (M,) targets. A position's own target is left out unless with_targets
    (hiding it would make the loss infinite; a bias must see it to learn repeats). cols are item - 1.
    """
    B, T = history.shape
    row = torch.full((B, T), -1, dtype=torch.long, device=history.device)
    row[keep] = torch.arange(int(keep.sum()), device=history.device)
    t, s = torch.tril_indices(T, T, device=history.device)  # every pair with s <= t
    # (B, pairs) layouts and masked_select: about 3x faster on CPU than repeating the pairs B times and
    # compacting with boolean indexing (scratch timing at ML-1M's shapes, B 128 x T 200, one thread).
    item, r = history.index_select(1, s), row.index_select(1, t)
    ok = (item != 0) & (r >= 0)
    if not with_targets:
        target = torch.zeros_like(history)
        target[keep] = y
        ok &= item != target.index_select(1, t)
    item, r = item.masked_select(ok), r.masked_select(ok)
    if with_targets:  # a bias is added once per item, so an item read twice must give one pair
        width = int(history.max()) + 1
        pair = torch.unique(r * width + item)
        r, item = pair // width, pair % width
    return r, item - 1


def full_softmax_loss(
    model: UserEncoder, hidden: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-item cross-entropy over the whole catalog (for catalogs up to ~1e5 items).

    hidden: (B, T, D) from model(...); targets: (B, T) next item per position, 0 = ignore.
    history: optional (B, T) input item ids (what model(...) read). When given, a model with
        cfg.history_bias adds its learned bias to each position's own history items (as
        UserEncoder.scores does when ranking); any other model ranks each target only against
        items not yet in its own history (the training-side twin of seen-filtered evaluation,
        for data where users never repeat an item, e.g. ratings).
    Returns the mean loss (nats) over non-ignored positions; equal to
    F.cross_entropy(item_logits(model, h), y - 1) (tests pin it), computed by a faster kernel.
    """
    h, y = _valid_positions(hidden, targets)  # (M, D), (M,)
    table = F.normalize(model.item_emb.weight[1:], dim=-1)  # (V, D) without padding
    rows = cols = bias = None
    if history is not None:
        bias = model.history_bias
        rows, cols = _history_pairs(history, targets != 0, y, with_targets=bias is not None)
    return _SoftmaxCrossEntropy.apply(h * (1.0 / model.cfg.temperature), table, y - 1, rows, cols, bias)


def compatibility_loss(model: UserEncoder, anchor: torch.Tensor) -> torch.Tensor:
    """Backward-compatible training: mean (1 - cosine) of items 1..K's vectors to `anchor` (K, D),
    the unit item vectors of the model this one is warm-started from (items it knew), so the new
    space stays where consumers of the old vectors expect it."""
    current = F.normalize(model.item_emb.weight[1:anchor.shape[0] + 1], dim=-1)  # (K, D)
    return (1.0 - (current * anchor).sum(-1)).mean()


def sampled_softmax_loss(
    model: UserEncoder,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
    in_batch_negatives: bool = True,
) -> torch.Tensor:
    """Next-item sampled softmax with logQ correction (Yi et al. 2019), for large catalogs.

    hidden: (B, T, D); targets: (B, T), 0 = ignore.
    negatives: (N,) item ids shared by every position, drawn by the caller from a sampler q.
    log_q: (num_items + 1,) log sampling probability of each item under q (use the same q for
        the negatives and, roughly, for the in-batch positives, e.g. item popularity).
    in_batch_negatives: also use the other positions' targets as negatives.
    Candidates are [targets of the batch, negatives]; column i is row i's positive (other rows'
    positives are masked unless in_batch_negatives). Every candidate logit, the positive's too, is
    cos / temperature - log_q[item], so popular items are not over-penalised as negatives.
    Accidental hits (a candidate equal to the row's own target, other than the row's positive)
    and padding candidates are masked. Returns the mean loss (nats) over non-ignored positions.
    """
    h, y = _valid_positions(hidden, targets)  # (M, D), (M,)
    M = y.shape[0]
    table = model.item_embeddings()  # (V, D)
    cand = torch.cat([y, negatives])  # (C,) with C = M + N
    logits = h @ table[cand].T / model.cfg.temperature - log_q[cand]  # (M, C)
    if not in_batch_negatives:
        # Row i keeps only its own positive (column i) and the shared negatives.
        others = torch.zeros(M, cand.shape[0], dtype=torch.bool, device=h.device)
        others[:, :M] = ~torch.eye(M, dtype=torch.bool, device=h.device)
        logits = logits.masked_fill(others, float("-inf"))
    label = torch.arange(M, device=h.device)  # row i's positive sits in column i
    hit = (cand[None, :] == y[:, None]) | (cand[None, :] == 0)  # (M, C)
    hit[label, label] = False
    logits = logits.masked_fill(hit, float("-inf"))
    return F.cross_entropy(logits, label)


def expand_item_table(state_dict: dict, num_items: int, facet_codes: torch.Tensor | None = None) -> dict:
    """Warm start: grow a trained state dict's item table to ids 1..num_items.

    Old rows (ids 0..old_num_items) are copied unchanged; new rows are drawn from N(0, INIT_STD)
    like a fresh model's, using torch's global RNG (deterministic under torch.manual_seed).
    A model with item facets instead takes `facet_codes` (num_items + 1, levels), today's codes of
    every item (a re-tagged item moves with its facets), and grows its residual with zero rows, as
    a fresh model's. Returns a new dict (the input is not modified), loadable with strict=True into
    UserEncoder(replace(cfg, num_items=num_items)). Raises ValueError if num_items would shrink
    the table (item ids are never reassigned, so the vocabulary only grows).
    """
    key = FACET_RESIDUAL_KEY if FACET_RESIDUAL_KEY in state_dict else ITEM_TABLE_KEY
    if key not in state_dict:
        raise ValueError(f"state_dict has no '{ITEM_TABLE_KEY}'; is it a UserEncoder state dict?")
    old = state_dict[key]  # (old_num_items + 1, D)
    old_num_items = old.shape[0] - 1
    if num_items < old_num_items:
        raise ValueError(
            f"num_items={num_items} is smaller than the trained table ({old_num_items} items); "
            "item ids are append-only, so pass the current vocabulary size."
        )
    out = dict(state_dict)
    if key == FACET_RESIDUAL_KEY:
        levels = state_dict[FACET_CODES_KEY].shape[1]
        if facet_codes is None:
            raise ValueError("this model has item facets: pass facet_codes, today's codes of items 0..num_items.")
        buckets = state_dict["item_emb.code_emb.weight"].shape[0] // max(levels, 1)
        _check_facet_codes(facet_codes, num_items, levels, buckets)
        out[FACET_CODES_KEY] = facet_codes.long().to(old.device)
        out[key] = torch.cat([old, old.new_zeros(num_items - old_num_items, old.shape[1])])
        return out
    new_rows = torch.randn(num_items - old_num_items, old.shape[1]) * INIT_STD
    out[key] = torch.cat([old, new_rows.to(dtype=old.dtype, device=old.device)])
    return out


def _check_facet_codes(codes: torch.Tensor, num_items: int, levels: int, buckets: int) -> None:
    if tuple(codes.shape) != (num_items + 1, levels):
        raise ValueError(f"facet codes must be (num_items + 1, item_facets) = ({num_items + 1}, {levels}); "
                         f"got {tuple(codes.shape)}.")
    if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= buckets):
        raise ValueError(f"facet codes must lie in [0, facet_buckets={buckets}).")
