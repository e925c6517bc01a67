"""The model registry lookups (jobs/tracking/registry.py) answer "none yet" only when the registered
model or alias does not exist; any other registry error (a locked SQLite store, a restarting server)
propagates, so the train step fails (and Airflow retries it) instead of registering a new champion
without the regression gate."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from jobs.config import load_config
from jobs.tracking import registry

LOCKED = MlflowException("(sqlite3.OperationalError) database is locked", error_code=TEMPORARILY_UNAVAILABLE)


@pytest.fixture
def cfg(tmp_path, mlflow_store):
    return load_config(overrides={"paths.state_dir": str(tmp_path), **mlflow_store,
                                  "mlflow.registered_model": f"encoder_{tmp_path.name}"})


def locked(*args, **kwargs):
    raise LOCKED


def test_no_registered_model_yet_means_no_champion_and_nothing_trained(cfg):
    assert registry.load_alias(cfg, registry.CHAMPION) is None
    assert registry.find_version_trained_on(cfg, "2026-01-03") is None


def test_a_registered_model_without_the_alias_means_no_champion(cfg):
    registry.configure_mlflow(cfg)
    mlflow.MlflowClient().create_registered_model(cfg.mlflow.registered_model)
    assert registry.load_alias(cfg, registry.CHALLENGER) is None
    assert registry.find_version_trained_on(cfg, "2026-01-03") is None


def test_a_transient_store_error_is_not_read_as_no_champion(cfg, monkeypatch):
    monkeypatch.setattr(mlflow.MlflowClient, "get_registered_model", locked)
    with pytest.raises(MlflowException, match="database is locked"):
        registry.load_alias(cfg, registry.CHAMPION)


def test_a_transient_store_error_is_not_read_as_not_trained_today(cfg, monkeypatch):
    monkeypatch.setattr(mlflow.MlflowClient, "search_model_versions", locked)
    with pytest.raises(MlflowException, match="database is locked"):
        registry.find_version_trained_on(cfg, "2026-01-03")


def test_train_fails_on_a_transient_registry_error_and_registers_nothing(cfg, monkeypatch):
    from jobs.steps import train

    monkeypatch.setattr(mlflow.MlflowClient, "get_registered_model", locked)
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained despite the registry error"))
    with pytest.raises(MlflowException, match="database is locked"):
        train.run("2026-01-03", cfg, run_key="transient")
    monkeypatch.undo()
    registry.configure_mlflow(cfg)
    assert mlflow.MlflowClient().search_model_versions(f"name = '{cfg.mlflow.registered_model}'") == []


def test_alias_version_names_the_version_behind_an_alias(cfg):
    registry.configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    client.create_registered_model(cfg.mlflow.registered_model)
    client.create_model_version(cfg.mlflow.registered_model, source="file:///tmp/nowhere")
    client.set_registered_model_alias(cfg.mlflow.registered_model, registry.CHAMPION, "1")
    assert registry.alias_version(cfg, registry.CHAMPION) == "1"
    assert registry.alias_version(cfg, registry.CHALLENGER) is None
