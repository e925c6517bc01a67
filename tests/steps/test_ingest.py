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
    # Hostile lines (jobs/steps/raw_line.py): each once stopped ingest for every row of its day.
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    (b'{"event_id": "e1", "ts": ' + b"9" * 5000 + b"}", "invalid_number"),
    (line(user_id="\ud800"), "invalid_text"),
    (line(user_id="u\u0000x"), "invalid_text"),
    (line(event_id="e\x1b[31m"), "invalid_text"),
    (line(item_id="t" * 10_000), "invalid_text"),
    (line(ts=2**70), "out_of_range"),
    (line(ms_played=-(2**64)), "out_of_range"),
    (b'{"event_id": "e1", "event_id": "e2"}', "duplicate_key"),
    (b'{"event_id": NaN}', "invalid_json"),
    (b'{"event_id": "' + b"x" * (1 << 21) + b'"}', "line_too_long"),
    (line(ts=1.5e300), "wrong_type"),
    (line(user_id=["u1"]), "wrong_type"),
    (line(user_id={"id": "u1"}), "wrong_type"),
])
def test_bad_line_is_rejected_with_the_first_broken_rule(raw, reason):
    with pytest.raises(Rejected) as rejected:
        validate_line(raw, RULES)
    assert rejected.value.reason == reason
    assert rejected.value.detail
