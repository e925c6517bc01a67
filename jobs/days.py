"""The logical date `ds` (YYYY-MM-DD): parsing with a clear error, arithmetic, and day bounds.

A ds becomes part of paths (`ds=2026-01-01` folders) and of Delta predicates, so only the exact
ASCII form is accepted: no spaces, slashes, quotes or non-ASCII digits can ride along.
"""

from __future__ import annotations

import datetime as dt
import re

from jobs.errors import FactoryError

_DS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_ds(ds: str) -> dt.date:
    if not isinstance(ds, str) or not _DS.fullmatch(ds):
        _bad(ds)
    try:
        return dt.date.fromisoformat(ds)
    except ValueError:
        _bad(ds)


def _bad(ds) -> dt.date:
    raise FactoryError(f"ds {ds!r} is not a date in YYYY-MM-DD form (for example 2026-01-01).")


def shift(ds: str, days: int) -> str:
    return (parse_ds(ds) + dt.timedelta(days=days)).isoformat()


def day_range(first: str, last: str) -> list[str]:
    """Every ds from first to last inclusive."""
    start, end = parse_ds(first), parse_ds(last)
    if end < start:
        raise FactoryError(f"The range {first}..{last} is empty: the end is before the start.")
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def day_bounds_ms(ds: str) -> tuple[int, int]:
    """[start, end) of the UTC day in epoch milliseconds."""
    start = dt.datetime.combine(parse_ds(ds), dt.time(), tzinfo=dt.UTC)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + 86_400_000
