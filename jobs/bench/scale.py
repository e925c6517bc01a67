"""End-to-end and scaling benchmark: generated worlds of stated size through the whole daily pipeline.

A world is U users, I items and about E events per user per day, generated for two days. Day 1
bootstraps (trains the first model on a sample of users, encodes the whole catalog for the semantic
IDs); day 2 is a steady-state day (the champion keeps serving, unchanged item texts come from the
content-vector cache, yesterday's embeddings are evaluated against today's plays). Each day runs as
`factory run --ds DAY` in its own process: the same `run_day` the Airflow tasks call. Per step, the
wall time and peak memory come back from the step's MLflow run (jobs/tracking/runs.py, jobs/tracking/memory.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from jobs.config import load_config
from jobs.steps import STEP_NAMES
from jobs.synthetic.generate import generated_days
from jobs.synthetic.worlds import ScaleWorld, config_toml
from jobs.tracking.runs import day_summary

PER_USER_STEPS = ("ingest", "features", "embed", "evaluate")  # their cost should grow with users
DRIVER_FLAT_STEPS = ("ingest", "features", "train", "embed", "evaluate")  # their driver must not grow with users
DRIVER_FLAT_BAR = 1.5  # driver peak at the largest world / at the one 10x smaller


def run_world(world: ScaleWorld, root: Path, progress=print) -> dict:
    """Generate the world under root/<label> (from scratch) and run its two days; per-step figures."""
    folder = root / world.label
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = folder / "factory.toml"
    config.write_text(config_toml(world))
    cfg = load_config(config)
    factory = str(Path(sys.executable).with_name("factory"))
    progress(f"[{world.label}] generating {world.users:,} users, {world.items:,} items, 2 days")
    started = time.perf_counter()
    _call([factory, "generate", "-c", str(config)], folder)
    result = {"world": asdict(world), "label": world.label, "generate_seconds": time.perf_counter() - started, "days": []}
    for ds in generated_days(cfg.generator):
        progress(f"[{world.label}] running {ds}")
        started = time.perf_counter()
        _call([factory, "run", "--ds", ds, "-c", str(config)], folder)
        wall = time.perf_counter() - started
        ran = {s["step"]: _step_figures(s["metrics"]) for s in day_summary(cfg, ds)}
        steps = {name: ran[name] for name in STEP_NAMES if name in ran}  # pipeline order
        result["days"].append({"ds": ds, "wall_seconds": wall, "steps": steps,
                               "raw_lines": int(steps["ingest"].get("raw_lines", 0)),
                               "users_embedded": int(steps["embed"].get("users_embedded", 0))})
        progress(f"[{world.label}] {ds}: {wall:.0f} s, " + ", ".join(f"{k} {v['wall_seconds']:.0f}s" for k, v in steps.items()))
    steady = result["days"][-1]
    per_user = sum(steady["steps"][s]["wall_seconds"] for s in PER_USER_STEPS if s in steady["steps"])
    result["steady_day"] = {"ds": steady["ds"], "wall_seconds": steady["wall_seconds"],
                            "per_user_steps_seconds": per_user,
                            "per_user_steps_ms_per_user": 1000 * per_user / max(steady["users_embedded"], 1)}
    return result


def _step_figures(metrics: dict) -> dict:
    keep = ("wall_seconds", "peak_rss_driver_mb", "peak_rss_tree_mb", "raw_lines", "clean_rows", "users",
            "users_embedded", "users_inferred", "users_carried_forward", "texts_encoded", "texts_cached",
            "encoder.hr_at_10", "popularity.hr_at_10", "encoder.users_evaluated")
    return {k: float(v) for k, v in metrics.items() if k in keep}


def _call(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"`{' '.join(command)}` failed in {cwd} (exit {done.returncode}):\n{tail}")


def linearity(results: list[dict]) -> dict:
    """Is cost per user flat? Per step group, seconds = fixed + per_user x users fitted over the worlds.

    Session start-up (Spark, Ray) is a fixed cost per day, so the raw seconds per user fall as worlds
    grow; the marginal cost between consecutive sizes is what must stay flat for linear growth.
    """
    users = np.array([r["world"]["users"] for r in results], dtype=float)
    seconds = np.array([r["steady_day"]["per_user_steps_seconds"] for r in results])
    per_user, fixed = np.polyfit(users, seconds, 1)
    marginal = [{"from_users": int(users[i]), "to_users": int(users[i + 1]),
                 "ms_per_user": 1000 * (seconds[i + 1] - seconds[i]) / (users[i + 1] - users[i])}
                for i in range(len(users) - 1)]
    for m in marginal[1:]:
        m["relative_to_first"] = m["ms_per_user"] / marginal[0]["ms_per_user"]
    return {"steps": list(PER_USER_STEPS), "fit_fixed_seconds": float(fixed), "fit_ms_per_user": float(1000 * per_user),
            "marginal": marginal,
            "points": [{"users": int(u), "seconds": float(t), "ms_per_user": 1000 * t / u} for u, t in zip(users, seconds)]}


def driver_peaks(results: list[dict]) -> list[dict]:
    """Driver peak RSS per step (its highest over the world's days: train works on day 1 only), each
    world against the one 10x smaller.

    The rows of the big tables move through Spark and Ray, so a step's driver (the `factory run`
    process) must stay flat as users grow: ratio <= DRIVER_FLAT_BAR.
    """
    by_users = {r["world"]["users"]: _peaks_over_days(r["days"]) for r in results}
    pairs = [(u, u // 10) for u in sorted(by_users) if u // 10 in by_users]
    rows = []
    for big, small in pairs:
        for step in DRIVER_FLAT_STEPS:
            peak_big = by_users[big].get(step, {}).get("peak_rss_driver_mb")
            peak_small = by_users[small].get(step, {}).get("peak_rss_driver_mb")
            if peak_big and peak_small:
                rows.append({"step": step, "users": big, "baseline_users": small, "peak_mb": peak_big,
                             "baseline_peak_mb": peak_small, "ratio": peak_big / peak_small})
    return rows


def _peaks_over_days(days: list[dict]) -> dict[str, dict[str, float]]:
    peaks: dict[str, dict[str, float]] = {}
    for day in days:
        for step, figures in day["steps"].items():
            if "peak_rss_driver_mb" in figures:
                best = peaks.setdefault(step, {"peak_rss_driver_mb": 0.0})
                best["peak_rss_driver_mb"] = max(best["peak_rss_driver_mb"], figures["peak_rss_driver_mb"])
    return peaks
