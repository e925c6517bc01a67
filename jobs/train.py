"""Step `train` (Ray Train): fine-tune the user encoder when due, gate it, register it in MLflow.

Cadence: a model is trained when there is no champion, when the champion is `retrain_every_days`
old, or when forced; otherwise the champion keeps serving. A rerun of a day reuses the version
already trained for that day. Training warm-starts from the champion (its item table grown to the
current vocabulary), holds out each validation user's last item, keeps the epoch with the best
validation NDCG@10, and promotes the result to `champion` only if it does not lose more than
`train.max_regression` NDCG@10 against the champion on the same held-out items.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import uuid

import mlflow
import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs import lake, registry
from jobs.config import FactoryConfig
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.ray_runtime import ensure_ray
from jobs.tables import ITEM_VOCAB, USER_SEQUENCES
from jobs.tracking import StepResult, track_step
from models.ranking_metrics import hit_rate_at_k, ndcg_at_k, target_ranks
from models.sequences import length_buckets, next_item_examples, pad_left
from models.user_encoder import UserEncoder, UserEncoderConfig, expand_item_table, full_softmax_loss

VALIDATION_USERS = 2000
PATIENCE = 2  # epochs without a better validation NDCG@10 before stopping early
K = 10


@dataclasses.dataclass(frozen=True)
class TrainingData:
    inputs: np.ndarray  # (N, L) left-padded item ids
    input_events: np.ndarray  # (N, L)
    targets: np.ndarray  # (N, L) next item per position, 0 = ignore
    val_inputs: np.ndarray  # (V, L) validation users' histories without their last item
    val_events: np.ndarray  # (V, L)
    val_targets: np.ndarray  # (V,) the held-out last item


def build_training_data(sequences: pa.Table, max_len: int, seed: int) -> TrainingData:
    """Next-item examples from every user's sequence; a sample of users holds out its last item."""
    items = [np.asarray(s, dtype=np.int64) for s in sequences.column("item_idx").to_pylist()]
    events = [np.asarray(s, dtype=np.int64) for s in sequences.column("event_type").to_pylist()]
    eligible = np.flatnonzero([len(s) >= 3 for s in items])
    rng = np.random.default_rng(seed)
    val = np.sort(rng.choice(eligible, size=min(VALIDATION_USERS, len(eligible)), replace=False))
    is_val = np.zeros(len(items), dtype=bool)
    is_val[val] = True
    train_items = [s[:-1] if v else s for s, v in zip(items, is_val)]
    train_events = [e[:-1] if v else e for e, v in zip(events, is_val)]
    inputs, input_events, targets = next_item_examples(train_items, train_events, max_len)
    return TrainingData(
        inputs, input_events, targets,
        val_inputs=pad_left([items[i][:-1] for i in val], max_len),
        val_events=pad_left([events[i][:-1] for i in val], max_len),
        val_targets=np.array([items[i][-1] for i in val], dtype=np.int64),
    )


@torch.inference_mode()
def validation_metrics(model: UserEncoder, data: TrainingData, batch_size: int = 512) -> dict[str, float]:
    """HR@10 / NDCG@10 of the held-out last items, ranked against the whole catalog."""
    if len(data.val_targets) == 0:
        return {"val_hr10": 0.0, "val_ndcg10": 0.0}
    was_training = model.training
    model.eval()
    ranks = []
    for start in range(0, len(data.val_targets), batch_size):
        window = slice(start, start + batch_size)
        users = model.user_embeddings(torch.from_numpy(data.val_inputs[window]), torch.from_numpy(data.val_events[window]))
        ranks.append(target_ranks(model.scores(users), torch.from_numpy(data.val_targets[window])))
    model.train(was_training)
    ranks = np.concatenate(ranks)
    return {"val_hr10": hit_rate_at_k(ranks, K), "val_ndcg10": ndcg_at_k(ranks, K)}


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: data-parallel epochs over length-bucketed batches."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config["seed"])
    torch.set_num_threads(config["threads"])
    data: TrainingData = ray.get(config["data"])
    encoder = UserEncoder(UserEncoderConfig(**config["encoder"]))
    if config["init_state"] is not None:
        encoder.load_state_dict(ray.get(config["init_state"]))
    model = ray.train.torch.prepare_model(encoder)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    rng = np.random.default_rng(config["seed"] + rank)
    mine = np.arange(rank, len(data.inputs), world)  # this worker's shard of the examples
    lengths = (data.inputs[mine] != 0).sum(1)
    best, stale = -1.0, 0
    for epoch in range(1, config["epochs"] + 1):
        started, losses = time.perf_counter(), []
        model.train()
        for batch in length_buckets(lengths, config["batch_size"], rng):
            rows, longest = mine[batch], max(int(lengths[batch].max()), 1)
            inputs = torch.from_numpy(data.inputs[rows, -longest:])  # (B, T) trimmed to the longest
            hidden = model(inputs, torch.from_numpy(data.input_events[rows, -longest:]))  # (B, T, D)
            loss = full_softmax_loss(encoder, hidden, torch.from_numpy(data.targets[rows, -longest:]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)), "epoch_seconds": time.perf_counter() - started,
                   **validation_metrics(encoder, data)}
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                torch.save(encoder.state_dict(), os.path.join(folder, "model.pt"))
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)
        best, stale = (metrics["val_ndcg10"], 0) if metrics["val_ndcg10"] > best else (best, stale + 1)
        if stale >= PATIENCE:
            break


