"""The user encoder's training loop, shared by the nightly `train` step and the encoder benchmark.

`TrainingRun` is one run: a training-clock budget, evaluations at given clock minutes, lr warmup +
cosine decay, seen-filtered validation, early stopping on a validation metric, and a checkpoint
format to resume from. No Ray in here: jobs.steps.encoder_fit runs it under Ray Train (or in
process for tests); `TrainingData` and the ranking helpers are what it trains and validates on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from jobs.config import TrainConfig
from jobs.steps.user_predictor import TS_COLUMN, gap_buckets
from models.ranking_metrics import hit_rate_at_k, ndcg_at_k, target_ranks
from models.sequences import length_buckets, next_item_examples, next_item_inputs, pad_left
from models.user_encoder import (
    UserEncoder,
    UserEncoderConfig,
    compatibility_loss,
    full_softmax_loss,
    sampled_softmax_loss,
)

VALIDATION_USERS = 2000
PATIENCE = 2  # evaluations without a better validation NDCG@10 before stopping early
K = 10
SELECTION_METRICS = ("val_ndcg10", "val_ndcg10_seen_filtered")


@dataclasses.dataclass(frozen=True)
class TrainingData:
    inputs: np.ndarray  # (N, L) left-padded item ids
    input_events: np.ndarray  # (N, L)
    targets: np.ndarray  # (N, L) next item per position, 0 = ignore
    val_inputs: np.ndarray  # (V, L) validation users' histories without their held-out item
    val_events: np.ndarray  # (V, L)
    val_targets: np.ndarray  # (V,) the held-out item
    # Per validation user, every item of the history they are scored on (all of it, not only the
    # last L): hidden from the ranking for seen-filtered metrics. Empty: no seen-filtered metrics.
    val_seen: tuple[np.ndarray, ...] = ()
    # Time-gap buckets aligned with inputs (N, L) and val_inputs (V, L), or None: no time input. Built
    # with at least the bucket count of any model trained or ranked on them (see gap_input).
    input_gaps: np.ndarray | None = None
    val_gaps: np.ndarray | None = None


def gap_lists(sequences: pa.Table, n_buckets: int) -> list[np.ndarray]:
    """Per row of `sequences` (a ts list column, ms since epoch), the time-gap bucket of each event."""
    values, offsets = gap_buckets(sequences.column(TS_COLUMN), n_buckets)
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def gap_input(model: UserEncoder, gaps: np.ndarray | None) -> np.ndarray | None:
    """What `model` reads of time-gap buckets `gaps` (any shape): None for a model without time gaps;
    else the buckets with every one past its last merged into it, the same numbers as building them
    with its own count (data built for two models with different counts serves both). Raises
    ValueError when the model has time gaps and gaps is None."""
    buckets = model.cfg.n_time_buckets
    if not buckets:
        return None
    if gaps is None:
        raise ValueError(f"this encoder reads time gaps (n_time_buckets={buckets}) but the data has none: "
                         "build the TrainingData with time_buckets (from user_sequences' ts).")
    return np.minimum(gaps, buckets - 1)


def build_training_data(sequences: pa.Table, max_len: int, seed: int, time_buckets: int = 0) -> TrainingData:
    """Next-item examples from every user's sequence; a sample of users holds out its last item.

    sequences: item_idx and event_type lists per user (oldest first), and ts (ms since epoch) when
    time_buckets > 0: the examples then carry time-gap buckets (input_gaps, val_gaps), each event's
    measured on the user's whole sequence."""
    items = [np.asarray(s, dtype=np.int64) for s in sequences.column("item_idx").to_pylist()]
    events = [np.asarray(s, dtype=np.int64) for s in sequences.column("event_type").to_pylist()]
    gaps = gap_lists(sequences, time_buckets) if time_buckets else None
    eligible = np.flatnonzero([len(s) >= 3 for s in items])
    rng = np.random.default_rng(seed)
    val = np.sort(rng.choice(eligible, size=min(VALIDATION_USERS, len(eligible)), replace=False))
    is_val = np.zeros(len(items), dtype=bool)
    is_val[val] = True
    train_items = [s[:-1] if v else s for s, v in zip(items, is_val)]
    train_events = [e[:-1] if v else e for e, v in zip(events, is_val)]
    inputs, input_events, targets = next_item_examples(train_items, train_events, max_len)
    return TrainingData(
        inputs, input_events, targets,
        val_inputs=pad_left([items[i][:-1] for i in val], max_len),
        val_events=pad_left([events[i][:-1] for i in val], max_len),
        val_targets=np.array([items[i][-1] for i in val], dtype=np.int64),
        val_seen=tuple(items[i][:-1] for i in val),
        input_gaps=None if gaps is None else next_item_inputs(
            train_items, [g[:-1] if v else g for g, v in zip(gaps, is_val)], max_len),
        val_gaps=None if gaps is None else pad_left([gaps[i][:-1] for i in val], max_len),
    )


