"""The encoder benchmark (jobs/bench/encoder.py) and the training loop it shares with the nightly
job (jobs/steps/encoder_training.py): tiny generated SASRec-format files, tiny models, in-process training."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from jobs.bench import encoder as bench_encoder
from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.steps import encoder_fit, encoder_training
from models.user_encoder import UserEncoder, UserEncoderConfig

NUM_ITEMS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def write_sasrec(path, users: int = 200, seed: int = 0) -> list[list[int]]:
    """Users walk the items cyclically (next item = current + 1), lines interleaved across users."""
    rng = np.random.default_rng(seed)
    seqs = [[(int(rng.integers(NUM_ITEMS)) + j) % NUM_ITEMS + 1 for j in range(int(rng.integers(4, 16)))]
            for _ in range(users)]
    lines = [(u + 1, item, j) for u, s in enumerate(seqs) for j, item in enumerate(s)]
    lines.sort(key=lambda x: (x[2], x[0]))  # interleave users; each user's lines stay in order
    path.write_text("".join(f"{u} {item}\n" for u, item, _ in lines))
    return seqs


def tiny_loop(**kw) -> encoder_training.LoopConfig:
    return encoder_training.LoopConfig(**{"lr": 1e-2, "batch_size": 16, "max_epochs": 3, "patience": 5,
                               "select_on": "val_ndcg10_seen_filtered", **kw})


def tiny_split(tmp_path, max_len: int = 12):
    path = tmp_path / "tiny.txt"
    write_sasrec(path)
    data = bench_encoder.read_sasrec(path)
    return data, *bench_encoder.leave_one_out(data, max_len)


def tiny_encoder(max_len: int = 12) -> UserEncoderConfig:
    return UserEncoderConfig(num_items=NUM_ITEMS, max_len=max_len, d_model=16, n_layers=1, n_heads=2, dropout=0.0)


# ---- reading and splitting ------------------------------------------------------------------


def test_read_sasrec_groups_interleaved_lines_by_user_in_file_order(tmp_path):
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


# ---- the shared training loop (jobs/steps/encoder_training.py) -------------------------------------------------


def test_training_run_improves_validation_and_keeps_the_selected_weights(tmp_path):
    _, training, _ = tiny_split(tmp_path)
    torch.manual_seed(0)
    encoder = UserEncoder(tiny_encoder())
    before = encoder_training.validation_metrics(encoder, training)["val_ndcg10_seen_filtered"]
    run = encoder_training.TrainingRun(encoder, training, tiny_loop(max_epochs=6))
    state = run.run()
    epochs = [r for r in state.history if r["kind"] == "epoch"]
    assert len(epochs) == 6 and state.stop_reason == "max_epochs"
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert state.best == max(r["val_ndcg10_seen_filtered"] for r in state.history) > before
    selected = UserEncoder(tiny_encoder())
    selected.load_state_dict(run.best_weights)
    assert encoder_training.validation_metrics(selected, training)["val_ndcg10_seen_filtered"] == pytest.approx(state.best)


def test_training_run_stops_on_its_time_budget_and_snapshots_marks(tmp_path):
    _, training, _ = tiny_split(tmp_path)
    torch.manual_seed(0)
    loop = tiny_loop(max_epochs=10_000, patience=10_000, minutes=0.01, mark_minutes=(0.0, 0.01), schedule="cosine", warmup_steps=3)
    run = encoder_training.TrainingRun(UserEncoder(tiny_encoder()), training, loop)
    state = run.run()
    assert state.stop_reason == "time_budget" and state.elapsed >= 0.6
    assert set(run.marks) == {0.0, 0.01}
    assert any(r["kind"] == "mark" for r in state.history)


class Crash(Exception):
    pass


def test_training_run_resumes_from_its_checkpoint_exactly(tmp_path):
    """A run that crashes after epoch 1 and resumes from its checkpoint ends where a straight run does."""
    _, training, _ = tiny_split(tmp_path)
    loop = tiny_loop(max_epochs=2, schedule="cosine")
    torch.manual_seed(0)
    straight = encoder_training.TrainingRun(UserEncoder(tiny_encoder()), training, loop)
    straight.run()

    def save_then_crash(run):
        encoder_training.save_checkpoint(run, tmp_path)
        raise Crash

    torch.manual_seed(0)
    with pytest.raises(Crash):
        encoder_training.TrainingRun(UserEncoder(tiny_encoder()), training, loop).run(on_epoch=save_then_crash)
    model, marks, state = encoder_training.load_training_checkpoint(tmp_path, tiny_encoder())
    assert state.epoch == 1 and marks == {} and isinstance(model, UserEncoder)
    resumed = encoder_training.TrainingRun(UserEncoder(tiny_encoder()), training, loop)
    encoder_training.resume_from_checkpoint(resumed, tmp_path)
    resumed.run()
    assert resumed.state.step == straight.state.step and resumed.state.epoch == 2
    assert [r["val_ndcg10"] for r in resumed.state.history] == [r["val_ndcg10"] for r in straight.state.history]
    for key, value in straight.encoder.state_dict().items():
        torch.testing.assert_close(resumed.encoder.state_dict()[key], value)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    loop = tiny_loop(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    lrs = [encoder_training.learning_rate(loop, step, progress) for step, progress in [(0, 0.0), (3, 0.0), (10, 0.5), (20, 1.0)]]
    assert lrs == pytest.approx([loop.lr / 4, loop.lr, loop.lr * 0.55, loop.lr * 0.1])


def test_loop_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="schedule"):
        encoder_training.LoopConfig(schedule="linear")
    with pytest.raises(ValueError, match="select_on"):
        encoder_training.LoopConfig(select_on="test_ndcg10")


def test_selecting_on_seen_filtered_validation_needs_seen_items(tmp_path):
    _, training, _ = tiny_split(tmp_path)
    with pytest.raises(ValueError, match="val_seen"):
        encoder_training.TrainingRun(UserEncoder(tiny_encoder()), replace(training, val_seen=()), tiny_loop())


# ---- the benchmark end to end ---------------------------------------------------------------


def test_run_benchmark_reports_both_protocols_curve_load_and_baseline(tmp_path, monkeypatch):
    write_sasrec(tmp_path / "tiny.txt", users=80)
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "result.json"
    result = bench_encoder.run_benchmark(
        tmp_path / "tiny.txt", minutes=0.02, seed=3, out=out, marks=(0.01, 60), d_model=16, n_layers=1,
        max_len=12, batch_size=16, lr=1e-2, warmup_steps=2, patience=10_000, cfg=load_config(), log_to_mlflow=False,
        trainer=encoder_fit.fit_in_process, command="test",
    )
    assert json.loads(out.read_text())["seed"] == 3
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
    assert result["machine"]["nproc"] == os.cpu_count() and result["published_ml1m"] is None
    assert result["inference"]["sequences_per_s"] > 0 and result["training"]["train_sequences_per_s"] > 0
    markdown = bench_encoder.render_markdown(result)
    assert "seen-filtered" in markdown and "unfiltered" in markdown and "Load" in markdown


def test_a_model_with_nan_weights_is_not_finite_and_ranks_every_target_last():
    model = UserEncoder(UserEncoderConfig(num_items=5, max_len=4, d_model=8, n_layers=1, n_heads=1))
    assert encoder_training.weights_are_finite(model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    assert not encoder_training.weights_are_finite(model)
    history = np.array([[0, 0, 1, 2]])
    plain, _ = encoder_training.rank_targets(model, history, np.ones_like(history), np.array([3]))
    assert plain.tolist() == [5]  # 6 columns (pad + 5 items): the target is behind all the others
