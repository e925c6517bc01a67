"""`factory faults` / `python -m jobs.faults` (`make faults`): run the fault scenarios, write the results.

Import-light (typer only): jobs.cli mounts this command; the scenarios load when it runs.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer


def faults(
    workdir: Annotated[Path | None, typer.Option(help="Where the fault world lives (default <state_dir>/faults).")] = None,
    only: Annotated[str | None,
                    typer.Option(help="Comma-separated scenarios (default: all; an unknown name lists them).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Rebuild the world instead of reusing its snapshots.")] = False,
    no_doc: Annotated[bool, typer.Option("--no-doc", help="Do not write the results into docs/reliability.md.")] = False,
) -> None:
    """Scripted fault scenarios on a tiny generated world: crashes, concurrency, backfill, gates, bad input.

    Exits 1 if any check failed. About an hour on 2 shared cores (docs/reliability.md).
    """
    from jobs.config import load_config
    from jobs.faults.report import DOC, results_markdown, write_results
    from jobs.faults.scenarios import SCENARIOS, run_faults

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    chosen = [name.strip() for name in only.split(",")] if only else None
    unknown = sorted(set(chosen or []) - set(SCENARIOS))
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; scenarios: {', '.join(SCENARIOS)}",
                                 param_hint="--only")
    folder = (workdir or load_config().state_dir / "faults").resolve()
    started = time.perf_counter()
    outcomes = run_faults(folder, chosen, fresh)
    program = "factory faults" if Path(sys.argv[0]).name == "factory" else "python -m jobs.faults"
    markdown = results_markdown(outcomes, program + (f" --only {only}" if chosen else ""), time.perf_counter() - started)
    print(markdown)
    if not no_doc:
        write_results(DOC, markdown, partial=bool(chosen))
    raise typer.Exit(0 if all(o.passed for o in outcomes) else 1)


def main() -> None:
    """`python -m jobs.faults`."""
    command = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    command.command()(faults)
    command(prog_name="python -m jobs.faults")
