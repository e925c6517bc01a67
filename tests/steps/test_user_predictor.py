"""[compute] in the user predictor: bf16 inference is measured against fp32 and refused when it
moves vectors too far; device and GPU resources follow the config (CPU path; no GPU was measured)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.config import ComputeConfig, ConfigError, load_config, with_overrides
from jobs.errors import FactoryError
from jobs.runtime import compute
from jobs.steps.user_predictor import UserEmbeddingPredictor, actor_num_gpus, compute_kwargs, min_cosine
from models.user_encoder import UserEncoder, UserEncoderConfig

NUM_ITEMS = 2000


def users(n: int, max_len: int, seed: int = 0) -> pa.Table:
    """n users with histories of 1..max_len plays (log-normal lengths, as the inference benchmark)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(max_len / 4), 0.9, n)), 1, max_len).astype(int)
    return pa.table({"user_id": [f"u{i}" for i in range(n)],
                     "item_idx": pa.array([rng.integers(1, NUM_ITEMS + 1, k).tolist() for k in lengths], pa.list_(pa.int32())),
                     "event_type": pa.array([rng.integers(1, 4, k).tolist() for k in lengths], pa.list_(pa.int8()))})


def predictor(dtype: str, d_model: int = 64, max_len: int = 50) -> UserEmbeddingPredictor:
    """The pipeline's encoder shape ([train] d_model 64, 2 layers, [features] max_seq_len 50), seeded."""
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig(num_items=NUM_ITEMS, d_model=d_model, n_layers=2, n_heads=2, max_len=max_len))
    return UserEmbeddingPredictor(model.state_dict(), dataclasses.asdict(model.cfg), "1", threads=1, dtype=dtype)


@pytest.mark.parametrize("d_model, max_len", [(64, 50), (256, 200)])
def test_bf16_user_vectors_stay_within_cosine_0999_of_fp32_on_cpu(one_torch_thread, d_model, max_len):
    batch = users(512, max_len)
    fp32 = predictor("fp32", d_model, max_len).vectors(batch)
    bf16_predictor = predictor("bf16", d_model, max_len)
    bf16 = bf16_predictor.vectors(batch)
    cosine = min_cosine(fp32, bf16)
    print(f"d{d_model} T{max_len}: min cosine bf16 vs fp32 over {batch.num_rows} users = {cosine:.6f}")
    assert cosine >= compute.MIN_BF16_COSINE
    assert bf16_predictor.bf16_min_cosine >= compute.MIN_BF16_COSINE  # what its own first-batch check measured
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)  # bf16 really ran


def test_bf16_is_refused_in_one_sentence_when_it_moves_vectors_below_the_bar(one_torch_thread, monkeypatch):
    monkeypatch.setattr(compute, "MIN_BF16_COSINE", 1.0)  # no rounding survives this bar
    with pytest.raises(FactoryError, match=r"^compute.inference_dtype = 'bf16' moves user vectors to cosine .* "
                                           r"set compute.inference_dtype = 'fp32'\.$"):
        predictor("bf16").vectors(users(32, 50))


def test_fp32_predictor_runs_no_bf16_check(one_torch_thread):
    p = predictor("fp32")
    p.vectors(users(8, 50))
    assert p.bf16_min_cosine is None


def test_compute_config_reaches_the_predictor_and_the_actor_resources():
    cfg = load_config()
    assert compute_kwargs(cfg) == {"device": "cpu", "dtype": "fp32"} and actor_num_gpus(cfg) == 0.0
    gpu = with_overrides(cfg, compute={"device": "cuda", "inference_dtype": "bf16"})
    assert compute_kwargs(gpu) == {"device": "cuda", "dtype": "bf16"} and actor_num_gpus(gpu) == 1.0


def test_compute_auto_follows_what_torch_sees(monkeypatch):
    monkeypatch.setattr(compute, "cuda_available", lambda: False)
    assert compute.device_name(ComputeConfig(device="auto")) == "cpu" and not compute.uses_gpu(ComputeConfig(device="auto"))
    monkeypatch.setattr(compute, "cuda_available", lambda: True)
    assert compute.device_name(ComputeConfig(device="auto")) == "cuda" and compute.uses_gpu(ComputeConfig(device="auto"))


def test_cuda_without_a_gpu_in_this_process_is_one_sentence(monkeypatch):
    monkeypatch.setattr(compute, "cuda_available", lambda: False)
    with pytest.raises(FactoryError, match="compute.device is 'cuda' but torch sees no GPU"):
        compute.device_name(ComputeConfig(device="cuda"))
    assert compute.device_name(ComputeConfig(device="cuda"), local=False) == "cuda"  # Ray workers elsewhere


def test_compute_config_rejects_unknown_values():
    with pytest.raises(ConfigError, match="compute.device must be one of cpu, cuda, auto"):
        load_config(overrides={"compute.device": "tpu"})
    with pytest.raises(ConfigError, match="compute.inference_dtype must be one of fp32, bf16"):
        load_config(overrides={"compute.inference_dtype": "int8"})
