"""
### Daily embedding factory

One run per logical date `ds`: validate the day's listening logs, build per-user sequences with
Spark, (re)train the user encoder with Ray Train when due, embed every user with Ray Data, rebuild
or extend the semantic-ID codebooks, index the items with faiss, build each user's taste profile
(with the steered vectors of people's profile edits), evaluate yesterday's embeddings on
today's plays, publish the day, and (only if generative.enabled) train the generative SID
recommender. Each task is one `jobs.steps.<step>.run(ds, cfg)`; every task's MLflow run is nested
under the day's parent run (tag `factory.run_key` = this DAG run's id).

Params: `force_retrain` trains a new encoder even if the champion is fresh;
`force_codebook_rebuild` refits the semantic-ID codebooks.

`wait_for_drops` waits (reschedule mode, 6 h) only for a drop that has not landed; a misconfigured
landing fails it at once. Retries (2, exponential backoff) cover infrastructure failures; a day refused by a gate (too much
quarantine, an empty or oversize drop, a model or codebook that fails publish's checks) fails at
once without retries, with the reason as the task's error (docs/reliability.md).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Asset, Param, PokeReturnValue, chain, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from jobs.config import load_config
from jobs.lakehouse.tables import ALL_TABLES
from jobs.steps import FLAGS, STEP_NAMES

INFRASTRUCTURE_RETRIES = {"retries": 2, "retry_delay": dt.timedelta(minutes=1), "retry_exponential_backoff": True}
LAKE_URI = load_config().lake_uri  # light: a TOML file and env vars


def table_asset(spec) -> Asset:
    uri = spec.uri(LAKE_URI)
    return Asset(name=f"factory.{spec.name}", uri=uri if "://" in uri else f"file://{uri}")


def step_task(step: str):
    outlets = [table_asset(spec) for spec in ALL_TABLES if spec.owner == step]

    @task(task_id=step, outlets=outlets, **INFRASTRUCTURE_RETRIES)
    def run_step() -> dict:
        from jobs.config import load_config  # heavy imports at run time, not at parse time
        from jobs.errors import GateFailed, UnsafePath
        from jobs.pipeline import run_step as run
        from jobs.runtime.quiet import quiet_third_parties

        quiet_third_parties()  # Spark, Ray and py4j chatter stays out of the task log (jobs/runtime/quiet.py)

        context = get_current_context()
        params = context["params"]
        try:
            result = run(step, context["ds"], load_config(), run_key=context["run_id"],
                         **{flag.name: bool(params[flag.name]) for flag in FLAGS})
        except (GateFailed, UnsafePath) as err:  # a retry would refuse the same day again: fail now, say why
            raise AirflowFailException(str(err)) from err
        return {"mlflow_run_id": result.mlflow_run_id, "metrics": result.metrics, "notes": result.notes}

    return run_step()


@task.sensor(task_id="wait_for_drops", poke_interval=300, timeout=6 * 3600, mode="reschedule")
def wait_for_drops() -> PokeReturnValue:
    """The day's catalog and events drops must have landed (mode=reschedule frees the worker slot).
    Only a missing drop is waited for; a configuration error fails the sensor at once, with its sentence."""
    from jobs.config import ConfigError, load_config
    from jobs.errors import FactoryError
    from jobs.lakehouse.landing import drops_landed

    try:
        return PokeReturnValue(is_done=drops_landed(load_config(), get_current_context()["ds"]))
    except (FactoryError, ConfigError) as err:
        raise AirflowFailException(str(err)) from err


@dag(
    dag_id="daily_embeddings",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # days build on each other (vocabulary, champion, codebooks)
    doc_md=__doc__,
    tags=["embeddings"],
    params={flag.name: Param(False, type="boolean", description=flag.help) for flag in FLAGS},
)
def daily_embeddings():
    chain(wait_for_drops(), *[step_task(step) for step in STEP_NAMES])


daily_embeddings()
