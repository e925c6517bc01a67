"""The user encoder's training loop (jobs/steps/encoder_training.py), shared by the train step and the
encoder benchmark: tiny generated SASRec-format data, tiny models, in-process training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs.bench import encoder as bench_encoder
from jobs.config import TrainConfig
from jobs.steps import encoder_training
from models.user_encoder import UserEncoder, UserEncoderConfig

NUM_ITEMS = 30

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def tiny_split(tmp_path, write_sasrec):
    """(data, training, test) of a tiny SASRec file, split leave-one-out as the encoder benchmark does."""
    path = tmp_path / "tiny.txt"
    write_sasrec(path, num_items=NUM_ITEMS)
    data = bench_encoder.read_sasrec(path)
    return data, *bench_encoder.leave_one_out(data, 12)


def tiny_loop(**kw) -> encoder_training.LoopConfig:
    return encoder_training.LoopConfig(**{"lr": 1e-2, "batch_size": 16, "max_epochs": 3, "patience": 5,
                               "select_on": "val_ndcg10_seen_filtered", **kw})


def tiny_encoder(max_len: int = 12) -> UserEncoderConfig:
    return UserEncoderConfig(num_items=NUM_ITEMS, max_len=max_len, d_model=16, n_layers=1, n_heads=2, dropout=0.0)




def test_training_run_improves_validation_and_keeps_the_selected_weights(tiny_split):
    _, training, _ = tiny_split
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


def test_training_run_stops_on_its_time_budget_and_snapshots_marks(tiny_split):
    _, training, _ = tiny_split
    torch.manual_seed(0)
    loop = tiny_loop(max_epochs=10_000, patience=10_000, minutes=0.01, mark_minutes=(0.0, 0.01),
                     schedule="cosine", warmup_steps=3)
    run = encoder_training.TrainingRun(UserEncoder(tiny_encoder()), training, loop)
    state = run.run()
    assert state.stop_reason == "time_budget" and state.elapsed >= 0.6
    assert set(run.marks) == {0.0, 0.01}
    assert any(r["kind"] == "mark" for r in state.history)


class Crash(Exception):
    pass


def test_training_run_resumes_from_its_checkpoint_exactly(tmp_path, tiny_split):
    """A run that crashes after epoch 1 and resumes from its checkpoint ends where a straight run does."""
    _, training, _ = tiny_split
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


def test_a_plateau_goes_back_to_the_selected_weights_and_anneals_the_lr_to_zero_then_stops(tiny_split, monkeypatch):
    _, training, _ = tiny_split
    scores = iter([0.5, 0.4, 0.45, 0.45, 0.45, 0.45])  # epoch 1 is the best; epoch 2 starts the plateau
    monkeypatch.setattr(encoder_training, "validation_metrics", lambda *a, **k: {"val_ndcg10_seen_filtered": next(scores)})
    run = encoder_training.TrainingRun(UserEncoder(tiny_encoder()), training,
                                       tiny_loop(max_epochs=20, patience=10, anneal_after=1, anneal_epochs=2))
    restored = []
    run.run(on_epoch=lambda r: restored.append(all(torch.equal(v, r.best_weights[k]) for k, v in r.encoder.state_dict().items())))
    st = run.state
    assert st.stop_reason == "annealed" and st.epoch == 4  # best, plateau, then 2 epochs of annealing
    assert restored[:2] == [True, True]  # after epoch 2 the encoder is back at epoch 1's weights
    steps_per_epoch = st.anneal_steps // 2
    assert st.anneal_from_step == 2 * steps_per_epoch and st.anneal_lr == pytest.approx(run.loop.lr)
    lrs = [r["lr"] for r in st.history]
    assert lrs[2] < run.loop.lr and lrs[3] < lrs[2]  # the lr of each epoch's last step decays ...
    assert lrs[3] < 0.05 * run.loop.lr  # ... to ~0 at the end of the anneal


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    loop = tiny_loop(schedule="cosine", warmup_steps=4, min_lr_ratio=0.1)
    lrs = [encoder_training.learning_rate(loop, step, progress) for step, progress in [(0, 0.0), (3, 0.0), (10, 0.5), (20, 1.0)]]
    assert lrs == pytest.approx([loop.lr / 4, loop.lr, loop.lr * 0.55, loop.lr * 0.1])


def test_loop_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="schedule"):
        encoder_training.LoopConfig(schedule="linear")
    with pytest.raises(ValueError, match="select_on"):
        encoder_training.LoopConfig(select_on="test_ndcg10")


def test_selecting_on_seen_filtered_validation_needs_seen_items(tiny_split):
    _, training, _ = tiny_split
    with pytest.raises(ValueError, match="val_seen"):
        encoder_training.TrainingRun(UserEncoder(tiny_encoder()), replace(training, val_seen=()), tiny_loop())



def test_a_model_with_nan_weights_is_not_finite_and_ranks_every_target_last():
    model = UserEncoder(UserEncoderConfig(num_items=5, max_len=4, d_model=8, n_layers=1, n_heads=1))
    assert encoder_training.weights_are_finite(model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    assert not encoder_training.weights_are_finite(model)
    history = np.array([[0, 0, 1, 2]])
    plain, _ = encoder_training.rank_targets(model, history, np.ones_like(history), np.array([3]))
    assert plain.tolist() == [5]  # 6 columns (pad + 5 items): the target is behind all the others


def test_a_run_whose_weights_become_nan_stops_as_diverged_and_keeps_finite_selected_weights(tiny_split):
    _, training, _ = tiny_split
    torch.manual_seed(0)
    encoder = UserEncoder(tiny_encoder())

    def poison_after_first_epoch(run):
        if run.state.epoch == 1:
            with torch.no_grad():
                next(run.encoder.parameters()).fill_(float("nan"))

    run = encoder_training.TrainingRun(encoder, training, tiny_loop(max_epochs=5))
    state = run.run(on_epoch=poison_after_first_epoch)
    assert state.stop_reason == "diverged" and state.epoch == 2  # one epoch on NaN weights, then stop
    selected = UserEncoder(tiny_encoder())
    selected.load_state_dict(run.best_weights)
    assert encoder_training.weights_are_finite(selected)  # the gate must still refuse the run (train._gate)


def test_the_train_gate_refuses_a_diverged_run_even_with_finite_selected_weights(tiny_split):
    from jobs.config import load_config
    from jobs.steps import train
    from jobs.steps.encoder_fit import FitResult

    _, training, _ = tiny_split
    finite = UserEncoder(tiny_encoder()).eval()
    diverged = FitResult(finite, [], {}, encoder_training.LoopState(epoch=3, stop_reason="diverged"), "")
    promote, reason = train._gate(load_config(), diverged, None, training, {}, step=None)
    assert not promote and reason == "training diverged at epoch 3: its loss or weights are not finite"
    healthy = replace(diverged, state=encoder_training.LoopState(epoch=3, stop_reason="max_epochs"))
    assert train._gate(load_config(), healthy, None, training, {}, step=None) == (True, "no champion yet")


# --- time gaps (train.time_buckets) -------------------------------------------------------------------

def timed_sequences(users: int = 24, seed: int = 0, spread_ms: int = 1_000) -> pa.Table:
    """user_sequences-like rows (item_idx, event_type, ts in ms) of users walking the items; the gaps
    between events are multiples of `spread_ms`."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 20, users)  # some longer than max_len 12
    items = [[(int(rng.integers(NUM_ITEMS)) + j) % NUM_ITEMS + 1 for j in range(k)] for k in lengths]
    ts = [np.cumsum(rng.integers(1, 5_000, k) * spread_ms).tolist() for k in lengths]
    return pa.table({"item_idx": items, "event_type": [[1] * len(s) for s in items], "ts": ts})


