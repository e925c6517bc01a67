"""Hostile input never costs a day: property tests (hypothesis) of the ingest validator and the
catalog reader. Any bytes, and any JSON value in any field, become either a clean row that survives
the Arrow conversion and the Delta write, or a quarantine row with a reason; never an exception;
raw lines = clean + quarantined. Then the real ingest step on a day with the three lines that used to
stop it (deep nesting, a 5,000-digit integer, a lone surrogate) among clean ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobs.config import load_config
from jobs.days import day_bounds_ms
from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVENTS, ITEMS, QUARANTINE
from jobs.steps import catalog, ingest

DS = "2026-01-01"
START, END = day_bounds_ms(DS)
RULES = ingest.DayRules(DS, START, END, {"trk_1": "track", "ep_1": "episode"})
GOOD_EVENT = {"event_id": "e1", "user_id": "u1", "item_id": "trk_1", "event_type": "play", "ts": START + 5,
              "ms_played": 1000}
GOOD_ITEM = {"item_id": "trk_9", "item_type": "track", "title": "A song", "description": "Line one\nline two",
             "genre": "jazz", "artist": "Someone", "duration_ms": 180_000}
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters a hostile producer can put in a JSON string: anything, lone surrogates and controls more often.
chars = st.one_of(st.characters(exclude_categories=()), st.characters(categories=["Cs"]),
                  st.characters(categories=["Cc"]))
texts = st.text(chars, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.sampled_from([2**63, -(2**63) - 1, 2**63 - 1])
    | st.floats(allow_nan=True, allow_infinity=True) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)


def encoded(row: dict, ascii_only: bool) -> bytes:
    """The line as a producer writes it: escaped (\\ud800) or raw UTF-8 (surrogates as invalid bytes)."""
    return json.dumps(row, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", errors="surrogatepass")


def with_field(good: dict, fields: list[str]):
    """A good row with one field (or a new key) set to any JSON value."""
    return st.builds(lambda key, value, ascii_only: encoded({**good, key: value}, ascii_only),
                     st.sampled_from(fields + ["extra"]), texts | json_values, st.booleans())


event_lines = st.one_of(st.binary(max_size=80), with_field(GOOD_EVENT, list(GOOD_EVENT)))
item_lines = st.one_of(st.binary(max_size=80), with_field(GOOD_ITEM, list(catalog.REQUIRED + catalog.OPTIONAL)))


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return load_config(overrides={"paths.state_dir": str(tmp_path_factory.mktemp("hostile"))})


def quarantine_table(source: str, rows: list[tuple[int, bytes, str, str]]) -> pa.Table:
    return pa.Table.from_pylist([
        {"source": source, "source_file": "part-0.jsonl", "line_number": n, "reason": reason, "detail": detail,
         "raw": line.decode("utf-8", errors="backslashreplace"), "raw_bytes": line, "ds": DS}
        for n, line, reason, detail in rows], schema=QUARANTINE.schema)


def ingest_day(lake, lines: list[bytes]) -> tuple[int, int]:
    """The ingest step's executor code (validate_files: the lines of one drop file into Arrow batches of
    VALIDATED rows) without Spark, then the clean and quarantined rows written to Delta as the step's
    tables: (clean rows, quarantined rows) committed."""
    drop = Path(lake.landing_uri) / "events" / f"ds={DS}" / "part-0.jsonl"
    drop.parent.mkdir(parents=True, exist_ok=True)
    drop.write_bytes(b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines))
    files = pa.record_batch({"file_index": pa.array([0], pa.int32()), "path": [str(drop)]})
    validated = pa.Table.from_batches(list(ingest.validate_files(lake, RULES, iter([files]))), ingest.VALIDATED)
    assert validated.num_rows == len(lines)
    passed = validated.filter(pc.is_null(validated.column("reason")))
    rejected = validated.filter(pc.is_valid(validated.column("reason")))
    assert all(rejected.column("detail").to_pylist())
    events = passed.set_column(passed.schema.get_field_index("ts"), "ts",
                               passed.column("ts").cast(pa.timestamp("ms", tz="UTC")))
    events = events.append_column("ds", pa.array([DS] * events.num_rows, pa.string()))
    quarantine = rejected.append_column("source", pa.array(["events"] * rejected.num_rows, pa.string()))
    quarantine = quarantine.append_column("ds", pa.array([DS] * rejected.num_rows, pa.string()))
    delta.replace_partition(lake, EVENTS, events.select(EVENTS.schema.names).cast(EVENTS.schema), {"ds": DS})
    delta.replace_partition(lake, QUARANTINE, quarantine.select(QUARANTINE.schema.names).cast(QUARANTINE.schema),
                            {"ds": DS, "source": "events"})
    return (delta.read(lake, EVENTS, where={"ds": DS}, columns=["event_id"]).num_rows,
            delta.read(lake, QUARANTINE, where={"ds": DS, "source": "events"}, columns=["reason"]).num_rows)


@PROPERTY
@given(st.lists(event_lines, min_size=1, max_size=6))
@example([encoded({**GOOD_EVENT, "user_id": "\ud800"}, True)])  # a lone surrogate passed, then broke Arrow
@example([b"[" * 100_000 + b"]" * 100_000, b'{"ts": ' + b"9" * 5000 + b"}"])  # RecursionError, ValueError
def test_any_event_line_becomes_a_writable_event_or_a_quarantine_row_with_a_reason(lake, lines):
    clean, quarantined = ingest_day(lake, [*lines, encoded(GOOD_EVENT, True)])
    assert clean >= 1 and clean + quarantined == len(lines) + 1


@PROPERTY
@given(st.lists(item_lines, min_size=1, max_size=6))
@example([encoded({**GOOD_ITEM, "title": "\udfff"}, True)])  # broke the text hash (UTF-8 encode)
@example([b"[" * 100_000 + b"]" * 100_000, b'{"duration_ms": ' + b"9" * 5000 + b"}"])
def test_any_catalog_line_becomes_a_writable_item_or_a_quarantine_row_with_a_reason(lake, lines):
    items, rejected = {}, []
    for number, line in enumerate(lines, start=1):
        try:
            item = catalog.parse_item(line)
        except ValueError as err:
            reason, _, detail = str(err).partition(": ")
            assert reason and detail
            rejected.append((number, line, reason, detail))
            continue
        text = catalog.item_text(item)
        items[item["item_id"]] = {**item, "text": text, "text_hash": hashlib.sha1(text.encode()).hexdigest(),
                                  "first_seen_ds": DS, "updated_ds": DS}
    delta.upsert(lake, ITEMS, pa.Table.from_pylist(list(items.values()), schema=ITEMS.schema))
    delta.replace_partition(lake, QUARANTINE, quarantine_table("catalog", rejected), {"ds": DS, "source": "catalog"})
    assert delta.read(lake, QUARANTINE, where={"ds": DS, "source": "catalog"}, columns=["reason"]).num_rows == len(rejected)
    assert set(items) <= set(delta.read(lake, ITEMS, columns=["item_id"]).column(0).to_pylist())
    assert len(items) <= len(lines) - len(rejected)  # the rest: later lines superseding earlier ones


@pytest.mark.parametrize("line, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    (b'{"item_id": "trk_9", "duration_ms": ' + b"9" * 5000 + b"}", "invalid_number"),
    (encoded({**GOOD_ITEM, "title": "\ud800"}, True), "invalid_text"),
    (encoded({**GOOD_ITEM, "item_id": "trk\x00"}, True), "invalid_text"),
    (encoded({**GOOD_ITEM, "duration_ms": 2**64}, True), "out_of_range"),
])
def test_hostile_catalog_lines_are_quarantined_with_a_reason(line, reason):
    with pytest.raises(ValueError, match=f"^{reason}: "):
        catalog.parse_item(line)


def test_free_text_keeps_tabs_and_line_breaks():
    assert catalog.parse_item(encoded({**GOOD_ITEM, "description": "a\tb\r\nc"}, True))["description"] == "a\tb\r\nc"


def test_a_day_with_the_three_lines_that_used_to_stop_ingest_is_ingested_with_them_quarantined(tmp_path, mlflow_store):
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), **mlflow_store})
    delta.upsert(cfg, ITEMS, pa.Table.from_pylist([{"item_id": "trk_1", "item_type": "track", "title": "t",
                                                     "text": "t", "text_hash": "h", "first_seen_ds": DS,
                                                     "updated_ds": DS}], schema=ITEMS.schema))
    good = [encoded({**GOOD_EVENT, "event_id": f"e{n}", "user_id": f"u{n % 3}"}, True) for n in range(30)]
    hostile = [b"[" * 100_000 + b"]" * 100_000,
               encoded({**GOOD_EVENT, "event_id": "big"}, True).replace(b'"ms_played": 1000', b'"ms_played": ' + b"7" * 5000),
               encoded({**GOOD_EVENT, "event_id": "sur", "user_id": "\ud800"}, True)]
    folder = tmp_path / "landing" / "events" / f"ds={DS}"
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_bytes(b"\n".join(good[:15] + hostile + good[15:]) + b"\n")
    result = ingest.run(DS, cfg, run_key="hostile")
    assert result.metrics["clean_rows"] == 30 and result.metrics["quarantined_rows"] == 3
    reasons = delta.read(cfg, QUARANTINE, where={"ds": DS}, columns=["reason"]).column(0).to_pylist()
    assert sorted(reasons) == ["invalid_number", "invalid_text", "too_deep"]
