"""Training the user encoder under Ray Train (`fit`), or in one process (`fit_in_process`).

Both run jobs.steps.encoder_training.TrainingRun and write the same checkpoint format; `fit`
resumes a run from its latest Ray checkpoint (a retried worker, or a rerun with the same name).
"""

from __future__ import annotations

import dataclasses
import tempfile

import mlflow
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from jobs.config import FactoryConfig, TrainConfig
from jobs.errors import FactoryError
from jobs.runtime.compute import device_name, uses_gpu
from jobs.runtime.quiet import RUN_CONFIG_LOG_LEVEL
from jobs.runtime.ray_cluster import ensure_ray
from jobs.steps.encoder_training import (
    SELECTION_METRICS,
    LoopConfig,
    LoopState,
    TrainingData,
    TrainingRun,
    load_training_checkpoint,
    loop_config,
    resume_from_checkpoint,
    save_checkpoint,
    training_shard,
)
from jobs.tracking.progress import progress
from models.user_encoder import UserEncoder, UserEncoderConfig


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: a TrainingRun, resumed from the latest checkpoint if any."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    loop = LoopConfig(**config["loop"])
    torch.manual_seed(loop.seed + rank)  # dropout differs per worker; DDP broadcasts rank 0's weights
    torch.set_num_threads(loop.threads)
    if config.get("held_out") is not None:  # the step: this worker's shard of the day's sampled users
        from jobs.steps.train_data import worker_training_data

        data = worker_training_data(ray.train.get_dataset_shard(f"train_{rank}"), ray.get(config["data"]),
                                    set(ray.get(config["held_out"])), config["encoder"]["max_len"],
                                    config["encoder"]["n_time_buckets"])
    else:  # the benchmark: every worker holds all the data and takes every world-th sequence
        data = training_shard(ray.get(config["data"]), rank, world)
    encoder = UserEncoder(UserEncoderConfig(**config["encoder"]))
    if config["init_state"] is not None:
        encoder.load_state_dict(ray.get(config["init_state"]))
    run = TrainingRun(encoder, data, loop, model=ray.train.torch.prepare_model(encoder), rank=rank, world=world)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from_checkpoint(run, folder)
    placement = {"train_workers": world, "train_nodes": _nodes(world),
                 "train_examples": int(run._summed([len(data.inputs)])[0])}
    run_with_progress(run, on_epoch=lambda run: _report(run, placement))


def _nodes(world: int) -> int:
    """How many Ray nodes the workers run on (every worker calls this: an all-gather)."""
    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return 1
    nodes: list = [None] * world
    torch.distributed.all_gather_object(nodes, node)
    return len(set(nodes))


def run_with_progress(run: TrainingRun, on_epoch=lambda run: None) -> None:
    """run.run() with a progress bar over its optimiser steps on rank 0 (lines per ~10% in a Ray
    worker or a log; they reach the terminal when [ray].log_to_driver is on, as in the benchmark)."""
    if run.rank != 0:
        run.run(on_epoch=on_epoch)
        return
    with progress("training", total=run.planned_steps(), unit="steps") as bar:
        bar.advance(run.state.step)  # a resumed run starts where its checkpoint was

        def epoch_line(run: TrainingRun) -> None:
            record = run.state.history[-1]
            shown = ", ".join(f"{k} {record[k]:.4f}" for k in ("train_loss", *SELECTION_METRICS) if k in record)
            bar.note(f"epoch {run.state.epoch} at {run.state.elapsed / 60:.1f} min: {shown}")
            on_epoch(run)

        run.run(on_epoch=epoch_line, on_step=lambda run: bar.advance(1))


def _report(run: TrainingRun, placement: dict[str, int]) -> None:
    record = {**{k: v for k, v in run.state.history[-1].items() if isinstance(v, (int, float))}, **placement}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if run.rank == 0:
            save_checkpoint(run, folder)
            checkpoint = Checkpoint.from_directory(folder)
        ray.train.report(record, checkpoint=checkpoint)

@dataclasses.dataclass
class FitResult:
    model: UserEncoder  # the selected (best validation) weights, in eval mode
    history: list[dict]  # every evaluation: epoch ends and marks
    marks: dict[float, UserEncoder]  # clock minute -> the model selected by then
    state: LoopState
    checkpoint_path: str
    placement: dict[str, int] = dataclasses.field(default_factory=dict)  # train_workers, train_nodes, train_examples


