"""Scripted fault scenarios on a tiny generated world: crashes, concurrency, backfill, gates, bad input.

`python -m jobs.faults.scenarios` (`make faults`) generates 7 days of drops, builds the world day by day with
the real CLI (Spark, Ray, MLflow, delta-rs, each run in its own process as Airflow would), keeps a
snapshot of the state before each interesting step, then runs every scenario against a restored
snapshot: it kills steps with SIGKILL inside a Delta write, runs days and steps concurrently, runs a
7-day backfill against the day-by-day runs, forces a bad model and a bad codebook, feeds bad and
oversized drops and bad invocations. Tables are compared row by row (a hash per row, as multisets),
so "rows lost" counts rows of the reference missing afterwards. The results replace the section
between the `faults:begin` / `faults:end` markers of docs/reliability.md.

Snapshots are cached under the work folder (default <state_dir>/faults); `--fresh` rebuilds them,
`--only a,b` runs some scenarios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.steps import STEP_NAMES
from jobs.config import FactoryConfig, load_config
from jobs.days import day_bounds_ms, shift
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ALL_TABLES, EVENTS, ITEM_VOCAB, ITEMS, QUARANTINE, TABLES_BY_NAME, USER_SEQUENCES

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"

# The tiny world (tests/test_pipeline.py's TINY over 7 days). Retraining every 3 days and refitting
# codebooks every 2 makes day 3 a refit day and keeps a model across days (drift is measured).
FAULT_WORLD = {
    "generator.users": "150", "generator.new_users_per_day": "10", "generator.genres": "6",
    "generator.artists_per_genre": "8", "generator.tracks": "240", "generator.shows": "6",
    "generator.episodes": "60", "generator.new_items_per_day": "8", "generator.edited_items_per_day": "4",
    "generator.days": "7", "generator.malformed_share": "0.02",
    "train.d_model": "16", "train.epochs": "2", "train.retrain_every_days": "3",
    "features.max_seq_len": "20", "sid.levels": "3", "sid.codes_per_level": "8", "sid.refit_every_days": "2",
    "ray.inference_batch_size": "64",
}
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
        env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY")}
        env.update({f"FACTORY__{k.replace('.', '__').upper()}": v for k, v in self.overrides.items()})
        env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, FACTORY_LOG_LEVEL="WARNING",
                   COLUMNS="1000")  # one error sentence stays on one line
        return {**env, **extra}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "jobs.cli", *args]

    def factory(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run(self.command(*args), env=self.env(**env), cwd=REPO, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise ScenarioFailed(f"`factory {' '.join(args)}` exited {done.returncode}: {_tail(done.stderr)}")
        return done

    def start(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(*args), env=self.env(**env), cwd=REPO, stdout=subprocess.PIPE,
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


def build_stages(world: FaultWorld, fresh: bool) -> None:
    """The world's snapshots, in order; a build resumes after the last snapshot that exists.

    before_d3 (days 1-2 run), before_features (day 3 catalog + ingest), after_features, before_embed
    (train), before_sid (embed), after_sid (semantic_ids), after_d3 (index, evaluate, publish),
    after_d4, after_d7. Day 3 runs one process per step, as Airflow runs it.
    """
    d1, d2, d3, d4, *rest = world.days
    stages = [
        ("before_d3", [["run", "--ds", d1], ["run", "--ds", d2]]),
        ("before_features", [["run", "--ds", d3, "--step", "catalog"], ["run", "--ds", d3, "--step", "ingest"]]),
        ("after_features", [["run", "--ds", d3, "--step", "features"]]),
        ("before_embed", [["run", "--ds", d3, "--step", "train"]]),
        ("before_sid", [["run", "--ds", d3, "--step", "embed"]]),
        ("after_sid", [["run", "--ds", d3, "--step", "semantic_ids"]]),
        ("after_d3", [["run", "--ds", d3, "--step", step] for step in ("index", "evaluate", "publish")]),
        ("after_d4", [["run", "--ds", d4]]),
        ("after_d7", [["run", "--ds", ds] for ds in rest]),
    ]
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


# --- scenarios ----------------------------------------------------------------------------------

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
    from jobs.steps.publish import check_gates, latest_published

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
    process = world.start(*args, FACTORY_FAULT_PAUSE_BEFORE_COMMIT=table, FACTORY_FAULT_MARKER=str(marker))
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
    try:
        check_gates(cfg, d3)
        gate = "passed"
        problems.append(f"the partial day {d3} passed the publish gates")
    except Exception as refused:  # noqa: BLE001 - any refusal is the expected outcome
        gate = str(refused)
    orphans = orphan_files(cfg, spec)
    world.factory(*args)  # the rerun, no fault
    checked, lost, extra, differ = compare(reference, fingerprint(cfg))
    if differ:
        problems.append(f"after the rerun {differ} differ from a clean run ({extra} extra rows)")
    observed = (f"killed {killed} processes inside the {table} write; {table} stayed at version {version_before} with "
                f"{orphans} unreferenced files; pointer still {pointer['ds'] if pointer else None}; publish gate: "
                f"\"{gate[:90]}\"; rerun equals a clean run: {not differ}") + ("; PROBLEMS: " + "; ".join(problems) if problems else "")
    return Outcome(name, f"`factory run --ds {d3} {' '.join('--step ' + s for s in steps)}` with "
                   f"FACTORY_FAULT_PAUSE_BEFORE_COMMIT={table}, kill -9 at the pause, check, rerun; "
                   f"compared with a clean run from the same snapshot",
                   observed, not problems, checked, lost, time.perf_counter() - started)


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


def _in_fresh_process(function: Callable, *args):
    """function(*args) in a new interpreter: its own Spark, Ray and MLflow connections, nothing left behind."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _together(world: FaultWorld, commands: list[list[str]], **env: str) -> list[tuple[int, str]]:
    """Start the CLI commands at the same time; (exit code, stderr) of each once all are done."""
    processes = [world.start(*command, **env) for command in commands]
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
    overlap = {"FACTORY_FAULT_PAUSE_BEFORE_COMMIT": "items,events,quarantine,item_vocab,user_sequences",
               "FACTORY_FAULT_PAUSE_SECONDS": "8"}
    for name, runs, reference, days in [
        ("two days at once", [[d3], [d4]], "after_d4", [d1, d2, d3, d4]),
        ("one day twice at once", [[d3], [d3]], "after_d3", [d1, d2, d3]),
    ]:
        started = time.perf_counter()
        world.restore("before_d3")
        logs = _together(world, [["run", "--ds", ds, "--step", "catalog", "--step", "ingest"] for (ds,) in runs], **overlap)
        logs += _together(world, [["run", "--ds", ds, "--step", "features"] for (ds,) in runs], **overlap)
        failed = [_one_line_error(err) for code, err in logs if code != 0]
        checked, lost, extra, differ = compare(world.reference(reference, tables, days), fingerprint(world.cfg, tables, days))
        vocab = delta.read(world.cfg, ITEM_VOCAB)
        duplicates = vocab.num_rows - len(set(vocab.column("item_idx").to_pylist()))
        out.append(Outcome(
            f"concurrency: {name}", f"two processes `factory run --ds {'/'.join(r[0] for r in runs)} --step catalog --step ingest`, "
            f"then `--step features`, each pausing 8 s inside every write; compared with the sequential run",
            f"exit codes {[code for code, _ in logs]}; {_retries(logs)}; {len(differ)} tables differ {differ or ''}; "
            f"{duplicates} duplicate vocabulary ids" + (f"; errors: {failed}" if failed else ""),
            not failed and not differ and not duplicates, checked, lost, time.perf_counter() - started))
    return out


