"""Generative retrieval over semantic IDs: a causal LM that "speaks the catalog", with a soft token.

Read top to bottom: vocabulary -> input sequences -> soft-token projector -> model (tiny Llama from
scratch, or a pretrained open-weight model from a local directory) -> loss -> the SID trie as
tensors -> constrained beam search.

Sequence layout (left-padded, so every row ends at the same column):

    [BOS] [prompt tokens]* [SEP] h1_l0 h1_l1 ... hN_lD [SEP] [SOFT]? -> target t_l0 ... t_lD

SOFT is a placeholder id whose input embedding is replaced by projector(user embedding) through
`inputs_embeds` (one token, as Spotify's production system). It sits right before the target, so the
position that predicts the first SID token reads the user vector on its residual stream and the
target tokens find it at a fixed distance (chosen on validation; models saved before put it after
BOS: `SidVocabulary.soft_last` False). A SID is `depth` tokens (levels codes
plus the de-duplication token); token (level, code) has its own vocabulary id. The loss covers only
the target's SID tokens: the soft token summarises the history up to the target, so supervising
earlier history positions would let them read their own answer from it.
No I/O here: data, training loops and MLflow live in jobs/.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, BOS, SEP, SOFT = 0, 1, 2, 3  # offsets inside our block of the vocabulary
N_SPECIAL = 4
# Mean norm of SID token embeddings started from item vectors: against the tiny Llama's final
# RMS-normalised hidden state (norm about sqrt(hidden)) it gives first-step logits of a few units,
# about the encoder's cosine / temperature (Beauty validation; random rows have norm ~0.16).
SID_EMBEDDING_NORM = 1.2


@dataclass(frozen=True)
class SidVocabulary:
    """Vocabulary ids: [base model tokens][specials][prompt tokens][SID tokens, level by level].

    base: size of a pretrained model's own vocabulary (0 for a model trained from scratch).
    level_sizes: token values per SID level, e.g. (256, 256, 256, 8) for 3x256 + a dedup token.
    soft_last: the SOFT token sits right before the target (the layout above); False: right after
        BOS, the layout of models saved before the change.
    """

    prompt_tokens: tuple[str, ...]
    level_sizes: tuple[int, ...]
    base: int = 0
    soft_last: bool = True

    def __post_init__(self) -> None:
        if len(set(self.prompt_tokens)) != len(self.prompt_tokens):
            raise ValueError("SidVocabulary.prompt_tokens must be unique.")
        if not self.level_sizes or min(self.level_sizes) < 1:
            raise ValueError(f"SidVocabulary.level_sizes must be positive, got {self.level_sizes}.")

    def special(self, which: int) -> int:
        return self.base + which

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def sid_start(self) -> int:
        return self.base + N_SPECIAL + len(self.prompt_tokens)

    @property
    def size(self) -> int:
        return self.sid_start + sum(self.level_sizes)

    def level_start(self, level: int) -> int:
        return self.sid_start + sum(self.level_sizes[:level])

    def prompt_ids(self, tokens) -> list[int]:
        """Ids of known prompt tokens (unknown ones are skipped: a new country must not fail a request)."""
        index = {t: i for i, t in enumerate(self.prompt_tokens)}
        return [self.base + N_SPECIAL + index[t] for t in tokens if t in index]

    def sid_ids(self, codes: np.ndarray) -> np.ndarray:
        """(..., w) SID codes of the first w <= depth levels -> (..., w) vocabulary ids."""
        codes = np.asarray(codes, dtype=np.int64)
        w = codes.shape[-1]
        if not 0 < w <= self.depth or (codes < 0).any() or (codes >= np.array(self.level_sizes[:w])).any():
            raise ValueError(f"SID codes must be (..., <= {self.depth}) within level sizes {self.level_sizes}.")
        return codes + np.array([self.level_start(level) for level in range(w)])


def build_sequences(vocab: SidVocabulary, histories: list[np.ndarray], prompts: list[list[str]] | None,
                    soft: bool, targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded input ids (B, T) and attention mask (B, T).

    histories: per row, (n_i, w) SID codes of the items before the target, oldest first; w <= depth
        (e.g. levels without the de-duplication token: shorter sequences, little lost).
    prompts: per row, prompt token strings (None or [] for none); soft: put the SOFT placeholder.
    targets: (B, depth) codes appended at the end (training), or None (generation starts after SEP).
    """
    rows = []
    for i, history in enumerate(histories):
        row = [vocab.special(BOS)] + ([vocab.special(SOFT)] if soft and not vocab.soft_last else [])
        row += vocab.prompt_ids(prompts[i]) if prompts else []
        row.append(vocab.special(SEP))
        if len(history):
            row += vocab.sid_ids(np.asarray(history)).ravel().tolist()
        row.append(vocab.special(SEP))
        if soft and vocab.soft_last:
            row.append(vocab.special(SOFT))
        if targets is not None:
            row += vocab.sid_ids(targets[i]).tolist()
        rows.append(row)
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), vocab.special(PAD), dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, longest - len(row):], mask[i, longest - len(row):] = row, 1
    return ids, mask


