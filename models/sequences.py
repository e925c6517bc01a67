"""Turning per-user item histories into model inputs (numpy only).

A history is a 1-D integer array of item ids, oldest first (ids 1..num_items; 0 is padding), with an
aligned array of event types (1 = play, 2 = skip, 3 = save) and, for the encoder's optional time-gap
feature, aligned time-gap buckets (time_gap_buckets). Everything here LEFT-pads, so the last
column is always the most recent item (the user encoder reads its user vector there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_left(seqs: Sequence[np.ndarray], max_len: int, dtype=np.int64) -> np.ndarray:
    """Keep the last max_len entries of each sequence and left-pad with 0.

    seqs: N 1-D arrays of any lengths (an empty one becomes an all-zero row).
    Returns (N, max_len) array of `dtype`.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.concatenate([np.asarray(s).ravel() for s in seqs]) if int(offsets[-1]) else np.zeros(0, dtype)
    return pad_left_flat(values, offsets[:-1], offsets[1:], max_len, dtype)


def left_pad_index(starts: np.ndarray, ends: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each cell of a left-padded (N, width) matrix comes from in a flat values array.

    starts, ends: (N,) bounds of each row's values in the flat array (an Arrow list column's offsets).
    Row i keeps its last `width` values, right-aligned. Returns (index (N, width) int64, valid
    (N, width) bool): cell (i, j) holds values[index[i, j]] where valid, padding elsewhere.
    """
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    index = ends[:, None] - width + np.arange(width, dtype=np.int64)[None, :]  # (N, width)
    valid = index >= starts[:, None]
    return np.where(valid, index, 0), valid


def pad_left_flat(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int,
                  dtype=np.int64) -> np.ndarray:
    """pad_left for ragged rows stored flat (values[starts[i]:ends[i]] is row i), without a Python loop.

    Returns (N, max_len) array of `dtype`, each row's last max_len values right-aligned, 0 before.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    index, valid = left_pad_index(starts, ends, max_len)
    if not len(values):
        return np.zeros(index.shape, dtype)
    return np.where(valid, np.asarray(values)[index], 0).astype(dtype, copy=False)


