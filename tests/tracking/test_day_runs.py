"""The day's MLflow parent run carries the day's outcome (jobs/tracking/day_runs.py), driven through
jobs.pipeline.run_step with stand-in steps: running while steps run, failed with the step and reason,
refused with the gate, published with the champion version; headline metrics and a description."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest

from jobs import pipeline
from jobs.config import load_config
from jobs.errors import GateFailed
from jobs.steps import STEP_NAMES
from jobs.tracking import day_runs
from jobs.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    configure_mlflow,
    parent_run_id,
    track_step,
)

DS = "2026-01-03"
METRICS = {"embed": {"users_embedded": 7, "users_inferred": 3, "users_carried_forward": 4},
           "evaluate": {"encoder.hr_at_10": 0.4, "popularity.hr_at_10": 0.1},
           "semantic_ids": {"collision_rate_before_dedup": 0.02, "texts_encoded": 5}}


@pytest.fixture
def day(tmp_path, mlflow_store, monkeypatch):
    """A config on the module's MLflow store whose steps are stand-ins; `fail[step] = error` makes one raise."""
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), **mlflow_store})
    monkeypatch.setattr(pipeline, "preflight", lambda *args: None)
    fail: dict[str, BaseException] = {}
    seen: list[str] = []

    def step_function(step):
        def run(ds, cfg, run_key=None, **kwargs):
            with track_step(cfg, ds, step, run_key) as tracked:
                seen.append(mlflow.MlflowClient().get_run(parent_run_id(cfg, ds, run_key)).info.status)
                tracked.metrics(**METRICS.get(step, {"done": 1}))
                if step == "publish":
                    tracked.params(gate_decision="published", model_version="4")
                if step in fail:
                    raise fail[step]
                return tracked.result
        return run

    monkeypatch.setattr(pipeline, "step_function", step_function)
    return SimpleNamespace(cfg=cfg, fail=fail, seen=seen)


def parent(cfg, run_key: str):
    return mlflow.MlflowClient().get_run(parent_run_id(cfg, DS, run_key))


def test_the_parent_run_is_running_while_steps_run_and_ends_published_with_headline_metrics(day):
    pipeline.run_day(DS, day.cfg, run_key="day_ok")
    run = parent(day.cfg, "day_ok")
    assert set(day.seen) == {"RUNNING"}  # as every step ran
    assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time
    assert run.data.tags[day_runs.TAG_OUTCOME] == "published"
    assert run.data.tags[day_runs.TAG_CHAMPION] == "4" and run.data.tags[day_runs.TAG_GATE_DECISION] == "published"
    assert run.data.metrics["embed.users_inferred"] == 3 and run.data.metrics["embed.users_carried_forward"] == 4
    assert run.data.metrics["evaluate.encoder.hr_at_10"] == 0.4 and run.data.metrics["evaluate.popularity.hr_at_10"] == 0.1
    assert run.data.metrics["semantic_ids.collision_rate_before_dedup"] == 0.02
    assert "semantic_ids.texts_encoded" not in run.data.metrics  # headline metrics only
    assert "evaluate.peak_rss_driver_mb" not in run.data.metrics
    note = run.data.tags[day_runs.NOTE]
    assert note.startswith(f"ds={DS}: published with model version 4")
    assert all(f"- {step}: finished" in note for step in STEP_NAMES)


def test_a_failed_step_fails_the_parent_run_naming_the_step_and_reason_and_a_retry_reopens_it(day):
    day.fail["embed"] = RuntimeError("Ray actor died")
    with pytest.raises(RuntimeError):
        pipeline.run_day(DS, day.cfg, run_key="day_fail")
    run = parent(day.cfg, "day_fail")
    assert run.info.status == "FAILED" and run.data.tags[day_runs.TAG_OUTCOME] == "failed"
    assert run.data.tags[day_runs.TAG_FAILED_STEP] == "embed"
    assert run.data.tags[day_runs.TAG_FAILURE_REASON] == "RuntimeError: Ray actor died"
    assert "FAILED in step embed: RuntimeError: Ray actor died" in run.data.tags[day_runs.NOTE]
    shown = day_runs.day_outcome(day.cfg, DS)  # what `factory show` prints
    assert (shown["status"], shown["outcome"], shown["failed_step"]) == ("FAILED", "failed", "embed")

    del day.fail["embed"]  # an Airflow retry of the task: same run key
    pipeline.run_step("embed", DS, day.cfg, run_key="day_fail")
    run = parent(day.cfg, "day_fail")
    assert run.info.status == "RUNNING" and run.data.tags[day_runs.TAG_OUTCOME] == "running"
    assert day_runs.TAG_FAILED_STEP not in run.data.tags


def test_a_gate_refusal_ends_the_parent_run_refused_with_the_gate_and_reason(day):
    day.fail["publish"] = GateFailed("ds=2026-01-03: codebook 2 collides too much; not publishing.", gate="collision_rate")
    with pytest.raises(GateFailed):
        pipeline.run_day(DS, day.cfg, run_key="day_refused")
    run = parent(day.cfg, "day_refused")
    assert run.info.status == "FAILED" and run.data.tags[day_runs.TAG_OUTCOME] == "refused"
    assert run.data.tags[day_runs.TAG_GATE] == "collision_rate" and run.data.tags[day_runs.TAG_GATE_DECISION] == "refused"
    assert run.data.tags[day_runs.NOTE].startswith(f"ds={DS}: refused by gate collision_rate in publish")


def test_a_run_of_some_steps_ends_its_parent_run_as_partial(day):
    pipeline.run_day(DS, day.cfg, steps=["catalog", "ingest"], run_key="day_partial")
    run = parent(day.cfg, "day_partial")
    assert run.info.status == "FINISHED" and run.data.tags[day_runs.TAG_OUTCOME] == "partial"


def test_the_experiment_opens_in_the_model_training_view(tmp_path):
    store = {"mlflow.tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "mlflow.artifact_uri": (tmp_path / "a").as_uri()}
    cfg = load_config(overrides=store)
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    old = mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=cfg.mlflow_artifact_uri)  # no kind tag
    assert configure_mlflow(cfg) == old
    assert mlflow.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_a_step_run_on_its_own_ends_its_parent_run(day, monkeypatch):
    monkeypatch.delenv("FACTORY_RUN_KEY", raising=False)
    result = pipeline.run_step("index", DS, day.cfg)
    run = mlflow.MlflowClient().get_run(result.mlflow_run_id)
    parent_run = mlflow.MlflowClient().get_run(run.data.tags["mlflow.parentRunId"])
    assert parent_run.info.status == "FINISHED" and parent_run.data.tags[day_runs.TAG_OUTCOME] == "partial"
