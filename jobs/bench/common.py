"""What every benchmark shares: the machine it ran on, load and memory sampling, MLflow logging, the
one JSON writer (with its `summary` of judged figures), the command line it records and how a
`factory bench ...` command reports.

Every result JSON carries a top-level `summary`: one row per judged figure,
`{"figure": text, "value": number, "unit": text, "bar": text, "met": true/false/null, "detail": text}`
(`met` is null for a figure without a bar). Each benchmark module builds its rows in `summary_rows`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import psutil
import typer

from jobs.config import ConfigError, FactoryConfig, configure_logging, with_overrides
from jobs.errors import FactoryError
from jobs.runtime.quiet import quiet_third_parties

RESULTS = Path("benchmarks/results")
SUMMARY_KEYS = ("figure", "value", "unit", "bar", "met", "detail")



# --- the machine and its load -------------------------------------------------------------------

def machine() -> dict:
    """Cores, memory (GiB), CPU model, Python/torch/Ray versions, date and the 1/5/15-min load now."""
    cpuinfo = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")), "") if cpuinfo.exists() else ""
    return {"nproc": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "cpu": cpu or platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": _version("torch"), "ray": _version("ray"), "gpu": False, "date": time.strftime("%Y-%m-%d"),
            "load_at_start": os.getloadavg()}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


class LoadSampler:
    """os.getloadavg() every `every` seconds on a daemon thread, so results say how busy the machine was."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        one, five, fifteen = os.getloadavg()
        self.samples.append({"t_s": round(time.perf_counter() - self._started, 1),
                             "load1": one, "load5": five, "load15": fifteen})

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.every):
                return

    def summary(self) -> dict:
        one = np.array([s["load1"] for s in self.samples])
        return {"cores": os.cpu_count(), "load1_mean": float(one.mean()), "load1_min": float(one.min()),
                "load1_max": float(one.max()), "sample_every_s": self.every, "samples": self.samples,
                "note": "1-minute load average; our own work contributes about its thread count "
                        "(2 on 2 cores), anything above that was other processes competing for the cores"}


# --- the GEMM roofline -------------------------------------------------------------------------------

GEMM_RUNS = 5  # timed runs per rate; the best is the roofline (a busy moment only slows a run down)


