"""The synthetic log generator: deterministic drops, honest defect accounting, and the signals
(genres, shows, new items) the rest of the pipeline is supposed to learn from."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from jobs.config import GeneratorConfig
from jobs.days import day_bounds_ms
from jobs.synthetic.generate import DEFECT_KINDS, DaySummary, generate_drops, generated_days
from jobs.synthetic.listening import GroupSampler

SMALL = dataclasses.replace(
    GeneratorConfig(), seed=11, days=3, users=200, new_users_per_day=10, genres=10, artists_per_genre=3,
    tracks=300, shows=10, episodes=60, new_items_per_day=12, edited_items_per_day=6, malformed_share=0.02,
)
EVENT_KEYS = ("event_id", "user_id", "item_id", "event_type", "ts", "ms_played")


@pytest.fixture(scope="module")
def drops(tmp_path_factory) -> tuple[Path, list[DaySummary]]:
    landing = tmp_path_factory.mktemp("landing")
    return landing, generate_drops(SMALL, landing).days


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _catalog(landing: Path, ds: str) -> list[dict]:
    return [json.loads(line) for line in (landing / "catalog" / f"ds={ds}" / "items.jsonl").read_text().splitlines()]


def _lines(landing: Path, ds: str) -> list[bytes]:
    data = (landing / "events" / f"ds={ds}" / "events.jsonl").read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def _defect(line: bytes, start_ms: int, end_ms: int, known: set[str], seen: set[str]) -> str | None:
    """The defect kind a raw line shows, checked the way ingest would, or None for a clean event."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "non_utf8"
    except json.JSONDecodeError:
        return "invalid_json"
    if row.get("user_id") is None:
        return "missing_user_id"
    if tuple(row) != EVENT_KEYS:
        return "schema_drift"
    if not all(isinstance(row[k], int) for k in ("ts", "ms_played")):
        return "wrong_type"
    if row["ms_played"] < 0:
        return "negative_duration"
    if not start_ms <= row["ts"] < end_ms:
        return "ts_out_of_day"
    if row["item_id"] not in known:
        return "unknown_item"
    if row["event_id"] in seen:
        return "duplicate_event"
    seen.add(row["event_id"])
    return None


def _clean_events(landing: Path, days: list[str]) -> dict[str, list[dict]]:
    """ds -> clean events, and an assertion that every other line is the defect the summary counts."""
    known, out = set(), {}
    for ds in days:
        known |= {row["item_id"] for row in _catalog(landing, ds)}
        start, end = day_bounds_ms(ds)
        seen, found, clean = set(), Counter(), []
        for line in _lines(landing, ds):
            kind = _defect(line, start, end, known, seen)
            if kind:
                found[kind] += 1
            else:
                clean.append(json.loads(line))
        summary = json.loads((landing / "_generator" / f"ds={ds}.json").read_text())
        assert found == Counter({k: n for k, n in summary["defects"].items() if n}), ds
        out[ds] = clean
    return out


def test_same_seed_writes_identical_files(tmp_path):
    generate_drops(SMALL, tmp_path / "a")
    generate_drops(SMALL, tmp_path / "b")
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 3 * SMALL.days and first == second


def test_different_seed_differs(tmp_path, drops):
    generate_drops(dataclasses.replace(SMALL, seed=SMALL.seed + 1), tmp_path)
    ds = SMALL.start_date
    assert _lines(tmp_path, ds) != _lines(drops[0], ds)
    assert _catalog(tmp_path, ds) != _catalog(drops[0], ds)


def test_longer_run_keeps_earlier_days_identical(tmp_path, drops):
    generate_drops(dataclasses.replace(SMALL, days=2), tmp_path)
    assert _files(tmp_path) == {k: v for k, v in _files(drops[0]).items() if "2026-01-03" not in k}


def test_rerun_replaces_whatever_was_in_the_day_folders(tmp_path):
    stale = tmp_path / "events" / f"ds={SMALL.start_date}" / "old-part.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    generate_drops(dataclasses.replace(SMALL, days=1), tmp_path)
    assert sorted(p.name for p in stale.parent.iterdir()) == ["events.jsonl"]


def test_every_event_line_is_counted_in_summary(drops):
    landing, summaries = drops
    assert [s.ds for s in summaries] == generated_days(SMALL) == ["2026-01-01", "2026-01-02",
                                                                                  "2026-01-03"]
    for s in summaries:
        lines = _lines(landing, s.ds)
        assert len(lines) == s.raw_lines
        assert set(s.defects) == set(DEFECT_KINDS)
        expected = SMALL.malformed_share * len(lines)
        assert abs(sum(s.defects.values()) - expected) <= 0.1 * expected + 2
        assert min(s.defects.values()) >= 1, s.defects  # a big enough day shows every kind
        assert dataclasses.asdict(s) == json.loads((landing / "_generator" / f"ds={s.ds}.json").read_text())


