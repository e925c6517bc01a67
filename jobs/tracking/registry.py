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
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

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
    """The registered encoder behind `alias`, or None if the registered model or the alias does not
    exist yet. Any other registry error (a locked store, a server restarting) propagates: read as
    "no champion", it would let train register a new champion without the regression gate."""
    number = alias_version(cfg, alias)
    if number is None:
        return None
    version = mlflow.MlflowClient().get_model_version(cfg.mlflow.registered_model, number)
    model = mlflow.pytorch.load_model(f"models:/{cfg.mlflow.registered_model}/{version.version}", map_location="cpu")
    model.eval()
    return RegisteredEncoder(str(version.version), model, dict(version.tags))


def alias_version(cfg: FactoryConfig, alias: str) -> str | None:
    """The version number `alias` points at, or None if the registered model or the alias does not exist."""
    configure_mlflow(cfg)
    # The alias is looked up on the registered model: a missing alias is simply absent there (asked
    # directly, the store answers INVALID_PARAMETER_VALUE, a code that also means other things).
    try:
        registered = mlflow.MlflowClient().get_registered_model(cfg.mlflow.registered_model)
    except MlflowException as err:
        if is_missing(err):
            return None
        raise
    version = registered.aliases.get(alias)
    return None if version is None else str(version)


def find_version_trained_on(cfg: FactoryConfig, ds: str) -> RegisteredEncoder | None:
    """A version already trained for ds (so a rerun of the day reuses it instead of retraining).

    A search over a registered model that does not exist yet finds nothing; a registry error propagates
    (read as "not trained today", it would train and register a second model for the day)."""
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(
        f"name = '{cfg.mlflow.registered_model}' and tag.trained_ds = '{ds}'", order_by=["version_number DESC"]
    )
    if not versions:
        return None
    version = versions[0]
    model = mlflow.pytorch.load_model(f"models:/{cfg.mlflow.registered_model}/{version.version}", map_location="cpu")
    model.eval()
    return RegisteredEncoder(str(version.version), model, dict(version.tags))


def is_missing(err: MlflowException) -> bool:
    """True when the registry answered "no such registered model / version" (not a store failure)."""
    return err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


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
