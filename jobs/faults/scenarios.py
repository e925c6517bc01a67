"""Scripted fault scenarios on a tiny generated world: crashes, concurrency, reruns, backfill (and,
in jobs.faults.refusals, bad input, bad invocations and quality gates).

`factory faults` / `python -m jobs.faults` (`make faults`) generates 7 days of drops, builds the world
day by day with the real CLI (Spark, Ray, MLflow, delta-rs, each run in its own process as Airflow
would), keeps a snapshot of the state before each interesting step, then runs every scenario
against a restored snapshot: it kills steps with SIGKILL inside a Delta write (jobs.faults.inject),
runs days and steps concurrently, runs a 7-day backfill against the day-by-day runs, forces a bad
model and a bad codebook, feeds bad and oversized drops and bad invocations. The results replace
the section between the `faults:begin` / `faults:end` markers of docs/reliability.md.

Snapshots are cached under the work folder (default <state_dir>/faults); `--fresh` rebuilds them,
`--only a,b` runs some scenarios.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from jobs.config import child_environment, load_config
from jobs.errors import GateFailed
from jobs.faults.expect import Refusal, check_refusal
from jobs.faults.inject import Pause
from jobs.faults.operations import (
    scenario_forced_refit,
    scenario_parent_run,
    scenario_registry_error,
    scenario_sensor,
)
from jobs.faults.refusals import scenario_bad_input, scenario_bad_invocations, scenario_quality_gates
from jobs.faults.world import (
    REPO,
    STAGE_NAMES,
    FaultWorld,
    Outcome,
    ScenarioFailed,
    _in_fresh_process,
    _one_line_error,
    _tail,
    build_stages,
    compare,
    fingerprint,
    orphan_files,
)
from jobs.lakehouse import delta
from jobs.lakehouse.tables import EVENTS, ITEM_VOCAB, ITEMS, QUARANTINE, TABLES_BY_NAME, USER_SEQUENCES
from jobs.steps import STEP_NAMES

log = logging.getLogger(__name__)


def scenario_backfill(world: FaultWorld) -> list[Outcome]:
    started = time.perf_counter()
    other = FaultWorld(world.workdir, "backfill")
    shutil.rmtree(other.state.parent, ignore_errors=True)
    first, last = world.days[0], world.days[-1]
    other.factory("backfill", "--from", first, "--to", last)
    checked, lost, extra, differ = compare(world.reference("after_d7"), fingerprint(other.cfg))
    lakes = (world.snapshots / "after_d7" / Path(world.cfg.lake_uri).relative_to(world.state), Path(other.cfg.lake_uri))
    indexes = {ds: [hashlib.sha1((lake_root / "_indexes" / f"ds={ds}" / "items.faiss").read_bytes()).hexdigest()
                    for lake_root in lakes] for ds in world.days}
    differ += [f"index of {ds}" for ds, (a, b) in indexes.items() if a != b]
    return [Outcome("backfill = daily runs", f"`factory backfill --from {first} --to {last}` in one process vs 7 "
                    f"`factory run --ds D` (day 3 step by step); every table compared row by row, and the 7 faiss index files",
                    f"{len(differ)} tables or indexes differ {differ or ''}; {extra} extra rows".strip(), not differ,
                    checked, lost, time.perf_counter() - started)]

def _kill_group(process: subprocess.Popen) -> int:
    """SIGKILL the process, its process group and every descendant; the number of processes killed."""
    family = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    with _suppress():
        os.killpg(process.pid, signal.SIGKILL)
    for pid in family:
        with _suppress():
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                         for p in family):
        time.sleep(0.2)
    return len(family)

class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, (ProcessLookupError, psutil.NoSuchProcess, PermissionError))

def _crash(world: FaultWorld, name: str, before: str, steps: list[str], table: str) -> Outcome:
    """Run the steps cleanly from the snapshot (the reference), then again from the snapshot with a
    kill -9 inside the table's write; check what the kill left, rerun, compare with the reference."""
    from jobs.steps.publish import latest_published

    started = time.perf_counter()
    d3 = world.days[2]
    args = ["run", "--ds", d3, *[a for s in steps for a in ("--step", s)]]
    world.restore(before)
    world.factory(*args)
    reference = fingerprint(world.cfg)
    world.restore(before)
    cfg, spec = world.cfg, TABLES_BY_NAME[table]
    before_rows, version_before = fingerprint(cfg), delta.current_version(cfg, spec)
    pointer = latest_published(cfg)
    marker = world.workdir / f"{name}.marker"
    marker.unlink(missing_ok=True)
    process = world.start(*args, pause=Pause((table,), marker))
    while not marker.exists() and process.poll() is None:
        time.sleep(0.2)
    if not marker.exists():
        raise ScenarioFailed(f"{name}: the step ended before reaching the write of {table}: {_tail(process.stderr.read())}")
    deadline = time.time() + 5  # delta-rs flushes files in its own thread (only for data large enough)
    while orphan_files(cfg, spec) == 0 and time.time() < deadline:
        time.sleep(0.1)
    killed = _kill_group(process)
    now = fingerprint(cfg)
    torn = [t for t in now if now[t] != before_rows[t] and now[t] != reference[t]]  # neither old nor new content
    problems = [f"tables neither before nor after: {torn}"] if torn else []
    if delta.current_version(cfg, spec) != version_before or now[table] != before_rows[table]:
        problems.append(f"{table} changed without its commit")
    if latest_published(cfg) != pointer:
        problems.append("the published pointer moved")
    for pinned, version in json.loads(pointer["table_versions"]).items() if pointer else []:
        if version is not None:
            delta.read(cfg, TABLES_BY_NAME[pinned], version=version, columns=[TABLES_BY_NAME[pinned].schema.names[0]])
    gate, problem = partial_day_refusal(cfg, d3)
    problems += [f"publish gate on the partial day {d3}: {problem}"] if problem else []
    orphans = orphan_files(cfg, spec)
    world.factory(*args)  # the rerun, no fault
    checked, lost, extra, differ = compare(reference, fingerprint(cfg))
    if differ:
        problems.append(f"after the rerun {differ} differ from a clean run ({extra} extra rows)")
    observed = (f"killed {killed} processes inside the {table} write; {table} stayed at version {version_before} with "
                f"{orphans} unreferenced files; pointer still {pointer['ds'] if pointer else None}; publish gate: "
                f"\"{gate[:90]}\"; rerun equals a clean run: {not differ}")
    observed += "; PROBLEMS: " + "; ".join(problems) if problems else ""
    return Outcome(name, f"`factory run --ds {d3} {' '.join('--step ' + s for s in steps)}` with "
                   f"a pause before the {table} commit (jobs.faults.inject), kill -9 at the pause, check, rerun; "
                   f"compared with a clean run from the same snapshot",
                   observed, not problems, checked, lost, time.perf_counter() - started)

