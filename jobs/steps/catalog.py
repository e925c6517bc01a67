"""Step `catalog`: MERGE the day's catalog drop (new and edited items) into the `items` table.

An item keeps the day it was first seen; an edit updates its text and text_hash. A rerun of an
older day never reverts a later edit (updates apply only when the drop is at least as new), and
days merged out of order (a backfill, two runs at once) end with the earliest first_seen_ds, so
the result does not depend on the order in which days were merged.

Every raw line is accounted for (checked before the step returns): an item of the drop, a line
superseded by a later line for the same item, or a quarantine row with its reason.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.lakehouse import commit, delta
from jobs.lakehouse.landing import check_drop_size, drop_files, read_lines
from jobs.lakehouse.tables import ITEMS, QUARANTINE
from jobs.steps.raw_line import Rejected, check_id, check_int64, check_text, parse_object
from jobs.tracking.runs import StepResult, track_step

REQUIRED = ("item_id", "item_type", "title")
OPTIONAL = ("description", "genre", "artist", "show", "duration_ms")
ITEM_TYPES = ("track", "episode")
MAX_DURATION_MS = 24 * 3_600_000  # no track or episode is longer than a day
# MERGE of a drop row into an existing item: the earliest first_seen_ds wins (order-independent merges).
EARLIEST_FIRST_SEEN = "CASE WHEN s.first_seen_ds < t.first_seen_ds THEN s.first_seen_ds ELSE t.first_seen_ds END"


def item_text(item: dict) -> str:
    """The text the content encoder sees: type, title, genre, artist or show, description."""
    by = item.get("artist") or item.get("show") or ""
    parts = [item["item_type"], item["title"], item.get("genre") or "", by, item.get("description") or ""]
    return " | ".join(p for p in parts if p)


def parse_item(line: bytes) -> dict:
    """A catalog row from a raw line, or ValueError(reason: detail).

    Hostile lines are rejected by jobs/steps/raw_line.py's rules (size, encoding, nesting, numbers,
    duplicate keys); a clean item's strings are valid UTF-8 without control characters (free text may
    hold tabs and line breaks) and its duration fits int64, so it can always be written and hashed."""
    try:
        row = parse_object(line)
        _check_values(row)
    except Rejected as rejected:
        raise ValueError(f"{rejected.reason}: {rejected.detail}") from None
    missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k)]
    if missing:
        raise ValueError(f"missing_field: {missing}")
    if row["item_type"] not in ITEM_TYPES:
        raise ValueError(f"wrong_type: item_type {row['item_type']!r:.40} not in {ITEM_TYPES}")
    extra = set(row) - set(REQUIRED) - set(OPTIONAL)
    if extra:
        raise ValueError(f"schema_drift: unexpected keys {sorted(extra)!s:.200}")
    for key in OPTIONAL:
        if key != "duration_ms" and row.get(key) is not None and not isinstance(row[key], str):
            raise ValueError(f"wrong_type: {key} must be a string")
    duration = row.get("duration_ms")
    if duration is not None and (not isinstance(duration, int) or isinstance(duration, bool)):
        raise ValueError("wrong_type: duration_ms must be an integer")
    if duration is not None and not 0 < duration <= MAX_DURATION_MS:
        raise ValueError(f"invalid_duration: duration_ms {duration} outside (0, {MAX_DURATION_MS}]")
    return {k: row.get(k) for k in REQUIRED + OPTIONAL}


def _check_values(row: dict) -> None:
    """Strings of known fields are clean (identifiers stricter than free text); integers fit int64."""
    for key in REQUIRED + OPTIONAL:
        value = row.get(key)
        if isinstance(value, str):
            (check_id if key in ("item_id", "item_type") else check_text)(key, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            check_int64(key, value)


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "catalog", run_key) as step:
        files = drop_files(cfg, "catalog", ds)
        step.metrics(drop_bytes=check_drop_size(cfg, "catalog", ds, files), drop_files=len(files))
        items, rejected, raw_lines = {}, [], 0
        for path in files:
            for number, line in read_lines(cfg, path):
                raw_lines += 1
                try:
                    item = parse_item(line)
                except ValueError as err:
                    reason, _, detail = str(err).partition(": ")
                    rejected.append({
                        "source": "catalog", "source_file": path, "line_number": number, "reason": reason,
                        "detail": detail, "raw": line.decode("utf-8", errors="backslashreplace"),
                        "raw_bytes": line, "ds": ds,
                    })
                    continue
                text = item_text(item)
                # A later line of the same drop wins: the drop is an ordered change log.
                items[item["item_id"]] = {
                    **item, "text": text, "text_hash": hashlib.sha1(text.encode()).hexdigest(),
                    "first_seen_ds": ds, "updated_ds": ds,
                }
        drop = pa.Table.from_pylist(list(items.values()), schema=ITEMS.schema)
        version, merge = delta.upsert(
            cfg, ITEMS, drop, update_when="s.text_hash != t.text_hash AND s.updated_ds >= t.updated_ds",
            set_expressions={"first_seen_ds": EARLIEST_FIRST_SEEN},
            also_when=(("s.first_seen_ds < t.first_seen_ds", {"first_seen_ds": "s.first_seen_ds"}),),
        )
        step.wrote(ITEMS, version)
        quarantine = pa.Table.from_pylist(rejected, schema=QUARANTINE.schema)
        step.wrote(QUARANTINE, delta.replace_partition(cfg, QUARANTINE, quarantine, {"ds": ds, "source": "catalog"}))
        superseded = raw_lines - len(items) - len(rejected)
        _check_nothing_lost(cfg, ds, raw_lines, set(items), superseded, len(rejected))
        step.metrics(
            raw_lines=raw_lines, catalog_rows=len(items), superseded_rows=superseded, quarantined_rows=len(rejected),
            inserted=merge.get("num_target_rows_inserted", 0), updated=merge.get("num_target_rows_updated", 0),
        )
        return step.result


def _check_nothing_lost(cfg: FactoryConfig, ds: str, raw_lines: int, item_ids: set[str], superseded: int,
                        quarantined: int) -> None:
    """Raw lines = items + superseded lines + quarantined rows, as committed in the lake."""
    bad = commit.committed_rows(cfg, QUARANTINE, {"ds": ds, "source": "catalog"})  # from the log, no rows read
    present = set(delta.read(cfg, ITEMS, columns=["item_id"]).column("item_id").to_pylist())
    missing = item_ids - present
    if bad != quarantined or missing or len(item_ids) + superseded + bad != raw_lines:
        raise RuntimeError(f"ds={ds}: {raw_lines} raw catalog lines but {len(item_ids) - len(missing)} items merged, "
                           f"{superseded} superseded and {bad} quarantined rows committed")
