"""The DAG parses, wires one task per step in order, and declares what it publishes."""


import pytest

from jobs.lakehouse.tables import ALL_TABLES
from jobs.steps import STEP_NAMES
from tests import REPO


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
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


def _run_task_with(dag, monkeypatch, step: str, error: Exception):
    task = dag.get_task(step)
    context = {"params": {"force_retrain": False, "force_codebook_rebuild": False}, "ds": "2026-01-02", "run_id": "manual"}
    monkeypatch.setitem(task.python_callable.__globals__, "get_current_context", lambda: context)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("jobs.pipeline.run_step", fail)
    task.python_callable()


def test_a_day_refused_by_a_gate_fails_at_once_without_retries(dag, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from jobs.errors import GateFailed

    with pytest.raises(AirflowFailException, match="quarantined"):
        _run_task_with(dag, monkeypatch, "ingest", GateFailed("ds=2026-01-02: 34% of raw lines quarantined"))


def test_an_infrastructure_error_is_left_to_the_task_retries(dag, monkeypatch):
    from jobs.errors import ConcurrentWriteError

    with pytest.raises(ConcurrentWriteError):
        _run_task_with(dag, monkeypatch, "features", ConcurrentWriteError("user_sequences changed meanwhile"))


def _poke(dag, monkeypatch, landing) -> bool:
    task = dag.get_task("wait_for_drops")
    monkeypatch.setitem(task.python_callable.__globals__, "get_current_context", lambda: {"ds": "2026-01-02"})
    monkeypatch.setenv("FACTORY__PATHS__LANDING_URI", str(landing))
    return task.python_callable().is_done


def test_the_sensor_waits_while_a_drop_is_missing_and_is_done_once_both_landed(dag, monkeypatch, tmp_path):
    (tmp_path / "events" / "ds=2026-01-02").mkdir(parents=True)
    assert _poke(dag, monkeypatch, tmp_path) is False  # the catalog drop has not landed yet
    (tmp_path / "catalog" / "ds=2026-01-02").mkdir(parents=True)
    assert _poke(dag, monkeypatch, tmp_path) is True


@pytest.mark.parametrize("landing", ["no-such-landing", "a-file", "nosuchscheme://bucket/landing"])
def test_the_sensor_fails_at_once_on_a_misconfigured_landing_instead_of_waiting(dag, monkeypatch, tmp_path, landing):
    from airflow.sdk.exceptions import AirflowFailException

    (tmp_path / "a-file").write_text("not a folder")
    uri = landing if "://" in landing else tmp_path / landing
    with pytest.raises(AirflowFailException, match="landing_uri"):
        _poke(dag, monkeypatch, uri)
