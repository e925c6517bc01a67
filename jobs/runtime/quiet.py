"""The one place that keeps third-party chatter out of the operator's terminal.

Every entry point calls `quiet_third_parties()` first: the CLI (`factory ...`), the benchmark
commands, the DAG's tasks and the test suite (tests/conftest.py). It turns down, at their source or
by logger name, the messages that repeat in normal operation and say nothing an operator can act on;
warnings and errors that mean something still come through:

* Ray Train: its INFO lines on the console (`RUN_CONFIG_LOG_LEVEL` for RunConfig's logging_config),
  and the PlacementGroupCleaner's "Failed to query Ray Train Controller actor state" once a second:
  the factory starts Ray without its dashboard, so the State API it polls is never there; and the
  timed-out resource requests of a busy machine, which Ray itself calls safe to ignore. Only those
  messages are dropped (`DROPPED_MESSAGES`), in every Ray worker (`quiet_ray_worker`, a
  worker_process_setup_hook); the other warnings of the same loggers stay.
* py4j: INFO lines such as "Closing down clientserver connection", logged from `__del__` at
  interpreter exit, when the stream of a handler may be closed already ("--- Logging error ---"),
  and the traceback of a connection it re-opens ("Exception while sending command", INFO).
* Ray Data: its INFO lines on the console for every job (start, plan, finish), through Ray Data's own
  logging config (ray-data-logging.yaml, RAY_DATA_LOGGING_CONFIG); its log file keeps them.
* MLflow: the system-metrics monitor's four INFO lines around every step run.
* Spark's JVM: start-up WARNs (loopback hostname, no native Hadoop library, the default log4j
  profile) in every process that starts a session: its driver logs with log4j2-quiet.properties
  (errors only) unless SPARK_SUBMIT_OPTS is set.
* Python warnings that Airflow, MLflow and friends raise on import (`IGNORED_WARNINGS`), here and in
  the processes the factory starts (PYTHONWARNINGS, see `child_warning_filters`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import warnings
from pathlib import Path

LOG4J_CONFIG = Path(__file__).with_name("log4j2-quiet.properties")
RAY_DATA_LOGGING_CONFIG = Path(__file__).with_name("ray-data-logging.yaml")
RUN_CONFIG_LOG_LEVEL = "WARNING"  # Ray Train's own console lines (ray.train.LoggingConfig)

# Logger -> the level below which its records are dropped.
LOGGER_LEVELS = {
    "py4j": logging.WARNING,
    "ray.train": logging.WARNING,
    "ray.data": logging.WARNING,  # per-operator progress lines every few seconds
    "mlflow.system_metrics": logging.WARNING,  # four INFO lines per step run ("Started monitoring ...")
}
# Modules that log under their file's path (logging.getLogger(__file__)), not a dotted name -> level.
FILE_NAMED_LOGGER_LEVELS = {
    "ray.train.v2._internal.execution.context": logging.WARNING,  # "Reporting training result N: ..." per epoch
}
# Logger -> (message prefix, exception class name or "" for any) of the known, harmless records
# dropped from it.
DROPPED_MESSAGES = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": (
        ("Failed to query Ray Train Controller actor state", ""),),
    # Ray Train tells its autoscaling coordinator what it needs every few seconds; on a busy machine
    # the call times out, and Ray's own message says that is safe to ignore (a local Ray has a fixed
    # size). Other failures of the call still show.
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": (
        ("Failed to send resource request", "GetTimeoutError"),),
}
# (message prefix, category, module that warns or "") ignored here, in child processes (PYTHONWARNINGS)
# and by pytest (tests/conftest.py).
IGNORED_WARNINGS = [
    ("Could not import graphviz", UserWarning, ""),  # Airflow's CLI; the factory renders no graphs
    # Ray Data copies its DataContext attribute by attribute, deprecated ones included, on every job.
    ("", DeprecationWarning, "ray.data.context"),
]


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of the prefixes, where a prefix comes with an
    exception class name only if the record carries that exception."""

    def __init__(self, dropped: tuple[tuple[str, str], ...]):
        super().__init__()
        self.dropped = dropped

    def filter(self, record: logging.LogRecord) -> bool:
        error = type(record.exc_info[1]).__name__ if record.exc_info and record.exc_info[1] else ""
        return not any(str(record.msg).startswith(prefix) and (not exception or exception == error)
                       for prefix, exception in self.dropped)


def quiet_loggers() -> None:
    """Set LOGGER_LEVELS and DROPPED_MESSAGES in this process (idempotent)."""
    for name, level in LOGGER_LEVELS.items():
        logger = logging.getLogger(name)
        if logger.level < level:  # a user's more selective setting stays
            logger.setLevel(level)
    for name, dropped in DROPPED_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(dropped))


def quiet_warnings() -> None:
    for message, category, module in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category,
                                module=re.escape(module) + r"\Z" if module else "")


def warning_filter_specs() -> list[str]:
    """IGNORED_WARNINGS in the `action:message:category:module` form of -W, PYTHONWARNINGS and pytest."""
    return [f"ignore:{message}:{category.__name__}:{module}" for message, category, module in IGNORED_WARNINGS]


def child_warning_filters() -> str:
    """IGNORED_WARNINGS as a PYTHONWARNINGS value for child processes (Airflow, MLflow UI)."""
    return ",".join(warning_filter_specs())


def quiet_ray_worker() -> None:
    """worker_process_setup_hook of the factory's Ray (jobs.runtime.ray_cluster): the same logger
    settings in every Ray worker process, whose output the driver may show ([ray].log_to_driver)."""
    quiet_loggers()
    quiet_warnings()
    # Ray's State API, which Ray Train's PlacementGroupCleaner polls, finds its cluster by looking for
    # Ray instances on the host and fails with a traceback when it finds several (two users, or a
    # test suite beside a demo): point it at the cluster this worker belongs to.
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    for module, level in FILE_NAMED_LOGGER_LEVELS.items():
        try:
            spec = importlib.util.find_spec(module)
        except ImportError:  # another Ray version: nothing to quiet
            continue
        if spec is not None and spec.origin:
            logging.getLogger(spec.origin).setLevel(level)


def quiet_third_parties() -> None:
    """Everything in the module doc, for this process and the Spark/Python processes it starts.
    Environment variables are defaults (set, not read): a value the user set wins."""
    quiet_loggers()
    quiet_warnings()
    os.environ.setdefault("SPARK_SUBMIT_OPTS", f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}")
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING_CONFIG))  # read when ray.data is imported
    existing = os.environ.get("PYTHONWARNINGS")
    ours = child_warning_filters()
    if not existing:
        os.environ["PYTHONWARNINGS"] = ours
    elif ours not in existing:
        os.environ["PYTHONWARNINGS"] = f"{existing},{ours}"