def scenario_quality_gates(world: FaultWorld) -> list[Outcome]:
    out = [
        _bad_model(world, "untrained model is not promoted", "cold start (train.d_model=8) at train.lr=1e-6",
                   FACTORY__TRAIN__D_MODEL="8", FACTORY__TRAIN__LR="1e-6"),
        _bad_model(world, "diverged model (NaN) is not promoted", "train.lr=30: the weights diverge to NaN",
                   FACTORY__TRAIN__LR="30"),
    ]
    from jobs.steps.publish import latest_published

    started = time.perf_counter()
    d3 = world.days[2]
    world.restore("before_sid")
    pointer = latest_published(world.cfg)
    world.factory("run", "--ds", d3, "--step", "semantic_ids", FACTORY__SID__CODES_PER_LEVEL="2")
    world.factory("run", "--ds", d3, "--step", "index", "--step", "evaluate")
    done = world.factory("run", "--ds", d3, "--step", "publish", check=False)
    runs = _in_fresh_process(_registry_state, world.overrides, d3, "publish")
    kept = latest_published(world.cfg) == pointer
    out.append(Outcome("bad codebook is not published", "day 3's codebook refit with sid.codes_per_level=2 (collapse), "
                       "then index, evaluate, `--step publish`",
                       f"publish exit {done.returncode}: \"{_one_line_error(done.stderr)[:110]}\"; pointer still "
                       f"{pointer['ds']}: {kept}; MLflow publish run: gate_decision={runs['gate_decision']}",
                       done.returncode == 1 and kept and runs["gate_decision"] == "refused", seconds=time.perf_counter() - started))
    return out


