"""Seeded synthetic daily drops of a music/podcast platform: catalog items and raw listening events.

generate_drops(cfg, landing_dir) writes, for each ds from cfg.start_date on for cfg.days days:

    landing_dir/catalog/ds=YYYY-MM-DD/items.jsonl   first day: the whole catalog; later: new + edited items
    landing_dir/events/ds=YYYY-MM-DD/events.jsonl   raw events sorted by ts; ~malformed_share bad lines
    landing_dir/_generator/ds=YYYY-MM-DD.json       the DaySummary (counts, injected defects per kind)
    landing_dir/_generator/taste_shifts/ds=....jsonl on cfg.taste_shift_day only: who changed taste, to
                                                    what, and whether they said so in a profile edit

Each day: new items are published and some are edited, users arrive, a share of users is active, each
active user has sessions (a genre, or a followed podcast show), sessions play items, tastes drift.
What the pipeline can learn and a popularity baseline cannot: a user's genres (a sparse taste mixture
plus yesterday's session genres), favourite artists (a session keeps coming back to one artist),
heavy rotation (replays of the user's own recent tracks), and shows played episode after episode.

Same cfg -> byte-identical files: every draw comes from numpy Generators seeded by (cfg.seed, stream,
day) in a fixed order; nothing depends on the wall clock or on set iteration order.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.config import GeneratorConfig
from jobs.days import day_bounds_ms, shift
from jobs.synthetic.catalog import Catalog, add_new_items, build_catalog, edit_items
from jobs.synthetic.listening import DAY_MS, Users, add_users, drift_tastes, shift_tastes, simulate_day

DEFECT_KINDS = ("invalid_json", "missing_user_id", "unknown_item", "wrong_type", "negative_duration",
                "ts_out_of_day", "duplicate_event", "schema_drift", "non_utf8")
EVENT_TYPES = ("play", "skip", "save")  # indexed by generate_listening.PLAY, SKIP, SAVE
_CATALOG, _DAY, _DEFECTS, _SHIFT = 1, 2, 3, 4  # random streams: (seed, stream[, day])


@dataclass(frozen=True)
class DaySummary:
    ds: str
    raw_lines: int  # lines in events.jsonl, defects included
    catalog_rows: int  # rows in items.jsonl (= new_items + edited_items)
    new_users: int  # users whose first day this is (the first day: cfg.users)
    new_items: int  # items first published this day (the first day: the whole initial catalog)
    edited_items: int
    defects: dict[str, int]  # injected defect kind -> number of raw lines with it (every kind listed)


@dataclass(frozen=True)
class GenerationSummary:
    days: list[DaySummary]


def generated_days(cfg: GeneratorConfig) -> list[str]:
    """The ds strings the generator writes: cfg.days consecutive days from cfg.start_date."""
    return [shift(cfg.start_date, i) for i in range(cfg.days)]


def generate_drops(cfg: GeneratorConfig, landing_dir: Path,
                   progress: Callable[[str], None] | None = None) -> GenerationSummary:
    """Simulate cfg.days days and write their drops under landing_dir, replacing those days' folders.

    The whole history is simulated from the first day on every call, so a rerun (or a longer run with
    the same seed) writes byte-identical files for the days they share.
    """
    landing_dir = Path(landing_dir)
    catalog = build_catalog(cfg, np.random.default_rng([cfg.seed, _CATALOG]))
    users = Users.empty(catalog.n_music_genres)
    summaries = []
    for day, ds in enumerate(generated_days(cfg)):
        rng = np.random.default_rng([cfg.seed, _DAY, day])
        if day == 0:
            published, edited = list(range(catalog.size)), []
        else:  # edits touch items that existed before today; new items are new
            existing = catalog.size
            published = add_new_items(catalog, cfg.new_items_per_day, day, rng)
            edited = edit_items(catalog, cfg.edited_items_per_day, existing, rng)
        first_new_user = users.n
        add_users(users, catalog, cfg.users if day == 0 else cfg.new_users_per_day, day, rng)
        if cfg.taste_shift_day and day == cfg.taste_shift_day and cfg.taste_shift_share > 0:
            shifts = shift_tastes(users, catalog, cfg.taste_shift_share, cfg.taste_shift_edit_share, day,
                                  np.random.default_rng([cfg.seed, _SHIFT, day]))
            _write_taste_shifts(landing_dir, ds, shifts, catalog)
        start_ms, _ = day_bounds_ms(ds)
        events, n_active = simulate_day(cfg, catalog, users, day, start_ms, first_new_user, rng)
        drift_tastes(users, rng)

        lines, defects = render_event_lines(events, catalog, ds, cfg.malformed_share,
                                            np.random.default_rng([cfg.seed, _DEFECTS, day]))
        summary = DaySummary(ds, len(lines), len(published) + len(edited), users.n - first_new_user,
                             len(published), len(edited), defects)
        _write_day(landing_dir, ds, [catalog.row(i) for i in published + edited], lines, summary)
        summaries.append(summary)
        if progress:
            progress(f"generated {ds}: {len(events['ts'])} events in {len(lines)} raw lines "
                     f"({sum(defects.values())} with defects), {summary.catalog_rows} catalog rows, "
                     f"{n_active} of {users.n} users active")
    return GenerationSummary(summaries)


def render_event_lines(events: dict[str, np.ndarray], cat: Catalog, ds: str, malformed_share: float,
                       rng: np.random.Generator) -> tuple[list[bytes], dict[str, int]]:
    """The raw lines of a day (bytes, no newline) and the count of injected defects per kind.

    round(malformed_share * events) lines carry exactly one defect, kinds spread evenly over
    DEFECT_KINDS. A duplicate_event adds a copy right after its (clean) original; every other kind
    replaces its event's line, so the event is lost to the pipeline as it would be in production.
    """
    day = ds.replace("-", "")
    columns = (events[k].tolist() for k in ("user", "item", "etype", "ts", "ms"))
    # A generator, not a list: a dict per event for a 5M-event day would hold gigabytes at once.
    rows = ({"event_id": f"e{day}_{n + 1:07d}", "user_id": f"u_{u + 1:06d}", "item_id": cat.item_ids[i],
             "event_type": EVENT_TYPES[e], "ts": t, "ms_played": m}
            for n, (u, i, e, t, m) in enumerate(zip(*columns)))
    n_events = len(events["ts"])
    n_bad = int(round(malformed_share * n_events))
    kinds = rng.permutation(np.arange(n_bad) % len(DEFECT_KINDS)).tolist()
    kind_at = dict(zip(np.sort(rng.choice(n_events, n_bad, replace=False)).tolist(), kinds))
    lines, counts = [], dict.fromkeys(DEFECT_KINDS, 0)
    for n, row in enumerate(rows):
        line = _dumps(row)
        kind = DEFECT_KINDS[kind_at[n]] if n in kind_at else None
        if kind == "duplicate_event":
            lines += [line, line]  # a client retry: the exact same line again
        else:
            lines.append(line if kind is None else _corrupt(kind, row, line, rng))
        if kind:
            counts[kind] += 1
    return lines, counts


def _dumps(row: dict) -> bytes:
    return json.dumps(row, separators=(",", ":")).encode("utf-8")


def _corrupt(kind: str, row: dict, line: bytes, rng: np.random.Generator) -> bytes:
    """The line of `row` with one defect of `kind` (see DEFECT_KINDS)."""
    row = dict(row)
    if kind == "invalid_json":
        return line[:int(rng.integers(1, len(line) - 1))]  # truncated mid-write: never valid JSON
    if kind == "non_utf8":
        item = f'"item_id":"{row["item_id"]}"'.encode()
        return line.replace(item, item[:-1] + b"\xff\xfe\"")
    if kind == "missing_user_id":
        if rng.random() < 0.5:
            del row["user_id"]
        else:
            row["user_id"] = None
    elif kind == "unknown_item":  # real ids stay below 900000
        row["item_id"] = f"{row['item_id'][:3]}_{int(rng.integers(900_000, 1_000_000)):06d}"
    elif kind == "wrong_type":
        if rng.random() < 0.5:
            row["ms_played"] = ("abc", "12s", "NaN", "")[int(rng.integers(4))]
        else:
            row["ts"] = dt.datetime.fromtimestamp(row["ts"] / 1000, dt.UTC).isoformat()
    elif kind == "negative_duration":
        row["ms_played"] = -int(rng.integers(1, max(row["ms_played"], 1_000) + 1))
    elif kind == "ts_out_of_day":  # a broken device clock: far in the future or years ago
        days = int(rng.integers(30, 3_000)) if rng.random() < 0.5 else -int(rng.integers(730, 3_650))
        row["ts"] = row["ts"] + days * DAY_MS
    elif kind == "schema_drift":
        if rng.random() < 0.5:
            row[("client_version", "device", "session_id")[int(rng.integers(3))]] = "v9.1.3"
        else:  # user_id and item_id stay: missing ids are their own defect
            del row[("event_id", "event_type", "ts", "ms_played")[int(rng.integers(4))]]
    return _dumps(row)


def _write_day(landing_dir: Path, ds: str, catalog_rows: list[dict], lines: list[bytes], summary: DaySummary) -> None:
    """Replace the day's drop folders; each file appears whole (written aside, then renamed)."""
    for source in ("catalog", "events"):
        shutil.rmtree(landing_dir / source / f"ds={ds}", ignore_errors=True)
    catalog = b"".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in catalog_rows)
    _write_file(landing_dir / "catalog" / f"ds={ds}" / "items.jsonl", catalog)
    _write_file(landing_dir / "events" / f"ds={ds}" / "events.jsonl", b"".join(line + b"\n" for line in lines))
    _write_file(landing_dir / "_generator" / f"ds={ds}.json",
                (json.dumps(dataclasses.asdict(summary), indent=2) + "\n").encode())


def taste_shifts_path(landing_dir: Path, ds: str) -> Path:
    """Where the generator lists the day's taste shifts (one JSON object per shifted user)."""
    return Path(landing_dir) / "_generator" / "taste_shifts" / f"ds={ds}.jsonl"


def _write_taste_shifts(landing_dir: Path, ds: str, shifts: list[tuple[int, int, bool]], cat: Catalog) -> None:
    """One line per shifted user: user_id, the new genre, and whether an edit "more genre:G" (from ds) arrives."""
    rows = [{"user_id": f"u_{u + 1:06d}", "genre": cat.labels[g], "edit": e, "ds": ds} for u, g, e in shifts]
    _write_file(taste_shifts_path(landing_dir, ds), b"".join(_dumps(r) + b"\n" for r in rows))


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # hidden and not *.jsonl: readers skip it
    tmp.write_bytes(data)
    os.replace(tmp, path)
