"""The day's MLflow parent run carries the day's outcome, so the MLflow UI and `factory show` agree.

One parent run per (ds, run_key) (jobs.tracking.runs.parent_run_id) holds every step run of one
invocation (a DAG run, one `factory run`). Its status follows the day:

    RUNNING   while steps run (set again when a failed step is retried)
    FAILED    a step failed: tags factory.failed_step and factory.failure_reason; or a gate refused
              the day (factory.outcome = refused, factory.gate, factory.gate_reason)
    FINISHED  the last step ended (factory.outcome = published, or finished when publish did not
              publish), or `factory run --step ...` ran only some steps (factory.outcome = partial)

It spans the whole day (created when the first step starts, ended with the last), carries the day's
headline metrics (HEADLINE: rows ingested, users embedded / inferred / carried forward, next-day
HR@K and NDCG@K of the encoder and of popularity, the SID collision rate, the model version), the
gate decision and champion version as tags, and a short description (`mlflow.note.content`, the
run's Description in the UI) naming the outcome and each step run.
"""

from __future__ import annotations

import logging
import time

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from jobs.config import FactoryConfig
from jobs.errors import FactoryError, GateFailed
from jobs.tracking.runs import TAG_DS, TAG_KIND, TAG_STEP, StepResult, configure_mlflow, parent_run_id

log = logging.getLogger(__name__)

TAG_OUTCOME = "factory.outcome"  # running | failed | refused | published | finished | partial
TAG_FAILED_STEP = "factory.failed_step"
TAG_FAILURE_REASON = "factory.failure_reason"
TAG_GATE = "factory.gate"
TAG_GATE_REASON = "factory.gate_reason"
TAG_GATE_DECISION = "factory.gate_decision"  # publish's decision: published | refused
TAG_CHAMPION = "factory.champion_version"  # the model version the day was published with
TAG_TRAIN_DECISION = "factory.train_decision"  # champion | challenger, when the day trained
TAG_RUNNING_STEP = "factory.running_step"
NOTE = "mlflow.note.content"
FAILURE_TAGS = (TAG_FAILED_STEP, TAG_FAILURE_REASON, TAG_GATE, TAG_GATE_REASON)
MAX_TAG_CHARS = 4000

# Step metrics copied to the parent run as <step>.<metric>; of evaluate, every metric of the encoder and
# of the popularity baseline (encoder.hr_at_K, popularity.ndcg_at_K, encoder.drift_mean_cosine, ...).
EVALUATED = ("encoder.", "popularity.")
HEADLINE = {
    "ingest": ("raw_lines", "clean_rows", "quarantined_rows", "quarantine_share"),
    "features": ("users",),
    "train": ("trained", "model_version", "reused_version", "val_ndcg10"),
    "embed": ("users_embedded", "users_inferred", "users_carried_forward", "items_embedded"),
    "semantic_ids": ("codebook_version", "refit", "collision_rate_before_dedup"),
    "index": ("items_indexed",),
}


def step_started(cfg: FactoryConfig, ds: str, run_key: str, step: str) -> str:
    """Mark the day's parent run RUNNING (created now if this is the day's first step); its id."""
    run_id = parent_run_id(cfg, ds, run_key)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":  # a retry after a failure, or a further `factory run --step` of the same key
        client.update_run(run_id, status="RUNNING")
    for key in FAILURE_TAGS:
        if key in run.data.tags:
            client.delete_tag(run_id, key)
    client.set_tag(run_id, TAG_OUTCOME, "running")
    client.set_tag(run_id, TAG_RUNNING_STEP, step)
    return run_id


def step_succeeded(cfg: FactoryConfig, ds: str, run_key: str, result: StepResult, last: bool) -> None:
    """Copy the step's headline metrics and decisions to the parent run; end it after the last step."""
    run_id = parent_run_id(cfg, ds, run_key)
    client = mlflow.MlflowClient()
    wanted = HEADLINE.get(result.step, ())
    metrics = {f"{result.step}.{k}": v for k, v in result.metrics.items()
               if k in wanted or (result.step == "evaluate" and k.startswith(EVALUATED))}
    if metrics:
        _log_metrics(client, run_id, metrics)
    if result.step == "train" and result.params.get("gate_decision"):
        client.set_tag(run_id, TAG_TRAIN_DECISION, result.params["gate_decision"])
    if result.step == "publish":
        client.set_tag(run_id, TAG_GATE_DECISION, result.params.get("gate_decision", ""))
        if result.params.get("model_version"):
            client.set_tag(run_id, TAG_CHAMPION, result.params["model_version"])
    if last:
        decision = client.get_run(run_id).data.tags.get(TAG_GATE_DECISION)
        _end(client, run_id, ds, "FINISHED", "published" if decision == "published" else "finished")
    else:
        _describe(client, run_id, ds, "running")


