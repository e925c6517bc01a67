"""Step `features` (Spark): extend the append-only item vocabulary, then build user sequences.

user_sequences at ds holds, for every user with plays or skips in the rolling window
[ds - window_days + 1, ds], the most recent `max_seq_len` of them, oldest first, as vocabulary ids
with event types and timestamps. Pure DataFrame expressions: no Python UDFs; the executors write
user_sequences (jobs.lakehouse.spark.write_partition) and the driver commits the files' metadata.
Only the vocabulary additions (item_vocab is a small table) pass through the driver.

Incremental (`features.incremental`, the default): a day's sequences are yesterday's sequences
updated with today's events for the users active today, not a re-read of the window:
- the kept events are the newest `max_seq_len` of the window, so when the window slides the kept
  events older than its first day are exactly those that left it (ingest keeps every event's ts inside
  its ds); today's newest `max_seq_len` are appended (all newer than yesterday's) and the newest
  `max_seq_len` of the two kept;
- events_in_window = yesterday's - the user's events of the day that left the window (one day read)
  + today's; a user whose count reaches 0 leaves the table; last_ts = today's newest, else yesterday's.
This equals the full recompute as long as yesterday's partition was built with the same window and
length, and an event's item is in the vocabulary from the event's day on (the catalog lists an item
before its first play). A full re-read of the window runs when yesterday's partition is missing, when
`features.incremental` is off, and every `features.full_rebuild_every_days` days, where it also
counts the rows in which the increment would have differed (metric incremental_drift_rows; 0 expected).

Profile edits' "forget" (jobs/steps/taste_feedback.py): every event read is less the (user, item)
pairs forgotten on ds, in both paths, so the increment stays equal to the full recompute; a user whose
edits start or are withdrawn on ds is rebuilt from the window on an incremental day (`rebuild_for_edits`).
Without edits (or with profile.apply_edits off) nothing of this runs.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.days import parse_ds, shift
from jobs.lakehouse import delta
from jobs.lakehouse.spark import read_snapshot, spark_session, to_arrow, write_partition
from jobs.lakehouse.tables import EVENTS, ITEM_VOCAB, ITEMS, USER_SEQUENCES
from jobs.steps import taste_feedback
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
    added = to_arrow(new, ITEM_VOCAB)  # a day's new items: item_vocab is a small table (TableSpec.scale)
    step.wrote(ITEM_VOCAB, delta.append(cfg, ITEM_VOCAB, added))
    step.metrics(vocab_added=added.num_rows, vocab_size=largest + added.num_rows)
    return largest + added.num_rows


def build_user_sequences(cfg: FactoryConfig, ds: str, step, forgotten: pa.Table | None = None) -> DataFrame:
    """The full recompute: every event of the window, re-read (less the `forgotten` (user_id, item_id))."""
    window = [shift(ds, -i) for i in range(cfg.features.window_days)]
    events_version, events = read_snapshot(cfg, EVENTS, where_in={"ds": window})
    events = _remembered(cfg, events, forgotten)
    vocab_version, vocab = read_snapshot(cfg, ITEM_VOCAB)
    step.read(EVENTS, events_version)
    return user_sequences(events, vocab, ds, cfg.features.max_seq_len)


def update_user_sequences(cfg: FactoryConfig, ds: str, step, forgotten: pa.Table | None = None) -> DataFrame | None:
    """The increment: yesterday's sequences updated with today's events and the day that left the
    window (less the `forgotten` pairs); None when yesterday's partition does not exist (a full
    recompute is needed)."""
    yesterday, expired_day = shift(ds, -1), shift(ds, -cfg.features.window_days)
    previous_version, files = delta.snapshot_files(cfg, USER_SEQUENCES, where_in={"ds": [yesterday]})
    if not files:
        return None
    _, previous = read_snapshot(cfg, USER_SEQUENCES, where_in={"ds": [yesterday]}, version=previous_version)
    events_version, events = read_snapshot(cfg, EVENTS, where_in={"ds": [ds, expired_day]})
    events = _remembered(cfg, events, forgotten)
    _, vocab = read_snapshot(cfg, ITEM_VOCAB)
    step.read(EVENTS, events_version)
    step.read(USER_SEQUENCES, previous_version)
    today = user_sequences(events.where(F.col("ds") == ds), vocab, ds, cfg.features.max_seq_len)
    left = (sequence_events(events.where(F.col("ds") == expired_day), vocab)
            .groupBy("user_id").agg(F.count("*").alias("expired")))
    return updated_sequences(previous, today, left, ds, cfg.features.window_days, cfg.features.max_seq_len)


def updated_sequences(previous: DataFrame, today: DataFrame, left: DataFrame, ds: str, window_days: int,
                      max_seq_len: int) -> DataFrame:
    """USER_SEQUENCES rows for ds from yesterday's rows, today's rows (user_sequences over today's events
    only) and (user_id, expired): each user's count of events on the day that left the window."""
    start_ms = int(dt.datetime.combine(parse_ds(shift(ds, 1 - window_days)), dt.time(), dt.UTC).timestamp() * 1000)
    p, t = previous.alias("p"), today.alias("t")
    joined = p.join(t, F.col("p.user_id") == F.col("t.user_id"), "full_outer").select(
        F.coalesce("p.user_id", "t.user_id").alias("user_id"),
        *[F.col(f"p.{c}").alias(f"p_{c}") for c in ("item_idx", "event_type", "ts", "events_in_window", "last_ts")],
        *[F.col(f"t.{c}").alias(f"t_{c}") for c in ("item_idx", "event_type", "ts", "events_in_window", "last_ts")],
    ).join(left, "user_id", "left")
    # Kept events are oldest first, so those before the window's first day are a prefix.
    gone = F.size(F.filter(F.coalesce("p_ts", F.array().cast("array<bigint>")), lambda x: x < F.lit(start_ms)))

    def updated(column: str, kind: str) -> F.Column:
        empty = F.array().cast(f"array<{kind}>")
        before = F.coalesce(f"p_{column}", empty)
        kept = F.slice(before, gone + 1, F.greatest(F.size(before) - gone, F.lit(0)))
        both = F.concat(kept, F.coalesce(f"t_{column}", empty))
        return F.slice(both, F.greatest(F.size(both) - max_seq_len + 1, F.lit(1)), max_seq_len).alias(column)

    count = (F.coalesce("p_events_in_window", F.lit(0)) - F.coalesce("expired", F.lit(0))
             + F.coalesce("t_events_in_window", F.lit(0)))
    return joined.select(
        "user_id", updated("item_idx", "int"), updated("event_type", "tinyint"), updated("ts", "bigint"),
        count.alias("events_in_window"), F.coalesce("t_last_ts", "p_last_ts").alias("last_ts"), F.lit(ds).alias("ds"),
    ).where(F.col("events_in_window") > 0)


