"""Step `catalog`: MERGE the day's catalog drop (new and edited items) into the `items` table.

An item keeps the day it was first seen; an edit updates its text and text_hash. A rerun of an
older day never reverts a later edit (updates apply only when the drop is at least as new).
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from jobs import lake
from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.landing import drop_files, read_lines
from jobs.tables import ITEMS, QUARANTINE
from jobs.tracking import StepResult, track_step

REQUIRED = ("item_id", "item_type", "title")
OPTIONAL = ("description", "genre", "artist", "show", "duration_ms")
ITEM_TYPES = ("track", "episode")


def item_text(item: dict) -> str:
    """The text the content encoder sees: type, title, genre, artist or show, description."""
    by = item.get("artist") or item.get("show") or ""
    parts = [item["item_type"], item["title"], item.get("genre") or "", by, item.get("description") or ""]
    return " | ".join(p for p in parts if p)


def parse_item(line: bytes) -> dict:
    """A catalog row from a raw line, or ValueError(reason: detail)."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"invalid_json: {err}") from None
    if not isinstance(row, dict):
        raise ValueError("invalid_json: expected an object")
    missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k)]
    if missing:
        raise ValueError(f"missing_field: {missing}")
    if row["item_type"] not in ITEM_TYPES:
        raise ValueError(f"wrong_type: item_type {row['item_type']!r:.40} not in {ITEM_TYPES}")
    extra = set(row) - set(REQUIRED) - set(OPTIONAL)
    if extra:
        raise ValueError(f"schema_drift: unexpected keys {sorted(extra)}")
    if row.get("duration_ms") is not None and not isinstance(row["duration_ms"], int):
        raise ValueError("wrong_type: duration_ms must be an integer")
    return {k: row.get(k) for k in REQUIRED + OPTIONAL}


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "catalog", run_key) as step:
        items, rejected = {}, []
        for path in drop_files(cfg, "catalog", ds):
            for number, line in read_lines(cfg, path):
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
        version, merge = lake.upsert(
            cfg, ITEMS, drop, update_when="s.text_hash != t.text_hash AND s.updated_ds >= t.updated_ds",
            preserve=("first_seen_ds",),
        )
        step.wrote(ITEMS, version)
        quarantine = pa.Table.from_pylist(rejected, schema=QUARANTINE.schema)
        step.wrote(QUARANTINE, lake.replace_partition(cfg, QUARANTINE, quarantine, {"ds": ds, "source": "catalog"}))
        step.metrics(
            catalog_rows=len(items), quarantined_rows=len(rejected),
            inserted=merge.get("num_target_rows_inserted", 0), updated=merge.get("num_target_rows_updated", 0),
        )
        return step.result
