"""The fault world: a tiny generated world built day by day with the real CLI, snapshots of its
state, CLI runs against it (each in its own process, as Airflow runs a task) and table fingerprints.

Tables are compared row by row: a hash per row, as multisets, so "rows lost" counts rows of the
reference missing afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.config import FactoryConfig, child_environment, env_overrides, load_config
from jobs.days import shift
from jobs.faults.inject import Pause
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ALL_TABLES
from jobs.steps import STEP_NAMES
from jobs.synthetic.worlds import FAULT_WORLD

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]

BOOKKEEPING = {"publish": ("table_versions", "published_at")}  # when and at which versions: a rerun may change them


@dataclass
class Outcome:
    scenario: str
    how: str
    observed: str
    passed: bool
    rows_checked: int = 0
    rows_lost: int = 0
    seconds: float = 0.0


class ScenarioFailed(Exception):
    pass


# --- comparing tables -------------------------------------------------------------------------

def fingerprint(cfg: FactoryConfig, tables=ALL_TABLES, days: list[str] | None = None) -> dict[str, Counter]:
    """Per table, the multiset of row hashes (rows of `days` only for ds-partitioned tables)."""
    out = {}
    for spec in tables:
        table = delta.read(cfg, spec)
        if days is not None and "ds" in spec.partition_by:
            table = table.filter(pc.is_in(table.column("ds"), pa.array(days)))
        table = table.drop_columns(list(BOOKKEEPING.get(spec.name, ())))
        if "index_uri" in table.column_names:  # a location: compare it relative to the lake root
            relative = [u.removeprefix(cfg.lake_uri) if u else u for u in table.column("index_uri").to_pylist()]
            table = table.set_column(table.column_names.index("index_uri"), "index_uri", pa.array(relative, pa.string()))
        out[spec.name] = Counter(hashlib.sha1(json.dumps(row, sort_keys=True, default=repr).encode()).hexdigest()
                                 for row in table.to_pylist())
    return out


def compare(reference: dict[str, Counter], now: dict[str, Counter]) -> tuple[int, int, int, list[str]]:
    """(rows checked, rows of the reference missing now, rows now not in the reference, differing tables)."""
    lost = sum(sum((reference[t] - now.get(t, Counter())).values()) for t in reference)
    extra = sum(sum((now.get(t, Counter()) - reference[t]).values()) for t in reference)
    differ = [t for t in reference if reference[t] != now.get(t, Counter())]
    return sum(sum(c.values()) for c in reference.values()), lost, extra, differ


def orphan_files(cfg: FactoryConfig, spec) -> int:
    """Parquet files in the table's folder that no commit references (what a killed writer leaves)."""
    root = Path(delta.table_uri(cfg, spec))
    referenced = set()
    for entry in sorted((root / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                referenced.add(unquote(action["add"]["path"]))
    for checkpoint in (root / "_delta_log").glob("*.checkpoint*.parquet"):
        adds = pq.read_table(checkpoint, columns=["add"]).column("add").to_pylist()
        referenced.update(unquote(a["path"]) for a in adds if a)
    files = {unquote(str(p.relative_to(root))) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}
    return len(files - referenced)


# --- the world: state snapshots and CLI runs ----------------------------------------------------

class FaultWorld:
    def __init__(self, workdir: Path, name: str = "daily"):
        self.workdir = workdir
        self.state = workdir / name / "state"
        self.snapshots = workdir / name / "snapshots"
        self.overrides = {**FAULT_WORLD, "paths.state_dir": str(self.state), "paths.landing_uri": str(workdir / "landing")}
        self.cfg = load_config(overrides=self.overrides)
        self.days = [shift(self.cfg.generator.start_date, i) for i in range(self.cfg.generator.days)]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a CLI run: none of the caller's FACTORY settings, the world's overrides, then
        `extra` (which wins over an override of the same setting, e.g. FACTORY__TRAIN__D_MODEL)."""
        settings = {**env_overrides(self.overrides), "PYSPARK_PYTHON": sys.executable,
                    "PYSPARK_DRIVER_PYTHON": sys.executable, "FACTORY_LOG_LEVEL": "WARNING",
                    "COLUMNS": "1000",  # one error sentence stays on one line
                    **extra}
        return child_environment("FACTORY", **settings)

    def command(self, *args: str, pause: Pause | None = None) -> list[str]:
        """`factory ARGS` as a child process; with `pause`, one whose Delta writes pause before their commit."""
        return pause.command(*args) if pause else [sys.executable, "-m", "jobs.cli", *args]

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        """Any command (argv) from the repository root with exactly `env`; output captured."""
        return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)

    def factory(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        done = self.run(self.command(*args), self.env(**env))
        if check and done.returncode != 0:
            raise ScenarioFailed(f"`factory {' '.join(args)}` exited {done.returncode}: {_tail(done.stderr)}")
        return done

    def start(self, *args: str, pause: Pause | None = None, **env: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args, pause=pause), env=self.env(**env), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def save(self, name: str) -> None:
        shutil.rmtree(self.snapshots / name, ignore_errors=True)
        shutil.copytree(self.state, self.snapshots / name, symlinks=True)
        (self.snapshots / f"{name}.done").touch()  # a snapshot without it was interrupted

    def restore(self, name: str) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.copytree(self.snapshots / name, self.state, symlinks=True)

    def reference(self, name: str, tables=None, days: list[str] | None = None) -> dict[str, Counter]:
        """The fingerprint of a snapshot (some tables and days), leaving the current state as it is."""
        current = self.state.with_name("state.keep")
        shutil.move(self.state, current)
        try:
            self.restore(name)
            return fingerprint(self.cfg, tables or ALL_TABLES, days)
        finally:
            shutil.rmtree(self.state, ignore_errors=True)
            shutil.move(current, self.state)


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:])


def _one_line_error(text: str) -> str:
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    return errors[-1].removeprefix("error: ") if errors else _tail(text, 1)


def _in_fresh_process(function: Callable, *args):
    """function(*args) in a new interpreter: its own Spark, Ray and MLflow connections, nothing left behind."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


STAGE_NAMES = ("before_d3", "before_features", "after_features", "before_embed", "before_sid", "after_sid", "after_d3",
               "after_d4", "after_d7")


def stage_commands(days: list[str]) -> list[tuple[str, list[list[str]]]]:
    """(snapshot name, the `factory` commands that lead to it from the previous snapshot) for every stage."""
    d1, d2, d3, d4, *rest = days
    return [
        ("before_d3", [["run", "--ds", d1], ["run", "--ds", d2]]),
        ("before_features", [["run", "--ds", d3, "--step", "catalog"], ["run", "--ds", d3, "--step", "ingest"]]),
        ("after_features", [["run", "--ds", d3, "--step", "features"]]),
        ("before_embed", [["run", "--ds", d3, "--step", "train"]]),
        ("before_sid", [["run", "--ds", d3, "--step", "embed"]]),
        ("after_sid", [["run", "--ds", d3, "--step", "semantic_ids"]]),
        ("after_d3", [["run", "--ds", d3, "--step", step] for step in STEP_NAMES[STEP_NAMES.index("semantic_ids") + 1:]]),
        ("after_d4", [["run", "--ds", d4]]),
        ("after_d7", [["run", "--ds", ds] for ds in rest]),
    ]


def build_stages(world: FaultWorld, fresh: bool, until: str | None = None) -> None:
    """The world's snapshots, in order, up to `until` (default: all); a build resumes after the last
    snapshot that exists.

    before_d3 (days 1-2 run), before_features (day 3 catalog + ingest), after_features, before_embed
    (train), before_sid (embed), after_sid (semantic_ids), after_d3 (every later step: index, profile, ...),
    after_d4, after_d7. Day 3 runs one process per step, as Airflow runs it.
    """
    stages = stage_commands(world.days)
    assert tuple(name for name, _ in stages) == STAGE_NAMES
    if until is not None:
        stages = stages[:STAGE_NAMES.index(until) + 1]
    if fresh:
        shutil.rmtree(world.workdir, ignore_errors=True)
    done = []
    for name, _ in stages:  # the longest run of finished stages from the start
        if not (world.snapshots / f"{name}.done").is_file():
            break
        done.append(name)
    if done:
        world.restore(done[-1])
    else:
        from jobs.synthetic.generate import generate_drops

        shutil.rmtree(world.state.parent, ignore_errors=True)
        generate_drops(world.cfg.generator, Path(world.cfg.landing_uri))
    for name, commands in stages[len(done):]:
        for command in commands:
            world.factory(*command)
        world.save(name)
        log.warning("fault world: snapshot %s", name)