def timed_encoder() -> UserEncoderConfig:
    return replace(tiny_encoder(), n_time_buckets=24)


def test_training_data_with_time_buckets_feeds_the_model_different_inputs_when_only_ts_differs():
    from jobs.steps.compatibility import user_vectors

    quick, slow = timed_sequences(spread_ms=1_000), timed_sequences(spread_ms=3_600_000)
    a, b = (encoder_training.build_training_data(t, 12, seed=0, time_buckets=24) for t in (quick, slow))
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.val_inputs, b.val_inputs)
    assert a.input_gaps.shape == a.inputs.shape and a.val_gaps.shape == a.val_inputs.shape
    np.testing.assert_array_equal(a.input_gaps != 0, a.inputs != 0)  # a bucket for every input position, 0 for padding
    assert (a.input_gaps != b.input_gaps).any() and (a.val_gaps != b.val_gaps).any()
    torch.manual_seed(0)
    model = UserEncoder(timed_encoder()).eval()
    assert not np.allclose(user_vectors(model, a.val_inputs, a.val_events, a.val_gaps),
                           user_vectors(model, b.val_inputs, b.val_events, b.val_gaps))
    losses = []
    for data in (a, b):  # the same seeds: only the time input differs
        torch.manual_seed(0)
        run = encoder_training.TrainingRun(UserEncoder(timed_encoder()), data, tiny_loop(max_epochs=1, select_on="val_ndcg10"))
        losses.append(run.run().history[-1]["train_loss"])
    assert losses[0] != losses[1]
    off = encoder_training.build_training_data(quick, 12, seed=0)  # time_buckets 0: no time input at all
    assert off.input_gaps is None and off.val_gaps is None
    np.testing.assert_array_equal(off.inputs, a.inputs)