@torch.inference_mode()
def rank_targets(model: UserEncoder, inputs: np.ndarray, events: np.ndarray, targets: np.ndarray,
                 seen: Sequence[np.ndarray] = (), batch_size: int = 256,
                 gaps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """0-based rank of each row's target among all items, as (unfiltered, seen-filtered or None).

    inputs, events: (N, L) left-padded histories; targets: (N,) item ids; seen: N arrays of item
    ids to hide from each row's ranking (its own target never is), or () for no filtered ranks;
    gaps: (N, L) time-gap buckets, needed by a model with time gaps (gap_input).
    Rows are batched by length and trimmed to their longest history (bucketed inference). A model
    with cfg.history_bias scores each row's input items with its learned bias (UserEncoder.scores).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gaps = gap_input(model, gaps)
    lengths = (inputs != 0).sum(1)
    order = np.argsort(lengths, kind="stable")
    plain = np.zeros(len(targets), dtype=np.int64)
    filtered = np.zeros(len(targets), dtype=np.int64) if len(seen) else None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        longest = max(int(lengths[rows].max()), 1)
        history = torch.from_numpy(inputs[rows, -longest:]).to(device)
        times = torch.from_numpy(gaps[rows, -longest:]).to(device) if gaps is not None else None
        users = model.user_embeddings(history, torch.from_numpy(events[rows, -longest:]).to(device), times)  # (B, D)
        scores, wanted = model.scores(users, history), torch.from_numpy(targets[rows]).to(device)  # (B, V + 1), (B,)
        plain[rows] = target_ranks(scores, wanted)
        if filtered is not None:
            filtered[rows] = target_ranks(scores, wanted, exclude=[seen[i] for i in rows])
    model.train(was_training)
    return plain, filtered


def validation_metrics(model: UserEncoder, data: TrainingData, rank: int = 0, world: int = 1) -> dict[str, float]:
    """HR@10 / NDCG@10 of the held-out items ranked against the whole catalog (and seen-filtered).

    With world > 1 (inside Ray Train) every worker holds the same validation users, ranks every
    world-th of them and the per-metric sums are all-reduced with the count (a worker with no users
    contributes zeros), so all workers get the same numbers for a 1/world share of the work.
    """
    names = ["val_hr10", "val_ndcg10"] + (["val_hr10_seen_filtered", "val_ndcg10_seen_filtered"] if data.val_seen else [])
    if len(data.val_targets) == 0:
        return dict.fromkeys(names, 0.0)
    rows = np.arange(rank, len(data.val_targets), world)
    sums = np.zeros(len(names))
    if len(rows):
        seen = [data.val_seen[i] for i in rows] if data.val_seen else ()
        gaps = data.val_gaps[rows] if data.val_gaps is not None else None
        plain, filtered = rank_targets(model, data.val_inputs[rows], data.val_events[rows], data.val_targets[rows], seen,
                                       gaps=gaps)
        ranked = [plain, plain] + ([filtered, filtered] if filtered is not None else [])
        sums = np.array([metric(r, K) * len(rows) for metric, r in zip([hit_rate_at_k, ndcg_at_k] * 2, ranked)])
    if world == 1:
        return {name: float(total / len(rows)) for name, total in zip(names, sums)}
    totals = torch.tensor([len(rows), *sums], dtype=torch.float64,
                          device=next(model.parameters()).device)  # NCCL reduces GPU tensors only
    torch.distributed.all_reduce(totals)
    return {name: float(total / totals[0]) for name, total in zip(names, totals[1:])}


def training_shard(data: TrainingData, rank: int, world: int) -> TrainingData:
    """Worker `rank`'s share of the training sequences (every world-th; shares may differ by one);
    the validation users stay whole on every worker (see validation_metrics)."""
    return dataclasses.replace(data, inputs=data.inputs[rank::world], input_events=data.input_events[rank::world],
                               targets=data.targets[rank::world],
                               input_gaps=data.input_gaps[rank::world] if data.input_gaps is not None else None)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How TrainingRun trains. Budgets: max_epochs, and a training-clock budget if minutes > 0."""

    lr: float = 3e-3
    batch_size: int = 128  # sequences per optimiser step over all workers (each takes batch_size // world)
    max_epochs: int = 8
    patience: int = PATIENCE  # evaluations without a better select_on before stopping early
    seed: int = 0
    schedule: str = "constant"  # or "cosine": decays to lr * min_lr_ratio at the end of the budget
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0  # AdamW, decoupled
    # Anneal on plateau: after anneal_after epochs without a better select_on, go back to the selected
    # weights and decay the lr (cosine, from its current value to 0) over anneal_epochs epochs, then
    # stop ("annealed"). For data that overfits long before the clock budget's own decay ends. 0 = off.
    anneal_after: int = 0
    anneal_epochs: int = 10
    minutes: float = 0.0  # training-clock budget (validation included); 0 = epochs only
    mark_minutes: tuple[float, ...] = ()  # also evaluate at these clock minutes and keep the selected model
    select_on: str = "val_ndcg10"  # model selection and early stopping metric (validation only)
    mask_history_in_loss: bool = False  # see models.user_encoder.full_softmax_loss(history=...)
    loss: str = "full"  # or "sampled" softmax with logQ correction (popularity sampler)
    sampled_negatives: int = 512
    bf16: bool = False  # autocast forward + loss to bfloat16 (Adam state and weights stay float32)
    threads: int = 1  # torch intra-op threads per worker
    # Backward-compatible retrain: + compat_weight x models.user_encoder.compatibility_loss against the
    # starting weights' vectors of items 1..compat_items (the warm start's known items); 0 = off.
    compat_weight: float = 0.0
    compat_items: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "mark_minutes", tuple(sorted(float(m) for m in self.mark_minutes)))
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"LoopConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}.")
        if self.select_on not in SELECTION_METRICS:
            raise ValueError(f"LoopConfig.select_on must be one of {SELECTION_METRICS}, got {self.select_on!r}.")
        if self.loss not in ("full", "sampled"):
            raise ValueError(f"LoopConfig.loss must be 'full' or 'sampled', got {self.loss!r}.")
        if self.anneal_after < 0 or self.anneal_epochs < 1:
            raise ValueError("LoopConfig.anneal_after must be >= 0 (0 = off) and anneal_epochs >= 1.")


