"""Step `ingest`: validate a day's raw event lines into `events`, everything else into `quarantine`.

Every raw line ends up in exactly one of the two tables (checked before the step returns):
a clean row, or a quarantine row with the raw bytes and the first rule it broke.

Gates (docs/reliability.md): a drop larger than gate.max_drop_bytes is refused before it is read; a
drop with fewer than gate.min_raw_lines lines (an empty day) is refused before anything is written,
so a good earlier run of the day is not wiped by an upstream outage; a day whose quarantine share
is above gate.max_quarantine_share fails after writing the evidence, and publish refuses it.

Validation is plain Python over bytes, not Spark: it must see the undecoded bytes of every line
(non-UTF-8 rows are kept byte-exact), and per-line JSON parsing is cheap next to the features job.
Files of a drop are independent, so a cluster can shard them across workers.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from jobs.config import FactoryConfig
from jobs.days import day_bounds_ms, parse_ds
from jobs.errors import DropRefused, QuarantineShareExceeded
from jobs.lakehouse import delta
from jobs.lakehouse.landing import check_drop_size, drop_files, read_lines
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
        item_types, items_version = known_items(cfg, ds)
        step.read(ITEMS, items_version)
        rules = DayRules(ds, *day_bounds_ms(ds), item_types)
        files = drop_files(cfg, "events", ds)
        step.metrics(drop_bytes=check_drop_size(cfg, "events", ds, files), drop_files=len(files))
        clean, rejected, seen_ids, raw_lines = CleanEvents(ds), [], set(), 0
        for path in files:
            for number, line in read_lines(cfg, path):
                raw_lines += 1
                try:
                    event = validate_line(line, rules)
                    if event["event_id"] in seen_ids:
                        raise Rejected("duplicate_event", f"event_id {event['event_id']} already seen on {ds}")
                    seen_ids.add(event["event_id"])
                    clean.append(event)
                except Rejected as rejection:
                    rejected.append(_quarantine_row(ds, path, number, line, rejection))
        if raw_lines < cfg.gate.min_raw_lines:
            step.params(gate_decision="refused", gate_reason="empty day" if raw_lines == 0 else "too few lines")
            raise DropRefused(
                f"ds={ds}: the events drop has {raw_lines} line(s) in {len(files)} file(s), fewer than "
                f"gate.min_raw_lines={cfg.gate.min_raw_lines}; nothing was written. Check the upstream export, "
                f"or set gate.min_raw_lines=0 if the day really had no traffic.", gate="min_raw_lines",
            )

        step.wrote(EVENTS, delta.replace_partition(cfg, EVENTS, clean.table(), {"ds": ds}))
        quarantine = pa.Table.from_pylist(rejected, schema=QUARANTINE.schema)
        step.wrote(QUARANTINE, delta.replace_partition(cfg, QUARANTINE, quarantine, {"ds": ds, "source": "events"}))

        _check_nothing_lost(cfg, ds, raw_lines)
        reasons = Counter(row["reason"] for row in rejected)
        share = len(rejected) / raw_lines if raw_lines else 0.0
        step.metrics(raw_lines=raw_lines, clean_rows=len(clean), quarantined_rows=len(rejected),
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


class CleanEvents:
    """The day's clean events, turned into Arrow every CHUNK rows: a dict per event for a 5M-event
    day would hold gigabytes of Python objects; Arrow holds the same rows in a few hundred MB."""

    CHUNK = 100_000

    def __init__(self, ds: str):
        self.ds, self.pending, self.batches, self.rows = ds, [], [], 0

    def append(self, event: dict) -> None:
        self.pending.append(event)
        self.rows += 1
        if len(self.pending) >= self.CHUNK:
            self._flush()

    def __len__(self) -> int:
        return self.rows

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self.batches, EVENTS.schema) if self.batches else EVENTS.schema.empty_table()

    def _flush(self) -> None:
        if not self.pending:
            return
        events, self.pending = self.pending, []
        columns = {name: [event[name] for event in events] for name in EVENTS.schema.names if name not in ("ts", "ds")}
        columns["ts"] = pa.array([event["ts"] for event in events], pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        columns["ds"] = [self.ds] * len(events)
        self.batches += pa.table(columns).select(EVENTS.schema.names).cast(EVENTS.schema).to_batches()


def _quarantine_row(ds: str, path: str, number: int, line: bytes, rejection: Rejected) -> dict:
    return {
        "source": "events", "source_file": path, "line_number": number, "reason": rejection.reason,
        "detail": rejection.detail, "raw": line.decode("utf-8", errors="backslashreplace"),
        "raw_bytes": line, "ds": ds,
    }


def _check_nothing_lost(cfg: FactoryConfig, ds: str, raw_lines: int) -> None:
    """Raw lines must equal clean rows + quarantined rows as committed in the lake."""
    clean = delta.read(cfg, EVENTS, where={"ds": ds}, columns=["event_id"]).num_rows
    bad = delta.read(cfg, QUARANTINE, where={"ds": ds, "source": "events"}, columns=["line_number"]).num_rows
    if clean + bad != raw_lines:
        raise RuntimeError(f"ds={ds}: {raw_lines} raw lines but {clean} clean + {bad} quarantined rows were committed")
