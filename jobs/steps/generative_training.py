"""Generative retrieval over semantic IDs: training examples, the training loop and recommending.

Shared by the benchmark (jobs/bench/generative.py), the optional daily step (jobs/steps/generative.py)
and `factory recommend` (jobs/serving/recommend.py). The model itself is models/generative.py.

An example is one next-item prediction: the SIDs of the items before the target (the last
`history` of them), optional prompt tokens, optional user embedding (the soft token: the encoder's
embedding of the same history, never of the target) and the target's SID.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch

from models.generative import (
    GenerativeRecommender,
    SidVocabulary,
    TrieTables,
    build_sequences,
    constrained_beam_search,
    teacher_sid_targets,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Examples:
    """N next-item examples. histories[i]: (n_i, w) SID codes of the items the sequence shows, oldest first."""

    histories: list[np.ndarray]
    prompts: list[list[str]] | None  # None: no prompt tokens
    users: np.ndarray | None  # (N, U) float32 user embeddings for the soft token; None: no soft token
    targets: np.ndarray | None  # (N, depth) SID codes; None at inference
    consumed: list[np.ndarray] | None = None  # (m_i, depth) full SIDs of everything consumed before the target
    teacher_users: np.ndarray | None = None  # (N, U) user vectors the Teacher scores (kept when the soft token is off)

    def __len__(self) -> int:
        return len(self.histories)

    def rows(self, index: np.ndarray) -> Examples:
        pick = lambda values: None if values is None else [values[i] for i in index]  # noqa: E731
        take = lambda values: None if values is None else values[index]  # noqa: E731
        return Examples(pick(self.histories), pick(self.prompts), take(self.users), take(self.targets),
                        pick(self.consumed), take(self.teacher_users))

    def without(self, soft: bool, prompt: bool) -> Examples:
        """The same examples with the soft token and/or the prompt switched off (ablation)."""
        return dataclasses.replace(self, prompts=self.prompts if prompt else None, users=self.users if soft else None)

    def consumed_last(self, vocab: SidVocabulary) -> torch.Tensor | None:
        """(N, last level size) bool: last-level codes that, after the target's own prefix, name an
        item consumed before (what the model's history bias applies to); None without `consumed`."""
        if self.consumed is None or self.targets is None:
            return None
        out = np.zeros((len(self), vocab.level_sizes[-1]), dtype=bool)
        for i, (before, target) in enumerate(zip(self.consumed, self.targets)):
            before = np.asarray(before, dtype=np.int64).reshape(-1, vocab.depth)
            same_prefix = (before[:, :-1] == target[:-1]).all(1)
            out[i, before[same_prefix, -1]] = True
        return torch.from_numpy(out)

    def tensors(self, vocab: SidVocabulary, with_targets: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        ids, mask = build_sequences(vocab, self.histories, self.prompts, self.users is not None,
                                    self.targets if with_targets else None)
        users = None if self.users is None else torch.from_numpy(np.asarray(self.users, dtype=np.float32))
        return torch.from_numpy(ids), torch.from_numpy(mask), users

@dataclasses.dataclass(frozen=True)
class Teacher:
    """Distillation from the user encoder's dot-product retrieval (models.generative.teacher_sid_targets).

    item_vectors (N, D): unit item vectors, row i = trie row i; item_codes (N, depth): their SIDs.
    The teacher scores cos(user, item) / temperature over the items the user has not consumed
    (they are never a target in a seen-filtered world, and the model's history bias handles them).
    """

    item_vectors: torch.Tensor
    item_codes: torch.Tensor
    trie: TrieTables  # over item_codes: finds the consumed SIDs' rows
    temperature: float
    weight: float  # share of the loss taken by the teacher's targets (0..1)

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 1:
            raise ValueError(f"Teacher.weight must be in (0, 1], got {self.weight}.")

    def targets(self, examples: Examples, vocab: SidVocabulary) -> list[torch.Tensor]:
        """Per SID level, (B, level size) code distributions for a batch with teacher_users and targets."""
        users = torch.from_numpy(np.asarray(examples.teacher_users, dtype=np.float32))
        logits = (users / self.temperature) @ self.item_vectors.T  # (B, N)
        if examples.consumed is not None:
            logits = logits.masked_fill(self._consumed_mask(examples.consumed, len(examples)), float("-inf"))
        return teacher_sid_targets(logits, self.item_codes, torch.from_numpy(np.asarray(examples.targets, np.int64)),
                                   vocab.level_sizes)

    def _consumed_mask(self, consumed: list[np.ndarray], rows: int) -> torch.Tensor:
        """(rows, N) True at the trie rows of each example's consumed SIDs."""
        owner = np.repeat(np.arange(rows), [len(c) for c in consumed])
        items = self.trie.rows_of(np.concatenate(consumed)) if len(owner) else np.zeros(0, np.int64)
        mask = np.zeros((rows, self.trie.items), dtype=bool)
        mask[owner[items >= 0], items[items >= 0]] = True
        return torch.from_numpy(mask)


@dataclasses.dataclass(frozen=True)
class FitConfig:
    minutes: float = 3.0  # training-clock budget; the lr schedule spans it
    max_steps: int = 0  # > 0: a step budget instead (same compute for every run on a shared machine); minutes caps it
    max_epochs: int = 100
    lr: float = 2e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    warmup_steps: int = 50
    seed: int = 0
    threads: int = 2
    # The history bias is one scalar with a steady gradient: Adam moves it by about lr a step, so at
    # the LM's lr it was still moving after 3,000 steps on Beauty (-2.9); it gets its own lr.
    history_bias_lr_scale: float = 10.0

def fit(model: GenerativeRecommender, examples: Examples, cfg: FitConfig, teacher: Teacher | None = None) -> dict:
    """AdamW on the target-SID cross-entropy until the step budget, time budget or max_epochs; returns the history.

    teacher: also match its code distributions (examples need teacher_users), its weight of the loss.

    lr: linear warmup, then cosine decay to 0 over whichever budget ends first.
    """
    if examples.targets is None or len(examples) == 0:
        raise ValueError("fit needs examples with targets.")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    bias = [] if model.history_bias is None else [model.history_bias]
    groups = [{"params": [p for p in model.parameters() if all(p is not b for b in bias)], "lr_scale": 1.0}]
    groups += [{"params": bias, "lr_scale": cfg.history_bias_lr_scale, "weight_decay": 0.0}] if bias else []
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    started, step, history, epoch = time.perf_counter(), 0, [], 0
    model.train()
    out_of_time = stopped_by_steps = False
    while epoch < cfg.max_epochs and not (out_of_time or stopped_by_steps):
        losses, epoch_started = [], time.perf_counter()
        for batch in np.array_split(rng.permutation(len(examples)), steps_per_epoch):
            elapsed = time.perf_counter() - started
            progress = max(elapsed / (60 * cfg.minutes), step / (cfg.max_epochs * steps_per_epoch),
                           step / cfg.max_steps if cfg.max_steps else 0.0)
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            rows = examples.rows(batch)
            ids, mask, users = rows.tensors(model.vocab, with_targets=True)
            consumed = rows.consumed_last(model.vocab) if model.history_bias is not None else None
            soft_targets = teacher.targets(rows, model.vocab) if teacher is not None else None
            loss = model.target_loss(ids, mask, users, consumed, soft_targets, teacher.weight if teacher else 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if elapsed >= 60 * cfg.minutes or (cfg.max_steps and step >= cfg.max_steps):
                out_of_time = elapsed >= 60 * cfg.minutes
                stopped_by_steps = not out_of_time
                break
        epoch += 1
        seconds = time.perf_counter() - epoch_started
        history.append({"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "seconds": seconds,
                        "examples_per_s": len(losses) * cfg.batch_size / max(seconds, 1e-9),
                        "elapsed_minutes": (time.perf_counter() - started) / 60})
        log.info("generative epoch %d: loss %.4f, %.0f examples/s", epoch, history[-1]["loss"], history[-1]["examples_per_s"])
    model.eval()
    return {"history": history, "steps": step, "epochs": epoch, "minutes": (time.perf_counter() - started) / 60,
            "stop_reason": "time_budget" if out_of_time else "max_steps" if stopped_by_steps else "max_epochs"}

def generate(model: GenerativeRecommender, examples: Examples, trie: TrieTables, beams: int,
             batch_size: int = 64, exclude: list[np.ndarray] | None = None,
             history: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Constrained beam search for every example: item rows (N, beams) into the trie (-1 = none) and scores.
    exclude: per example, trie rows masked inside the search (e.g. the user's consumed items);
    history: per example, the trie rows the user consumed, for the model's learned history bias."""
    model.eval()
    rows, scores = [], []
    for start in range(0, len(examples), batch_size):
        batch = np.arange(start, min(start + batch_size, len(examples)))
        ids, mask, users = examples.rows(batch).tensors(model.vocab, False)
        items, score = constrained_beam_search(model, ids, mask, users, trie, beams,
                                               exclude=None if exclude is None else [exclude[i] for i in batch],
                                               history=None if history is None else [history[i] for i in batch])
        rows.append(items.numpy())
        scores.append(score.numpy())
    return np.concatenate(rows), np.concatenate(scores)

def hit_metrics(lists: list[list[int]], targets: np.ndarray, ks=(10, 30), ndcg_ks=(10,)) -> dict[str, float]:
    """HR@K and NDCG@K of one target per row against a ranked list of item ids per row."""
    ranks = np.array([lst.index(t) if t in lst else 10**9 for lst, t in zip(lists, targets.tolist())])
    out = {f"hr{k}": float(np.mean(ranks < k)) for k in ks}
    out.update({f"ndcg{k}": float(np.mean(np.where(ranks < k, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)))
                for k in ndcg_ks})
    return out