def time_gap_buckets(timestamps: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket of the gap before each event, for the encoder's optional time-gap feature.

    timestamps: (T,) event times in seconds, oldest first. Returns (T,) int64 in 1..n_buckets-1
    (0 stays free for padding): 1 = no earlier event, then 2 + floor(log2(1 + gap seconds)),
    capped at n_buckets - 1 (with 32 buckets the last one starts at ~34 years; 24 at ~3 days).
    """
    return time_gap_buckets_flat(timestamps, np.array([0, len(timestamps)]), n_buckets)


def time_gap_buckets_flat(timestamps: np.ndarray, offsets: np.ndarray, n_buckets: int) -> np.ndarray:
    """time_gap_buckets of ragged rows stored flat (timestamps[offsets[i]:offsets[i + 1]] is row i,
    offsets from 0), without a Python loop: (len(timestamps),) int64, each row's first event 1."""
    if n_buckets < 2:
        raise ValueError(f"n_buckets must be >= 2, got {n_buckets}.")
    ts, offsets = np.asarray(timestamps, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    out = np.ones(len(ts), dtype=np.int64)
    if len(ts) > 1:
        gaps = np.maximum(np.diff(ts), 0).astype(np.float64)
        out[1:] = 2 + np.floor(np.log2(1.0 + gaps)).astype(np.int64)
    out[offsets[:-1][offsets[:-1] < offsets[1:]]] = 1  # a row's first event has no earlier one
    return np.minimum(out, n_buckets - 1)


def _check_aligned(item_seqs: Sequence[np.ndarray], other_seqs: Sequence[np.ndarray], what: str = "event types") -> None:
    if len(item_seqs) != len(other_seqs):
        raise ValueError(
            f"item_seqs has {len(item_seqs)} sequences but there are {len(other_seqs)} sequences of {what}; "
            "pass one per item sequence."
        )
    for i, (items, other) in enumerate(zip(item_seqs, other_seqs)):
        if len(items) != len(other):
            raise ValueError(
                f"sequence {i} has {len(items)} items but {len(other)} {what}; they must align."
            )


def _windows(seqs: Sequence[np.ndarray], max_len: int, all_windows: bool) -> list[np.ndarray]:
    """Each sequence's last max_len entries; with all_windows also the earlier ones, as further rows
    of max_len each (the oldest may be shorter). Rows of one sequence are consecutive, most recent first."""
    rows = []
    for seq in seqs:
        end = len(seq)
        while end > 0:
            start = max(0, end - max_len)
            rows.append(seq[start:end])
            end = start if all_windows else 0
    return rows


def next_item_examples(
    item_seqs: Sequence[np.ndarray], event_seqs: Sequence[np.ndarray], max_len: int, all_windows: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-item training examples: every position predicts the item that follows it.

    item_seqs, event_seqs: N aligned 1-D arrays (oldest first).
    Returns (inputs, input_events, targets), each (N', max_len) int64 and left-padded with 0,
    where inputs = seq[:-1] and targets = seq[1:] (so targets[:, t] follows inputs[:, t]).
    Sequences with fewer than 2 items have nothing to predict and are dropped. A sequence with more
    than max_len transitions gives its most recent max_len; with all_windows=True also the earlier
    ones, as further rows of max_len transitions each (the oldest row may be shorter), so every
    transition is trained on exactly once. Rows of one sequence are consecutive, most recent first.
    Any further per-event input (time-gap buckets) is cut into the same rows by next_item_inputs.
    """
    _check_aligned(item_seqs, event_seqs)
    items = [np.asarray(s) for s in item_seqs]
    return (pad_left(_windows([s[:-1] for s in items], max_len, all_windows), max_len),
            next_item_inputs(items, event_seqs, max_len, all_windows),
            pad_left(_windows([s[1:] for s in items], max_len, all_windows), max_len))


def next_item_inputs(
    item_seqs: Sequence[np.ndarray], value_seqs: Sequence[np.ndarray], max_len: int, all_windows: bool = False
) -> np.ndarray:
    """A per-event input aligned with item_seqs (event types, time-gap buckets) cut into the rows of
    next_item_examples(item_seqs, ..., max_len, all_windows): (N', max_len) int64, left-padded, row r
    aligned with its inputs row r. Compute the values on whole sequences first: a row that starts
    mid-sequence then keeps what came before it (its first gap bucket is the gap, not "first event").
    """
    _check_aligned(item_seqs, value_seqs, "per-event values")
    return pad_left(_windows([np.asarray(v)[:-1] for v in value_seqs], max_len, all_windows), max_len)


def leave_last_out(
    item_seqs: Sequence[np.ndarray], event_seqs: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Hold out each user's last item (the SASRec leave-one-out protocol).

    item_seqs, event_seqs: N aligned 1-D arrays (oldest first).
    Returns (train_item_seqs, train_event_seqs, held_out_items): the first two are lists of
    everything but the last item, held_out_items is an (N',) int64 array of the last items.
    Sequences with fewer than 2 items are DROPPED (nothing would be left to encode), so N' <= N:
    callers that need to keep user ids aligned should filter on len(seq) >= 2 first.
    Apply twice for a validation split: the second call holds out the second-to-last item.
    """
    _check_aligned(item_seqs, event_seqs)
    keep = [i for i, s in enumerate(item_seqs) if len(s) >= 2]
    train_items = [np.asarray(item_seqs[i])[:-1] for i in keep]
    train_events = [np.asarray(event_seqs[i])[:-1] for i in keep]
    held_out = np.array([item_seqs[i][-1] for i in keep], dtype=np.int64)
    return train_items, train_events, held_out


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of row indices with similar lengths, in random batch order.

    lengths: (N,) number of real (non-padding) items per row.
    Sort by length (ties broken randomly), cut into chunks of batch_size, shuffle the chunk order.
    Every index appears exactly once; the last chunk of the sorted order may be smaller.
    A batch can then be trimmed to its longest row: x[:, -lengths[batch].max():] (left padding).
    Returns a list of (<= batch_size,) int64 index arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    lengths = np.asarray(lengths)
    perm = rng.permutation(len(lengths))  # random tie-break so equal lengths mix across epochs
    order = perm[np.argsort(lengths[perm], kind="stable")]
    chunks = [order[i : i + batch_size].astype(np.int64) for i in range(0, len(order), batch_size)]
    return [chunks[j] for j in rng.permutation(len(chunks))]