# A day whose step was killed mid-write lacks that step's outputs (or those of the steps after it).
PARTIAL_DAY_REFUSAL = Refusal(GateFailed, gates=("complete_outputs",))


def partial_day_refusal(cfg, ds: str) -> tuple[str, str | None]:
    """Publish's gates on a day a kill left partial: (what they said, the problem or None)."""
    from jobs.steps import publish

    return check_refusal(lambda: publish.check_gates(cfg, ds), PARTIAL_DAY_REFUSAL)

CRASHES = [  # name, snapshot before, steps, table whose write is killed
    ("crash in features", "before_features", ["features"], "user_sequences"),
    ("crash in embed", "before_embed", ["embed"], "item_embeddings"),
    ("crash in codebooks", "before_sid", ["semantic_ids"], "codebooks"),
    ("crash after codebooks", "before_sid", ["semantic_ids"], "item_tokens"),
]

def scenario_crash(world: FaultWorld) -> list[Outcome]:
    out = []
    for name, before, steps, table in CRASHES:
        try:
            out.append(_crash(world, name, before, steps, table))
        except Exception as err:  # noqa: BLE001 - one broken case must not hide the others
            out.append(Outcome(name, f"kill -9 inside the {table} write", f"the scenario failed: {err}", False))
    return out

def scenario_rerun_each_step(world: FaultWorld) -> list[Outcome]:
    world.restore("after_d3")
    results = _in_fresh_process(_rerun_steps, world.overrides, world.days[2])
    return [Outcome(f"rerun {step}", f"in one process: `run_step('{step}', day 3)` again on the finished day; every table "
                    f"compared row by row before/after", "identical" if not differ else f"differs: {differ}",
                    not differ, checked, lost, seconds)
            for step, checked, lost, differ, seconds in results]

def _rerun_steps(overrides: dict, ds: str) -> list[tuple]:
    from jobs.pipeline import run_step

    cfg = load_config(overrides=overrides)
    out = []
    for step in STEP_NAMES:
        before, started = fingerprint(cfg), time.perf_counter()
        run_step(step, ds, cfg)
        checked, lost, _, differ = compare(before, fingerprint(cfg))
        out.append((step, checked, lost, differ, time.perf_counter() - started))
    return out

def _together(world: FaultWorld, commands: list[list[str]], pause: Pause) -> list[tuple[int, str]]:
    """Start the CLI commands at the same time; (exit code, stderr) of each once all are done."""
    processes = [world.start(*command, pause=pause) for command in commands]
    return [(p.wait(), p.communicate()[1]) for p in processes]

def _retries(logs: list[tuple[int, str]]) -> str:
    text = "".join(err for _, err in logs)
    return (f"{text.count('conflicted with a concurrent commit')} commit retries, "
            f"{text.count('lost a write race')} step reruns")