def loop_config(t: TrainConfig, threads: int = 1, **overrides) -> LoopConfig:
    """The nightly loop settings from [train]; the benchmark passes its own overrides."""
    return LoopConfig(lr=t.lr, batch_size=t.batch_size, max_epochs=t.epochs, seed=t.seed, loss=t.loss,
                      sampled_negatives=t.sampled_negatives, threads=threads,
                      **{"minutes": t.minutes, "compat_weight": t.compat_weight, **overrides})


def learning_rate(loop: LoopConfig, step: int, progress: float) -> float:
    """The lr of optimiser step `step` (0-based): linear warmup over loop.warmup_steps, then constant
    or cosine-decayed to lr * min_lr_ratio at progress 1 (share of the step or clock budget used)."""
    lr = loop.lr * min(1.0, (step + 1) / loop.warmup_steps) if loop.warmup_steps else loop.lr
    if loop.schedule == "cosine":
        lr *= loop.min_lr_ratio + (1 - loop.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return lr


@dataclasses.dataclass
class LoopState:
    """Everything the loop needs to continue after a restart (saved in every checkpoint)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps
    elapsed: float = 0.0  # training clock, seconds
    best: float = -1.0  # best select_on so far
    stale: int = 0  # evaluations since the best
    stop_reason: str = ""  # "", "diverged", "annealed", "early_stop", "time_budget" or "max_epochs"
    anneal_from_step: int = -1  # the step the plateau anneal started at (-1 = not started)
    anneal_lr: float = 0.0  # the lr it decays from
    anneal_steps: int = 0  # its length in steps
    history: list[dict] = dataclasses.field(default_factory=list)  # one record per evaluation


class TrainingRun:
    """One training run of the encoder: the loop, the selected weights and the resume state.

    No Ray in here: `train_loop_per_worker` wraps it; tests and notebooks can call run() directly.
    With world > 1 each worker holds its own shard of the training sequences (sizes may differ),
    the workers step in lockstep (the same number of steps per epoch) and take rank 0's clock.
    """

    def __init__(self, encoder: UserEncoder, data: TrainingData, loop: LoopConfig,
                 model: torch.nn.Module | None = None, rank: int = 0, world: int = 1):
        if loop.select_on.endswith("seen_filtered") and not data.val_seen:
            raise ValueError(f"select_on={loop.select_on!r} needs TrainingData.val_seen; pass the seen items.")
        if encoder.cfg.n_time_buckets and (data.input_gaps is None or data.val_gaps is None):
            raise ValueError(f"the encoder reads time gaps (n_time_buckets={encoder.cfg.n_time_buckets}) but the "
                             "TrainingData has no input_gaps / val_gaps: build it with time_buckets.")
        if encoder.cfg.history_bias and (loop.mask_history_in_loss or loop.loss != "full"):
            raise ValueError("a model with history_bias learns it in the full softmax over every item: "
                             "use loss='full' without mask_history_in_loss (the bias replaces the mask).")
        self.encoder, self.model, self.data, self.loop = encoder, model or encoder, data, loop
        self.rank, self.world = rank, world
        self.device = next(encoder.parameters()).device  # where Ray Train's prepare_model put it ([compute].device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)
        self.rng = np.random.default_rng(loop.seed + rank)  # batches of this worker's shard
        self.state = LoopState()
        self.best_weights = _copy(encoder.state_dict())
        self.marks: dict[float, dict] = {}  # clock minute -> selected weights at that minute
        self._steps_per_epoch = 0  # set by each epoch (the plateau anneal's length is counted in epochs)
        self._on_step: Callable[[TrainingRun], None] = lambda run: None
        counts = np.bincount(data.targets.ravel(), minlength=encoder.cfg.num_items + 1)[: encoder.cfg.num_items + 1]
        counts[0] = 0
        counts = self._summed(counts)  # over every worker's shard: the same sampler everywhere
        self.log_q = torch.from_numpy(np.log(np.maximum(counts, 1) / max(counts.sum(), 1))).to(self.device)  # sampler q
        # The starting (warm-start) vectors of the anchored items, taken before any step.
        anchored = encoder.item_emb.weight[1:loop.compat_items + 1].detach()
        self.anchor = (torch.nn.functional.normalize(anchored, dim=-1).clone()
                       if loop.compat_weight > 0 and loop.compat_items > 0 else None)

    # -- the loop -------------------------------------------------------------------------------

    def run(self, on_epoch: Callable[[TrainingRun], None] = lambda run: None,
            on_step: Callable[[TrainingRun], None] = lambda run: None) -> LoopState:
        """Train until early stop, time budget or max_epochs; call on_step after each optimiser step
        and on_epoch after each epoch."""
        loop, st = self.loop, self.state
        self._on_step = on_step
        torch.set_num_threads(loop.threads)
        if self._summed([len(self.data.inputs)])[0] < 1:
            raise ValueError("TrainingData has no training sequences (on any worker); nothing to train on.")
        started = time.perf_counter() - st.elapsed
        while not st.stop_reason and st.epoch < loop.max_epochs:
            epoch_started = time.perf_counter()
            totals, out_of_time = self._epoch(started)
            train_seconds = self._agreed(time.perf_counter() - epoch_started)
            st.epoch += 1
            record = self._evaluate(kind="epoch")
            loss_sum, targets, sequences, tokens = self._summed(totals)
            record.update(train_loss=float(loss_sum / max(targets, 1)), epoch_train_seconds=train_seconds,
                          train_sequences_per_s=sequences / train_seconds, train_tokens_per_s=tokens / train_seconds)
            if not math.isfinite(record["train_loss"]) or not weights_are_finite(self.encoder):
                st.stop_reason = "diverged"  # the selected weights may predate it; the train gate refuses anyway
            elif out_of_time:
                st.stop_reason = "time_budget"
            elif st.anneal_from_step >= 0 and st.step - st.anneal_from_step >= st.anneal_steps:
                st.stop_reason = "annealed"
            elif loop.anneal_after and st.anneal_from_step < 0 and st.stale >= loop.anneal_after:
                self._start_anneal()
            elif st.stale >= loop.patience:
                st.stop_reason = "early_stop"
            elif st.epoch >= loop.max_epochs:
                st.stop_reason = "max_epochs"
            st.elapsed = self._agreed(time.perf_counter() - started)
            on_epoch(self)
        return st

    def _start_anneal(self) -> None:
        """Back to the selected weights; the lr decays from its current value to 0 over anneal_epochs."""
        st = self.state
        self.encoder.load_state_dict(self.best_weights)
        st.anneal_from_step, st.anneal_lr, st.stale = st.step, self.optimizer.param_groups[0]["lr"], 0
        st.anneal_steps = self.loop.anneal_epochs * self._steps_per_epoch

    def planned_steps(self) -> int:
        """Optimiser steps of this worker in max_epochs (an early stop or the clock may end the run before)."""
        return self.loop.max_epochs * math.ceil(len(self.data.inputs) / max(1, self.loop.batch_size // self.world))

    def _epoch(self, started: float) -> tuple[list[float], bool]:
        """One pass over this worker's data: ([loss x targets, targets, sequences, positions] of this
        worker, ran out of time). `started` is the perf_counter() at which the training clock would read 0.

        With world > 1 every worker holds its own shard (sizes may differ) and draws batches of
        batch_size // world from it; all take the global number of steps (the largest shard's), a
        worker out of batches joining with a zero-weight step. Each step's loss is the sum over the
        targets of all workers divided by their global count (DDP averages gradients: x world), and
        rank 0's clock, broadcast in the same collective, makes every budget decision.
        """
        loop, st = self.loop, self.state
        lengths = (self.data.inputs != 0).sum(1)
        batches = length_buckets(lengths, max(1, loop.batch_size // self.world), self.rng) if len(lengths) else []
        steps_per_epoch = self._steps_per_epoch = int(self._summed([len(batches)], op="max")[0])
        totals = [0.0, 0, 0, 0]  # loss x targets, targets, sequences, positions
        self.model.train()
        for index in range(steps_per_epoch):
            rows = batches[index] if index < len(batches) else None
            count = int((self.data.targets[rows] != 0).sum()) if rows is not None else 0
            global_count, st.elapsed = self._step_totals(count, time.perf_counter() - started)
            if loop.minutes and st.elapsed >= 60 * loop.minutes and index > 0:
                return totals, True
            if self._next_mark() is not None and st.elapsed >= 60 * self._next_mark():
                self._evaluate(kind="mark")
            progress = max(st.step / (loop.max_epochs * steps_per_epoch),
                           st.elapsed / (60 * loop.minutes) if loop.minutes else 0.0)
            lr = learning_rate(loop, st.step, progress)
            if st.anneal_from_step >= 0:
                done = (st.step - st.anneal_from_step) / max(st.anneal_steps, 1)
                lr = st.anneal_lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            weight = 1.0 if self.world == 1 else count / max(global_count, 1) * self.world
            loss = self._step(rows, weight)
            st.step += 1
            if rows is not None:
                totals = [totals[0] + loss * count, totals[1] + count, totals[2] + len(rows),
                          totals[3] + int(lengths[rows].sum())]
            self._on_step(self)
        st.elapsed = self._agreed(time.perf_counter() - started)
        out_of_time = bool(loop.minutes and st.elapsed >= 60 * loop.minutes)
        return totals, out_of_time

    def _step(self, rows: np.ndarray | None, weight: float) -> float:
        """One optimiser step on `rows` of this worker's data, its loss scaled by `weight` for the
        gradient; rows=None (this worker is out of batches) steps on a stand-in row with weight 0."""
        d = self.data
        if rows is None:
            rows, weight = np.zeros(1, dtype=np.int64), 0.0
        gaps = None
        if len(d.inputs):
            longest = max(int((d.inputs[rows] != 0).sum(1).max()), 1)
            inputs = torch.from_numpy(d.inputs[rows, -longest:]).to(self.device)  # (B, T) trimmed to the longest
            targets = torch.from_numpy(d.targets[rows, -longest:]).to(self.device)
            events = torch.from_numpy(d.input_events[rows, -longest:]).to(self.device)
            if self.encoder.cfg.n_time_buckets:
                gaps = torch.from_numpy(gap_input(self.encoder, d.input_gaps[rows, -longest:])).to(self.device)
        else:  # an empty shard: one real-looking row (item 1 -> item 1), weight 0
            inputs, targets, events = (torch.ones(1, 1, dtype=torch.int64, device=self.device),
                                       torch.ones(1, 1, dtype=torch.int64, device=self.device),
                                       torch.zeros(1, 1, dtype=torch.int64, device=self.device))
            if self.encoder.cfg.n_time_buckets:
                gaps = torch.ones(1, 1, dtype=torch.int64, device=self.device)
        if not bool((targets != 0).any()):  # a stand-in row without a target: predict its own item
            targets = inputs.clone()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.loop.bf16 else nullcontext()
        with autocast:
            hidden = self.model(inputs, events, gaps)  # (B, T, D)
            if self.loop.loss == "sampled":
                negatives = torch.multinomial(self.log_q.exp(), self.loop.sampled_negatives, replacement=True)
                loss = sampled_softmax_loss(self.encoder, hidden.float(), targets, negatives, self.log_q)
            else:
                history = inputs if self.loop.mask_history_in_loss or self.encoder.cfg.history_bias else None
                loss = full_softmax_loss(self.encoder, hidden, targets, history=history)
            if self.anchor is not None:
                loss = loss + self.loop.compat_weight * compatibility_loss(self.encoder, self.anchor)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if weight == 1.0 else loss * weight).backward()
        self.optimizer.step()
        return loss.item()

    def _step_totals(self, count: int, seconds: float) -> tuple[int, float]:
        """(targets of this step over all workers, rank 0's training clock): one all-reduce per step."""
        if self.world == 1:
            return count, seconds
        value = torch.tensor([count, seconds if self.rank == 0 else 0.0], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(value)
        return int(value[0].item()), float(value[1].item())

    def _agreed(self, seconds: float) -> float:
        """Rank 0's clock, broadcast: every worker takes the same budget decisions at the same step."""
        if self.world == 1:
            return seconds
        value = torch.tensor([seconds], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(value, src=0)
        return float(value.item())

    def _summed(self, values, op: str = "sum") -> np.ndarray:
        """Element-wise sum (or max) of `values` over the workers, as float64."""
        if self.world == 1:
            return np.asarray(values, dtype=np.float64)
        tensor = torch.tensor(np.asarray(values, dtype=np.float64), device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
        return tensor.cpu().numpy()

    def _next_mark(self) -> float | None:
        pending = [m for m in self.loop.mark_minutes if m not in self.marks]
        return pending[0] if pending else None

    def _evaluate(self, kind: str) -> dict:
        """Validate, update the selected weights and patience, snapshot reached marks; log a record."""
        st = self.state
        metrics = validation_metrics(self.encoder, self.data, self.rank, self.world)
        value = metrics[self.loop.select_on]
        if value > st.best:
            st.best, st.stale = value, 0
            self.best_weights = _copy(self.encoder.state_dict())
        elif kind == "epoch":
            st.stale += 1
        minutes = st.elapsed / 60
        for mark in self.loop.mark_minutes:
            if mark not in self.marks and minutes >= mark:
                self.marks[mark] = self.best_weights
        record = {"kind": kind, "epoch": st.epoch, "step": st.step, "elapsed_minutes": minutes,
                  "lr": self.optimizer.param_groups[0]["lr"], **metrics, "best": st.best}
        st.history.append(record)
        return record


# --- checkpoints: what a run writes, resumes from, and what a finished run is read back as ---

def save_checkpoint(run: TrainingRun, folder: str | Path) -> None:
    """Write the run's resume state, its selected weights (model.pt) and the mark snapshots."""
    folder = Path(folder)
    torch.save({"model": run.encoder.state_dict(), "optimizer": run.optimizer.state_dict(),
                "state": dataclasses.asdict(run.state), "rng": run.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}, folder / "state.pt")
    torch.save(run.best_weights, folder / "model.pt")
    for mark, weights in run.marks.items():
        torch.save(weights, folder / f"mark_{mark:g}.pt")


def resume_from_checkpoint(run: TrainingRun, folder: str | Path) -> None:
    """Continue `run` from a checkpoint written by save_checkpoint()."""
    folder = Path(folder)
    saved = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    run.encoder.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.state = LoopState(**saved["state"])
    run.rng.bit_generator.state = saved["rng"]
    torch.set_rng_state(saved["torch_rng"])
    run.best_weights = torch.load(folder / "model.pt", map_location="cpu")
    run.marks = {m: torch.load(folder / f"mark_{m:g}.pt", map_location="cpu")
                 for m in run.loop.mark_minutes if (folder / f"mark_{m:g}.pt").exists()}


def load_training_checkpoint(folder: str | Path, encoder_cfg: UserEncoderConfig) -> tuple[UserEncoder, dict, LoopState]:
    """(selected model, {minute: model}, loop state) from a checkpoint folder written by save_checkpoint."""
    folder = Path(folder)

    def model_from(path: Path) -> UserEncoder:
        model = UserEncoder(encoder_cfg)
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model.eval()

    state = LoopState(**torch.load(folder / "state.pt", map_location="cpu", weights_only=False)["state"])
    marks = {float(p.stem.removeprefix("mark_")): model_from(p) for p in folder.glob("mark_*.pt")}
    return model_from(folder / "model.pt"), dict(sorted(marks.items())), state


def _copy(state_dict: dict) -> dict:
    return {k: v.detach().clone() for k, v in state_dict.items()}


def weights_are_finite(model: torch.nn.Module) -> bool:
    """False when training diverged: such a model must never become champion (NaN scores rank nothing)."""
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())