def test_clean_events_reference_catalog_items_and_fall_inside_their_day(drops):
    landing, summaries = drops
    clean = _clean_events(landing, [s.ds for s in summaries])  # also: every defect line shows its kind
    for s in summaries:
        events = clean[s.ds]
        assert len(events) >= 0.95 * s.raw_lines
        ts = [e["ts"] for e in events]
        assert ts == sorted(ts)
        assert Counter(e["event_type"] for e in events).keys() == {"play", "skip", "save"}
        assert all(e["event_id"].startswith("e" + s.ds.replace("-", "") + "_") for e in events)
        assert all(e["user_id"].startswith("u_") for e in events)


def test_new_items_and_edits_appear_in_later_catalog_drops(drops):
    landing, summaries = drops
    first = _catalog(landing, SMALL.start_date)
    assert len(first) == SMALL.tracks + SMALL.episodes == summaries[0].new_items == summaries[0].catalog_rows
    assert all(list(row) == ["item_id", "item_type", "title", "description", "genre", "artist", "show", "duration_ms"]
               for row in first)
    latest = {row["item_id"]: row for row in first}
    clean = _clean_events(landing, [s.ds for s in summaries])
    for s in summaries[1:]:
        rows = _catalog(landing, s.ds)
        new = [r for r in rows if r["item_id"] not in latest]
        edited = [r for r in rows if r["item_id"] in latest]
        assert (len(new), len(edited)) == (s.new_items, s.edited_items)
        assert (len(new), len(edited)) == (SMALL.new_items_per_day, SMALL.edited_items_per_day)
        assert {r["item_type"] for r in new} == {"track", "episode"}
        for row in edited:
            before = latest[row["item_id"]]
            assert (row["title"], row["description"]) != (before["title"], before["description"])
            assert {k: v for k, v in row.items() if k not in ("title", "description")} == \
                   {k: v for k, v in before.items() if k not in ("title", "description")}
        played_today = {e["item_id"] for e in clean[s.ds]}
        assert len(played_today & {r["item_id"] for r in new}) >= len(new) // 2  # played from their first day
        latest.update({r["item_id"]: r for r in rows})


def test_item_text_names_genre_and_artist_or_show(drops):
    for row in _catalog(drops[0], SMALL.start_date):
        assert row["genre"] in row["description"] if row["item_type"] == "track" else row["show"] in row["description"]
        assert (row["artist"] is None) == (row["item_type"] == "episode") == (row["show"] is not None)
        assert row["duration_ms"] > 0 and row["title"]


def test_users_replay_their_genres(drops):
    landing, summaries = drops
    genre = {r["item_id"]: r["genre"] for s in summaries for r in _catalog(landing, s.ds)}
    clean = _clean_events(landing, [s.ds for s in summaries])
    day_genres = []
    for ds in (summaries[0].ds, summaries[1].ds):
        plays = defaultdict(list)
        for e in clean[ds]:
            if e["event_type"] == "play":
                plays[e["user_id"]].append(genre[e["item_id"]])
        day_genres.append(plays)
    users = sorted(set(day_genres[0]) & set(day_genres[1]))
    assert len(users) > 50
    shuffled = np.random.default_rng(0).permutation(users)

    def replay_share(pairs) -> float:
        shares = [np.mean([g in set(day_genres[0][then]) for g in day_genres[1][now]]) for now, then in pairs]
        return float(np.mean(shares))

    own, chance = replay_share(zip(users, users)), replay_share(zip(users, shuffled))
    assert own > 0.5 and own > 2 * chance, (own, chance)


def test_podcast_listeners_continue_shows_in_episode_order(drops):
    landing, summaries = drops
    show = {r["item_id"]: r["show"] for s in summaries for r in _catalog(landing, s.ds) if r["item_type"] == "episode"}
    clean = _clean_events(landing, [s.ds for s in summaries])
    played = defaultdict(list)  # (user, show) -> episode ids in time order; ids grow with episode number
    for ds in sorted(clean):
        for e in clean[ds]:
            if e["item_id"] in show and e["event_type"] != "save":
                played[e["user_id"], show[e["item_id"]]].append(e["item_id"])
    assert sum(len(v) for v in played.values()) > 100
    assert all(v == sorted(set(v)) for v in played.values())


def test_group_sampler_matches_weights_within_groups():
    members, groups = np.arange(6) + 100, np.array([1, 0, 1, 0, 1, 2])
    weights = np.array([1.0, 3.0, 0.0, 1.0, 3.0, 5.0])
    sampler = GroupSampler(members, groups, weights)
    rng = np.random.default_rng(0)
    for g in (0, 1, 2):
        drawn = sampler.sample(np.full(40_000, g), rng.random(40_000))
        freq = Counter(drawn.tolist())
        for m, mg, w in zip(members, groups, weights):
            expected = w / weights[groups == g].sum() if mg == g else 0.0
            assert abs(freq[int(m)] / 40_000 - expected) < 0.01