def _bad_model(world: FaultWorld, name: str, how: str, **env: str) -> Outcome:
    """Force a retrain of day 3 with a bad setting, then run the rest of the day: the champion must
    stay, the day must be served by it, and the published pointer must never name the bad model."""
    from jobs.steps.publish import latest_published

    started = time.perf_counter()
    d3 = world.days[2]
    world.restore("after_d3")
    before = _in_fresh_process(_registry_state, world.overrides, d3, "train")
    world.factory("run", "--ds", d3, "--step", "train", "--force-retrain", **env)
    after = _in_fresh_process(_registry_state, world.overrides, d3, "train")
    rest = world.factory("run", "--ds", d3, *[a for s in ("embed", "index", "evaluate", "publish") for a in ("--step", s)],
                         check=False)
    served = set(delta.read(world.cfg, TABLES_BY_NAME["user_embeddings"], where={"ds": d3},
                           columns=["model_version"]).column(0).to_pylist())
    published = (latest_published(world.cfg) or {}).get("model_version")
    ok = (after["champion"] == before["champion"] and after["gate_decision"] == "challenger" and rest.returncode == 0
          and served == {before["champion"]} and published == before["champion"])
    return Outcome(name, f"`factory run --ds {d3} --step train --force-retrain` with {how}, then embed, index, "
                   f"evaluate, publish", f"champion v{before['champion']} -> v{after['champion']}, challenger "
                   f"v{after['challenger']}; MLflow train run: gate_decision={after['gate_decision']}, "
                   f"\"{after['gate_reason']}\"; rest of the day: exit {rest.returncode}"
                   + (f" (\"{_one_line_error(rest.stderr)[:100]}\")" if rest.returncode else "")
                   + f"; day served by {sorted(served)}; published model {published}",
                   ok, seconds=time.perf_counter() - started)


def _registry_state(overrides: dict, ds: str, step: str) -> dict:
    import mlflow

    from jobs.tracking import registry
    from jobs.tracking.runs import TAG_DS, TAG_KIND, TAG_STEP, configure_mlflow

    cfg = load_config(overrides=overrides)
    experiment = configure_mlflow(cfg)
    client = mlflow.MlflowClient()

    def alias(name: str) -> str | None:
        try:
            return str(client.get_model_version_by_alias(cfg.mlflow.registered_model, name).version)
        except mlflow.exceptions.MlflowException:
            return None

    runs = mlflow.search_runs([experiment], filter_string=f"tags.`{TAG_DS}` = '{ds}' AND tags.`{TAG_KIND}` = 'step' "
                              f"AND tags.`{TAG_STEP}` = '{step}'", order_by=["attributes.start_time DESC"],
                              max_results=1, output_format="list")
    params = runs[0].data.params if runs else {}
    return {"champion": alias(registry.CHAMPION), "challenger": alias(registry.CHALLENGER),
            "gate_decision": params.get("gate_decision"), "gate_reason": params.get("gate_reason")}


