"""The day's steps in pipeline order: one module per DAG task, `jobs.steps.<name>.run(ds, cfg, run_key=None, ...)`.

STEPS is the one list of them, with what each needs besides MLflow and the lake (checked by
jobs.pipeline.preflight) and which command-line / DAG flag it takes. Import-light on purpose: the
Airflow DAG parser reads it at parse time; a step's own module (Spark, Ray, torch) loads only when
the step runs. Modules here that are not in STEPS are helpers of the steps (training loop, predictor,
SID lookup, generative data and training).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    """A boolean a person sets for one step: `factory run --force-retrain`, the DAG param force_retrain."""

    name: str  # CLI option (dashes for underscores) and DAG param
    argument: str  # the keyword of the step's run() it becomes
    help: str


@dataclass(frozen=True)
class Step:
    name: str  # the module jobs.steps.<name> and the DAG task id
    services: tuple[str, ...] = ()  # "spark", "ray": reachable before the step starts (MLflow and the lake: always)
    flags: tuple[Flag, ...] = ()


FORCE_RETRAIN = Flag("force_retrain", "force", "Train a new encoder even if the champion is fresh.")
FORCE_CODEBOOK_REBUILD = Flag("force_codebook_rebuild", "force_refit", "Refit the semantic-ID codebooks.")

STEPS = (
    Step("catalog"),
    Step("ingest"),
    Step("features", services=("spark",)),
    Step("train", services=("ray",), flags=(FORCE_RETRAIN,)),
    Step("embed", services=("ray", "spark")),
    Step("semantic_ids", flags=(FORCE_CODEBOOK_REBUILD,)),
    Step("index"),
    Step("profile", services=("spark",)),  # taste profiles, and the steered vectors of people's edits
    Step("evaluate", services=("spark",)),
    Step("publish"),
    Step("generative"),  # optional (generative.enabled); when off it only records that it was disabled
)
STEP_NAMES = tuple(step.name for step in STEPS)
STEPS_BY_NAME = {step.name: step for step in STEPS}
FLAGS = tuple(flag for step in STEPS for flag in step.flags)
