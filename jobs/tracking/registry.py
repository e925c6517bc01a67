"""The user encoder in the MLflow model registry: log, register, alias, load.

A registered version carries tags: the ds it was trained for, its validation metrics and the
encoder config; alias `champion` is what the daily job serves, `challenger` a model the gate held back.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import mlflow
import torch
from mlflow.exceptions import MlflowException

from jobs.config import FactoryConfig
from jobs.tracking.runs import configure_mlflow
from models.user_encoder import UserEncoder

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Stating requirements skips MLflow's slow requirement inference (it imports and probes the model).
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "embedding-factory"]


@dataclasses.dataclass(frozen=True)
class RegisteredEncoder:
    version: str
    model: UserEncoder
    tags: dict[str, str]

    @property
    def trained_ds(self) -> str:
        return self.tags.get("trained_ds", "")


def load_alias(cfg: FactoryConfig, alias: str = CHAMPION) -> RegisteredEncoder | None:
    """The registered encoder behind `alias`, or None if there is none yet."""
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(cfg.mlflow.registered_model, alias)
    except MlflowException:
        return None
    model = mlflow.pytorch.load_model(f"models:/{cfg.mlflow.registered_model}/{version.version}", map_location="cpu")
    model.eval()
    return RegisteredEncoder(str(version.version), model, dict(version.tags))


def find_version_trained_on(cfg: FactoryConfig, ds: str) -> RegisteredEncoder | None:
    """A version already trained for ds (so a rerun of the day reuses it instead of retraining)."""
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    try:
        versions = client.search_model_versions(
            f"name = '{cfg.mlflow.registered_model}' and tag.trained_ds = '{ds}'", order_by=["version_number DESC"]
        )
    except MlflowException:
        return None
    if not versions:
        return None
    version = versions[0]
    model = mlflow.pytorch.load_model(f"models:/{cfg.mlflow.registered_model}/{version.version}", map_location="cpu")
    model.eval()
    return RegisteredEncoder(str(version.version), model, dict(version.tags))


def register(cfg: FactoryConfig, model: UserEncoder, tags: dict[str, str], alias: str) -> str:
    """Log the model in the active run, register it, tag it and point `alias` at it. Returns the version."""
    info = mlflow.pytorch.log_model(
        model, name="user_encoder", registered_model_name=cfg.mlflow.registered_model,
        pip_requirements=PIP_REQUIREMENTS,
        # pt2 (the default) traces fixed shapes; histories vary in length, so keep the module itself.
        serialization_format="pickle",
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    all_tags = {**tags, "encoder_config": json.dumps(dataclasses.asdict(model.cfg))}
    for key, value in all_tags.items():
        client.set_model_version_tag(cfg.mlflow.registered_model, version, key, str(value))
    client.set_registered_model_alias(cfg.mlflow.registered_model, alias, version)
    log.info("registered %s version %s as %s", cfg.mlflow.registered_model, version, alias)
    return version


def set_alias(cfg: FactoryConfig, version: str, alias: str) -> None:
    configure_mlflow(cfg)
    mlflow.MlflowClient().set_registered_model_alias(cfg.mlflow.registered_model, alias, version)
