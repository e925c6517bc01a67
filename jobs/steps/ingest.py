"""Step `ingest`: validate a day's raw event lines into `events`, everything else into `quarantine`.

Every raw line ends up in exactly one of the two tables (checked before the step returns):
a clean row, or a quarantine row with the raw bytes and the first rule it broke.

Gates (docs/reliability.md): a drop larger than gate.max_drop_bytes is refused before it is read; a
drop with fewer than gate.min_raw_lines lines (an empty day) is refused before anything is written,
so a good earlier run of the day is not wiped by an upstream outage; a day whose quarantine share
is above gate.max_quarantine_share fails after writing the evidence, and publish refuses it.

Validation runs on the Spark executors, one task per drop file (`mapInArrow`), calling the same
per-line Python rules (validate_line): they must see the undecoded bytes of every line (non-UTF-8
rows are kept byte-exact), which Spark's text reader would replace. The duplicate-event rule works
across tasks: the lines that passed are shuffled on event_id and the first in drop order is kept.
Executors write events and quarantine (jobs.lakehouse.commit); the driver holds the catalog's rules,
file paths and counts, never rows. raw = clean + quarantined is checked from the commits' statistics.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from jobs.config import FactoryConfig
from jobs.days import day_bounds_ms, parse_ds
from jobs.errors import DropRefused, QuarantineShareExceeded
from jobs.lakehouse import commit, delta
from jobs.lakehouse.landing import check_drop_size, drop_files, read_lines
from jobs.lakehouse.spark import read_snapshot, spark_session, write_partition
from jobs.lakehouse.tables import EVENTS, ITEMS, QUARANTINE
from jobs.steps.raw_line import Rejected, check_id, check_int64, parse_object
from jobs.tracking import plots
from jobs.tracking.runs import StepResult, track_step

EVENT_FIELDS = {"event_id": str, "user_id": str, "item_id": str, "event_type": str, "ts": int, "ms_played": int}
EVENT_TYPES = {"play", "skip", "save"}
MAX_MS_PLAYED = 6 * 3_600_000  # longer than any track or episode we carry: a broken client counter


@dataclass(frozen=True)
class DayRules:
    """What a line is checked against: the day's window and the catalog known on that day."""

    ds: str
    start_ms: int
    end_ms: int
    item_types: dict[str, str]  # item_id -> item_type


