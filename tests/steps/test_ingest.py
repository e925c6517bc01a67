"""The validation rules, line by line: each bad line gets the first rule it breaks."""

import json

import pytest

from jobs.days import day_bounds_ms
from jobs.steps.ingest import DayRules, Rejected, validate_line

DS = "2026-01-01"
START, END = day_bounds_ms(DS)
RULES = DayRules(DS, START, END, {"trk_1": "track"})
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "trk_1", "event_type": "play", "ts": START + 5, "ms_played": 1000}


def line(**changes) -> bytes:
    row = {**GOOD, **changes}
    return json.dumps({k: v for k, v in row.items() if v is not ...}).encode()


def test_a_good_line_becomes_an_event_with_its_item_type():
    assert validate_line(line(), RULES) == {**GOOD, "item_type": "track"}


@pytest.mark.parametrize("raw, reason", [
    (b'{"event_id": "\xff"}', "non_utf8"),
    (b'{"event_id": ', "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (line(user_id=None), "missing_id"),
    (line(item_id=...), "missing_id"),
    (line(extra="x"), "schema_drift"),
    (line(ms_played=...), "schema_drift"),
    (line(ts="yesterday"), "wrong_type"),
    (line(ms_played=True), "wrong_type"),
    (line(event_type="like"), "wrong_type"),
    (line(ms_played=-1), "invalid_duration"),
    (line(ms_played=10**9), "invalid_duration"),
    (line(ts=END), "ts_out_of_day"),
    (line(ts=START - 1), "ts_out_of_day"),
    (line(item_id="trk_404"), "unknown_item"),
])
def test_bad_line_is_rejected_with_the_first_broken_rule(raw, reason):
    with pytest.raises(Rejected) as rejected:
        validate_line(raw, RULES)
    assert rejected.value.reason == reason
    assert rejected.value.detail