def bad_event_lines(ds: str, item_ids: list[str], good: int) -> tuple[list[bytes], Counter]:
    """A day's raw lines: `good` clean events (one with a CRLF ending) and one or more lines of every
    kind of defect ingest must quarantine; and the expected count per quarantine reason."""
    start, end = day_bounds_ms(ds)

    def event(n: int, **changes) -> dict:
        return {"event_id": f"x{ds}_{n}", "user_id": f"u_{abs(n) % 7}", "item_id": item_ids[abs(n) % len(item_ids)],
                "event_type": "play", "ts": start + 1000 * abs(n), "ms_played": 30_000, **changes}

    def dumps(row: dict) -> bytes:
        return json.dumps(row).encode()

    def without(key: str, row: dict) -> dict:
        return {k: v for k, v in row.items() if k != key}

    clean = [dumps(event(n)) for n in range(good)]
    clean[1] += b"\r"  # a CRLF line ending is not a defect
    bad = [
        ("invalid_json", clean[0][:20]), ("invalid_json", b"[1, 2]"), ("invalid_json", b""),
        ("invalid_json", "\ufeff".encode() + dumps(event(-1))),  # a byte-order mark
        ("non_utf8", dumps(event(-2)).replace(b'"play"', b'"pl\xffay"')),
        ("missing_id", dumps(event(-3, user_id=None))), ("missing_id", dumps(without("item_id", event(-4)))),
        ("missing_id", dumps(event(-5, event_id=""))),
        ("schema_drift", dumps({**event(-6), "device": "tv"})), ("schema_drift", dumps(without("ts", event(-7)))),
        ("wrong_type", dumps(event(-8, ts="2026-01-01T00:00:00Z"))), ("wrong_type", dumps(event(-9, ms_played=12.5))),
        ("wrong_type", dumps(event(-10, event_type="like"))), ("wrong_type", dumps(event(-11, ms_played=True))),
        ("invalid_duration", dumps(event(-12, ms_played=-5))), ("invalid_duration", dumps(event(-13, ms_played=10**12))),
        ("ts_out_of_day", dumps(event(-14, ts=end + 400 * 86_400_000))), ("ts_out_of_day", dumps(event(-15, ts=0))),
        ("ts_out_of_day", dumps(event(-16, ts=end))),
        ("unknown_item", dumps(event(-17, item_id="trk_999999"))),
        ("duplicate_event", clean[2]),  # the exact same line again, later in the day
    ]
    middle = len(clean) // 2
    return clean[:middle] + [line for _, line in bad] + clean[middle:], Counter(reason for reason, _ in bad)


def write_drop(landing: Path, source: str, ds: str, lines: list[bytes], files: int = 2) -> None:
    folder = landing / source / f"ds={ds}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    size = -(-len(lines) // files) if lines else 0
    for n in range(files):
        part = lines[n * size:(n + 1) * size] if size else []
        (folder / f"part-{n}.jsonl").write_bytes(b"".join(line + b"\n" for line in part))


