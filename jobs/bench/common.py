"""What every `factory bench ...` command shares: the command line it records, and how it reports.

A benchmark's typer command measures inside `report`: a mistake the user can fix (FactoryError,
ConfigError) prints one line and exits 1; otherwise the markdown table is printed with the path of the JSON.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from jobs.config import ConfigError
from jobs.errors import FactoryError


def invocation(command: str, module: str) -> str:
    """The command line as typed: `factory bench COMMAND ARGS` or `python -m MODULE ARGS`."""
    if Path(sys.argv[0]).name == "factory":
        return f"factory bench {command} {shlex.join(sys.argv[3:])}".strip()
    return f"python -m {module} {shlex.join(sys.argv[1:])}".strip()


def report(measure: Callable[[], dict], render: Callable[[dict], str], out: Path) -> dict:
    """Run measure(); print render(result) and where its JSON is, or one line for a mistake the user
    can fix (FactoryError, or ConfigError from a bad config file)."""
    try:
        result = measure()
    except (FactoryError, ConfigError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    typer.echo(render(result))
    typer.echo(f"\nJSON: {out}")
    return result
