"""`factory recommend` serves the generative model logged to MLflow when this host's state folder
does not hold it (a serving host that does not share the training host's disk)."""

import shutil

import pytest

from jobs.errors import FactoryError
from jobs.serving.recommend import recommend
from jobs.steps import generative
from tests.steps.test_generative import DS, tiny_lake


def test_recommend_downloads_the_days_logged_model_when_the_local_folder_is_gone(tmp_path, one_torch_thread):
    cfg = tiny_lake(tmp_path, enabled=True)
    generative.run(DS, cfg)
    local = recommend(cfg, "u_001", k=3, model_from="local")
    shutil.rmtree(tmp_path / "generative")
    with pytest.raises(FactoryError, match="No generative model trained"):
        recommend(cfg, "u_001", k=3, model_from="local")
    served = recommend(cfg, "u_001", k=3)  # auto: not on this host, so from the MLflow run
    assert "mlflow" in served["model"] and served["decisions"] == local["decisions"]
    assert recommend(cfg, "u_001", k=3, model_from="mlflow")["decisions"] == local["decisions"]
    with pytest.raises(FactoryError, match="on or before 2000-01-01"):
        recommend(cfg, "u_001", ds="2000-01-01", model_from="mlflow")
