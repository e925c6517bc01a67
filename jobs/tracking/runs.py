"""MLflow tracking: one parent run per (ds, run_key) and one nested run per step.

A step does its work inside `track_step(...)`; the yielded `StepRun` collects params, metrics,
the Delta tables (and versions) it read and wrote, and artifacts, and logs them when the step ends.
Table versions are logged as MLflow dataset inputs (DeltaDatasetSource with the version), so every
run says exactly which snapshot it read and which it produced.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.delta_dataset_source import DeltaDatasetSource

from jobs.config import FactoryConfig, run_key_from_env
from jobs.lakehouse.delta import table_uri
from jobs.lakehouse.tables import TableSpec
from jobs.tracking.memory import RssSampler

log = logging.getLogger(__name__)

TAG_DS = "factory.ds"
TAG_RUN_KEY = "factory.run_key"
TAG_KIND = "factory.kind"
TAG_STEP = "factory.step"
# MLflow 3's UI opens an experiment without this tag in its GenAI (traces) view; the factory's and the
# benchmarks' runs are model training: metrics, params, artifacts, registered models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@dataclass
class StepResult:
    """What a step did: enough to reproduce it (table versions) and to judge it (metrics)."""

    step: str
    ds: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tables_read: dict[str, int | None] = field(default_factory=dict)
    tables_written: dict[str, int | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    wall_seconds: float = 0.0


class StepRun:
    """Handle a step uses to record what it reads, writes and measures."""

    def __init__(self, cfg: FactoryConfig, result: StepResult, run_key: str = ""):
        self.cfg = cfg
        self.result = result
        self.run_key = run_key  # the invocation (DAG run id): an Airflow retry of the step has the same one

    def params(self, **values) -> None:
        self.result.params.update({k: str(v) for k, v in values.items()})

    def metrics(self, **values) -> None:
        self.result.metrics.update({k: float(v) for k, v in values.items()})

    def read(self, spec: TableSpec, version: int | None) -> None:
        self.result.tables_read[spec.name] = version

    def wrote(self, spec: TableSpec, version: int | None) -> None:
        self.result.tables_written[spec.name] = version

    def note(self, text: str) -> None:
        log.info("%s %s: %s", self.result.step, self.result.ds, text)
        self.result.notes.append(text)

    def artifact(self, path: Path, folder: str = "") -> None:
        """Log a file to the step's run now (so temporary files may be removed right after)."""
        mlflow.log_artifact(str(path), folder or None)


def configure_mlflow(cfg: FactoryConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (created on first use)."""
    if cfg.mlflow_tracking_uri.startswith("sqlite:///"):
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_registry_uri(cfg.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.mlflow_artifact_uri,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # an experiment created before the tag was set
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def new_run_key() -> str:
    """Key of one invocation (a DAG run passes its run_id instead)."""
    return f"manual__{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:6]}"


def parent_run_id(cfg: FactoryConfig, ds: str, run_key: str) -> str:
    """The parent run of (ds, run_key), created (RUNNING) on first use; jobs.tracking.day_runs ends it
    with the day's outcome."""
    experiment_id = configure_mlflow(cfg)
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_DS}` = '{ds}' AND tags.`{TAG_RUN_KEY}` = '{run_key}' AND tags.`{TAG_KIND}` = 'day'",
        max_results=1, output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id, run_name=f"ds={ds}",
        tags={TAG_DS: ds, TAG_RUN_KEY: run_key, TAG_KIND: "day"},
    )
    return run.info.run_id


@contextlib.contextmanager
def track_step(cfg: FactoryConfig, ds: str, step: str, run_key: str | None = None) -> Iterator[StepRun]:
    """Run a step inside a nested MLflow run; log everything the StepRun collected at the end."""
    run_key = run_key or run_key_from_env() or new_run_key()
    experiment_id = configure_mlflow(cfg)
    parent = parent_run_id(cfg, ds, run_key)
    step_run = StepRun(cfg, StepResult(step=step, ds=ds), run_key)
    started = time.perf_counter()
    tags = {TAG_DS: ds, TAG_RUN_KEY: run_key, TAG_KIND: "step", TAG_STEP: step}
    # System metrics (CPU, memory, disk) are sampled in a background thread every 10 s.
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{step} ds={ds}", parent_run_id=parent,
                          nested=True, tags=tags, log_system_metrics=True) as run:
        step_run.result.mlflow_run_id = run.info.run_id
        sampler = RssSampler()
        try:
            with sampler:
                yield step_run
        finally:
            step_run.result.wall_seconds = time.perf_counter() - started
            # Peak memory of the step: the Python driver alone, and with its Spark JVM / local Ray.
            step_run.metrics(peak_rss_driver_mb=round(sampler.peak.driver_mb, 1),
                             peak_rss_tree_mb=round(sampler.peak.tree_mb, 1))
            _log(cfg, step_run)


def _log(cfg: FactoryConfig, step_run: StepRun) -> None:
    result = step_run.result
    mlflow.log_params({"ds": result.ds, **result.params})
    mlflow.log_metrics({**result.metrics, "wall_seconds": result.wall_seconds})
    for name, version in result.tables_read.items():
        _log_table(cfg, name, version, "read")
    for name, version in result.tables_written.items():
        _log_table(cfg, name, version, "written")
    mlflow.log_dict(
        {"tables_read": result.tables_read, "tables_written": result.tables_written, "notes": result.notes},
        "step_result.json",
    )


def _log_table(cfg: FactoryConfig, name: str, version: int | None, context: str) -> None:
    from jobs.lakehouse.tables import TABLES_BY_NAME

    spec = TABLES_BY_NAME[name]
    mlflow.set_tag(f"table.{context}.{name}", str(version))
    if version is None:
        return
    source = DeltaDatasetSource(path=table_uri(cfg, spec), delta_table_version=version)
    frame = pd.DataFrame({column: pd.Series(dtype="object") for column in spec.schema.names})
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=f"{name}@v{version}")
    mlflow.log_input(dataset, context=context)


def day_summary(cfg: FactoryConfig, ds: str) -> list[dict]:
    """Every step run of the latest invocation for ds: step, run id, metrics, table versions."""
    experiment_id = configure_mlflow(cfg)
    runs = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_DS}` = '{ds}' AND tags.`{TAG_KIND}` = 'step'",
        order_by=["attributes.start_time DESC"], output_format="list",
    )
    latest: dict[str, mlflow.entities.Run] = {}
    for run in runs:
        latest.setdefault(run.data.tags[TAG_STEP], run)
    return [
        {
            "step": step, "run_id": run.info.run_id, "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
            "status": run.info.status, "metrics": run.data.metrics,
            "tables": {k: v for k, v in run.data.tags.items() if k.startswith("table.")},
        }
        for step, run in latest.items()
    ]


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
