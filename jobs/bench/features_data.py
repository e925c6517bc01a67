"""Synthetic events for `factory bench features`: EVENTS as hive-style parquet plus an ITEM_VOCAB parquet.

One file per day of a 30-day window, generated once per (size, seed) into a cache folder and reused;
see jobs/bench/features.py for the shape. Generated day by day: no process holds more than one day.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.errors import FactoryError
from jobs.lakehouse.tables import EVENTS, ITEM_VOCAB

EVENTS_PER_USER = 50
VOCAB_ITEMS = 50_000
DAYS = 30
END_DS = "2026-01-30"  # ds of the built sequences: the window is the 30 days ending here
EVENT_TYPES = ("play", "skip", "save")
EVENT_TYPE_SHARES = (0.70, 0.25, 0.05)
UNKNOWN_ITEM_SHARE = 0.001


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.StringArray:
    """Zero-padded ids `prefix + %0{width}d` for an int array, built as one byte buffer (no Python strings)."""
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10 + ord("0")
    head = np.broadcast_to(np.frombuffer(prefix.encode(), np.uint8), (len(numbers), len(prefix)))
    data = np.hstack([head, digits.astype(np.uint8)])
    offsets = np.arange(len(numbers) + 1, dtype=np.int32) * data.shape[1]
    return pa.StringArray.from_buffers(len(numbers), pa.py_buffer(offsets), pa.py_buffer(data.tobytes()))

def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return np.cumsum(weights) / weights.sum()

def window_days(end_ds: str = END_DS, days: int = DAYS) -> list[str]:
    end = date.fromisoformat(end_ds)
    return [(end - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]

def generate_events(folder: Path, events: int, seed: int = 0, *, days: int = DAYS, end_ds: str = END_DS,
                    vocab_items: int = VOCAB_ITEMS, events_per_user: int = EVENTS_PER_USER,
                    ts_step_ms: int = 1) -> dict:
    """Write `events` EVENTS rows as folder/events/ds=*/part-0.parquet and folder/item_vocab.parquet.

    Deterministic in (events, seed, days, end_ds, vocab_items, events_per_user, ts_step_ms); reused if
    folder/manifest.json says the same. ts_step_ms > 1 coarsens timestamps (ties, broken by event_id).
    Returns the manifest: counts, files, generation seconds.
    """
    params = {"events": events, "seed": seed, "days": days, "end_ds": end_ds, "vocab_items": vocab_items,
              "events_per_user": events_per_user, "ts_step_ms": ts_step_ms, "version": 1}
    manifest_path = Path(folder) / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest["params"] == params:
            return {**manifest, "reused": True}
    if events < days:
        raise FactoryError(f"--sizes: {events} events is fewer than one per day of the {days}-day window.")
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    (Path(folder) / "events").mkdir(parents=True)
    users = max(1, events // events_per_user)
    setup = np.random.default_rng([seed, 0])
    user_names = _ids("u", setup.permutation(users).astype(np.int64), 7)  # activity rank -> id, shuffled
    user_cdf = _zipf_cdf(users, 0.5)  # scale-free at this exponent: ~25 events for the least active user
    item_cdf = _zipf_cdf(vocab_items, 1.0)
    tracks = int(vocab_items * 0.9)
    item_numbers = setup.permutation(vocab_items + 100).astype(np.int64)  # popularity rank -> item number
    item_names = pa.concat_arrays([_ids("t", item_numbers[:tracks], 7), _ids("p", item_numbers[tracks:vocab_items], 7),
                                   _ids("x", item_numbers[vocab_items:], 7)])  # "x": outside the vocabulary
    item_types = pa.array(["track"] * tracks + ["episode"] * (vocab_items - tracks) + ["track"] * 100)
    vocab = pa.table({"item_id": item_names[:vocab_items],
                      "item_idx": pa.array(np.arange(1, vocab_items + 1, dtype=np.int32)),
                      "first_seen_ds": pa.array([window_days(end_ds, days)[0]] * vocab_items)}, schema=ITEM_VOCAB.schema)
    pq.write_table(vocab, Path(folder) / "item_vocab.parquet")
    per_day = np.full(days, events // days)
    per_day[-1] += events - per_day.sum()
    first_event, files = 0, []
    for day_index, ds in enumerate(window_days(end_ds, days)):
        n, rng = int(per_day[day_index]), np.random.default_rng([seed, 1 + day_index])
        day_start_ms = int(datetime.fromisoformat(ds).replace(tzinfo=UTC).timestamp() * 1000)
        ts = day_start_ms + rng.integers(0, 86_400_000 // ts_step_ms, n) * ts_step_ms
        order = np.argsort(ts, kind="stable")  # files arrive roughly in time order
        user = np.searchsorted(user_cdf, rng.random(n), side="right").clip(max=users - 1)[order]
        item = np.searchsorted(item_cdf, rng.random(n), side="right").clip(max=vocab_items - 1)
        unknown = rng.random(n) < UNKNOWN_ITEM_SHARE
        item[unknown] = vocab_items + rng.integers(0, 100, int(unknown.sum()))
        item = item[order]
        kind = np.searchsorted(np.cumsum(EVENT_TYPE_SHARES), rng.random(n), side="right").clip(max=2)[order]
        ms_played = np.where(kind == 0, rng.integers(30_000, 240_000, n), np.where(kind == 1, rng.integers(0, 30_000, n), 0))
        table = pa.table({
            "event_id": _ids("ev", np.arange(first_event, first_event + n, dtype=np.int64), 11),
            "user_id": user_names.take(pa.array(user)),
            "item_id": item_names.take(pa.array(item)),
            "item_type": item_types.take(pa.array(item)),
            "event_type": pa.array(EVENT_TYPES).take(pa.array(kind)),
            "ts": pa.array(ts[order] * 1000, EVENTS.schema.field("ts").type),
            "ms_played": pa.array(ms_played, pa.int64()),
        })
        path = Path(folder) / "events" / f"ds={ds}" / "part-0.parquet"
        path.parent.mkdir()
        pq.write_table(table, path)
        files.append(str(path))
        first_event += n
    manifest = {"params": params, "events": events, "users": users, "items": vocab_items, "files": files,
                "bytes": sum(Path(f).stat().st_size for f in files), "generate_seconds": time.perf_counter() - started}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return {**manifest, "reused": False}