def _remembered(cfg: FactoryConfig, events: DataFrame, forgotten: pa.Table | None) -> DataFrame:
    return events if forgotten is None else taste_feedback.without_forgotten(spark_session(cfg), events, forgotten)


def rebuild_for_edits(cfg: FactoryConfig, ds: str, sequences: DataFrame, users: list[str], forgotten: pa.Table) -> DataFrame:
    """Profile edits' "forget" (jobs/steps/taste_feedback.py) on an incremental day: the increment already
    left out the forgotten pairs, but yesterday's sequences of `users` (whose edits started or were
    withdrawn on ds) still hold items now forgotten, or lack returned ones: their rows are rebuilt from
    the window's events less the forgotten pairs. Every other row is left exactly as it is."""
    who = F.broadcast(spark_session(cfg).createDataFrame(pa.table({"user_id": users})))
    window = [shift(ds, -i) for i in range(cfg.features.window_days)]
    _, events = read_snapshot(cfg, EVENTS, where_in={"ds": window})
    _, vocab = read_snapshot(cfg, ITEM_VOCAB)
    events = _remembered(cfg, events.join(who, "user_id", "left_semi"), forgotten)
    rebuilt = user_sequences(events, vocab, ds, cfg.features.max_seq_len)
    return _without(cfg, sequences, users).unionByName(rebuilt)


def _without(cfg: FactoryConfig, sequences: DataFrame, users: list[str]) -> DataFrame:
    if not users:
        return sequences
    return sequences.join(F.broadcast(spark_session(cfg).createDataFrame(pa.table({"user_id": users}))),
                          "user_id", "left_anti")


def sequence_events(events: DataFrame, vocab: DataFrame) -> DataFrame:
    """The events sequences are made of: plays and skips of items in the vocabulary, with their item_idx."""
    return (events.where(F.col("event_type").isin(*SEQUENCE_EVENT_TYPES))
            .join(F.broadcast(vocab.select("item_id", "item_idx")), "item_id"))


def full_rebuild_day(cfg: FactoryConfig, ds: str) -> bool:
    """Whether ds re-reads the whole window: incremental off, or the periodic full rebuild's day."""
    every = cfg.features.full_rebuild_every_days
    return not cfg.features.incremental or (every > 0 and parse_ds(ds).toordinal() % every == 0)


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
        sequence_events(events, vocab)
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
        # Forget edits in force (a small table; None without any): their events never enter a sequence,
        # and users whose edits changed today are rebuilt from the window (rebuild_for_edits).
        forgotten = taste_feedback.forgotten_on(cfg, ds) if taste_feedback.any_edits(cfg) else None
        changed = taste_feedback.users_to_rebuild(cfg, ds) if forgotten is not None else []
        if forgotten is not None:
            step.metrics(items_forgotten=forgotten.num_rows, users_rebuilt_for_edits=len(changed))
        sequences = None if full_rebuild_day(cfg, ds) else update_user_sequences(cfg, ds, step, forgotten)
        step.params(mode="full" if sequences is None else "incremental")
        if sequences is None:
            sequences = build_user_sequences(cfg, ds, step, forgotten)
            if cfg.features.incremental:
                increment = update_user_sequences(cfg, ds, step, forgotten)
                if increment is not None:  # the periodic check of the increments (users rebuilt today aside)
                    full, increment = _without(cfg, sequences, changed), _without(cfg, increment, changed)
                    step.metrics(incremental_drift_rows=full.exceptAll(increment).count()
                                 + increment.exceptAll(full).count())
        elif changed:
            sequences = rebuild_for_edits(cfg, ds, sequences, changed, forgotten)
        # Hash-partitioned by user and sorted within each file: the same rows give the same files and
        # row order on every run (train samples rows by position), without a global sort's sampling pass.
        shuffle = cfg.spark.shuffle_partitions
        version = write_partition(cfg, sequences.repartition(shuffle, "user_id").sortWithinPartitions("user_id"),
                                  USER_SEQUENCES, {"ds": ds})
        step.wrote(USER_SEQUENCES, version)
        # Measured on the committed files, on the executors: only two numbers reach the driver.
        _, written = read_snapshot(cfg, USER_SEQUENCES, where_in={"ds": [ds]}, version=version)
        users, mean_length = written.agg(F.count("*"), F.avg(F.size("item_idx"))).first()
        step.metrics(users=users, mean_sequence_length=float(mean_length or 0.0))
        return step.result
