"""Step `features` (Spark): extend the append-only item vocabulary, then build user sequences.

user_sequences at ds holds, for every user with plays or skips in the rolling window
[ds - window_days + 1, ds], the most recent `max_seq_len` of them, oldest first, as vocabulary ids
with event types and timestamps. Pure DataFrame expressions: no Python UDFs, nothing collected
to the driver but the small per-day vocabulary additions and the result handed to delta-rs.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.lakehouse import delta
from jobs.lakehouse.spark import read_snapshot, to_arrow
from jobs.lakehouse.tables import EVENTS, ITEM_VOCAB, ITEMS, USER_SEQUENCES
from jobs.tracking.runs import StepResult, track_step

EVENT_TYPE_CODES = {"play": 1, "skip": 2, "save": 3}  # 0 is padding in the encoder
SEQUENCE_EVENT_TYPES = ("play", "skip")  # a save repeats the play it follows


def extend_vocab(cfg: FactoryConfig, ds: str, step) -> int:
    """Give every item first seen on or before ds an id; existing ids never change. Returns the size."""
    items_version, items = read_snapshot(cfg, ITEMS)
    vocab_version, vocab = read_snapshot(cfg, ITEM_VOCAB)
    step.read(ITEMS, items_version)
    step.read(ITEM_VOCAB, vocab_version)
    largest = vocab.agg(F.max("item_idx")).first()[0] or 0
    new = (
        items.where(F.col("first_seen_ds") <= ds).select("item_id", "first_seen_ds")
        .join(vocab.select("item_id"), "item_id", "left_anti")
        .withColumn("item_idx", (F.row_number().over(Window.orderBy("first_seen_ds", "item_id")) + largest).cast("int"))
    )
    added = to_arrow(new, ITEM_VOCAB)
    step.wrote(ITEM_VOCAB, delta.append(cfg, ITEM_VOCAB, added))
    step.metrics(vocab_added=added.num_rows, vocab_size=largest + added.num_rows)
    return largest + added.num_rows


def build_user_sequences(cfg: FactoryConfig, ds: str, step) -> DataFrame:
    window = [shift(ds, -i) for i in range(cfg.features.window_days)]
    events_version, events = read_snapshot(cfg, EVENTS, where_in={"ds": window})
    vocab_version, vocab = read_snapshot(cfg, ITEM_VOCAB)
    step.read(EVENTS, events_version)
    return user_sequences(events, vocab, ds, cfg.features.max_seq_len)


def user_sequences(events: DataFrame, vocab: DataFrame, ds: str, max_seq_len: int) -> DataFrame:
    """USER_SEQUENCES rows for ds from the window's EVENTS and the ITEM_VOCAB (DataFrame -> DataFrame).

    Per user: the most recent `max_seq_len` plays/skips of items in the vocabulary, chosen by
    (ts desc, event_id desc) and listed oldest first (by ts in ms, then event_id); events_in_window
    counts all of them. Rows come in no particular order (run() sorts them by user_id). Also used by
    `factory bench features` against the same SQL in DuckDB.
    """
    # One aggregation per user, no window: the window version (count over the user, row_number over
    # (ts desc, event_id desc), filter, then the same aggregation) sorted every event by user and time
    # and used 20-30% more JVM CPU on 5M generated events (`factory bench features`, docs/benchmarks.md).
    event_code = F.create_map(*[F.lit(x) for kv in EVENT_TYPE_CODES.items() for x in kv])
    newest_first = (
        events.where(F.col("event_type").isin(*SEQUENCE_EVENT_TYPES))
        .join(F.broadcast(vocab.select("item_id", "item_idx")), "item_id")
        .groupBy("user_id")
        .agg(
            F.count("*").alias("events_in_window"),
            F.max("ts").alias("last_ts"),
            F.slice(F.sort_array(F.collect_list(F.struct(
                "ts", "event_id", "item_idx", event_code[F.col("event_type")].cast("byte").alias("event_type"),
            )), asc=False), 1, max_seq_len).alias("recent"),
        )
    )
    # The kept events, oldest first by (ts in ms, event_id): the order the table has always used.
    oldest_first = F.sort_array(F.transform("recent", lambda e: F.struct(
        F.unix_millis(e.ts).alias("ts"), e.event_id.alias("event_id"), e.item_idx.alias("item_idx"),
        e.event_type.alias("event_type"),
    )))
    return (
        newest_first.select("user_id", oldest_first.alias("s"), "events_in_window", "last_ts")
        .select(
            "user_id", F.col("s.item_idx").alias("item_idx"), F.col("s.event_type").alias("event_type"),
            F.col("s.ts").alias("ts"), "events_in_window", "last_ts", F.lit(ds).alias("ds"),
        )
    )


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "features", run_key) as step:
        step.params(window_days=cfg.features.window_days, max_seq_len=cfg.features.max_seq_len)
        extend_vocab(cfg, ds, step)
        # Sorted here, on the per-user result the driver collects anyway: a Spark orderBy samples the
        # aggregated output for its range partitioner, computing the final aggregation twice (15-20%
        # more JVM CPU at 5M and 20M events, `factory bench features`).
        sequences = to_arrow(build_user_sequences(cfg, ds, step), USER_SEQUENCES).sort_by("user_id")
        step.wrote(USER_SEQUENCES, delta.replace_partition(cfg, USER_SEQUENCES, sequences, {"ds": ds}))
        lengths = sequences.column("item_idx").combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
        step.metrics(users=sequences.num_rows, mean_sequence_length=float(lengths.mean()) if len(lengths) else 0.0)
        return step.result
