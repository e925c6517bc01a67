"""The daily pipeline: its steps in order, and running one step, one day or a range of days.

The Airflow DAG, the CLI and the tests all go through here, so a day runs the same way everywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable

from jobs import STEP_NAMES, semantic_ids, train
from jobs.config import FactoryConfig
from jobs.days import day_range
from jobs.errors import FactoryError
from jobs.tracking import StepResult, new_run_key

log = logging.getLogger(__name__)

STEPS: dict[str, Callable[..., StepResult]] = {name: importlib.import_module(f"jobs.{name}").run for name in STEP_NAMES}


def run_step(step: str, ds: str, cfg: FactoryConfig, run_key: str | None = None,
             force_retrain: bool = False, force_codebook_rebuild: bool = False) -> StepResult:
    if step not in STEPS:
        raise FactoryError(f"Unknown step {step!r}; steps are: {', '.join(STEPS)}.")
    if step == "train":
        return train.run(ds, cfg, run_key, force=force_retrain)
    if step == "semantic_ids":
        return semantic_ids.run(ds, cfg, run_key, force_refit=force_codebook_rebuild)
    return STEPS[step](ds, cfg, run_key)


def run_day(ds: str, cfg: FactoryConfig, steps: list[str] | None = None, run_key: str | None = None,
            on_step: Callable[[StepResult], None] | None = None,
            while_running: Callable[[str, str], contextlib.AbstractContextManager] = lambda ds, step: contextlib.nullcontext(),
            **flags) -> list[StepResult]:
    """Run the steps (all by default, in pipeline order) for ds under one MLflow parent run.

    `while_running(ds, step)` wraps each step (the CLI shows a spinner); `on_step` gets each result.
    """
    run_key = run_key or new_run_key()
    results = []
    for step in steps or list(STEPS):
        started = time.perf_counter()
        with while_running(ds, step):
            result = run_step(step, ds, cfg, run_key, **flags)
        log.info("ds=%s %s done in %.1fs", ds, step, time.perf_counter() - started)
        results.append(result)
        if on_step:
            on_step(result)
    return results


def backfill(first: str, last: str, cfg: FactoryConfig, **kwargs) -> dict[str, list[StepResult]]:
    """Run every day of [first, last] in order (what `airflow backfill create` does, without Airflow)."""
    return {ds: run_day(ds, cfg, **kwargs) for ds in day_range(first, last)}
