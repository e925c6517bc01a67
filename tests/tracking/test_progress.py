"""jobs/tracking/progress.py: a bar on a terminal, about ten plain lines in a log."""

import io

from jobs.tracking.progress import format_seconds, progress


def test_without_a_terminal_progress_writes_one_line_per_tenth_of_the_work():
    out = io.StringIO()
    with progress("encoding", total=1000, unit="texts", stream=out) as bar:
        for _ in range(1000):
            bar.advance(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("encoding: 10% (100/1,000 texts)") and "ETA" in lines[0]
    assert lines[-1].startswith("encoding: 100% (1,000/1,000 texts)")


def test_a_large_step_writes_one_line_not_one_per_mark_it_jumped():
    out = io.StringIO()
    with progress("days", total=4, unit="days", stream=out) as bar:
        bar.advance(3)
        bar.note("ds=2026-01-03 done")
        bar.advance(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0], "ds=2026-01-03 done",
                                           out.getvalue().splitlines()[2]]
    assert out.getvalue().startswith("days: 75% (3/4 days)")


def test_on_a_terminal_progress_is_a_rich_bar_with_its_notes():
    out = io.StringIO()
    with progress("training", total=10, unit="steps", stream=out, tty=True) as bar:
        bar.advance(5)
        bar.note("epoch 1: loss 0.5")
        bar.advance(5)
    assert "epoch 1: loss 0.5" in out.getvalue()


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 185, 3720, float("nan"))] == ["4s", "3m05s", "1h02m", "?"]


def test_work_below_min_total_reports_nothing():
    out = io.StringIO()
    with progress("encoding", total=8, stream=out, min_total=100) as bar:
        bar.advance(8)
        bar.note("hidden")
    assert out.getvalue() == ""
