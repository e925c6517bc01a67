"""The fault scenarios' results as a markdown table, kept between markers in docs/reliability.md."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import psutil

from jobs.faults.world import REPO, Outcome

DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def results_markdown(outcomes: list[Outcome], command: str, seconds: float) -> str:
    memory = psutil.virtual_memory().total / 2**30
    lines = [f"Observed on {dt.date.today().isoformat()} by `{command}` on this machine: {os.cpu_count()} cores, "
             f"{memory:.0f} GB RAM, load average {os.getloadavg()[0]:.1f} at the end (shared with other work); "
             f"{seconds / 60:.0f} min in all. {sum(o.passed for o in outcomes)} of {len(outcomes)} checks passed.", "",
             "| scenario | how it is run | observed | rows checked | rows lost | result |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(f"| {cell(o.scenario)} | {cell(o.how)} | {cell(o.observed)} | {o.rows_checked or ''} | "
                     f"{o.rows_lost if o.rows_checked else ''} | {'pass' if o.passed else '**FAIL**'} ({o.seconds:.0f}s) |")
    return "\n".join(lines)


def write_results(doc: Path, markdown: str, partial: bool = False) -> None:
    """Put the results between the markers of doc. A partial run (--only) replaces only the rows of
    the scenarios it ran and keeps every other row (and the summary line) of the previous run."""
    text = doc.read_text() if doc.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    previous, _, tail = rest.partition(END)
    if partial and previous.strip():
        markdown = _merge_rows(previous.strip(), markdown)
    doc.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}")


def _merge_rows(previous: str, partial: str) -> str:
    def rows(block: str) -> dict[str, str]:
        table = [line for line in block.splitlines() if line.startswith("| ")][1:]  # without the header
        return {line.split("|")[1].strip(): line for line in table}

    old, new = rows(previous), rows(partial)
    merged = [new.get(name, line) for name, line in old.items()] + [line for name, line in new.items() if name not in old]
    first, *rest = previous.splitlines()
    runs = [first, *(line for line in rest if line.startswith("Re-run on"))]  # the full run's line, earlier partial runs
    rerun = partial.splitlines()[0].replace("Observed on", "Re-run on", 1) + " Its rows replace the earlier ones."
    header = [line for line in partial.splitlines() if line.startswith("| scenario") or line.startswith("|---")]
    return "\n\n".join([*runs, rerun, "\n".join([*header, *merged])])
