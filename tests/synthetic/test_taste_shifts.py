"""Taste shifts of the generator (issue 21): shifted users play their new genre, and nothing else changes."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from jobs.config import GeneratorConfig
from jobs.synthetic.generate import generate_drops, generated_days, taste_shifts_path

SMALL = dataclasses.replace(
    GeneratorConfig(), seed=11, days=3, users=300, new_users_per_day=10, genres=10, artists_per_genre=3,
    tracks=300, shows=10, episodes=60, new_items_per_day=12, edited_items_per_day=6, malformed_share=0.0,
)
SHIFTED = dataclasses.replace(SMALL, taste_shift_day=2, taste_shift_share=0.2, taste_shift_edit_share=0.5)


def genre_shares(landing, ds: str, users: set[str], genre: dict[str, str]) -> Counter:
    plays = Counter()
    for line in (landing / "events" / f"ds={ds}" / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["user_id"] in users and event["event_type"] == "play" and event["item_id"].startswith("trk"):
            plays[(event["user_id"], genre[event["item_id"]])] += 1
    return plays


def test_shifted_users_play_their_new_genre_and_a_share_of_them_say_so(tmp_path):
    generate_drops(SHIFTED, tmp_path)
    day1, day2, day3 = generated_days(SHIFTED)
    shifts = [json.loads(line) for line in taste_shifts_path(tmp_path, day3).read_text().splitlines()]
    assert len(shifts) == round(0.2 * (300 + 2 * 10)) and not taste_shifts_path(tmp_path, day2).exists()
    assert 0.3 < sum(s["edit"] for s in shifts) / len(shifts) < 0.7
    genre = {}
    for ds in (day1, day2, day3):
        for line in (tmp_path / "catalog" / f"ds={ds}" / "items.jsonl").read_text().splitlines():
            item = json.loads(line)
            genre[item["item_id"]] = item["genre"]
    users = {s["user_id"] for s in shifts}
    new_genre = {s["user_id"]: s["genre"] for s in shifts}

    def share_of_new_genre(ds: str) -> float:
        plays = genre_shares(tmp_path, ds, users, genre)
        return sum(n for (u, g), n in plays.items() if g == new_genre[u]) / max(sum(plays.values()), 1)

    assert share_of_new_genre(day1) < 0.1  # a genre they hardly played ...
    assert share_of_new_genre(day3) > 0.5  # ... is most of what they play from the shift on


def test_days_before_the_shift_are_byte_identical_to_a_world_without_shifts(tmp_path):
    generate_drops(SMALL, tmp_path / "plain")
    generate_drops(SHIFTED, tmp_path / "shifted")
    for ds in generated_days(SMALL)[:2]:
        for source in ("catalog", "events"):
            folder = f"{source}/ds={ds}"
            assert [p.read_bytes() for p in sorted((tmp_path / "plain" / folder).iterdir())] == \
                   [p.read_bytes() for p in sorted((tmp_path / "shifted" / folder).iterdir())]
    assert not (tmp_path / "plain" / "_generator" / "taste_shifts").exists()
