"""The DAG parses, wires one task per step in order, and declares what it publishes."""

from pathlib import Path

import pytest

from jobs import STEP_NAMES
from jobs.tables import ALL_TABLES


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag.dags["daily_embeddings"]


def test_waits_for_the_drops_then_runs_one_task_per_step_in_order(dag):
    assert [t.task_id for t in dag.topological_sort()] == ["wait_for_drops", *STEP_NAMES]


def test_every_table_is_an_asset_of_the_step_that_writes_it(dag):
    outlets = {t.task_id: {a.name for a in t.outlets} for t in dag.tasks}
    for spec in ALL_TABLES:
        assert f"factory.{spec.name}" in outlets[spec.owner]


def test_dag_runs_daily_one_at_a_time_with_retries_and_params(dag):
    assert dag.max_active_runs == 1 and not dag.catchup
    assert set(dag.params) == {"force_retrain", "force_codebook_rebuild"}
    assert all(t.retries >= 1 for t in dag.tasks if t.task_id in STEP_NAMES)
    assert dag.doc_md