def fit(cfg: FactoryConfig, data: TrainingData, encoder_cfg: UserEncoderConfig,
        init_state: dict | None, run_name: str) -> tuple[UserEncoder, list[dict]]:
    """Train under Ray Train; return the best epoch's model and every epoch's metrics."""
    ensure_ray(cfg)
    workers = cfg.ray.train_workers
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "data": ray.put(data), "init_state": None if init_state is None else ray.put(init_state),
            "encoder": dataclasses.asdict(encoder_cfg), "lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
            "epochs": cfg.train.epochs, "seed": cfg.train.seed, "threads": cpus,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=run_name, storage_path=cfg.ray_storage_uri,
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    result = trainer.fit()
    epochs = sorted((metrics for _, metrics in result.best_checkpoints), key=lambda m: m["epoch"])
    best_checkpoint, _ = max(result.best_checkpoints, key=lambda pair: pair[1]["val_ndcg10"])
    model = UserEncoder(encoder_cfg)
    with best_checkpoint.as_directory() as folder:
        model.load_state_dict(torch.load(os.path.join(folder, "model.pt"), map_location="cpu"))
    model.eval()
    return model, epochs


def is_due(cfg: FactoryConfig, ds: str, champion: registry.RegisteredEncoder | None) -> bool:
    if champion is None or not champion.trained_ds:
        return True
    return (parse_ds(ds) - parse_ds(champion.trained_ds)).days >= cfg.train.retrain_every_days


def run(ds: str, cfg: FactoryConfig, run_key: str | None = None, force: bool = False) -> StepResult:
    parse_ds(ds)
    with track_step(cfg, ds, "train", run_key) as step:
        champion = registry.load_alias(cfg, registry.CHAMPION)
        already = registry.find_version_trained_on(cfg, ds)
        if already is not None and not force:
            step.note(f"version {already.version} was already trained for {ds}; reusing it")
            step.metrics(trained=0, reused_version=float(already.version))
            return step.result
        if not force and not is_due(cfg, ds, champion):
            step.note(f"champion version {champion.version} (trained {champion.trained_ds}) keeps serving; "
                      f"retraining every {cfg.train.retrain_every_days} days")
            step.metrics(trained=0, reused_version=float(champion.version))
            return step.result

        sequences_version = lake.current_version(cfg, USER_SEQUENCES)
        sequences = lake.read(cfg, USER_SEQUENCES, where={"ds": ds}, columns=["item_idx", "event_type"])
        vocab = lake.read(cfg, ITEM_VOCAB, columns=["item_idx"])
        step.read(USER_SEQUENCES, sequences_version)
        step.read(ITEM_VOCAB, lake.current_version(cfg, ITEM_VOCAB))
        if sequences.num_rows == 0:
            raise FactoryError(f"ds={ds}: user_sequences has no rows for this day; run the features step first.")
        num_items = int(pa.compute.max(vocab.column("item_idx")).as_py())
        t = cfg.train
        encoder_cfg = UserEncoderConfig(
            num_items=num_items, max_len=cfg.features.max_seq_len, d_model=t.d_model, n_layers=t.n_layers,
            n_heads=t.n_heads, dropout=t.dropout, temperature=t.temperature,
        )
        data = build_training_data(sequences, cfg.features.max_seq_len, t.seed)
        init_state = None
        if champion is not None and dataclasses.replace(champion.model.cfg, num_items=num_items) == encoder_cfg:
            torch.manual_seed(t.seed)
            init_state = expand_item_table(champion.model.state_dict(), num_items)
        step.params(**dataclasses.asdict(encoder_cfg), lr=t.lr, batch_size=t.batch_size, epochs=t.epochs,
                    warm_start_from=champion.version if init_state else "none", train_examples=len(data.inputs),
                    validation_users=len(data.val_targets), workers=cfg.ray.train_workers)
        model, epochs = fit(cfg, data, encoder_cfg, init_state, f"user_encoder_{ds}_{uuid.uuid4().hex[:6]}")
        for metrics in epochs:
            mlflow.log_metrics({f"epoch_{k}": v for k, v in metrics.items() if k != "epoch"}, step=int(metrics["epoch"]))
        new = validation_metrics(model, data)
        promote, reason = True, "no champion yet"
        if champion is not None:
            old_model = champion.model
            if old_model.cfg.num_items < num_items:  # unknown new items cannot be ranked by the old table
                grown = UserEncoder(dataclasses.replace(old_model.cfg, num_items=num_items))
                grown.load_state_dict(expand_item_table(old_model.state_dict(), num_items))
                old_model = grown.eval()
            old = validation_metrics(old_model, data)
            step.metrics(champion_val_ndcg10=old["val_ndcg10"], champion_val_hr10=old["val_hr10"])
            promote = new["val_ndcg10"] >= old["val_ndcg10"] - t.max_regression
            reason = (f"validation NDCG@10 {new['val_ndcg10']:.4f} vs champion {old['val_ndcg10']:.4f} "
                      f"(allowed regression {t.max_regression})")
        alias = registry.CHAMPION if promote else registry.CHALLENGER
        version = registry.register(cfg, model, {"trained_ds": ds, **{k: f"{v:.6f}" for k, v in new.items()}}, alias)
        step.note(f"version {version} -> {alias}: {reason}")
        step.params(gate_decision=alias, gate_reason=reason)
        step.metrics(trained=1, model_version=float(version), promoted=float(promote), epochs_run=len(epochs), **new)
        return step.result
