"""Step `features` (Spark): extend the append-only item vocabulary, then build user sequences.

user_sequences at ds holds, for every user with plays or skips in the rolling window
[ds - window_days + 1, ds], the most recent `max_seq_len` of them, oldest first, as vocabulary ids
with event types and timestamps. Pure DataFrame expressions: no Python UDFs, nothing collected
to the driver but the small per-day vocabulary additions and the result handed to delta-rs.
"""

from __future__ import annotations

from pyspark.sql import Window
from pyspark.sql import functions as F

from jobs import lake
from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.spark import read_snapshot, to_arrow
from jobs.tables import EVENTS, ITEM_VOCAB, ITEMS, USER_SEQUENCES
from jobs.tracking import StepResult, track_step

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
    step.wrote(ITEM_VOCAB, lake.append(cfg, ITEM_VOCAB, added))
    step.metrics(vocab_added=added.num_rows, vocab_size=largest + added.num_rows)
    return largest + added.num_rows


def build_user_sequences(cfg: FactoryConfig, ds: str, step):
    window = [shift(ds, -i) for i in range(cfg.features.window_days)]
    events_version, events = read_snapshot(cfg, EVENTS, where_in={"ds": window})
    vocab_version, vocab = read_snapshot(cfg, ITEM_VOCAB)
    step.read(EVENTS, events_version)
    event_code = F.create_map(*[F.lit(x) for kv in EVENT_TYPE_CODES.items() for x in kv])
    by_user = Window.partitionBy("user_id")
    recent_first = by_user.orderBy(F.col("ts").desc(), F.col("event_id").desc())
    recent = (
        events.where(F.col("event_type").isin(*SEQUENCE_EVENT_TYPES))
        .join(F.broadcast(vocab.select("item_id", "item_idx")), "item_id")
        .withColumn("events_in_window", F.count("*").over(by_user))
        .withColumn("recency", F.row_number().over(recent_first))
        .where(F.col("recency") <= cfg.features.max_seq_len)
    )
    return (
        recent.groupBy("user_id")
        .agg(
            F.sort_array(F.collect_list(F.struct(
                F.unix_millis("ts").alias("ts"), F.col("event_id"), F.col("item_idx"),
                event_code[F.col("event_type")].cast("byte").alias("event_type"),
            ))).alias("s"),
            F.first("events_in_window").alias("events_in_window"),
            F.max("ts").alias("last_ts"),
        )
        .select(
            "user_id", F.col("s.item_idx").alias("item_idx"), F.col("s.event_type").alias("event_type"),
            F.col("s.ts").alias("ts"), "events_in_window", "last_ts", F.lit(ds).alias("ds"),
        )
        .orderBy("user_id")
    )


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "features", run_key) as step:
        step.params(window_days=cfg.features.window_days, max_seq_len=cfg.features.max_seq_len)
        extend_vocab(cfg, ds, step)
        sequences = to_arrow(build_user_sequences(cfg, ds, step), USER_SEQUENCES)
        step.wrote(USER_SEQUENCES, lake.replace_partition(cfg, USER_SEQUENCES, sequences, {"ds": ds}))
        lengths = sequences.column("item_idx").combine_chunks().value_lengths().to_numpy(zero_copy_only=False)
        step.metrics(users=sequences.num_rows, mean_sequence_length=float(lengths.mean()) if len(lengths) else 0.0)
        return step.result