def gemm_rate(d: int, rows: int, threads: int, ffn: int | None = None, runs: int = GEMM_RUNS,
              seconds: float = 1.0) -> dict:
    """fp32 GFLOP/s of torch.mm at one transformer block's shapes (rows x d @ d x 3d, d x d, d x ffn;
    rows x ffn @ ffn x d; ffn defaults to 4d), FLOP-weighted as in the model, on `threads` threads,
    and of a 2048³ square product for reference.

    Each of `runs` runs times passes for `seconds` and takes their median; the rate is the best run
    (measured again in every benchmark section, at that section's shapes and threads), and every run
    is kept with the spread (max - min) / max, so a roofline measured on a busy machine shows it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ffn = ffn or 4 * d
        shapes = [(rows, d, 3 * d), (rows, d, d), (rows, d, ffn), (rows, ffn, d)]
        pairs = [(torch.randn(m, k), torch.randn(n, k)) for m, k, n in shapes]  # weights (out, in) as nn.Linear

        def one_pass() -> None:
            for a, w in pairs:
                torch.mm(a, w.t())

        big = torch.randn(2048, 2048)
        model_runs = [_rate(one_pass, sum(2 * m * k * n for m, k, n in shapes), seconds) for _ in range(runs)]
        square_runs = [_rate(lambda: torch.mm(big, big), 2 * 2048**3, seconds) for _ in range(max(1, runs // 2))]
    finally:
        torch.set_num_threads(before)
    best = max(model_runs)
    return {"model_shapes_gflops": best, "model_shapes_runs_gflops": model_runs,
            "model_shapes_spread": (best - min(model_runs)) / best, "square_2048_gflops": max(square_runs),
            "square_2048_runs_gflops": square_runs, "d": d, "ffn": ffn, "rows": rows, "threads": threads, "runs": runs}


def _rate(fn: Callable[[], None], flops: float, seconds: float) -> float:
    """GFLOP/s of fn (`flops` per call): the median call over `seconds` after one warm-up call."""
    fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return flops / float(np.median(times)) / 1e9


# --- results: the summary rows and the one writer ------------------------------------------------

def summary_row(figure: str, value: float | int | None, unit: str = "", bar: str = "", met: bool | None = None,
                detail: str = "") -> dict:
    """One judged figure; `value` is the number it is judged by (None only if it was not measured)."""
    if isinstance(value, bool) or not (value is None or isinstance(value, int | float | np.integer | np.floating)):
        raise TypeError(f"summary value of {figure!r} must be a number, got {value!r}")
    return {"figure": figure, "value": None if value is None else float(value), "unit": unit, "bar": bar,
            "met": None if met is None else bool(met), "detail": detail}


def write_result(out: Path, result: dict, summary: list[dict]) -> dict:
    """Put `summary` first in `result` and write it to `out` as JSON (numpy numbers as floats)."""
    for row in summary:
        if tuple(row) != SUMMARY_KEYS:
            raise ValueError(f"summary row {row!r} must have exactly the keys {SUMMARY_KEYS}")
    result = {"summary": summary, **{k: v for k, v in result.items() if k != "summary"}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


# --- MLflow ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def benchmark_run(cfg: FactoryConfig, run_name: str, artifact: str, result: dict,
                  **mlflow_settings: str) -> Iterator[FactoryConfig]:
    """An MLflow run `run_name` in the experiment <experiment>_benchmarks (plus any [mlflow] settings,
    e.g. registered_model); yields that config. The caller logs params and metrics inside; on exit the
    result is logged as the artifact `artifact` (JSON) and result["mlflow"] names the run."""
    import mlflow

    from jobs.tracking.runs import configure_mlflow

    bench_cfg = with_overrides(cfg, mlflow={"experiment": f"{cfg.mlflow.experiment}_benchmarks", **mlflow_settings})
    with mlflow.start_run(experiment_id=configure_mlflow(bench_cfg), run_name=run_name) as run:
        yield bench_cfg
        mlflow.log_dict(result, artifact)
        result["mlflow"] = {"run_id": run.info.run_id, "experiment": bench_cfg.mlflow.experiment,
                            **result.get("mlflow", {})}


def log_summary(cfg: FactoryConfig, run_name: str, artifact: str, result: dict, summary: list[dict]) -> None:
    """A benchmark run in MLflow with its command, every number of the result outside lists, and each
    summary figure as a metric named after it (`summary.<figure, slugged>`); the result as an artifact."""
    import re

    import mlflow

    with benchmark_run(cfg, run_name, artifact, result):
        mlflow.log_params({"command": result.get("command", "")})
        metrics = flat_metrics("", {k: v for k, v in result.items() if k not in ("machine", "load", "summary")})
        metrics.update({f"summary.{re.sub(r'[^A-Za-z0-9_.-]+', '_', row['figure']).strip('_')}": row["value"]
                        for row in summary if row["value"] is not None})
        mlflow.log_metrics(metrics)


def flat_metrics(prefix: str, value, out: dict | None = None) -> dict:
    """Numbers of a nested result as {'a.b.c': x} (lists of runs are left to the JSON artifact)."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flat_metrics(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, bool | int | float | np.floating):
        out[prefix] = float(value)
    return out


# --- the command line -----------------------------------------------------------------------------

def setup_logging(with_time: bool = False) -> None:
    """Logging of a benchmark command: $FACTORY_LOG_LEVEL (default WARNING), optionally timestamped."""
    configure_logging(("%(asctime)s " if with_time else "") + "%(levelname)s %(name)s: %(message)s")
    quiet_third_parties()


def parse_ints(text: str, name: str) -> list[int]:
    """A comma-separated option of integers (`1_000_000` allowed); one sentence naming --name if not."""
    try:
        return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FactoryError(f"--{name} must be comma-separated integers, got {text!r}.") from None


def invocation(command: str) -> str:
    """The command line as typed: `factory bench COMMAND ARGS` or `python -m jobs.bench COMMAND ARGS`."""
    if Path(sys.argv[0]).name == "factory":
        return f"factory bench {command} {shlex.join(sys.argv[3:])}".strip()
    return f"python -m jobs.bench {command} {shlex.join(sys.argv[2:])}".strip()


def report(measure: Callable[[], dict], render: Callable[[dict], str], out: Path) -> dict:
    """Run measure(); print render(result) and where its JSON is, or one line for a mistake the user
    can fix (FactoryError, or ConfigError from a bad config file)."""
    try:
        result = measure()
    except (FactoryError, ConfigError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render(result))
    typer.echo(f"\nJSON: {out}")
    return result