def test_a_time_aware_encoder_refuses_data_without_time_gaps():
    data = encoder_training.build_training_data(timed_sequences(), 12, seed=0)
    with pytest.raises(ValueError, match="time gaps"):
        encoder_training.TrainingRun(UserEncoder(timed_encoder()), data, tiny_loop(select_on="val_ndcg10"))
    with pytest.raises(ValueError, match="time gaps"):
        encoder_training.rank_targets(UserEncoder(timed_encoder()), data.val_inputs, data.val_events, data.val_targets)


def test_gap_buckets_built_with_more_buckets_serve_a_model_with_fewer_as_its_own_would():
    from jobs.steps.train import data_time_buckets
    from models.sequences import time_gap_buckets

    seconds = np.array([0, 1, 100, 10_000, 10**6, 10**8])
    small = UserEncoder(replace(tiny_encoder(), n_time_buckets=12))
    np.testing.assert_array_equal(encoder_training.gap_input(small, time_gap_buckets(seconds, 32)),
                                  time_gap_buckets(seconds, 12))
    assert encoder_training.gap_input(UserEncoder(tiny_encoder()), time_gap_buckets(seconds, 32)) is None
    t = TrainConfig(time_buckets=12)
    assert data_time_buckets(t, None) == 12
    assert data_time_buckets(t, UserEncoder(replace(tiny_encoder(), n_time_buckets=32))) == 32  # the gate ranks it too
    assert data_time_buckets(replace(t, time_buckets=0), UserEncoder(tiny_encoder())) == 0


class FakeShard:
    """What ray.train.get_dataset_shard gives a worker, for worker_training_data without Ray."""

    def __init__(self, table):
        self.table = table

    def iter_batches(self, batch_format: str, batch_size: int):
        return iter([self.table.slice(i, batch_size) for i in range(0, self.table.num_rows, batch_size)])


def test_the_train_steps_data_carries_gap_buckets_of_whole_sequences_held_out_item_excluded():
    from jobs.steps import train_data
    from models.sequences import time_gap_buckets

    table = timed_sequences(users=6)
    table = table.add_column(0, "user_id", pa.array([f"u{i}" for i in range(6)])).cast(
        train_data.schema(24))
    held_out = {"u1", "u4"}
    validation = train_data.validation_data(table.filter(pa.array([u in held_out for u in table.column("user_id").to_pylist()])),
                                            12, time_buckets=24)
    data = train_data.worker_training_data(FakeShard(table), validation, held_out, 12, time_buckets=24)
    whole = [time_gap_buckets(np.asarray(ts) // 1000, 24) for ts in table.column("ts").to_pylist()]
    assert data.input_gaps.shape == data.inputs.shape
    for row, user in enumerate(table.column("user_id").to_pylist()):
        gaps = whole[row][:-1] if user in held_out else whole[row]
        tail = gaps[:-1][-12:]  # inputs are the sequence less its last item, last 12 of them
        assert data.input_gaps[row, 12 - len(tail):].tolist() == tail.tolist()
    assert validation.val_gaps.tolist() == [np.pad(whole[i][:-1][-12:], (12 - len(whole[i][:-1][-12:]), 0)).tolist()
                                            for i in (1, 4)]
    off = train_data.worker_training_data(FakeShard(table.select(train_data.sequence_columns(0))),
                                          train_data.validation_data(table.slice(1, 1), 12), held_out, 12)
    assert off.input_gaps is None and off.val_gaps is None
