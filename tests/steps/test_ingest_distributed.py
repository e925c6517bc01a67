"""Ingest on Spark: one task per drop file, the duplicate rule across tasks, counts from the commits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.days import day_bounds_ms
from jobs.faults.refusals import write_drop
from jobs.lakehouse import commit, delta
from jobs.lakehouse.tables import EVENTS, QUARANTINE
from jobs.steps import catalog, ingest

DS = "2026-01-01"
START, _ = day_bounds_ms(DS)


def event(event_id: str, n: int) -> bytes:
    return json.dumps({"event_id": event_id, "user_id": f"u{n}", "item_id": "trk_1", "event_type": "play",
                       "ts": START + n, "ms_played": 1000 + n}).encode()


@pytest.fixture
def cfg(tmp_path, mlflow_store):
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "gate.max_quarantine_share": "1.0",
                                 "gate.min_raw_lines": "1", **mlflow_store})
    line = json.dumps({"item_id": "trk_1", "item_type": "track", "title": "t", "genre": "jazz", "artist": "A",
                       "duration_ms": 200_000}).encode()
    write_drop(Path(cfg.landing_uri), "catalog", DS, [line], files=1)
    catalog.run(DS, cfg)
    return cfg


def test_validation_runs_one_task_per_drop_file(cfg):
    write_drop(Path(cfg.landing_uri), "events", DS, [event(f"e{n}", n) for n in range(9)], files=3)
    files = ingest.drop_files(cfg, "events", DS)
    rules = ingest.DayRules(DS, *day_bounds_ms(DS), {"trk_1": "track"})
    assert ingest.validated_lines(cfg, rules, files).rdd.getNumPartitions() == 3


def test_a_duplicate_in_another_file_is_quarantined_byte_exact_and_the_first_in_drop_order_kept(cfg):
    twice_later = event("dup", 7).replace(b'"u7"', b'"u7" ')  # same event_id, other bytes
    lines = [event("a", 1), event("dup", 2), event("b", 3), twice_later, event("dup", 5), b"\xff{not json"]
    write_drop(Path(cfg.landing_uri), "events", DS, lines, files=3)  # dup in part-0, part-1 and part-2
    result = ingest.run(DS, cfg)
    events = {row["event_id"]: row for row in delta.read(cfg, EVENTS, where={"ds": DS}).to_pylist()}
    assert sorted(events) == ["a", "b", "dup"] and events["dup"]["user_id"] == "u2"  # part-0 line 2 came first
    quarantined = sorted(delta.read(cfg, QUARANTINE, where={"ds": DS, "source": "events"}).to_pylist(),
                         key=lambda r: (r["source_file"], r["line_number"]))
    assert [(Path(r["source_file"]).name, r["line_number"], r["reason"]) for r in quarantined] == [
        ("part-1.jsonl", 2, "duplicate_event"), ("part-2.jsonl", 1, "duplicate_event"), ("part-2.jsonl", 2, "non_utf8")]
    assert [r["raw_bytes"] for r in quarantined] == [twice_later, event("dup", 5), b"\xff{not json"]
    assert quarantined[0]["raw"] == twice_later.decode() and quarantined[0]["detail"] == f"event_id dup already seen on {DS}"
    assert result.metrics["raw_lines"] == 6 and result.metrics["clean_rows"] == 3
    assert result.metrics["quarantined.duplicate_event"] == 2 and result.metrics["quarantined.non_utf8"] == 1


def test_nothing_lost_is_checked_against_the_commits_row_counts(cfg, monkeypatch):
    write_drop(Path(cfg.landing_uri), "events", DS, [event(f"e{n}", n) for n in range(5)], files=2)
    ingest.run(DS, cfg)
    assert commit.committed_rows(cfg, EVENTS, {"ds": DS}) == 5
    monkeypatch.setattr(commit, "committed_rows", lambda cfg, spec, where, version=None: 0)
    with pytest.raises(RuntimeError, match="5 raw lines but 0 clean"):
        ingest.run(DS, cfg)
