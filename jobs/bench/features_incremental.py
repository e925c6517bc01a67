"""Features on a steady day: the incremental update against a re-read of the whole window (issue 15).

Input: the synthetic events of `factory bench features` (jobs/bench/features_data.py) for a window
one day longer than `features.window_days`, so that yesterday's full window exists too: EVENTS as
hive-style parquet, one file per day, `users` users with ~50 events each over the window.

Both computations are the features step's own DataFrame functions on Spark (jobs.steps.features):
1. yesterday's state: `user_sequences` over yesterday's window (written once, not judged);
2. the re-read: `user_sequences` over today's window, every event of the 30 days;
3. the increment: `updated_sequences(yesterday's rows, today's events only, the day that left the window)`.
(2) and (3) are written to Parquet and timed; their outputs are compared row for row (they must be
equal), and the speed-up (2) / (3) is the judged figure.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import functions as F

from jobs.bench.common import summary_row
from jobs.bench.features_data import END_DS, EVENTS_PER_USER, generate_events, window_days
from jobs.config import FactoryConfig
from jobs.days import shift
from jobs.lakehouse.spark import spark_session
from jobs.steps.features import sequence_events, updated_sequences, user_sequences

SPEED_UP_BAR = 3.0


def run(users: int, cfg: FactoryConfig, state: Path, progress: Callable[[str], None] = print) -> dict:
    window = cfg.features.window_days
    data = generate_events(state / f"incremental_{users}", users * EVENTS_PER_USER, days=window + 1)
    how = "reused" if data["reused"] else f"generated in {data['generate_seconds']:.0f} s"
    progress(f"[features incremental] {data['events']:,} events over {window + 1} days, {data['users']:,} users ({how})")
    spark = spark_session(cfg)
    root = Path(data["files"][0]).parents[1]
    events = spark.read.option("basePath", str(root)).parquet(*data["files"]).withColumn("ds", F.col("ds").cast("string"))
    vocab = spark.read.parquet(str(root.parent / "item_vocab.parquet"))
    today, yesterday, max_len = END_DS, shift(END_DS, -1), cfg.features.max_seq_len
    out = state / f"incremental_{users}_out"
    shutil.rmtree(out, ignore_errors=True)

    def timed(name: str, frame) -> float:
        started = time.perf_counter()
        frame.write.parquet(str(out / name))
        seconds = time.perf_counter() - started
        progress(f"[features incremental] {name}: {seconds:.1f} s")
        return seconds

    def in_window(days: list[str]):
        return events.where(F.col("ds").isin(days))

    state_seconds = timed("yesterday", user_sequences(in_window(window_days(yesterday, window)), vocab, yesterday, max_len))
    full_seconds = timed("full", user_sequences(in_window(window_days(today, window)), vocab, today, max_len))
    previous = spark.read.parquet(str(out / "yesterday"))
    left = (sequence_events(in_window([shift(today, -window)]), vocab).groupBy("user_id").agg(F.count("*").alias("expired")))
    increment = updated_sequences(previous, user_sequences(in_window([today]), vocab, today, max_len), left, today,
                                  window, max_len)
    incremental_seconds = timed("incremental", increment)
    full, inc = spark.read.parquet(str(out / "full")), spark.read.parquet(str(out / "incremental"))
    columns = ["user_id", "item_idx", "event_type", "ts", "events_in_window", "last_ts"]
    full, inc = full.select(columns), inc.select(columns)
    differing = full.exceptAll(inc).count() + inc.exceptAll(full).count()
    rows = full.count()
    shutil.rmtree(out, ignore_errors=True)
    return {"users": data["users"], "events_in_window": data["events"], "window_days": window, "rows": rows,
            "yesterday_state_seconds": state_seconds, "full_reread_seconds": full_seconds,
            "incremental_seconds": incremental_seconds, "speed_up": full_seconds / incremental_seconds,
            "differing_rows": differing, "spark_master": cfg.spark.master}


def summary_rows(result: dict) -> list[dict]:
    users = result["users"]
    return [
        summary_row(f"features incremental vs window re-read, {users:,} users", result["speed_up"], "x",
                    f"≥ {SPEED_UP_BAR:g}", result["speed_up"] >= SPEED_UP_BAR,
                    f"{result['full_reread_seconds']:.1f} s vs {result['incremental_seconds']:.1f} s, "
                    f"{result['window_days']}-day window of {result['events_in_window']:,} events"),
        summary_row(f"features incremental equals the re-read, {users:,} users: differing rows",
                    result["differing_rows"], "rows", "0", result["differing_rows"] == 0),
    ]
