"""The train step's input, built on the engine (Ray Data) instead of the driver.

The day's user_sequences files (one Delta version) are read by Ray Data. Users are sampled by a hash
of (train.seed, user_id), kept when it falls below max_users / users of the day: the same sample on
every run and every cluster shape, about max_users users (a binomial count). The validation users
are the eligible sampled users (>= 3 items) with the smallest second hash, at most VALIDATION_USERS:
each block proposes its own smallest, the driver keeps the global smallest (<= VALIDATION_USERS x
blocks ids), then reads those users' rows only. Everything else reaches the Ray Train workers as
dataset shards (`ray.train.get_dataset_shard`), where each builds its own next-item examples.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from jobs.steps.encoder_training import VALIDATION_USERS, TrainingData, gap_lists
from jobs.steps.user_predictor import TS_COLUMN, sequence_columns
from models.sequences import next_item_examples, next_item_inputs, pad_left

SCHEMA = pa.schema([("user_id", pa.string()), ("item_idx", pa.list_(pa.int64())), ("event_type", pa.list_(pa.int64())),
                    (TS_COLUMN, pa.list_(pa.int64()))])
MIN_VALIDATION_LENGTH = 3  # a validation user keeps >= 2 items of history before the held-out one


@dataclasses.dataclass(frozen=True)
class TrainInput:
    dataset: ray.data.Dataset  # the sampled users' user_id, item_idx, event_type[, ts] (materialised on the cluster)
    users: int  # sampled users
    day_users: int  # users of the day
    validation: TrainingData  # the validation users only (training arrays empty)
    held_out: tuple[str, ...]  # their user ids: their last item is held out of training


def unit_hash(user_ids: list[str], salt: str) -> np.ndarray:
    """A number in [0, 1) per user id, the same in every process (blake2b of salt:user_id)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{salt}:{u}".encode(), digest_size=8).digest(), "big")
                     for u in user_ids], dtype=np.float64) / 2.0**64


def schema(time_buckets: int) -> pa.Schema:
    """The schema of the user_sequences columns the train step reads (user_predictor.sequence_columns)."""
    return pa.schema([SCHEMA.field(c) for c in sequence_columns(time_buckets)])


def read_train_input(files: list[str], max_len: int, seed: int, max_users: int, time_buckets: int = 0) -> TrainInput:
    """The sampled users as a Ray Dataset, and the validation users' data (bounded) on the driver;
    with time_buckets > 0 the ts lists too, and the validation data's time-gap buckets."""
    day = ray.data.read_parquet(files).select_columns(sequence_columns(time_buckets))
    day_users = day.count()  # from the Parquet footers
    share = max_users / day_users if 0 < max_users < day_users else 1.0
    sampled = day if share >= 1.0 else day.map_batches(functools.partial(_sampled, seed=seed, share=share),
                                                       batch_format="pyarrow", batch_size=None)
    sampled.context.execution_options.preserve_order = True  # blocks in file order: the same parts every run
    sampled = sampled.materialize()
    proposals = sampled.map_batches(functools.partial(_validation_proposals, seed=seed), batch_format="pyarrow",
                                    batch_size=None)
    # Bounded: at most VALIDATION_USERS (hash, user_id) pairs per block.
    proposed = sorted((row["rank"], row["user_id"]) for row in proposals.take_all())
    held_out = tuple(sorted(user for _, user in proposed[:VALIDATION_USERS]))
    rows = sampled.map_batches(functools.partial(_only_users, users=held_out), batch_format="pyarrow",
                               batch_size=None).take_all()  # bounded: the validation users
    table = pa.Table.from_pylist(rows, schema=schema(time_buckets)).sort_by("user_id")
    return TrainInput(sampled, sampled.count(), day_users, validation_data(table, max_len, time_buckets), held_out)


def _sampled(batch: pa.Table, seed: int, share: float) -> pa.Table:
    return batch.filter(pa.array(unit_hash(batch.column("user_id").to_pylist(), f"sample-{seed}") < share))


def _validation_proposals(batch: pa.Table, seed: int) -> pa.Table:
    lengths = pc.list_value_length(batch.column("item_idx")).to_numpy(zero_copy_only=False)
    eligible = batch.column("user_id").filter(pa.array(lengths >= MIN_VALIDATION_LENGTH)).to_pylist()
    ranks = unit_hash(eligible, f"validation-{seed}")
    best = np.argsort(ranks, kind="stable")[:VALIDATION_USERS]
    return pa.table({"rank": ranks[best], "user_id": pa.array([eligible[i] for i in best], pa.string())})


def _only_users(batch: pa.Table, users: tuple[str, ...]) -> pa.Table:
    return batch.filter(pc.is_in(batch.column("user_id"), value_set=pa.array(users, pa.string())))


def validation_data(table: pa.Table, max_len: int, time_buckets: int = 0) -> TrainingData:
    """TrainingData with the validation arrays of `table`'s users (last item held out), no training
    arrays; with time_buckets > 0 also their time-gap buckets (from `table`'s ts lists)."""
    items = [np.asarray(s, dtype=np.int64) for s in table.column("item_idx").to_pylist()]
    events = [np.asarray(s, dtype=np.int64) for s in table.column("event_type").to_pylist()]
    empty = np.zeros((0, max_len), dtype=np.int64)
    gaps = gap_lists(table, time_buckets) if time_buckets else None
    return TrainingData(
        empty, empty, empty,
        val_inputs=pad_left([s[:-1] for s in items], max_len), val_events=pad_left([e[:-1] for e in events], max_len),
        val_targets=np.array([s[-1] for s in items], dtype=np.int64), val_seen=tuple(s[:-1] for s in items),
        input_gaps=None if gaps is None else empty,
        val_gaps=None if gaps is None else pad_left([g[:-1] for g in gaps], max_len),
    )


def worker_training_data(shard, validation: TrainingData, held_out: set[str], max_len: int,
                         time_buckets: int = 0) -> TrainingData:
    """This worker's TrainingData: next-item examples of its shard's users (sorted by user_id, so one
    worker trains on the same rows on every run), the held-out users without their last item; with
    time_buckets > 0 their time-gap buckets too (the shard then holds ts)."""
    batches = [b for b in shard.iter_batches(batch_format="pyarrow", batch_size=4096) if b.num_rows]
    table = pa.concat_tables(batches).sort_by("user_id") if batches else schema(time_buckets).empty_table()
    users = table.column("user_id").to_pylist()
    items = [np.asarray(s, dtype=np.int64) for s in table.column("item_idx").to_pylist()]
    events = [np.asarray(s, dtype=np.int64) for s in table.column("event_type").to_pylist()]
    cut = [slice(None, -1) if u in held_out else slice(None) for u in users]
    train_items = [s[c] for s, c in zip(items, cut)]
    inputs, input_events, targets = next_item_examples(train_items, [e[c] for e, c in zip(events, cut)], max_len)
    gaps = None
    if time_buckets:
        gaps = next_item_inputs(train_items, [g[c] for g, c in zip(gap_lists(table, time_buckets), cut)], max_len)
    inputs, input_events, targets = (np.asarray(a, dtype=np.int64).reshape(-1, max_len)
                                     for a in (inputs, input_events, targets))
    return dataclasses.replace(validation, inputs=inputs, input_events=input_events, targets=targets,
                               input_gaps=None if gaps is None else gaps.reshape(-1, max_len))