def scenario_bad_input(world: FaultWorld) -> list[Outcome]:
    from jobs.steps.publish import check_gates

    world.restore("after_d3")
    cfg, landing = world.cfg, Path(world.cfg.landing_uri)
    items = delta.read(cfg, ITEMS, columns=["item_id"]).column(0).to_pylist()[:50]
    out = []
    mixed, share, empty = "2026-03-01", "2026-03-02", "2026-03-03"
    lines, expected = bad_event_lines(mixed, items, good=200)
    write_drop(landing, "events", mixed, lines)
    started = time.perf_counter()
    done = world.factory("run", "--ds", mixed, "--step", "ingest", check=False)
    quarantined = delta.read(cfg, QUARANTINE, where={"ds": mixed, "source": "events"}, columns=["reason"])
    counted = Counter(quarantined.column(0).to_pylist())
    clean = delta.read(cfg, EVENTS, where={"ds": mixed}, columns=["event_id"]).num_rows
    ok = done.returncode == 0 and counted == expected and clean + quarantined.num_rows == len(lines) and clean == 200
    out.append(Outcome("bad input is quarantined", f"{len(lines)} raw lines in 2 files: 200 clean (one CRLF) and "
                       f"{sum(expected.values())} defects of {len(expected)} kinds; `--step ingest`",
                       f"exit {done.returncode}; {clean} clean + {quarantined.num_rows} quarantined = {len(lines)} raw; "
                       f"reasons {dict(sorted(counted.items()))}", ok, len(lines), len(lines) - clean - quarantined.num_rows,
                       time.perf_counter() - started))

    started = time.perf_counter()
    before = fingerprint(cfg)
    done = world.factory("run", "--ds", mixed, "--step", "ingest", check=False, FACTORY__GATE__MAX_DROP_BYTES="1000")
    unchanged = fingerprint(cfg) == before
    out.append(Outcome("oversize day is refused", f"the same drop with gate.max_drop_bytes=1000", f"exit {done.returncode}: "
                       f"\"{_one_line_error(done.stderr)[:120]}\"; lake unchanged: {unchanged}",
                       done.returncode == 1 and unchanged, seconds=time.perf_counter() - started))

    started = time.perf_counter()
    write_drop(landing, "events", empty, [], files=1)
    done = world.factory("run", "--ds", empty, "--step", "ingest", check=False)
    unchanged = fingerprint(cfg) == before
    out.append(Outcome("empty day is refused", "an events drop with one empty file; `--step ingest`",
                       f"exit {done.returncode}: \"{_one_line_error(done.stderr)[:120]}\"; lake unchanged: {unchanged}",
                       done.returncode == 1 and unchanged, seconds=time.perf_counter() - started))

    started = time.perf_counter()
    lines, expected = bad_event_lines(share, items, good=40)
    write_drop(landing, "events", share, lines)
    done = world.factory("run", "--ds", share, "--step", "ingest", check=False)
    kept = delta.read(cfg, QUARANTINE, where={"ds": share, "source": "events"}, columns=["reason"]).num_rows
    try:
        check_gates(cfg, share)
        refused = "publish gates passed"
    except Exception as err:  # noqa: BLE001
        refused = f"publish refuses: {str(err)[:80]}"
    out.append(Outcome("quarantine share above the gate fails the day", f"40 clean + {sum(expected.values())} bad lines "
                       f"(34%) against gate.max_quarantine_share=0.2", f"exit {done.returncode}: "
                       f"\"{_one_line_error(done.stderr)[:100]}\"; {kept} quarantined rows kept as evidence; {refused}",
                       done.returncode == 1 and kept == sum(expected.values()) and refused.startswith("publish refuses"),
                       len(lines), 0, time.perf_counter() - started))
    return out


def scenario_bad_invocations(world: FaultWorld) -> list[Outcome]:
    world.restore("after_d3")
    d3 = world.days[2]
    not_a_folder = world.workdir / "not-a-folder"
    not_a_folder.write_text("a file where the lake's parent folder should be\n")
    cases = [
        ("unknown ds format", ["run", "--ds", "2026-1-3"], {}, "is not a date"),
        ("ds before the first data", ["run", "--ds", "2025-12-01", "--step", "features"], {}, "before the first data"),
        ("missing input drop", ["run", "--ds", "2026-06-01", "--step", "ingest"], {}, "No events drop"),
        ("MLflow unreachable", ["run", "--ds", d3, "--step", "catalog"],
         {"FACTORY__MLFLOW__TRACKING_URI": "http://127.0.0.1:9"}, "http://127.0.0.1:9"),
        ("Spark unreachable", ["run", "--ds", d3, "--step", "features"], {"FACTORY__SPARK__MASTER": "spark://127.0.0.1:9"},
         "spark://127.0.0.1:9"),
        ("Ray unreachable", ["run", "--ds", d3, "--step", "embed"], {"FACTORY__RAY__ADDRESS": "ray://127.0.0.1:9"},
         "ray://127.0.0.1:9"),
        ("lake not writable", ["run", "--ds", d3, "--step", "catalog"],
         {"FACTORY__PATHS__LAKE_URI": str(not_a_folder / "lake")}, "is not writable"),
    ]
    out = []
    for name, args, env, expected in cases:
        started = time.perf_counter()
        done = world.factory(*args, check=False, **env)
        message = _one_line_error(done.stderr)
        ok = done.returncode == 1 and expected in message and "Traceback" not in done.stderr
        out.append(Outcome(f"bad invocation: {name}", f"`factory {' '.join(args)}`" + "".join(f" with {k}={v}" for k, v in env.items()),
                           f"exit {done.returncode} after {time.perf_counter() - started:.0f}s: \"{message}\"", ok,
                           seconds=time.perf_counter() - started))
    return out