def validate_line(line: bytes, rules: DayRules) -> dict:
    """The clean event of a raw line, or Rejected(reason, detail) naming the first broken rule.

    Hostile lines (huge, deeply nested, giant numbers, lone surrogates, control characters, duplicate
    keys) are rejected by jobs/steps/raw_line.py's rules; a clean event's strings are valid UTF-8
    identifiers and its integers fit int64, so it can always be written."""
    row = parse_object(line)
    for key in ("user_id", "item_id"):
        if row.get(key) in (None, ""):
            raise Rejected("missing_id", f"{key} is missing or empty")
    extra, missing = set(row) - set(EVENT_FIELDS), set(EVENT_FIELDS) - set(row)
    if extra or missing:
        raise Rejected("schema_drift", f"unexpected keys {sorted(extra)!s:.200}, missing keys {sorted(missing)}")
    for key, kind in EVENT_FIELDS.items():
        value = row[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise Rejected("wrong_type", f"{key} must be {kind.__name__}, got {_shown(value)}")
        if kind is str:
            check_id(key, value)
        else:
            check_int64(key, value)
    if not row["event_id"].strip():
        raise Rejected("missing_id", "event_id is empty")
    if row["event_type"] not in EVENT_TYPES:
        raise Rejected("wrong_type", f"event_type {row['event_type']!r:.40} is not one of {sorted(EVENT_TYPES)}")
    if not 0 <= row["ms_played"] <= MAX_MS_PLAYED:
        raise Rejected("invalid_duration", f"ms_played {row['ms_played']} outside [0, {MAX_MS_PLAYED}]")
    if not rules.start_ms <= row["ts"] < rules.end_ms:
        raise Rejected("ts_out_of_day", f"ts {row['ts']} is not inside {rules.ds} (UTC)")
    item_type = rules.item_types.get(row["item_id"])
    if item_type is None:
        raise Rejected("unknown_item", f"item_id {row['item_id']!r:.60} is not in the catalog on {rules.ds}")
    return {**row, "item_type": item_type}


def _shown(value) -> str:
    """A value in a detail sentence: its repr (escapes surrogates and controls), cut to 40 characters;
    containers by type and size only (their repr can be as deep or as large as the line)."""
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return "an integer of more than 40 digits"
    return f"{value!r:.40}"


def known_items(cfg: FactoryConfig, ds: str) -> tuple[dict[str, str], int | None]:
    """item_id -> item_type for items first seen on or before ds, and the items version read."""
    version = delta.current_version(cfg, ITEMS)
    items = delta.read(cfg, ITEMS, columns=["item_id", "item_type", "first_seen_ds"], version=version)
    ids, types, first_seen = (items.column(c).to_pylist() for c in ("item_id", "item_type", "first_seen_ds"))
    return {i: t for i, t, f in zip(ids, types, first_seen) if f <= ds}, version


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    """Validate the events drop of ds; replace the ds partitions of events and quarantine."""
    parse_ds(ds)
    with track_step(cfg, ds, "ingest", run_key) as step:
        item_types, items_version = known_items(cfg, ds)  # items is a small table: the rules travel to the tasks
        step.read(ITEMS, items_version)
        rules = DayRules(ds, *day_bounds_ms(ds), item_types)
        files = drop_files(cfg, "events", ds)
        step.metrics(drop_bytes=check_drop_size(cfg, "events", ds, files), drop_files=len(files))
        validated = validated_lines(cfg, rules, files).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            raw_lines = validated.count()
            if raw_lines < cfg.gate.min_raw_lines:
                step.params(gate_decision="refused", gate_reason="empty day" if raw_lines == 0 else "too few lines")
                raise DropRefused(
                    f"ds={ds}: the events drop has {raw_lines} line(s) in {len(files)} file(s), fewer than "
                    f"gate.min_raw_lines={cfg.gate.min_raw_lines}; nothing was written. Check the upstream export, "
                    f"or set gate.min_raw_lines=0 if the day really had no traffic.", gate="min_raw_lines",
                )
            clean, quarantine = split_duplicates(validated, ds)
            step.wrote(EVENTS, write_partition(cfg, clean, EVENTS, {"ds": ds}))
            quarantine_version = write_partition(cfg, quarantine, QUARANTINE, {"ds": ds, "source": "events"})
            step.wrote(QUARANTINE, quarantine_version)
        finally:
            validated.unpersist()
        clean_rows, quarantined_rows = _check_nothing_lost(cfg, ds, raw_lines)
        _, written = read_snapshot(cfg, QUARANTINE, where_in={"ds": [ds], "source": ["events"]}, version=quarantine_version)
        reasons = {row["reason"]: row["count"] for row in written.groupBy("reason").count().collect()}  # one row per rule
        share = quarantined_rows / raw_lines if raw_lines else 0.0
        step.metrics(raw_lines=raw_lines, clean_rows=clean_rows, quarantined_rows=quarantined_rows,
                     quarantine_share=share, **{f"quarantined.{r}": n for r, n in reasons.items()})
        if raw_lines == 0:
            step.note("empty day: the events drop has no lines (allowed by gate.min_raw_lines=0)")
        if reasons:
            with tempfile.TemporaryDirectory() as folder:
                step.artifact(plots.quarantine_reasons(dict(reasons), raw_lines, Path(folder), ds), "plots")
        if share > cfg.gate.max_quarantine_share:
            step.params(gate_decision="refused", gate_reason=f"quarantine share {share:.4f} > {cfg.gate.max_quarantine_share}")
            raise QuarantineShareExceeded(
                f"ds={ds}: {share:.1%} of {raw_lines} raw event lines were quarantined, above "
                f"gate.max_quarantine_share={cfg.gate.max_quarantine_share:.1%}; inspect the quarantine "
                f"table (`factory show --ds {ds}`) before publishing this day."
            )
        step.params(gate_decision="passed")
        return step.result


# One row per raw line, as the validating tasks hand them on: where it came from, its bytes, and
# either its event (reason null) or its rejection.
VALIDATED = pa.schema([
    ("file_index", pa.int32()), ("source_file", pa.string()), ("line_number", pa.int64()), ("raw_bytes", pa.binary()),
    ("reason", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
    *[(name, pa.string()) for name in ("event_id", "user_id", "item_id", "item_type", "event_type")],
    ("ts", pa.int64()), ("ms_played", pa.int64()),
])
VALIDATED_DDL = ", ".join(f"{field.name} {dict(int32='int', int64='bigint').get(str(field.type), str(field.type))}"
                          for field in VALIDATED)  # the same schema as Spark states it
VALIDATED_BATCH = 10_000  # lines per Arrow batch a task hands to Spark


def validated_lines(cfg: FactoryConfig, rules: DayRules, files: list[str]) -> DataFrame:
    """Every raw line of the drop validated on the executors, one Spark task per drop file, by the
    same validate_line as always (a DataFrame of VALIDATED rows; nothing reaches the driver)."""
    spark = spark_session(cfg)
    paths = spark.sparkContext.parallelize(list(enumerate(files)), max(len(files), 1))
    frame = spark.createDataFrame(paths, "file_index int, path string")
    return frame.mapInArrow(lambda batches: validate_files(cfg, rules, batches), VALIDATED_DDL)


def validate_files(cfg: FactoryConfig, rules: DayRules, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (file_index, path) rows in, one VALIDATED row per line of those files out."""
    for batch in batches:
        for index, path in zip(batch.column("file_index").to_pylist(), batch.column("path").to_pylist()):
            rows = []
            for number, line in read_lines(cfg, path):
                where = {"file_index": index, "source_file": path, "line_number": number, "raw_bytes": line}
                try:
                    rows.append({**where, **validate_line(line, rules)})
                except Rejected as rejection:
                    row = _quarantine_row(rules.ds, path, number, line, rejection)
                    rows.append({**where, "reason": row["reason"], "detail": row["detail"], "raw": row["raw"]})
                if len(rows) >= VALIDATED_BATCH:
                    yield pa.RecordBatch.from_pylist(rows, schema=VALIDATED)
                    rows = []
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=VALIDATED)


def split_duplicates(validated: DataFrame, ds: str) -> tuple[DataFrame, DataFrame]:
    """(EVENTS rows, QUARANTINE rows) of the validated lines. The duplicate rule across all tasks: the
    lines that passed every other rule are shuffled on event_id, and the first one in drop order (file,
    line) is the event; the others are quarantined as duplicate_event, byte-exact (a line that passed
    validation is valid UTF-8, so its text is its bytes cast to a string)."""
    first = Window.partitionBy("event_id").orderBy("file_index", "line_number")
    passed = validated.where(F.col("reason").isNull()).withColumn("seen", F.row_number().over(first))
    events = (passed.where(F.col("seen") == 1).sortWithinPartitions("file_index", "line_number")
              .withColumn("ts", F.timestamp_millis("ts")).withColumn("ds", F.lit(ds)).select(*EVENTS.schema.names))
    duplicates = passed.where(F.col("seen") > 1).select(
        "file_index", "source_file", "line_number", "raw_bytes", F.lit("duplicate_event").alias("reason"),
        F.concat(F.lit("event_id "), "event_id", F.lit(f" already seen on {ds}")).alias("detail"),
        F.col("raw_bytes").cast("string").alias("raw"),
    )
    rejected = validated.where(F.col("reason").isNotNull()).select(*duplicates.columns)
    quarantine = (rejected.unionByName(duplicates).sortWithinPartitions("file_index", "line_number")
                  .withColumn("source", F.lit("events")).withColumn("ds", F.lit(ds)).select(*QUARANTINE.schema.names))
    return events, quarantine


def _quarantine_row(ds: str, path: str, number: int, line: bytes, rejection: Rejected) -> dict:
    return {
        "source": "events", "source_file": path, "line_number": number, "reason": rejection.reason,
        "detail": rejection.detail, "raw": line.decode("utf-8", errors="backslashreplace"),
        "raw_bytes": line, "ds": ds,
    }


def _check_nothing_lost(cfg: FactoryConfig, ds: str, raw_lines: int) -> tuple[int, int]:
    """Raw lines must equal clean rows + quarantined rows as committed in the lake, counted from the
    commits' file statistics (no row is read). Returns (clean, quarantined)."""
    clean = commit.committed_rows(cfg, EVENTS, {"ds": ds})
    bad = commit.committed_rows(cfg, QUARANTINE, {"ds": ds, "source": "events"})
    if clean + bad != raw_lines:
        raise RuntimeError(f"ds={ds}: {raw_lines} raw lines but {clean} clean + {bad} quarantined rows were committed")
    return clean, bad
