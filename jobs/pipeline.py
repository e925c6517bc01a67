"""The daily pipeline: its steps in order, and running one step, one day or a range of days.

The Airflow DAG, the CLI and the tests all go through here, so a day runs the same way everywhere.
Before a step starts, `preflight` turns the usual invocation mistakes into one sentence each (a lake
that cannot be written, an MLflow/Spark/Ray endpoint that does not answer, a ds before the first
data) instead of a stack trace minutes later. A step that loses a race with a concurrent run
(ConcurrentWriteError) is rerun from a fresh snapshot: every step is idempotent for its ds.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from jobs.config import FactoryConfig, ray_address, run_key_from_env
from jobs.days import day_range, parse_ds
from jobs.errors import ConcurrentWriteError, FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.landing import drop_days
from jobs.lakehouse.tables import EVENTS
from jobs.steps import FLAGS, STEP_NAMES, STEPS_BY_NAME
from jobs.tracking import day_runs
from jobs.tracking.progress import progress
from jobs.tracking.runs import StepResult, new_run_key

log = logging.getLogger(__name__)

STEP_ATTEMPTS = 3  # a step that lost a write race is rerun up to this many times in all
CONNECT_TIMEOUT_SECONDS = 3.0


def run_step(step: str, ds: str, cfg: FactoryConfig, run_key: str | None = None, **flags: bool) -> StepResult:
    """Run one step for ds. flags: the CLI/DAG flags by name (jobs.steps.FLAGS, e.g. force_retrain=True);
    the step gets the ones it takes (Step.flags) as its run() keywords, the others are ignored."""
    if step not in STEPS_BY_NAME:
        raise FactoryError(f"Unknown step {step!r}; steps are: {', '.join(STEP_NAMES)}.")
    unknown = sorted(set(flags) - {flag.name for flag in FLAGS})
    if unknown:
        raise TypeError(f"run_step got unknown flag(s) {', '.join(unknown)}; flags are: {', '.join(f.name for f in FLAGS)}.")
    parse_ds(ds)
    preflight(cfg, step, ds)
    alone = not (run_key or run_key_from_env())  # no invocation around this step: it is one of its own
    run_key = run_key or run_key_from_env() or new_run_key()
    day_runs.step_started(cfg, ds, run_key, step)
    try:
        result = _run_with_race_retries(step, ds, cfg, run_key, flags)
    except BaseException as err:  # recorded on the day's parent run, then raised unchanged
        day_runs.step_failed(cfg, ds, run_key, step, err)
        raise
    day_runs.step_succeeded(cfg, ds, run_key, result, last=step == STEP_NAMES[-1])
    if alone and step != STEP_NAMES[-1]:
        day_runs.invocation_ended(cfg, ds, run_key, [step])
    return result


def _run_with_race_retries(step: str, ds: str, cfg: FactoryConfig, run_key: str, flags: dict) -> StepResult:
    run = step_function(step)
    kwargs = {flag.argument: bool(flags.get(flag.name, False)) for flag in STEPS_BY_NAME[step].flags}
    for attempt in range(1, STEP_ATTEMPTS + 1):
        try:
            return run(ds, cfg, run_key, **kwargs)
        except ConcurrentWriteError as lost:
            if attempt == STEP_ATTEMPTS:
                raise
            log.warning("ds=%s %s lost a write race (%s); rerunning it (attempt %d of %d)", ds, step, lost,
                        attempt + 1, STEP_ATTEMPTS)
    raise AssertionError("unreachable")


def step_function(step: str) -> Callable[..., StepResult]:
    """`jobs.steps.<step>.run`, imported on first use: Spark, Ray and torch load only for the steps that need them."""
    return importlib.import_module(f"jobs.steps.{step}").run


def run_day(ds: str, cfg: FactoryConfig, steps: list[str] | None = None, run_key: str | None = None,
            on_step: Callable[[StepResult], None] | None = None,
            while_running: Callable[[str, str], contextlib.AbstractContextManager] = lambda ds, step: contextlib.nullcontext(),
            **flags) -> list[StepResult]:
    """Run the steps (all by default, in pipeline order) for ds under one MLflow parent run.

    `while_running(ds, step)` wraps each step (the CLI shows a spinner); `on_step` gets each result.
    """
    run_key = run_key or new_run_key()
    results = []
    steps = steps or list(STEP_NAMES)
    for step in steps:
        started = time.perf_counter()
        with while_running(ds, step):
            result = run_step(step, ds, cfg, run_key, **flags)
        log.info("ds=%s %s done in %.1fs", ds, step, time.perf_counter() - started)
        results.append(result)
        if on_step:
            on_step(result)
    if steps[-1] != STEP_NAMES[-1]:  # only some steps: the day's parent run ends as "partial"
        day_runs.invocation_ended(cfg, ds, run_key, steps)
    return results


def backfill(first: str, last: str, cfg: FactoryConfig, **kwargs) -> dict[str, list[StepResult]]:
    """Run every day of [first, last] in order (what `airflow backfill create` does, without Airflow),
    with a progress bar over the days."""
    days, results = day_range(first, last), {}
    with progress(f"backfill {first}..{last}", total=len(days), unit="days") as bar:
        for ds in days:
            results[ds] = run_day(ds, cfg, **kwargs)
            bar.advance(1)
    return results


# --- preflight: one clear sentence per invocation mistake -------------------------------------

def preflight(cfg: FactoryConfig, step: str, ds: str) -> None:
    """Raise FactoryError naming the configured address if something the step needs is missing."""
    delta.check_writable(cfg)
    check_mlflow(cfg)
    services = STEPS_BY_NAME[step].services
    if "spark" in services:
        check_spark(cfg)
    if "ray" in services:
        check_ray(cfg)
    check_not_before_first_data(cfg, step, ds)


def check_mlflow(cfg: FactoryConfig) -> None:
    uri = cfg.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        try:
            delta.probe_write(Path(uri.removeprefix("sqlite:///")).parent)
        except OSError as err:
            raise FactoryError(f"The MLflow store {uri} (mlflow.tracking_uri) cannot be written ({err.strerror or err}); "
                               f"fix the folder's permissions or point mlflow.tracking_uri elsewhere.") from None
    elif uri.startswith(("http://", "https://")):
        _check_reachable("the MLflow tracking server", uri, "mlflow.tracking_uri or FACTORY__MLFLOW__TRACKING_URI")


def check_spark(cfg: FactoryConfig) -> None:
    master = cfg.spark.master
    if master.startswith("spark://"):  # spark://host:7077 or, with standby masters, spark://h1:7077,h2:7077
        hosts = master.removeprefix("spark://").split(",")
        errors = []
        for host in hosts:
            try:
                return _check_reachable("the Spark master", f"spark://{host}", "spark.master or FACTORY__SPARK__MASTER", 7077)
            except FactoryError as err:
                errors.append(err)
        raise errors[-1]
    if master.startswith("k8s://"):
        _check_reachable("the Kubernetes API for Spark", master.removeprefix("k8s://"), "spark.master or FACTORY__SPARK__MASTER",
                         shown=master)


def check_ray(cfg: FactoryConfig) -> None:
    address, where = ray_address(cfg)
    if address in ("", "auto", "local"):
        return
    _check_reachable("the Ray cluster", address if "://" in address else f"gcs://{address}", where, 10001)


def _check_reachable(what: str, uri: str, setting: str, default_port: int | None = None, shown: str = "") -> None:
    """FactoryError unless a TCP connection to the URI's host and port opens within a few seconds."""
    shown = shown or uri
    parts = urlsplit(uri)
    host = parts.hostname
    port = parts.port or default_port or {"https": 443, "http": 80}.get(parts.scheme)
    if not host or not port:
        raise FactoryError(f"The address {shown!r} of {what} ({setting}) has no host and port; give it as scheme://host:port.")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
            pass
    except OSError as err:
        reason = (err.strerror or type(err).__name__).lower()
        raise FactoryError(f"Cannot reach {what} at {shown} (set by {setting}): {reason}; start it or fix the address.") from None


def first_data_ds(cfg: FactoryConfig) -> str | None:
    """The earliest ds with an events drop in the landing or an events partition in the lake."""
    days = drop_days(cfg, "events")
    table = delta.open_table(cfg, EVENTS)
    if table is not None:
        days += [dict(p)["ds"] for p in table.partitions()]
    return min(days) if days else None


def check_not_before_first_data(cfg: FactoryConfig, step: str, ds: str) -> None:
    first = first_data_ds(cfg)
    if first is None:
        if step in ("catalog", "ingest"):
            return  # their own error names the missing drop folder
        raise FactoryError(f"There is no data yet: no events drop under {cfg.landing_uri} and no events in the lake; "
                           f"land drops (or `factory generate`) and run the catalog and ingest steps first.")
    if ds < first:
        raise FactoryError(f"ds={ds} is before the first data ({first}: the earliest events drop or events partition); "
                           f"pick a ds on or after {first}.")