class SoftTokenProjector(nn.Module):
    """2-layer MLP: a user embedding (B, user_dim) -> one token embedding (B, hidden)."""

    def __init__(self, user_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(user_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.net(users)


@dataclass(frozen=True)
class TinyLlamaConfig:
    """A causal LM small enough to train from scratch on 2 CPU cores (about 0.5M non-embedding params)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 512
    max_positions: int = 256


def tiny_llama(vocab: SidVocabulary, cfg: TinyLlamaConfig, seed: int = 0):
    """A randomly initialised LlamaForCausalLM over `vocab` (tied input/output embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab.size, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
                         pad_token_id=vocab.special(PAD), bos_token_id=vocab.special(BOS), eos_token_id=vocab.special(SEP))
    return LlamaForCausalLM(config)


def pretrained_lm(local_dir: str, vocab_without_base: SidVocabulary):
    """A pretrained causal LM from a local directory, its vocabulary extended by our tokens.

    Returns (model, vocab) where vocab.base is the model's own vocabulary size: every special,
    prompt and SID token is a new row of the (resized) embedding table.
    """
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(local_dir)
    vocab = dataclasses.replace(vocab_without_base, base=lm.get_input_embeddings().num_embeddings)
    lm.resize_token_embeddings(vocab.size)
    return lm, vocab


def sid_token_vectors(tokens: np.ndarray, item_vectors: np.ndarray, level_sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Per SID level, (level_size, D): what each token adds to the item vectors under its prefix.

    tokens (N, depth) SID codes of N items; item_vectors (N, D), e.g. the user encoder's item
    vectors, L2-normalised here. Token (level, code) gets the mean over the items with that code of
    (item vector - the mean vector of the items sharing its prefix before this level): the residual
    that a residual quantiser's codebook would hold, computed for any codes (the factory's, titles',
    published ones). Codes no item has get zeros.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    vectors = np.asarray(item_vectors, dtype=np.float64)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    prefix_mean = np.zeros_like(vectors)  # each item's prefix mean; before the first level: the origin
    out = []
    for level, size in enumerate(level_sizes):
        sums = np.zeros((size, vectors.shape[1]))
        np.add.at(sums, tokens[:, level], vectors - prefix_mean)
        out.append((sums / np.maximum(np.bincount(tokens[:, level], minlength=size), 1)[:, None]).astype(np.float32))
        _, group = np.unique(tokens[:, :level + 1], axis=0, return_inverse=True)
        group = group.reshape(-1)
        group_sums = np.zeros((group.max() + 1, vectors.shape[1]))
        np.add.at(group_sums, group, vectors)
        prefix_mean = (group_sums / np.bincount(group)[:, None])[group]
    return out


def teacher_sid_targets(teacher_logits: torch.Tensor, item_codes: torch.Tensor,
                        target_codes: torch.Tensor, level_sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """What a teacher's item scores say each SID token should be, under teacher forcing.

    teacher_logits (B, N): a retrieval model's scores of the N items (-inf = not allowed, e.g.
    consumed); item_codes (N, depth): their SIDs; target_codes (B, depth): the target's SID.
    Returns per level d a (B, level_sizes[d]) distribution: the teacher's softmax over the items
    that share the target's first d codes, summed by their code at level d (all zeros where the
    teacher allows none of them). Beam search multiplies these conditionals back into the
    teacher's item distribution, so a model that matches them ranks items as the teacher does:
    distillation from the encoder's dot-product retrieval, with a dense signal per example where
    the target alone gives one item.
    """
    p = torch.softmax(teacher_logits.float(), dim=-1)  # (B, N)
    under = torch.ones_like(p, dtype=torch.bool)  # items sharing the target's prefix so far
    out = []
    for d, size in enumerate(level_sizes):
        mass = torch.zeros(p.shape[0], size).index_add_(1, item_codes[:, d], p * under)
        out.append(mass / mass.sum(1, keepdim=True).clamp_min(1e-12))
        under = under & (item_codes[None, :, d] == target_codes[:, d:d + 1])
    return out


class GenerativeRecommender(nn.Module):
    """A causal LM over `vocab` plus an optional soft-token projector (user_dim > 0).

    history_bias: one learned logit added to the last SID token of every item the user consumed
    before (under the prefix generated so far), in the loss and in beam search: whether users take
    an item again is learned, not assumed (the user encoder's history bias, models/user_encoder.py).
    """

    def __init__(self, lm: nn.Module, vocab: SidVocabulary, user_dim: int = 0, history_bias: bool = False):
        super().__init__()
        self.lm, self.vocab = lm, vocab
        hidden = lm.get_input_embeddings().embedding_dim
        self.projector = SoftTokenProjector(user_dim, hidden) if user_dim else None
        self.history_bias = nn.Parameter(torch.zeros(())) if history_bias else None

    @torch.no_grad()
    def init_sid_embeddings(self, level_vectors: list[np.ndarray], seed: int = 0) -> None:
        """Start every SID token's (tied) embedding at its `sid_token_vectors` direction, so the first
        steps already score a code by how well it matches the soft token's user vector.

        Rows are scaled to a mean norm of SID_EMBEDDING_NORM per level; vectors of another width than
        the LM's hidden size pass through a fixed random projection (it keeps inner products roughly).
        """
        table = self.lm.get_input_embeddings().weight
        width = level_vectors[0].shape[1]
        generator = torch.Generator().manual_seed(seed)
        projection = (torch.eye(width) if width == table.shape[1]
                      else torch.randn(width, table.shape[1], generator=generator) / table.shape[1] ** 0.5)
        for level, vectors in enumerate(level_vectors):
            rows = torch.from_numpy(np.asarray(vectors, dtype=np.float32)) @ projection
            norms = rows.norm(dim=1)
            scale = SID_EMBEDDING_NORM / norms[norms > 0].mean() if bool((norms > 0).any()) else 0.0
            start = self.vocab.level_start(level)
            table[start:start + len(rows)] = (rows * scale).to(table.dtype)

    def embed(self, input_ids: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """(B, T) ids -> (B, T, H) input embeddings, SOFT placeholders replaced by projected users (B, U)."""
        x = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        is_soft = input_ids == self.vocab.special(SOFT)
        if bool(is_soft.any()):
            if self.projector is None or users is None:
                raise ValueError("The input holds a SOFT token but the model has no projector or no user embeddings were given.")
            soft = self.projector(users.to(x.dtype))  # (B, H)
            x = torch.where(is_soft[..., None], soft[:, None, :].expand_as(x), x)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, users: torch.Tensor | None = None,
                use_cache: bool = False, logits_to_keep: int = 0):
        """HF causal-LM output for left-padded rows; logits_to_keep > 0 computes only the last ones."""
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens
        return self.lm(inputs_embeds=self.embed(input_ids, users), attention_mask=attention_mask,
                       position_ids=position_ids, use_cache=use_cache, logits_to_keep=logits_to_keep)

    def target_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, users: torch.Tensor | None,
                    consumed_last: torch.Tensor | None = None, teacher: list[torch.Tensor] | None = None,
                    teacher_weight: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of the last `depth` tokens (the target SID), each predicted from its prefix.

        consumed_last (B, last level size) bool: the last-level codes that complete, under the
        target's own prefix, an item the user consumed before; they get the history bias.
        teacher: per level, (B, level size) code distributions (`teacher_sid_targets`); the loss is
        then (1 - teacher_weight) x the cross-entropy + teacher_weight x the cross-entropy against them.
        """
        depth = self.vocab.depth
        logits = self(input_ids, attention_mask, users, logits_to_keep=depth + 1).logits[:, :-1].float()  # (B, depth, V)
        if self.history_bias is not None and consumed_last is not None:
            logits = torch.cat([logits[:, :-1], self.with_history_bias(logits[:, -1], consumed_last)[:, None]], 1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, -depth:].reshape(-1))
        if not teacher or teacher_weight <= 0:
            return loss
        logp = F.log_softmax(logits, dim=-1)  # (B, depth, V)
        soft = torch.stack([-(q * logp[:, d, self.vocab.level_start(d):self.vocab.level_start(d) + q.shape[1]]).sum(1).mean()
                            for d, q in enumerate(teacher)]).mean()
        return (1 - teacher_weight) * loss + teacher_weight * soft

    def with_history_bias(self, logits: torch.Tensor, consumed_last: torch.Tensor) -> torch.Tensor:
        """(N, V) logits of the last SID level with the history bias added where consumed_last (N,
        last level size) is True: one place for the loss and the beam."""
        start, size = self.vocab.level_start(self.vocab.depth - 1), self.vocab.level_sizes[-1]
        biased = logits[:, start:start + size] + consumed_last.to(logits.dtype) * self.history_bias
        return torch.cat([logits[:, :start], biased, logits[:, start + size:]], 1)


class TrieTables:
    """The SID trie as dense tensors, so a whole batch of beams steps with a few gathers.

    tokens: (N, depth) SID codes of the N generatable items (row i = item i), all distinct.
    At depth d, node j is one distinct prefix of length d; allowed[d] (nodes_d, level_size_d) says
    which codes may follow it and child[d] the node they lead to (at the last depth: the item row).
    item_node[d] (N,) is each item's node after d + 1 codes (at the last depth: the item row itself)
    and leaves[d] (nodes_{d+1},) how many items lie under each such node: what `blocked` needs to
    close a prefix whose items a user has all consumed.
    """

    def __init__(self, tokens: np.ndarray, level_sizes: tuple[int, ...]):
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != len(level_sizes):
            raise ValueError(f"TrieTables: tokens must be (N, {len(level_sizes)}), got {tokens.shape}.")
        if len(np.unique(tokens, axis=0)) != len(tokens):
            raise ValueError("TrieTables: two items have the same SID; every generatable SID must be unique.")
        self.depth, self.items = tokens.shape[1], len(tokens)
        self.allowed, self.child, self.item_node, self.leaves = [], [], [], []
        node = np.zeros(len(tokens), dtype=np.int64)  # each item's node at the current depth (root = 0)
        nodes = 1
        for d, size in enumerate(level_sizes):
            if d + 1 < self.depth:
                _, next_node = np.unique(np.stack([node, tokens[:, d]], 1), axis=0, return_inverse=True)
                next_node = next_node.reshape(-1)
            else:
                next_node = np.arange(len(tokens))  # leaves are item rows
            child = np.full((nodes, size), -1, dtype=np.int64)
            child[node, tokens[:, d]] = next_node
            self.child.append(torch.from_numpy(child))
            self.allowed.append(torch.from_numpy(child >= 0))
            node, nodes = next_node, int(next_node.max()) + 1 if len(next_node) else 0
            self.item_node.append(node)
            self.leaves.append(np.bincount(node, minlength=nodes))

    def rows_of(self, codes: np.ndarray) -> np.ndarray:
        """(M, depth) full SIDs -> (M,) their item rows by walking the trie; -1 where a SID names no item."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, self.depth)
        node = np.zeros(len(codes), dtype=np.int64)
        for d, child in enumerate(self.child):
            valid = (node >= 0) & (codes[:, d] >= 0) & (codes[:, d] < child.shape[1])
            node = np.where(valid, child.numpy()[np.where(valid, node, 0), np.where(valid, codes[:, d], 0)], -1)
        return node

    def blocked(self, exclude: list[np.ndarray]) -> list[torch.Tensor]:
        """Per depth d, (B, nodes_{d+1}) True where every item under the node is in that row's
        `exclude` (item rows, e.g. what the user already consumed): a beam must not enter it."""
        rows = [np.unique(np.asarray(e, dtype=np.int64)) for e in exclude]
        rows = [r[(r >= 0) & (r < self.items)] for r in rows]
        owner = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
        items = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        out = []
        for item_node, leaves in zip(self.item_node, self.leaves):
            nodes = len(leaves)
            consumed = np.bincount(owner * nodes + item_node[items], minlength=len(rows) * nodes).reshape(len(rows), nodes)
            out.append(torch.from_numpy(consumed == leaves[None, :]))
        return out


@torch.inference_mode()
def constrained_beam_search(model: GenerativeRecommender, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            users: torch.Tensor | None, trie: TrieTables, beams: int,
                            exclude: list[np.ndarray] | None = None,
                            history: list[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `beams` complete SIDs per row, by summed log-probability, never leaving the trie.

    input_ids, attention_mask: (B, T) left-padded prompts ending in SEP; users: (B, U) or None.
    exclude: per row, item rows it must not return (the user's consumed items): masked inside the
    search, so no beam is spent on them. A prefix whose items are all excluded is closed as soon as
    it would be entered, and at the last level the excluded leaves are, so the `beams` slots go to
    the best items that remain (fewer only when fewer remain).
    history: per row, the item rows the user consumed: the model's learned history bias (if it has
    one) is added to their last SID token, as in training. Without it (or the bias) nothing is added.
    Returns item rows (B, beams) into the trie's token matrix (-1 where fewer than `beams` SIDs exist)
    and their scores (B, beams), best first. beams=1 is greedy decoding.
    A hand-written search rather than generate(prefix_allowed_tokens_fn=...): SIDs have a fixed
    depth, so the whole batch steps together with one masked top-k per level and no per-beam Python
    callback (HF's callback runs once per beam and step), and beams never need an EOS.
    """
    vocab, (B, T) = model.vocab, input_ids.shape
    out = model(input_ids, attention_mask, users, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1]  # (B, V)
    node = torch.zeros(B, 1, dtype=torch.long)  # (B, K) trie node of each beam; K = 1 before the first step
    score, suffix = torch.zeros(B, 1), torch.zeros(B, 1, 0, dtype=torch.long)  # (B, K), (B, K, d) generated ids
    last = attention_mask.sum(-1, keepdim=True) - 1  # (B, 1) position of the last prompt token
    rows = 1  # beams per row the prompt cache holds
    blocked = trie.blocked(exclude) if exclude is not None else None
    consumed = trie.blocked(history)[-1] if history is not None and model.history_bias is not None else None
    for d in range(trie.depth):
        start, size = vocab.level_start(d), vocab.level_sizes[d]
        child = trie.child[d][node.reshape(-1)]  # (B*K, size) the node each code leads to, -1 = none
        owner = torch.arange(B).repeat_interleave(node.shape[1])[:, None]  # (B*K, 1) the beam's row
        logits = logits.float()
        if consumed is not None and d + 1 == trie.depth:  # leaves are item rows: bias the consumed ones
            logits = model.with_history_bias(logits, consumed[owner, child.clamp(min=0)] & (child >= 0))
        logp = F.log_softmax(logits, dim=-1)[:, start:start + size]  # (B*K, size)
        closed = ~trie.allowed[d][node.reshape(-1)]  # (B*K, size)
        if blocked is not None:
            closed |= blocked[d][owner, child.clamp(min=0)]
        logp = logp.masked_fill(closed, float("-inf")).view(B, -1, size)
        total = (score[:, :, None] + logp).view(B, -1)  # (B, K * size)
        score, flat = total.topk(min(beams, total.shape[1]), dim=1)  # (B, k)
        origin, code = flat // size, flat % size
        node = trie.child[d][node.gather(1, origin), code]  # (B, k); -1 where the score is -inf
        suffix = torch.cat([suffix.gather(1, origin[:, :, None].expand(-1, -1, d)), (start + code)[:, :, None]], 2)
        if d + 1 == trie.depth:
            break
        # Every beam of a row shares the prompt, so the prompt's cache is expanded once and never
        # reordered; each step crops the cache back to the prompt and feeds the beams' suffixes
        # (at most depth - 1 tokens). Reordering the whole cache every step cost 3x more on CPU.
        width = node.shape[1]
        if cache.get_seq_length() > T:
            cache.crop(T - cache.get_seq_length())  # a negative crop drops that many trailing tokens
        if rows != width:
            cache.reorder_cache(torch.arange(B).repeat_interleave(width) * rows)
            rows = width
        step_ids = suffix.reshape(B * width, d + 1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(B, d + 1)], 1).repeat_interleave(width, 0)
        position = (last + torch.arange(1, d + 2)).repeat_interleave(width, 0)  # (B*k, d + 1)
        out = model.lm(inputs_embeds=model.lm.get_input_embeddings()(step_ids), attention_mask=mask,
                       position_ids=position, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
    valid = torch.isfinite(score) & (node >= 0)
    items = torch.where(valid, node, torch.full_like(node, -1))
    if items.shape[1] < beams:  # fewer SIDs in the trie than beams
        pad = beams - items.shape[1]
        items = torch.cat([items, items.new_full((B, pad), -1)], 1)
        score = torch.cat([score, score.new_full((B, pad), float("-inf"))], 1)
    return items, score