def scenario_unit_tests(world: FaultWorld) -> list[Outcome]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability.py"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    summary = _tail(done.stdout, 1)
    return [Outcome("unit-level checks", "`pytest tests/test_reliability.py` (validation, gates, lake retries and "
                    "crash, path safety, preflight, security)", summary, done.returncode == 0,
                    seconds=time.perf_counter() - started)]


SCENARIOS: dict[str, Callable[[FaultWorld], list[Outcome]]] = {
    "unit": scenario_unit_tests, "bad_input": scenario_bad_input, "bad_invocations": scenario_bad_invocations,
    "crash": scenario_crash, "rerun": scenario_rerun_each_step, "concurrency": scenario_concurrency,
    "gates": scenario_quality_gates, "backfill": scenario_backfill,
}


def run_faults(workdir: Path, only: list[str] | None = None, fresh: bool = False) -> list[Outcome]:
    """Build (or reuse) the world, run the scenarios, return their outcomes (a crashed scenario is a failed one)."""
    world = FaultWorld(workdir)
    started = time.perf_counter()
    build_stages(world, fresh)
    log.warning("fault world ready in %.0fs", time.perf_counter() - started)
    outcomes = []
    for name in only or list(SCENARIOS):
        started = time.perf_counter()
        try:
            found = SCENARIOS[name](world)
        except Exception as err:  # noqa: BLE001 - report, then go on with the other scenarios
            found = [Outcome(name, "see jobs/faults/scenarios.py", f"the scenario itself failed: {type(err).__name__}: {err}", False,
                             seconds=time.perf_counter() - started)]
        for outcome in found:
            log.warning("%s %s: %s", "PASS" if outcome.passed else "FAIL", outcome.scenario, outcome.observed)
        outcomes += found
    return outcomes


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
    summary = previous.splitlines()[0]
    rerun = partial.splitlines()[0].replace("Observed on", "Re-run on", 1) + " Its rows replace the earlier ones."
    header = [line for line in partial.splitlines() if line.startswith("| scenario") or line.startswith("|---")]
    return "\n".join([summary, "", rerun, "", *header, *merged])


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.faults.scenarios [--only a,b] [--fresh] [--no-doc]`; exit 1 if any check failed."""
    parser = argparse.ArgumentParser(prog="python -m jobs.faults.scenarios", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where the fault world lives (default <state_dir>/faults)")
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--fresh", action="store_true", help="rebuild the world instead of reusing its snapshots")
    parser.add_argument("--no-doc", action="store_true", help=f"do not write the results into {DOC.relative_to(REPO)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or []) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; scenarios: {', '.join(SCENARIOS)}")
    workdir = (args.workdir or load_config().state_dir / "faults").resolve()
    started = time.perf_counter()
    outcomes = run_faults(workdir, only, args.fresh)
    markdown = results_markdown(outcomes, "python -m jobs.faults.scenarios" + (f" --only {args.only}" if only else ""),
                                time.perf_counter() - started)
    print(markdown)
    if not args.no_doc:
        write_results(DOC, markdown, partial=bool(only))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