def scenario_concurrency(world: FaultWorld) -> list[Outcome]:
    d1, d2, d3, d4 = world.days[:4]
    tables = [ITEMS, ITEM_VOCAB, EVENTS, QUARANTINE, USER_SEQUENCES]
    out = []
    # Each process pauses inside its writes, so both hold a snapshot when the other commits.
    overlap = Pause(("items", "events", "quarantine", "item_vocab", "user_sequences"), seconds=8)
    for name, runs, reference, days in [
        ("two days at once", [[d3], [d4]], "after_d4", [d1, d2, d3, d4]),
        ("one day twice at once", [[d3], [d3]], "after_d3", [d1, d2, d3]),
    ]:
        started = time.perf_counter()
        world.restore("before_d3")
        logs = _together(world, [["run", "--ds", ds, "--step", "catalog", "--step", "ingest"] for (ds,) in runs], overlap)
        logs += _together(world, [["run", "--ds", ds, "--step", "features"] for (ds,) in runs], overlap)
        failed = [_one_line_error(err) for code, err in logs if code != 0]
        checked, lost, extra, differ = compare(world.reference(reference, tables, days), fingerprint(world.cfg, tables, days))
        vocab = delta.read(world.cfg, ITEM_VOCAB)
        duplicates = vocab.num_rows - len(set(vocab.column("item_idx").to_pylist()))
        out.append(Outcome(
            f"concurrency: {name}",
            f"two processes `factory run --ds {'/'.join(r[0] for r in runs)} --step catalog --step ingest`, "
            f"then `--step features`, each pausing 8 s inside every write; compared with the sequential run",
            f"exit codes {[code for code, _ in logs]}; {_retries(logs)}; {len(differ)} tables differ {differ or ''}; "
            f"{duplicates} duplicate vocabulary ids" + (f"; errors: {failed}" if failed else ""),
            not failed and not differ and not duplicates, checked, lost, time.perf_counter() - started))
    return out

def scenario_unit_tests(world: FaultWorld) -> list[Outcome]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults/test_reliability.py"],
                          cwd=REPO, capture_output=True, text=True, env=child_environment(COLUMNS="200"))
    summary = _tail(done.stdout, 1)
    return [Outcome("unit-level checks", "`pytest tests/faults/test_reliability.py` (validation, gates, lake retries and "
                    "crash, path safety, preflight, security)", summary, done.returncode == 0,
                    seconds=time.perf_counter() - started)]

SCENARIOS: dict[str, Callable[[FaultWorld], list[Outcome]]] = {
    "unit": scenario_unit_tests, "bad_input": scenario_bad_input, "bad_invocations": scenario_bad_invocations,
    "crash": scenario_crash, "rerun": scenario_rerun_each_step, "concurrency": scenario_concurrency,
    "gates": scenario_quality_gates, "backfill": scenario_backfill,
    "registry_error": scenario_registry_error, "sensor": scenario_sensor, "forced_refit": scenario_forced_refit,
    "parent_run": scenario_parent_run,
}

# The last world snapshot each scenario restores or compares with: `--only` builds the world that far.
LAST_SNAPSHOT = {"unit": None, "bad_input": "after_d3", "bad_invocations": "after_d3", "crash": "after_sid",
                 "rerun": "after_d3", "concurrency": "after_d4", "gates": "after_d3", "backfill": "after_d7",
                 "registry_error": "after_features", "sensor": "after_d3", "forced_refit": "after_sid",
                 "parent_run": "before_embed"}


def run_faults(workdir: Path, only: list[str] | None = None, fresh: bool = False) -> list[Outcome]:
    """Build (or reuse) the world, run the scenarios, return their outcomes (a crashed scenario is a failed one)."""
    world = FaultWorld(workdir)
    started = time.perf_counter()
    needed = [LAST_SNAPSHOT[name] for name in only or SCENARIOS if LAST_SNAPSHOT[name]]
    build_stages(world, fresh, until=max(needed, key=STAGE_NAMES.index) if needed else STAGE_NAMES[0])
    log.warning("fault world ready in %.0fs", time.perf_counter() - started)
    outcomes = []
    for name in only or list(SCENARIOS):
        started = time.perf_counter()
        try:
            found = SCENARIOS[name](world)
        except Exception as err:  # noqa: BLE001 - report, then go on with the other scenarios
            found = [Outcome(name, "see jobs/faults/", f"the scenario itself failed: {type(err).__name__}: {err}", False,
                             seconds=time.perf_counter() - started)]
        for outcome in found:
            log.warning("%s %s: %s", "PASS" if outcome.passed else "FAIL", outcome.scenario, outcome.observed)
        outcomes += found
    return outcomes
