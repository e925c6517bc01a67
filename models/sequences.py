"""Turning per-user item histories into model inputs (numpy only).

A history is a 1-D integer array of item ids, oldest first (ids 1..num_items; 0 is padding), with an
aligned array of event types (1 = play, 2 = skip, 3 = save). Everything here LEFT-pads, so the last
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
    out = np.zeros((len(seqs), max_len), dtype=dtype)
    for i, seq in enumerate(seqs):
        tail = np.asarray(seq)[-max_len:]
        if len(tail):
            out[i, max_len - len(tail) :] = tail
    return out


def _check_aligned(item_seqs: Sequence[np.ndarray], event_seqs: Sequence[np.ndarray]) -> None:
    if len(item_seqs) != len(event_seqs):
        raise ValueError(
            f"item_seqs has {len(item_seqs)} sequences but event_seqs has {len(event_seqs)}; pass one "
            "event-type array per item sequence."
        )
    for i, (items, events) in enumerate(zip(item_seqs, event_seqs)):
        if len(items) != len(events):
            raise ValueError(
                f"sequence {i} has {len(items)} items but {len(events)} event types; they must align."
            )


def next_item_examples(
    item_seqs: Sequence[np.ndarray], event_seqs: Sequence[np.ndarray], max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-item training examples: every position predicts the item that follows it.

    item_seqs, event_seqs: N aligned 1-D arrays (oldest first).
    Returns (inputs, input_event_types, targets), each (N', max_len) int64 and left-padded with 0,
    where inputs = seq[:-1] and targets = seq[1:] (so targets[:, t] follows inputs[:, t]) and
    N' counts the sequences with at least 2 items (shorter ones have nothing to predict; dropped).
    Long sequences keep their most recent max_len transitions.
    """
    _check_aligned(item_seqs, event_seqs)
    keep = [i for i, s in enumerate(item_seqs) if len(s) >= 2]
    inputs = pad_left([np.asarray(item_seqs[i])[:-1] for i in keep], max_len)
    input_events = pad_left([np.asarray(event_seqs[i])[:-1] for i in keep], max_len)
    targets = pad_left([np.asarray(item_seqs[i])[1:] for i in keep], max_len)
    return inputs, input_events, targets


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