def fit(cfg: FactoryConfig, data: TrainingData, encoder_cfg: UserEncoderConfig, init_state: dict | None,
        run_name: str, loop: LoopConfig | None = None, workers: int | None = None,
        dataset: ray.data.Dataset | None = None, held_out: tuple[str, ...] = ()) -> FitResult:
    """Train under Ray Train (TorchTrainer); return the selected model, the history and the marks.

    With `dataset` (user_id, item_idx, event_type rows, and ts for an encoder with time gaps;
    jobs.steps.train_data) each worker trains on
    its shard of it and `data` holds only the validation users, whose ids `held_out` lists; without,
    every worker gets `data` whole and takes every world-th training sequence.

    A run that dies is retried from its latest checkpoint (FailureConfig); calling fit again with
    the same run_name and storage resumes it (Ray Train restores the run's checkpoints).
    """
    ensure_ray(cfg)
    workers = workers or cfg.ray.train_workers
    total = int(ray.cluster_resources().get("CPU", 1))
    # Reading shards needs Ray Data tasks: with a dataset the workers leave one CPU of the cluster
    # to them (torch still runs cores // workers threads: the reads are over before training starts).
    cpus = max(1, (total - (dataset is not None)) // workers)
    loop = dataclasses.replace(loop or loop_config(cfg.train), threads=worker_threads(cfg.train, total, workers))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "data": ray.put(data), "init_state": None if init_state is None else ray.put(init_state),
            "encoder": dataclasses.asdict(encoder_cfg), "loop": dataclasses.asdict(loop),
            "held_out": None if dataset is None else ray.put(list(held_out)),
        },
        datasets=None if dataset is None else _worker_parts(dataset, workers),
        dataset_config=DataConfig(datasets_to_split=[]),  # split by _worker_parts
        # [compute].device: a GPU per worker (Ray Train's prepare_model moves the model to it).
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=uses_gpu(cfg.compute), resources_per_worker={"CPU": cpus},
                                     placement_strategy=cfg.ray.train_placement),
        run_config=RunConfig(
            name=run_name, storage_path=cfg.ray_storage_uri,
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # every checkpoint carries the full history
            failure_config=FailureConfig(max_failures=2),
            logging_config=LoggingConfig(log_level=RUN_CONFIG_LOG_LEVEL),  # Ray Train's INFO lines off the console
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise FactoryError(f"Ray Train run {run_name} finished without a checkpoint; see its logs under {cfg.ray_storage_uri}.")
    with result.checkpoint.as_directory() as folder:
        model, marks, state = load_training_checkpoint(folder, encoder_cfg)
    placement = {k: int(result.metrics.get(k, 1)) for k in ("train_workers", "train_nodes", "train_examples")}
    return FitResult(model, state.history, marks, state, result.checkpoint.path, placement)


def worker_threads(t: TrainConfig, cluster_cpus: int, workers: int) -> int:
    """torch threads per Ray Train worker: train.threads, or the cluster's CPUs shared by the workers."""
    return t.threads or max(1, cluster_cpus // workers)


def _worker_parts(dataset: ray.data.Dataset, workers: int) -> dict[str, ray.data.Dataset]:
    """{"train_<rank>": that worker's part}: contiguous, nearly equal parts of the (order-preserving,
    materialised) dataset, so a user lands on the same worker on every run. Ray Train's own split
    (streaming_split(equal=True)) would drop up to workers - 1 rows and assign blocks first come, first served."""
    parts = dataset.repartition(workers).split(workers, equal=False)
    return {f"train_{rank}": part for rank, part in enumerate(parts)}


def fit_in_process(cfg: FactoryConfig, data: TrainingData, encoder_cfg: UserEncoderConfig,
                   init_state: dict | None, run_name: str, loop: LoopConfig | None = None,
                   workers: int | None = None) -> FitResult:
    """fit() without Ray: the same TrainingRun and checkpoint format, one process (tests, notebooks)."""
    if workers not in (None, 1):
        raise ValueError("fit_in_process trains in one process; use fit() for several workers.")
    loop = loop or loop_config(cfg.train)
    torch.manual_seed(loop.seed)
    encoder = UserEncoder(encoder_cfg)
    if init_state is not None:
        encoder.load_state_dict(init_state)
    encoder.to(device_name(cfg.compute))
    run = TrainingRun(encoder, data, loop)
    run_with_progress(run)
    with tempfile.TemporaryDirectory(prefix=f"{run_name}_") as folder:
        save_checkpoint(run, folder)
        model, marks, state = load_training_checkpoint(folder, encoder_cfg)
    return FitResult(model, state.history, marks, state, checkpoint_path="")

def log_history(history: list[dict]) -> None:
    """Every evaluation of a fit as MLflow metrics `epoch_<name>`, stepped by optimiser step."""
    for record in history:
        mlflow.log_metrics({f"epoch_{k}": float(v) for k, v in record.items()
                            if isinstance(v, (int, float)) and k != "step"}, step=int(record["step"]))