def step_failed(cfg: FactoryConfig, ds: str, run_key: str, step: str, error: BaseException) -> None:
    """End the parent run FAILED, naming the step and the reason (and the gate, for a refusal)."""
    run_id = parent_run_id(cfg, ds, run_key)
    client = mlflow.MlflowClient()
    reason = _one_line(error)
    client.set_tag(run_id, TAG_FAILED_STEP, step)
    client.set_tag(run_id, TAG_FAILURE_REASON, reason)
    if isinstance(error, GateFailed):
        client.set_tag(run_id, TAG_GATE, error.gate)
        client.set_tag(run_id, TAG_GATE_REASON, reason)
        if step == "publish":
            client.set_tag(run_id, TAG_GATE_DECISION, "refused")
        _end(client, run_id, ds, "FAILED", "refused")
    else:
        _end(client, run_id, ds, "FAILED", "failed")


def invocation_ended(cfg: FactoryConfig, ds: str, run_key: str, steps: list[str]) -> None:
    """After `run_day` ran only some steps: end the parent run (FINISHED, outcome partial) unless the
    last step already ended it."""
    run_id = parent_run_id(cfg, ds, run_key)
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "factory.steps_run", ",".join(steps))
        _end(client, run_id, ds, "FINISHED", "partial")


def day_outcome(cfg: FactoryConfig, ds: str) -> dict | None:
    """The latest parent run of ds as `factory show` prints it: status, outcome, reason, metrics."""
    experiment_id = configure_mlflow(cfg)
    runs = mlflow.search_runs([experiment_id], filter_string=f"tags.`{TAG_DS}` = '{ds}' AND tags.`{TAG_KIND}` = 'day'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not runs:
        return None
    run = runs[0]
    tags = run.data.tags
    seconds = ((run.info.end_time or int(time.time() * 1000)) - run.info.start_time) / 1000
    return {
        "run_id": run.info.run_id, "status": run.info.status, "outcome": tags.get(TAG_OUTCOME, ""),
        "failed_step": tags.get(TAG_FAILED_STEP), "reason": tags.get(TAG_FAILURE_REASON),
        "gate": tags.get(TAG_GATE), "gate_decision": tags.get(TAG_GATE_DECISION),
        "champion_version": tags.get(TAG_CHAMPION), "seconds": round(seconds, 1),
        "metrics": run.data.metrics, "description": tags.get(NOTE, ""),
    }


def _end(client: mlflow.MlflowClient, run_id: str, ds: str, status: str, outcome: str) -> None:
    client.set_tag(run_id, TAG_OUTCOME, outcome)
    if TAG_RUNNING_STEP in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, TAG_RUNNING_STEP)
    _describe(client, run_id, ds, outcome)
    client.set_terminated(run_id, status)


def _describe(client: mlflow.MlflowClient, run_id: str, ds: str, outcome: str) -> None:
    """The run's Description: the outcome in one line, then one line per step run."""
    tags = client.get_run(run_id).data.tags
    if outcome == "refused":
        head = f"ds={ds}: refused by gate {tags.get(TAG_GATE)} in {tags.get(TAG_FAILED_STEP)}: {tags.get(TAG_GATE_REASON)}"
    elif outcome == "failed":
        head = f"ds={ds}: FAILED in step {tags.get(TAG_FAILED_STEP)}: {tags.get(TAG_FAILURE_REASON)}"
    elif outcome == "published":
        head = f"ds={ds}: published with model version {tags.get(TAG_CHAMPION)}"
    else:
        head = f"ds={ds}: {outcome}"
    experiment_id = client.get_run(run_id).info.experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])
    lines = [f"- {c.data.tags.get(TAG_STEP, c.info.run_name)}: {c.info.status.lower()} (run {c.info.run_id})"
             for c in children]
    client.set_tag(run_id, NOTE, "\n".join([head, "", "Step runs:", *lines])[:MAX_TAG_CHARS])


def _log_metrics(client: mlflow.MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return (text if isinstance(error, FactoryError) else f"{type(error).__name__}: {text}")[:500]
