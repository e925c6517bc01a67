"""Multi-worker training (jobs/steps/encoder_training.py TrainingRun with world > 1, and
jobs/steps/encoder_fit.fit under Ray Train with 2 workers): uneven shards, zero-weight steps, the
global loss normalisation and the shared clock."""

from __future__ import annotations

import dataclasses
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jobs.config import load_config
from jobs.steps import encoder_fit, encoder_training
from models.user_encoder import UserEncoder, UserEncoderConfig

NUM_ITEMS = 30
ENCODER = UserEncoderConfig(num_items=NUM_ITEMS, max_len=12, d_model=16, n_layers=1, n_heads=2, dropout=0.0)


def tiny_data(users: int = 7, seed: int = 0) -> encoder_training.TrainingData:
    """Users walking the items cyclically, of different lengths; two validation users."""
    rng = np.random.default_rng(seed)
    sequences = [[(int(rng.integers(NUM_ITEMS)) + j) % NUM_ITEMS + 1 for j in range(int(rng.integers(3, 12)))]
                 for _ in range(users)]
    import pyarrow as pa

    table = pa.table({"item_idx": sequences, "event_type": [[1] * len(s) for s in sequences]})
    return encoder_training.build_training_data(table, ENCODER.max_len, seed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_as_worker(rank: int, world: int, port: int, shards: list, loop, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = UserEncoder(ENCODER)
    model = torch.nn.parallel.DistributedDataParallel(encoder)
    run = encoder_training.TrainingRun(encoder, shards[rank], loop, model=model, rank=rank, world=world)
    state = run.run()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    out[rank] = ({k: v.clone() for k, v in encoder.state_dict().items()}, state.step, state.history[-1], grads)
    dist.destroy_process_group()


def train_two_workers(shards: list, loop) -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_train_as_worker, args=(2, _free_port(), shards, loop, out), nprocs=2, join=True)
        return dict(out)


def test_two_uneven_shards_take_the_same_step_as_one_worker_on_all_rows(one_torch_thread):
    """One global batch split 5 / 2 over two workers: the loss is summed over both workers' targets
    and divided by their global count, so the gradient (after DDP's average) equals one worker's on
    all 7 sequences. (Per-worker means averaged by DDP would weight the 2 sequences like the 5.)"""
    data = tiny_data()
    assert len(data.inputs) == 7
    loop = encoder_training.LoopConfig(lr=1e-2, batch_size=64, max_epochs=1, seed=0)
    shards = [dataclasses.replace(data, inputs=data.inputs[a:b], input_events=data.input_events[a:b],
                                  targets=data.targets[a:b]) for a, b in ((0, 5), (5, 7))]
    two = train_two_workers(shards, loop)
    torch.manual_seed(0)
    single = UserEncoder(ENCODER)
    one = encoder_training.TrainingRun(single, data, dataclasses.replace(loop, batch_size=32))
    one.run()
    for name, parameter in single.named_parameters():
        torch.testing.assert_close(two[0][3][name], parameter.grad, atol=1e-6, rtol=1e-4)
    for key, value in two[0][0].items():
        torch.testing.assert_close(two[1][0][key], value)
    assert two[0][2]["train_loss"] == pytest.approx(one.state.history[-1]["train_loss"], rel=1e-5)
    assert two[0][2]["val_ndcg10"] == two[1][2]["val_ndcg10"]


def test_a_worker_out_of_batches_joins_with_zero_weight_steps_and_an_empty_worker_too(one_torch_thread):
    data = tiny_data(users=9)
    loop = encoder_training.LoopConfig(lr=1e-2, batch_size=4, max_epochs=2, seed=0)
    shards = [data, dataclasses.replace(data, inputs=data.inputs[:0], input_events=data.input_events[:0],
                                        targets=data.targets[:0])]
    two = train_two_workers(shards, loop)
    assert two[0][1] == two[1][1] == 2 * 5  # 9 rows in batches of 4 // 2 = 2: 5 steps per epoch on both
    for key, value in two[0][0].items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(two[1][0][key], value)


def write_day(folder, users: int = 60, seed: int = 0) -> list[str]:
    """user_sequences-like Parquet files (user_id, item_idx, event_type, ts) of `users` users, in two files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    sequences = [[(int(rng.integers(NUM_ITEMS)) + j) % NUM_ITEMS + 1 for j in range(int(rng.integers(2, 12)))]
                 for _ in range(users)]
    table = pa.table({"user_id": [f"u{i:04d}" for i in range(users)],
                      "item_idx": pa.array(sequences, pa.list_(pa.int32())),
                      "event_type": pa.array([[1] * len(s) for s in sequences], pa.list_(pa.int8())),
                      "ts": pa.array([np.cumsum(rng.integers(1, 10**7, len(s))).tolist() for s in sequences],
                                     pa.list_(pa.int64()))})
    files = []
    for part, rows in enumerate((slice(0, users // 2), slice(users // 2, users))):
        files.append(str(folder / f"part-{part}.parquet"))
        pq.write_table(table.slice(rows.start, rows.stop - rows.start), files[-1])
    return files


@pytest.mark.parametrize("time_buckets", [0, 24])
def test_train_input_samples_users_by_hash_on_the_engine_and_two_workers_train_on_its_shards(tmp_path, one_torch_thread,
                                                                                             time_buckets):
    import ray

    from jobs.steps import train_data

    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "ray.num_cpus": "2", "ray.train_workers": "2"})
    files = write_day(tmp_path, users=80)
    loop = encoder_training.LoopConfig(lr=1e-2, batch_size=8, max_epochs=2, seed=0, minutes=5.0)
    encoder = dataclasses.replace(ENCODER, n_time_buckets=time_buckets)
    try:
        encoder_fit.ensure_ray(cfg)
        first = train_data.read_train_input(files, ENCODER.max_len, seed=3, max_users=40, time_buckets=time_buckets)
        again = train_data.read_train_input(files, ENCODER.max_len, seed=3, max_users=40, time_buckets=time_buckets)
        fitted = encoder_fit.fit(cfg, first.validation, encoder, None, "two_workers", loop,
                                 dataset=first.dataset, held_out=first.held_out)
        sampled = sorted(r["user_id"] for r in first.dataset.select_columns(["user_id"]).take_all())
    finally:
        ray.shutdown()
    assert first.day_users == 80 and 20 <= first.users <= 60 and first.users == len(sampled)
    assert first.held_out == again.held_out and set(first.held_out) <= set(sampled)
    expected = [u for u in (f"u{i:04d}" for i in range(80)) if train_data.unit_hash([u], "sample-3")[0] < 0.5]
    assert sampled == expected
    assert fitted.placement["train_workers"] == 2 and fitted.placement["train_nodes"] == 1
    assert fitted.placement["train_examples"] == first.users  # every sampled user has >= 2 items
    assert fitted.state.epoch == 2 and fitted.state.stop_reason == "max_epochs"
    assert all(np.isfinite(r["train_loss"]) for r in fitted.history if r["kind"] == "epoch")
    assert encoder_training.weights_are_finite(fitted.model)
    assert (first.validation.val_gaps is not None) == bool(time_buckets) and fitted.model.cfg.n_time_buckets == time_buckets


def test_train_threads_fixes_each_workers_torch_threads_and_zero_shares_the_cluster_cpus():
    shared = load_config().train
    assert encoder_fit.worker_threads(shared, cluster_cpus=8, workers=2) == 4
    assert encoder_fit.worker_threads(shared, cluster_cpus=1, workers=2) == 1
    fixed = load_config(overrides={"train.threads": "1"}).train
    assert encoder_fit.worker_threads(fixed, cluster_cpus=8, workers=2) == 1
