"""Step `train` (Ray Train): fine-tune the user encoder when due, gate it, register it in MLflow.

Cadence: a model is trained when there is no champion, when the champion is `retrain_every_days`
old, or when forced; otherwise the champion keeps serving. A rerun of a day reuses the version
already trained for that day. Training warm-starts from the champion (its item table grown to the
current vocabulary), holds out each validation user's last item, keeps the evaluation with the best
validation NDCG@10, and promotes the result to `champion` only if it does not lose more than
`train.max_regression` NDCG@10 against the champion on the same held-out items. At a promotion the
run also logs how compatible the new space is with the old one (jobs/steps/compatibility.py: cross-
version HR@10 both ways, neighbour overlap, the rotation) and publishes the alignment map as an
artifact; `train.compat_weight` > 0 anchors the known items' vectors to the champion's while training.
With `train.time_buckets` > 0 the encoder also reads each event's time-gap bucket (from user_sequences'
ts lists; `data_time_buckets` says how many buckets the day's data is built with).

The day's users never pass through the driver: Ray Data reads the day's user_sequences files,
samples users by hash and picks the validation users on the cluster (jobs/steps/train_data.py); each
Ray Train worker builds its examples from its own part of the sample. Only the validation users
(at most encoder_training.VALIDATION_USERS) reach the driver, for the gate against the champion.
The training loop itself (jobs/steps/encoder_training.py, run under Ray Train by
jobs/steps/encoder_fit.py) is shared with the encoder benchmark (jobs/bench/encoder.py).
"""

from __future__ import annotations

import dataclasses
import uuid

import pyarrow as pa
import torch

from jobs.config import FactoryConfig, TrainConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ITEM_VOCAB, USER_SEQUENCES
from jobs.runtime.ray_cluster import ensure_ray
from jobs.steps import inference_pool, item_facets
from jobs.steps.compatibility import log_promotion
from jobs.steps.encoder_fit import FitResult, fit, log_history
from jobs.steps.encoder_training import (
    TrainingData,
    loop_config,
    validation_metrics,
    weights_are_finite,
)
from jobs.steps.train_data import TrainInput, read_train_input
from jobs.tracking import registry
from jobs.tracking.runs import StepResult, StepRun, track_step
from models.user_encoder import UserEncoder, UserEncoderConfig, expand_item_table


def encoder_config(t: TrainConfig, num_items: int, max_len: int) -> UserEncoderConfig:
    """The nightly encoder's shape from [train] (item facets: jobs/steps/item_facets.py; time gaps:
    train.time_buckets)."""
    return UserEncoderConfig(
        num_items=num_items, max_len=max_len, d_model=t.d_model, n_layers=t.n_layers, n_heads=t.n_heads,
        dropout=t.dropout, temperature=t.temperature, item_facets=len(item_facets.LEVELS) if t.item_facets else 0,
        facet_buckets=t.facet_buckets if t.item_facets else 0, n_time_buckets=t.time_buckets)


def data_time_buckets(t: TrainConfig, champion: UserEncoder | None) -> int:
    """The time-gap bucket count the day's training data is built with: the new model's
    (train.time_buckets) or the champion's, the larger, since the gate ranks both on the same
    validation users and each reads its own count of them (encoder_training.gap_input); 0: no ts read."""
    return max(t.time_buckets, champion.cfg.n_time_buckets if champion is not None else 0)


def initial_state(encoder_cfg: UserEncoderConfig, champion: UserEncoder | None,
                  codes: torch.Tensor | None) -> tuple[dict | None, bool]:
    """(the weights a fit starts from, whether they are the champion's): the champion's with its item
    table grown (and today's facet codes) when its shape matches; else a fresh model's when it has
    facets (its codes must travel to the workers); else None (each worker initialises its own)."""
    if champion is not None and dataclasses.replace(champion.cfg, num_items=encoder_cfg.num_items) == encoder_cfg:
        return expand_item_table(champion.state_dict(), encoder_cfg.num_items, codes), True
    if codes is not None and encoder_cfg.item_facets:
        fresh = UserEncoder(encoder_cfg)
        fresh.set_item_facets(codes)
        return fresh.state_dict(), False
    return None, False


