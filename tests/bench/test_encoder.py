"""The encoder benchmark (jobs/bench/encoder.py): SASRec-format files, the leave-one-out split, the
popularity baseline and a whole run on tiny generated data (the training loop: tests/steps/test_train.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jobs.bench import encoder as bench_encoder
from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.steps import encoder_fit

NUM_ITEMS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ---- reading and splitting ------------------------------------------------------------------


def test_read_sasrec_groups_interleaved_lines_by_user_in_file_order(tmp_path, write_sasrec):
    seqs = write_sasrec(tmp_path / "d.txt")
    data = bench_encoder.read_sasrec(tmp_path / "d.txt")
    assert [s.tolist() for s in data.sequences] == seqs
    assert data.num_items == NUM_ITEMS and data.interactions == sum(map(len, seqs))


def test_read_sasrec_maps_sparse_item_ids_to_a_dense_range(tmp_path):
    (tmp_path / "d.txt").write_text("7 100\n7 5\n3 100\n3 42\n")
    data = bench_encoder.read_sasrec(tmp_path / "d.txt")
    assert data.num_items == 3
    assert [s.tolist() for s in data.sequences] == [[3, 2], [3, 1]]  # user 3 first; 5->1, 42->2, 100->3


@pytest.mark.parametrize("text", ["1 a\n", ""])
def test_read_sasrec_rejects_files_that_are_not_user_item_integers(tmp_path, text):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(FactoryError):
        bench_encoder.read_sasrec(tmp_path / "bad.txt")


def test_leave_one_out_holds_out_the_last_two_items_and_trains_short_users(tmp_path):
    (tmp_path / "d.txt").write_text("1 1\n1 2\n1 3\n1 4\n2 5\n2 6\n")
    data = bench_encoder.read_sasrec(tmp_path / "d.txt")
    training, test = bench_encoder.leave_one_out(data, max_len=4)
    assert test.targets.tolist() == [4] and test.inputs.tolist() == [[0, 1, 2, 3]]
    assert [s.tolist() for s in test.seen] == [[1, 2, 3]]
    assert training.val_targets.tolist() == [3] and training.val_inputs.tolist() == [[0, 0, 1, 2]]
    assert [s.tolist() for s in training.val_seen] == [[1, 2]]
    # Training never sees a validation or test target: user 1 trains on 1 -> 2, user 2 on 5 -> 6.
    assert training.inputs.tolist() == [[0, 0, 0, 1], [0, 0, 0, 5]]
    assert training.targets.tolist() == [[0, 0, 0, 2], [0, 0, 0, 6]]


def test_popularity_baseline_ranks_by_count_and_filters_seen_items():
    counts = np.array([0, 5, 4, 3, 2, 1], dtype=np.float64)
    plain, filtered = bench_encoder.popularity_ranks(counts, np.array([3, 3]), [np.array([1]), np.array([])])
    assert plain.tolist() == [2, 2]
    assert filtered.tolist() == [1, 2]


# ---- the benchmark end to end ---------------------------------------------------------------


def test_run_benchmark_reports_both_protocols_curve_load_and_baseline(tmp_path, monkeypatch, write_sasrec):
    write_sasrec(tmp_path / "tiny.txt", users=80)
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "result.json"
    result = bench_encoder.run_benchmark(
        tmp_path / "tiny.txt", minutes=0.02, seed=3, out=out, marks=(0.01, 60), d_model=16,
        max_len=12, batch_size=16, lr=1e-2, warmup_steps=2, patience=10_000, cfg=load_config(), log_to_mlflow=False,
        trainer=encoder_fit.fit_in_process, command="test",
    )
    written = json.loads(out.read_text())
    assert written["seed"] == 3 and [row["figure"] for row in written["summary"]][:2] == [
        "encoder test HR@10 (seen-filtered)", "encoder test NDCG@10 (seen-filtered)"]
    for who in ("encoder", "popularity"):
        for protocol in ("seen_filtered", "unfiltered"):
            metrics = result["results"][who]["test"][protocol]
            assert set(metrics) == {"hr10", "ndcg10", "hr50", "ndcg50", "hr200"}
            assert 0.0 <= metrics["ndcg10"] <= metrics["hr10"] <= metrics["hr50"] <= 1.0
    enc = result["results"]["encoder"]["test"]
    assert enc["seen_filtered"]["hr10"] >= enc["unfiltered"]["hr10"]  # removing items only helps the target
    assert [p["minute"] for p in result["curve"]] == [0.01, 0.02]  # marks beyond the budget are dropped
    assert result["training"]["stop_reason"] == "time_budget"
    assert result["load"]["samples"] and result["load"]["cores"] == os.cpu_count()
    assert result["machine"]["nproc"] == os.cpu_count() and result["known_dataset"] is None
    assert result["encoder_config"]["temperature"] == bench_encoder.SHORT.temperature  # no flag: the data's regime
    assert result["encoder_config"]["n_layers"] == bench_encoder.SHORT.blocks_for(0.02)
    assert result["encoder_config"]["dropout"] == bench_encoder.SHORT.dropout_for(0.02)
    assert result["encoder_config"]["history_bias"] and result["training"]["learned_history_bias"] < 0  # no repeats here
    assert result["inference"]["sequences_per_s"] > 0 and result["training"]["train_sequences_per_s"] > 0
    markdown = bench_encoder.render_markdown(result)
    assert "seen-filtered" in markdown and "unfiltered" in markdown and "Load" in markdown


def test_a_known_datasets_bars_are_judged_only_within_their_training_clock():
    beauty = bench_encoder.known_facts("3033c84a07a0e9fb2626aa640919393edb983a63acfd129481c199bf07c9e537")
    metrics = {"hr10": 0.071, "ndcg10": 0.036, "hr50": 0.15, "ndcg50": 0.05, "hr200": 0.25}
    result = {"results": {"encoder": {"test": {"seen_filtered": metrics, "unfiltered": metrics}},
                          "popularity": {"test": {"seen_filtered": metrics, "unfiltered": metrics}}},
              "known_dataset": beauty, "seed": 0, "minutes": 30.0,
              "training": {"train_sequences_per_s": 1.0, "epochs": 1, "trained_minutes": 1.0, "stop_reason": "early_stop"},
              "inference": {"sequences_per_s": 1.0, "users": 1}}
    judged = {row["figure"]: row["met"] for row in bench_encoder.summary_rows(result) if row["met"] is not None}
    assert judged == {"amazon-beauty: encoder test HR@10 (unfiltered) within 30 min": True,
                      "amazon-beauty: encoder test NDCG@10 (unfiltered) within 30 min": False}
    assert not [row for row in bench_encoder.summary_rows({**result, "minutes": 31.0}) if row["met"] is not None]
    unfiltered_hr = bench_encoder.summary_rows(result)[2]
    assert "published: SASRec 0.0605, TIGER 0.0648" in unfiltered_hr["detail"]


def test_short_histories_get_the_sparse_regime_and_long_ones_the_dense_one(tmp_path, write_sasrec):
    write_sasrec(tmp_path / "short.txt")  # 4-15 items per user
    assert bench_encoder.regime_for(bench_encoder.read_sasrec(tmp_path / "short.txt")) == bench_encoder.SHORT
    (tmp_path / "long.txt").write_text("".join(f"{u} {i % 30 + 1}\n" for u in (1, 2) for i in range(25)))
    assert bench_encoder.regime_for(bench_encoder.read_sasrec(tmp_path / "long.txt")) == bench_encoder.LONG
    assert bench_encoder.SHORT.dropout > bench_encoder.LONG.dropout
    assert bench_encoder.SHORT.temperature > bench_encoder.LONG.temperature  # softer scores for sparse data
    long_budget = bench_encoder.DEEP_BUDGET_MINUTES
    assert bench_encoder.LONG.blocks_for(long_budget) > bench_encoder.LONG.blocks_for(long_budget - 1)  # deeper given time
    assert bench_encoder.SHORT.blocks_for(long_budget) == bench_encoder.SHORT.blocks_for(long_budget - 1)
    assert bench_encoder.LONG.dropout_for(long_budget) > bench_encoder.LONG.dropout_for(long_budget - 1)  # short clocks underfit
    assert bench_encoder.LONG.batch_size_for(long_budget - 1) < bench_encoder.LONG.batch_size_for(long_budget)  # more updates
    assert bench_encoder.SHORT.batch_size_for(long_budget - 1) == bench_encoder.SHORT.batch_size_for(long_budget)
    assert bench_encoder.result_name(tmp_path / "short.txt") == "short"  # an unknown file: its stem


def test_item_codes_from_a_sid_index_become_the_item_tables_facets_and_a_bad_index_is_one_clear_error(
        tmp_path, monkeypatch, write_sasrec):
    write_sasrec(tmp_path / "tiny.txt", users=40)
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", str(tmp_path / "state"))
    index = {str(i): [f"<a_{i % 3}>", f"<b_{i % 5}>"] for i in range(NUM_ITEMS)}
    (tmp_path / "index.json").write_text(json.dumps(index))
    common = dict(minutes=0.01, seed=0, out=None, marks=(), d_model=16, n_layers=1, max_len=12, batch_size=16, dropout=0.3,
                  cfg=load_config(), log_to_mlflow=False, trainer=encoder_fit.fit_in_process, command="test")
    result = bench_encoder.run_benchmark(tmp_path / "tiny.txt", item_codes=tmp_path / "index.json", **common)
    assert result["encoder_config"]["dropout"] == 0.3 and result["encoder_config"]["n_layers"] == 1  # flags win
    assert result["loop_config"]["batch_size"] == 16
    assert result["encoder_config"]["item_facets"] == 2 and result["encoder_config"]["facet_buckets"] == 5
    assert result["item_codes"] == str(tmp_path / "index.json")
    (tmp_path / "short.json").write_text(json.dumps({"0": ["<a_1>"]}))
    with pytest.raises(FactoryError, match="--item-codes"):
        bench_encoder.run_benchmark(tmp_path / "tiny.txt", item_codes=tmp_path / "short.json", **common)


def test_a_history_bias_with_the_history_mask_is_one_clear_error(tmp_path, write_sasrec):
    write_sasrec(tmp_path / "tiny.txt", users=20)
    with pytest.raises(FactoryError, match="--no-history-bias or --no-mask-history-in-loss"):
        bench_encoder.run_benchmark(tmp_path / "tiny.txt", minutes=0.01, seed=0, out=None, mask_history_in_loss=True,
                                    cfg=load_config(), log_to_mlflow=False, trainer=encoder_fit.fit_in_process)
