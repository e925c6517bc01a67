"""The inference benchmark's own arithmetic and data: FLOP counts, generated days, the GEMM rate."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.bench import inference as bench_inference
from jobs.steps.embed import unchanged_inputs
from jobs.steps.user_predictor import flat_lists
from models.user_encoder import UserEncoder, UserEncoderConfig


def test_flop_count_matches_torch_for_the_linear_layers(one_torch_thread):
    cfg = UserEncoderConfig(num_items=50, max_len=20, d_model=32, n_layers=3, n_heads=2)
    model = UserEncoder(cfg).eval()
    n = 13
    ids, events = torch.randint(1, 51, (1, n)), torch.randint(1, 4, (1, n))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.user_embeddings(ids, events)
    counts = {str(op): v for op, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for op, v in counts.items() if "attention" in op)
    linear = counter.get_total_flops() - attention
    as_run, full = bench_inference.encoder_flops(cfg, np.array([n]))
    d = cfg.d_model
    ours_attention = (cfg.n_layers - 1) * 2 * d * n * (n + 1) + 4 * d * n  # causal pairs only
    assert as_run[0] - ours_attention == linear  # (torch's counter sees no FLOPs in CPU sdpa: linear only)
    assert full[0] - cfg.n_layers * 2 * d * n * (n + 1) == cfg.n_layers * 24 * n * d * d


def test_generated_days_have_the_stated_shape():
    day0 = bench_inference.generate_sequences(2000, max_len=50, seed=0)
    lengths = np.diff(flat_lists(day0.column("item_idx"))[1])
    assert lengths.min() >= 1 and lengths.max() == 50 and 8 < np.median(lengths) < 17
    day1 = bench_inference.next_day(day0, active_share=0.1)
    changed = ~unchanged_inputs(day1.select(["user_id", "item_idx", "event_type"]),
                                day0.select(["user_id", "item_idx", "event_type"]))
    assert 150 < changed.sum() < 250
    grown = np.diff(flat_lists(day1.column("item_idx"))[1]) - lengths
    assert set(grown[changed]) == {1} and set(grown[~changed]) == {0}
    old, offsets = flat_lists(day0.column("ts"))
    new, new_offsets = flat_lists(day1.column("ts"))
    i = int(np.flatnonzero(changed)[0])  # an active user's history is yesterday's plus one later event
    assert new[new_offsets[i]:new_offsets[i + 1] - 1].tolist() == old[offsets[i]:offsets[i + 1]].tolist()
    assert new[new_offsets[i + 1] - 1] > old.max()


def test_the_plain_loop_feeds_ts_to_the_pipelines_encoder_with_time_gaps(tmp_path, one_torch_thread):
    import pyarrow.parquet as pq

    from jobs.config import load_config
    from jobs.tracking import registry

    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "train.time_buckets": "24", "train.d_model": "16",
                                 "features.max_seq_len": "8", "ray.inference_threads": "1"})
    encoder = bench_inference.default_encoder(cfg)
    assert encoder.n_time_buckets == 24
    day = bench_inference.generate_sequences(30, max_len=8)
    pq.write_table(day, tmp_path / "day.parquet")
    champion = registry.RegisteredEncoder("1", UserEncoder(encoder).eval(), {})
    out = bench_inference.plain_loop(cfg, [str(tmp_path / "day.parquet")], champion, threads=1)
    assert out.column("user_id").to_pylist() == sorted(day.column("user_id").to_pylist())


def test_gemm_rate_is_positive_and_restores_threads():
    before = torch.get_num_threads()
    rate = bench_inference.gemm_rate(d=16, rows=64, threads=1, seconds=0.05)
    assert rate["model_shapes_gflops"] > 0 and rate["square_2048_gflops"] > 0
    assert torch.get_num_threads() == before
