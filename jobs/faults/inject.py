"""Fault injection: pause a Delta write before its commit, so a scenario can kill -9 the process there;
or make the model registry fail as a locked or restarting store does.

Set only by the fault harness, never by production code: `pause_before_commit` replaces the two hooks
the lakehouse exposes, in the current process: jobs.lakehouse.delta.write_payload (the Arrow path) and
jobs.lakehouse.commit.before_commit (engines' files committed by the driver). For a CLI run in a
child process a scenario starts

    python -m jobs.faults.inject --pause items,events [--marker FILE] [--seconds 600] -- run --ds D ...

which installs the pause and then runs `factory run --ds D ...` in that same process.

On the Arrow path the pause sits inside delta-rs's write of the named tables, before the last batch
reaches it and so before the commit (after its first data files when the data is large enough for
delta-rs to flush some early). On the commit path it sits after every data file is written and before
the one commit.

    python -m jobs.faults.inject --registry-unavailable -- run --ds D --step train

makes every registry lookup (registered model, alias, version search) of that run raise MLflow's
TEMPORARILY_UNAVAILABLE error, as a locked SQLite store or a restarting MLflow server does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from deltalake.transaction import AddAction

from jobs.lakehouse import commit, delta
from jobs.lakehouse.tables import TableSpec


@dataclass(frozen=True)
class Pause:
    tables: tuple[str, ...]  # table names whose writes pause
    marker: Path | None = None  # file written when a pause starts (a scenario waits for it)
    seconds: float = 600.0

    def command(self, *cli_args: str) -> list[str]:
        """The child process: `factory CLI_ARGS` with this pause installed."""
        marker = ["--marker", str(self.marker)] if self.marker else []
        return [sys.executable, "-m", "jobs.faults.inject", "--pause", ",".join(self.tables), *marker,
                "--seconds", f"{self.seconds:g}", "--", *cli_args]


def pause_before_commit(pause: Pause) -> None:
    """Make every later write of pause.tables in this process pause before its commit."""

    def pausing_payload(spec: TableSpec, data: pa.Table) -> tuple[pa.Table | pa.RecordBatchReader, dict]:
        if spec.name not in pause.tables:
            return delta.plain_payload(spec, data)
        # target_file_size=1: delta-rs flushes each batch to its own file, so files exist before the pause.
        return pa.RecordBatchReader.from_batches(data.schema, _pausing_batches(spec, data, pause)), {"target_file_size": 1}

    def pausing_commit(spec: TableSpec, actions: list[AddAction]) -> None:
        if spec.name in pause.tables:
            _pause(spec, pause)

    delta.write_payload = pausing_payload
    commit.before_commit = pausing_commit


REGISTRY_LOOKUPS = ("get_registered_model", "get_model_version_by_alias", "search_model_versions")


def registry_unavailable() -> None:
    """Make every registry lookup of this process fail with a transient store error."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    def unavailable(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked [injected by jobs.faults.inject]",
                              error_code=TEMPORARILY_UNAVAILABLE)

    for name in REGISTRY_LOOKUPS:
        setattr(mlflow.MlflowClient, name, unavailable)


def registry_unavailable_command(*cli_args: str) -> list[str]:
    """The child process: `factory CLI_ARGS` with the registry failing (registry_unavailable)."""
    return [sys.executable, "-m", "jobs.faults.inject", "--registry-unavailable", "--", *cli_args]


def _pause(spec: TableSpec, pause: Pause) -> None:
    if pause.marker:
        Path(pause.marker).write_text(f"{spec.name} {os.getpid()}\n")
    print(f"FACTORY_FAULT paused inside the write of {spec.name} before its commit (pid {os.getpid()})",
          file=sys.stderr, flush=True)
    time.sleep(pause.seconds)


def _pausing_batches(spec: TableSpec, data: pa.Table, pause: Pause) -> Iterator[pa.RecordBatch]:
    batches = data.to_batches(max_chunksize=max(1, data.num_rows // 4 or 1))
    yield from batches[:-1]
    _pause(spec, pause)
    yield from batches[-1:]


def main(argv: list[str] | None = None) -> None:
    """`python -m jobs.faults.inject [--pause T1,T2 [--marker F] [--seconds S]] [--registry-unavailable] -- FACTORY ARGS`."""
    argv = sys.argv[1:] if argv is None else argv
    ours, cli_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m jobs.faults.inject", description=main.__doc__)
    parser.add_argument("--pause", help="comma-separated tables whose writes pause before the commit")
    parser.add_argument("--marker", type=Path, help="file written when a pause starts")
    parser.add_argument("--seconds", type=float, default=600.0, help="how long a pause lasts")
    parser.add_argument("--registry-unavailable", action="store_true", help="every registry lookup fails (transient)")
    args = parser.parse_args(ours)
    if not args.pause and not args.registry_unavailable:
        parser.error("give --pause TABLES, --registry-unavailable, or both")
    if args.pause:
        pause_before_commit(Pause(tuple(args.pause.split(",")), args.marker, args.seconds))
    if args.registry_unavailable:
        registry_unavailable()
    from jobs.cli import main as factory

    factory(cli_args)


if __name__ == "__main__":
    main()
