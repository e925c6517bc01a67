"""Progress with an ETA for long work (training epochs, text encoding, backfill days, benchmark loops).

On a terminal it is a rich progress bar (description, bar, done/total, elapsed, ETA) on stderr; when
stderr is not a terminal (Airflow task logs, a test capturing output, a Ray worker) it writes one
plain line per ~10% of the work instead, so a log gets about ten lines, never one per item.

    with progress("encoding texts", total=len(texts), unit="texts") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

LINE_EVERY = 0.1  # share of the work between two plain lines


class PlainProgress:
    """One line per ~10% of `total` on `stream`: `description: 40% (400/1000 texts), 12s elapsed, ETA 18s`."""

    def __init__(self, description: str, total: float, unit: str, stream: TextIO):
        self.description, self.total, self.unit, self.stream = description, max(float(total), 0.0), unit, stream
        self.done, self.started, self._next_share = 0.0, time.perf_counter(), LINE_EVERY

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        share = self.done / self.total if self.total else 1.0
        if share + 1e-9 >= self._next_share:
            # Skip the marks this step jumped over: one line per call at most.
            while self._next_share <= share + 1e-9:
                self._next_share += LINE_EVERY
            self.note(self.line())

    def note(self, text: str) -> None:
        """A line of its own (e.g. an epoch's metrics), between the progress lines."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        share = min(self.done / self.total, 1.0) if self.total else 1.0
        eta = elapsed * (1 - share) / share if share > 0 else float("nan")
        return (f"{self.description}: {share:.0%} ({self.done:,.0f}/{self.total:,.0f} {self.unit}), "
                f"{format_seconds(elapsed)} elapsed, ETA {format_seconds(eta)}")


class NoProgress:
    """For work too small to report: advance and note do nothing."""

    def advance(self, amount: float = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class RichProgress:
    """A rich bar with ETA; same `advance` as PlainProgress."""

    def __init__(self, bar, task_id):
        self._bar, self._task = bar, task_id

    def advance(self, amount: float = 1) -> None:
        self._bar.advance(self._task, amount)

    def note(self, text: str) -> None:
        """A line printed above the bar."""
        self._bar.console.print(text, highlight=False, markup=False)


def format_seconds(seconds: float) -> str:
    """12s, 3m05s, 1h02m; "?" when unknown."""
    if seconds != seconds or seconds < 0:  # NaN: no work done yet
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@contextlib.contextmanager
def progress(description: str, total: float, unit: str = "", stream: TextIO | None = None,
             tty: bool | None = None, min_total: float = 0) -> Iterator[PlainProgress | RichProgress | NoProgress]:
    """A progress reporter for `total` units of work (see the module doc); `tty` forces the kind.
    Below `min_total` units it reports nothing (a day's few new texts need no bar)."""
    if total < min_total:
        yield NoProgress()
        return
    stream = stream or sys.stderr
    if tty is None:
        tty = bool(getattr(stream, "isatty", lambda: False)())
    if not tty:
        yield PlainProgress(description, total, unit, stream)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(file=stream), transient=True) as bar:
        yield RichProgress(bar, bar.add_task(description, total=total))