def is_due(cfg: FactoryConfig, ds: str, champion: registry.RegisteredEncoder | None) -> bool:
    if champion is None or not champion.trained_ds:
        return True
    return (parse_ds(ds) - parse_ds(champion.trained_ds)).days >= cfg.train.retrain_every_days


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None, force: bool = False) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "train", run_key) as step:
        champion = registry.load_alias(cfg, registry.CHAMPION)
        if not force and _keeps_serving(cfg, ds, champion, step):
            return step.result
        t = cfg.train
        time_buckets = data_time_buckets(t, champion.model if champion is not None else None)
        train_input, num_items = _read_day(cfg, ds, step, time_buckets)
        encoder_cfg = encoder_config(t, num_items, cfg.features.max_seq_len)
        data = train_input.validation  # the validation users only; training rows stay on the cluster
        # Today's facet codes, for a model with facets (and for the gate's copy of a champion with them).
        buckets = encoder_cfg.facet_buckets or (champion.model.cfg.facet_buckets if champion is not None else 0)
        codes = item_facets.facet_codes(cfg, num_items, buckets) if buckets else None
        torch.manual_seed(t.seed)
        init_state, warm = initial_state(encoder_cfg, champion.model if champion is not None else None, codes)
        loop = loop_config(t)
        if warm:  # train.compat_weight anchors the items the champion knows
            loop = dataclasses.replace(loop, compat_items=champion.model.cfg.num_items)
        step.params(**dataclasses.asdict(encoder_cfg), **{f"loop_{k}": v for k, v in dataclasses.asdict(loop).items()},
                    warm_start_from=champion.version if warm else "none", training_users=train_input.users,
                    day_users=train_input.day_users, validation_users=len(data.val_targets))
        fitted = fit(cfg, data, encoder_cfg, init_state, f"user_encoder_{ds}_{uuid.uuid4().hex[:6]}", loop,
                     dataset=train_input.dataset, held_out=train_input.held_out)
        log_history(fitted.history)
        step.params(**fitted.placement)  # train_workers, train_nodes (where Ray Train ran), train_examples
        new = {k: v for k, v in validation_metrics(fitted.model, data).items() if k in ("val_hr10", "val_ndcg10")}
        promote, reason = _gate(cfg, fitted, champion, data, new, step, codes)
        if promote and champion is not None and champion.model.cfg.d_model == encoder_cfg.d_model:
            # The space moves at a promotion: how far, and what consumers of the old vectors lose (issue 19).
            log_promotion(step, champion.model, fitted.model, data.val_inputs, data.val_events, data.val_targets,
                          champion.version, data.val_gaps)
        alias = registry.CHAMPION if promote else registry.CHALLENGER
        version = registry.register(cfg, fitted.model, {"trained_ds": ds, **{k: f"{v:.6f}" for k, v in new.items()}}, alias)
        step.note(f"version {version} -> {alias}: {reason} (training stopped: {fitted.state.stop_reason})")
        step.params(gate_decision=alias, gate_reason=reason)
        step.metrics(trained=1, model_version=float(version), promoted=float(promote),
                     epochs_run=fitted.state.epoch, **new)
        return step.result


def _keeps_serving(cfg: FactoryConfig, ds: str, champion: registry.RegisteredEncoder | None, step: StepRun) -> bool:
    """True (and noted) when no training is due: ds already has a version, or the champion is fresh."""
    already = registry.find_version_trained_on(cfg, ds)
    if already is not None:
        step.note(f"version {already.version} was already trained for {ds}; reusing it")
        step.metrics(trained=0, reused_version=float(already.version))
        return True
    if not is_due(cfg, ds, champion):
        step.note(f"champion version {champion.version} (trained {champion.trained_ds}) keeps serving; "
                  f"retraining every {cfg.train.retrain_every_days} days")
        step.metrics(trained=0, reused_version=float(champion.version))
        return True
    return False


def _read_day(cfg: FactoryConfig, ds: str, step: StepRun, time_buckets: int) -> tuple[TrainInput, int]:
    """(the day's sampled users as a Ray Dataset + the validation users, the vocabulary's largest item id);
    with time_buckets > 0 the ts lists too (data_time_buckets)."""
    sequences_version, files = delta.snapshot_files(cfg, USER_SEQUENCES, where_in={"ds": [ds]})
    vocab = delta.read(cfg, ITEM_VOCAB, columns=["item_idx"])  # one int column per item: small
    step.read(USER_SEQUENCES, sequences_version)
    step.read(ITEM_VOCAB, delta.current_version(cfg, ITEM_VOCAB))
    if not files:
        raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
    ensure_ray(cfg)
    inference_pool.release()  # an earlier day's embedding actors (a backfill) would hold the CPUs Ray Train needs
    train_input = read_train_input(files, cfg.features.max_seq_len, cfg.train.seed, cfg.train.max_users, time_buckets)
    return train_input, int(pa.compute.max(vocab.column("item_idx")).as_py())


def grown_to(champion: UserEncoder, num_items: int, codes: torch.Tensor | None) -> UserEncoder:
    """The champion with its item table grown to num_items (new rows as a warm start's; today's facet
    codes), in eval mode, so the gate ranks it over the same catalog as the new model."""
    if champion.cfg.num_items >= num_items:
        return champion.eval()
    grown = UserEncoder(dataclasses.replace(champion.cfg, num_items=num_items))
    grown.load_state_dict(expand_item_table(champion.state_dict(), num_items, codes))
    return grown.eval()


def passes_gate(new_ndcg10: float, champion_ndcg10: float, max_regression: float) -> bool:
    """The gate's rule: the new model loses at most max_regression validation NDCG@10 to the champion."""
    return new_ndcg10 >= champion_ndcg10 - max_regression


def _gate(cfg: FactoryConfig, fitted: FitResult, champion: registry.RegisteredEncoder | None, data: TrainingData,
          new: dict[str, float], step: StepRun, codes: torch.Tensor | None = None) -> tuple[bool, str]:
    """(promote?, why): training did not diverge, and validation NDCG@10 within train.max_regression of the
    champion's. A diverged run is refused even when its selected weights (from before it diverged) are
    finite: the setting that made it diverge is what the operator must see, not a quiet near-champion."""
    model = fitted.model
    if fitted.state.stop_reason == "diverged" or not weights_are_finite(model):
        where = f" at epoch {fitted.state.epoch}" if fitted.state.stop_reason == "diverged" else ""
        return False, f"training diverged{where}: its loss or weights are not finite"
    if champion is None:
        return True, "no champion yet"
    old = validation_metrics(grown_to(champion.model, model.cfg.num_items, codes), data)
    step.metrics(champion_val_ndcg10=old["val_ndcg10"], champion_val_hr10=old["val_hr10"])
    allowed = cfg.train.max_regression
    return (passes_gate(new["val_ndcg10"], old["val_ndcg10"], allowed),
            f"validation NDCG@10 {new['val_ndcg10']:.4f} vs champion {old['val_ndcg10']:.4f} (allowed regression {allowed})")
