"""User encoder, its losses and warm start, and the sequence helpers that feed it (tiny models)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.sequences import (
    leave_last_out,
    length_buckets,
    next_item_examples,
    next_item_inputs,
    pad_left,
    time_gap_buckets,
    time_gap_buckets_flat,
)
from models.user_encoder import (
    Dropout,
    UserEncoder,
    UserEncoderConfig,
    _exp_in_range,
    expand_item_table,
    full_softmax_loss,
    item_logits,
    sampled_softmax_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


TINY = UserEncoderConfig(num_items=20, max_len=8, d_model=32, n_layers=2, n_heads=2, dropout=0.0)


def tiny_model(cfg: UserEncoderConfig = TINY, seed: int = 0) -> UserEncoder:
    torch.manual_seed(seed)
    return UserEncoder(cfg).eval()


def cyclic_batch(num_items: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sequence per start item walking 1..num_items cyclically: next item = current + 1."""
    seqs = [np.array([(s + j) % num_items + 1 for j in range(length + 1)]) for s in range(num_items)]
    events = [np.ones_like(s) for s in seqs]
    inputs, input_events, targets = next_item_examples(seqs, events, max_len=length)
    return torch.from_numpy(inputs), torch.from_numpy(input_events), torch.from_numpy(targets)


# ---- model ----------------------------------------------------------------------------------


def test_outputs_have_documented_shapes():
    model = tiny_model()
    ids = torch.randint(1, 21, (3, 8))
    events = torch.randint(1, 4, (3, 8))
    assert model(ids, events).shape == (3, 8, 32)
    users = model.user_embeddings(ids, events)
    assert users.shape == (3, 32)
    assert model.item_embeddings().shape == (21, 32)
    scores = model.scores(users)
    assert scores.shape == (3, 21)
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


def test_forward_accepts_fewer_positions_and_rejects_more_than_max_len():
    model = tiny_model()
    assert model(torch.randint(1, 21, (2, 3))).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randint(1, 21, (2, 9)))


def test_config_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        UserEncoderConfig(num_items=5, d_model=30, n_heads=4)


def test_changing_a_later_item_does_not_change_earlier_hidden_states():
    model = tiny_model()
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    changed = ids.clone()
    changed[0, 5] = 19
    h, h2 = model(ids), model(changed)
    torch.testing.assert_close(h[:, :5], h2[:, :5])
    assert not torch.allclose(h[:, 5:], h2[:, 5:])


def test_more_left_padding_does_not_change_the_last_position():
    model = tiny_model()
    short = torch.tensor([[0, 3, 4, 5]])
    long = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    ev_short, ev_long = (short != 0).long(), (long != 0).long()
    expected = model.user_embeddings(short, ev_short)
    torch.testing.assert_close(model.user_embeddings(long, ev_long), expected)
    # What sits at padding positions is never attended to.
    noisy_ev = ev_long.clone()
    noisy_ev[0, :5] = 2
    torch.testing.assert_close(model.user_embeddings(long, noisy_ev), expected)


def test_event_types_change_the_user_vector_only_when_enabled():
    ids = torch.tensor([[3, 4, 5]])
    plays, skips = torch.tensor([[1, 1, 1]]), torch.tensor([[1, 1, 2]])
    model = tiny_model()
    assert not torch.allclose(model.user_embeddings(ids, plays), model.user_embeddings(ids, skips))
    blind = tiny_model(replace(TINY, use_event_types=False))
    torch.testing.assert_close(blind.user_embeddings(ids, plays), blind.user_embeddings(ids, skips))


def test_time_gap_feature_changes_the_user_vector_only_when_enabled():
    ids = torch.tensor([[3, 4, 5]])
    soon = torch.from_numpy(time_gap_buckets(np.array([0, 60, 120]), 24))[None]
    later = torch.from_numpy(time_gap_buckets(np.array([0, 60, 86_400]), 24))[None]
    timed = tiny_model(replace(TINY, n_time_buckets=24))
    assert not torch.allclose(timed.user_embeddings(ids, time_buckets=soon), timed.user_embeddings(ids, time_buckets=later))
    plain = tiny_model()
    torch.testing.assert_close(plain.user_embeddings(ids, time_buckets=soon), plain.user_embeddings(ids))


def test_time_gap_buckets_are_log2_of_the_gap_and_capped():
    buckets = time_gap_buckets(np.array([100, 100, 101, 104, 10**9]), n_buckets=12)
    assert buckets.tolist() == [1, 2, 3, 4, 11]  # first event, gap 0, gap 1, gap 3 (log2 4 = 2), capped


def test_flat_time_gap_buckets_restart_at_every_row_as_per_row_buckets_do():
    rows = [np.array([5, 9, 9, 70]), np.array([], dtype=np.int64), np.array([3]), np.array([100, 10**7])]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    flat = time_gap_buckets_flat(np.concatenate(rows), offsets, n_buckets=20)
    assert flat.tolist() == np.concatenate([time_gap_buckets(r, 20) for r in rows]).tolist()
    assert flat.tolist() == [1, 4, 2, 7, 1, 1, 19]  # row 3 starts at 3 (after 70) and row 4 at 100: bucket 1


def test_user_and_item_embeddings_have_unit_norm():
    model = tiny_model()
    users = model.user_embeddings(torch.randint(1, 21, (4, 8)))
    torch.testing.assert_close(users.norm(dim=1), torch.ones(4))
    items = model.item_embeddings()
    torch.testing.assert_close(items[1:].norm(dim=1), torch.ones(20))
    assert torch.all(items[0] == 0)  # padding row


def test_full_softmax_learns_cyclic_sequences_and_ranks_the_next_item_first():
    model = tiny_model()
    inputs, events, targets = cyclic_batch(num_items=20, length=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(150):
        loss = full_softmax_loss(model, model(inputs, events), targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = full_softmax_loss(model, model(inputs, events), targets).item()
        top = model.scores(model.user_embeddings(inputs, events)).argmax(dim=1)
    assert first > 2.5 and final < 0.05
    assert torch.equal(top, targets[:, -1])


def test_full_softmax_loss_ignores_positions_with_target_zero():
    model = tiny_model()
    inputs, events, targets = cyclic_batch(num_items=20, length=4)
    masked = targets.clone()
    masked[:, :2] = 0
    h = model(inputs, events)
    expected = full_softmax_loss(model, h[:, 2:], targets[:, 2:])
    torch.testing.assert_close(full_softmax_loss(model, h, masked), expected)


def test_item_logits_are_the_scores_without_the_padding_column():
    model = tiny_model()
    users = model.user_embeddings(torch.randint(1, 21, (3, 8)))
    torch.testing.assert_close(item_logits(model, users), model.scores(users)[:, 1:])


def reference_history_masked_loss(model, hidden, inputs, targets):
    """Position by position: cross-entropy among items not in the history so far (target kept)."""
    losses = []
    for b in range(inputs.shape[0]):
        for t in range(inputs.shape[1]):
            y = int(targets[b, t])
            if y == 0:
                continue
            logits = model.scores(torch.nn.functional.normalize(hidden[b, t], dim=-1)[None])[0]  # (V + 1,)
            seen = {int(i) for i in inputs[b, : t + 1] if i != 0} - {y}
            logits[list(seen)] = float("-inf")
            losses.append(torch.nn.functional.cross_entropy(logits[None], torch.tensor([y])))
    return torch.stack(losses).mean()


def test_full_softmax_loss_with_history_ranks_each_target_among_unseen_items_only():
    model = tiny_model()
    inputs = torch.tensor([[0, 0, 3, 4, 5, 3], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 5, 3, 7], [2, 3, 4, 5, 6, 1]])  # row 0 repeats 3 as a target
    hidden = model(inputs)
    masked = full_softmax_loss(model, hidden, targets, history=inputs)
    torch.testing.assert_close(masked, reference_history_masked_loss(model, hidden, inputs, targets))
    assert masked < full_softmax_loss(model, hidden, targets)  # fewer competitors, lower loss


@pytest.mark.parametrize("temperature, shifted", [(0.05, False), (0.005, True)])
def test_fast_full_softmax_matches_plain_cross_entropy_in_value_and_gradients(temperature, shifted):
    # logits up to 1 / temperature: 20 is exponentiated as it is, 200 needs each row's max subtracted
    users = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1) / temperature
    assert _exp_in_range(users, None) is not shifted
    inputs, events, targets = cyclic_batch(num_items=20, length=8)
    losses, grads = [], []
    for fast in (True, False):
        model = tiny_model(replace(TINY, temperature=temperature))
        hidden = model(inputs, events)
        if fast:
            loss = full_softmax_loss(model, hidden, targets)
        else:
            keep = targets != 0
            users = torch.nn.functional.normalize(hidden[keep], dim=-1)
            loss = torch.nn.functional.cross_entropy(item_logits(model, users), targets[keep] - 1)
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_fast_full_softmax_gives_the_same_loss_twice_and_without_autograd():
    model = tiny_model()
    inputs, events, targets = cyclic_batch(num_items=20, length=8)
    first = full_softmax_loss(model, model(inputs, events), targets)
    second = full_softmax_loss(model, model(inputs, events), targets)  # buffer still held by `first`
    with torch.no_grad():
        third = full_softmax_loss(model, model(inputs, events), targets)
    torch.testing.assert_close(first, second)
    torch.testing.assert_close(first.detach(), third)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_drops_a_share_p_scales_the_rest_and_repeats_under_a_seed(p):
    x = torch.ones(64, 50, 32, requires_grad=True)
    drop = Dropout(p).train()
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    torch.testing.assert_close(drop(x), y)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.01  # 102,400 elements: sd of the share ~0.0016
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d y / d x = the mask
    assert torch.equal(drop.eval()(x), x)


def test_attention_dropout_is_its_own_setting():
    assert tiny_model(replace(TINY, dropout=0.3)).blocks[0].attn.dropout == 0.0
    assert tiny_model(replace(TINY, attention_dropout=0.1)).blocks[0].attn.dropout == 0.1
    with pytest.raises(ValueError, match="attention_dropout"):
        UserEncoderConfig(num_items=5, attention_dropout=1.0)


def test_sampled_softmax_loss_decreases_during_training():
    model = tiny_model()
    inputs, events, targets = cyclic_batch(num_items=20, length=8)
    log_q = torch.full((21,), -np.log(20.0))
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(100):
        negatives = torch.randint(1, 21, (8,), generator=gen)
        loss = sampled_softmax_loss(model, model(inputs, events), targets, negatives, log_q)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_logq_correction_changes_the_sampled_loss():
    model = tiny_model()
    inputs, events, targets = cyclic_batch(num_items=20, length=4)
    h = model(inputs, events)
    negatives = torch.tensor([1, 2, 3, 4])
    uniform = torch.full((21,), -np.log(20.0))
    skewed = torch.log_softmax(torch.linspace(0.0, 5.0, 21), dim=0)  # popular items at the end
    a = sampled_softmax_loss(model, h, targets, negatives, uniform)
    b = sampled_softmax_loss(model, h, targets, negatives, skewed)
    assert not torch.isclose(a, b)


def test_sampled_softmax_masks_negatives_equal_to_the_target():
    model = tiny_model()
    ids, targets = torch.tensor([[3, 4, 5]]), torch.tensor([[0, 0, 6]])
    h = model(ids)
    log_q = torch.zeros(21)
    with_hit = sampled_softmax_loss(model, h, targets, torch.tensor([6, 9, 10, 0]), log_q)
    without = sampled_softmax_loss(model, h, targets, torch.tensor([9, 10]), log_q)
    torch.testing.assert_close(with_hit, without)


def test_sampled_softmax_without_in_batch_negatives_treats_rows_independently():
    model = tiny_model()
    ids, targets = torch.tensor([[3, 4, 5], [7, 8, 9]]), torch.tensor([[0, 0, 6], [0, 0, 10]])
    h = model(ids)
    negatives, log_q = torch.tensor([11, 12, 13]), torch.zeros(21)
    batch = sampled_softmax_loss(model, h, targets, negatives, log_q, in_batch_negatives=False)
    rows = [sampled_softmax_loss(model, h[i : i + 1], targets[i : i + 1], negatives, log_q) for i in (0, 1)]
    torch.testing.assert_close(batch, (rows[0] + rows[1]) / 2)
    with_in_batch = sampled_softmax_loss(model, h, targets, negatives, log_q)
    assert with_in_batch > batch  # each row also competes with the other row's positive


def test_state_dict_round_trip_reproduces_outputs():
    model = tiny_model(replace(TINY, dropout=0.2))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = tiny_model(replace(TINY, dropout=0.2), seed=123)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    ids = torch.randint(1, 21, (4, 8))
    torch.testing.assert_close(model.user_embeddings(ids), fresh.user_embeddings(ids))
    torch.testing.assert_close(model.item_embeddings(), fresh.item_embeddings())


def test_expand_item_table_keeps_old_rows_and_grows():
    model = tiny_model()
    old = model.state_dict()
    torch.manual_seed(7)
    grown = expand_item_table(old, num_items=30)
    torch.manual_seed(7)
    again = expand_item_table(old, num_items=30)
    table = grown["item_emb.weight"]
    assert table.shape == (31, 32)
    torch.testing.assert_close(table[:21], old["item_emb.weight"])
    assert table[21:].abs().sum() > 0 and table[21:].std() < 0.1  # fresh-like small random rows
    torch.testing.assert_close(table, again["item_emb.weight"])  # deterministic given the seed
    assert old["item_emb.weight"].shape == (21, 32)  # input untouched
    bigger = UserEncoder(replace(TINY, num_items=30)).eval()
    bigger.load_state_dict(grown)  # strict: no other parameter depends on num_items
    ids = torch.randint(1, 21, (3, 8))
    old_scores = model.scores(model.user_embeddings(ids))
    torch.testing.assert_close(bigger.scores(bigger.user_embeddings(ids))[:, :21], old_scores)


def test_expand_item_table_refuses_to_shrink():
    with pytest.raises(ValueError, match="smaller"):
        expand_item_table(tiny_model().state_dict(), num_items=10)


FACETED = replace(TINY, item_facets=2, facet_buckets=5)


def test_items_that_share_their_facets_share_their_vector_until_their_residuals_move():
    model = tiny_model(FACETED)
    codes = torch.zeros(21, 2, dtype=torch.long)
    codes[1:11] = torch.tensor([1, 2])  # items 1-10: one genre, one artist
    codes[11:] = torch.tensor([1, 3])  # items 11-20: the same genre, another artist
    model.set_item_facets(codes)
    table = model.item_embeddings()
    torch.testing.assert_close(table[1:11], table[1:2].expand(10, -1))
    assert (table[1] - table[11]).abs().sum() > 0
    with torch.no_grad():
        model.item_emb.residual[4] += 0.5  # training moves one item's own residual
    assert (model.item_embeddings()[4] - model.item_embeddings()[5]).abs().sum() > 0
    ids = torch.randint(1, 21, (3, 8))
    assert model.scores(model.user_embeddings(ids)).shape == (3, 21)  # the tied output layer works unchanged


def test_a_warm_start_with_facets_takes_todays_codes_and_grows_the_residual_with_zeros():
    model = tiny_model(FACETED)
    model.set_item_facets(torch.ones(21, 2, dtype=torch.long))
    with torch.no_grad():
        model.item_emb.residual.normal_()
    today = torch.randint(0, 5, (31, 2))
    grown = expand_item_table(model.state_dict(), num_items=30, facet_codes=today)
    assert torch.equal(grown["item_emb.codes"], today)
    torch.testing.assert_close(grown["item_emb.residual"][:21], model.state_dict()["item_emb.residual"])
    assert grown["item_emb.residual"][21:].abs().sum() == 0
    UserEncoder(replace(FACETED, num_items=30)).load_state_dict(grown)  # strict
    with pytest.raises(ValueError, match="facet_codes"):
        expand_item_table(model.state_dict(), num_items=30)


def test_facet_codes_of_the_wrong_shape_or_outside_the_buckets_are_refused():
    model = tiny_model(FACETED)
    with pytest.raises(ValueError, match="num_items"):
        model.set_item_facets(torch.zeros(20, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="facet_buckets"):
        model.set_item_facets(torch.full((21, 2), 5, dtype=torch.long))
    with pytest.raises(ValueError, match="item_facets"):
        tiny_model().set_item_facets(torch.zeros(21, 2, dtype=torch.long))


# ---- sequences ------------------------------------------------------------------------------


def test_pad_left_keeps_the_most_recent_items():
    out = pad_left([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], dtype=np.int64)], max_len=3)
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]
    assert out.dtype == np.int64
    assert pad_left([np.array([1, 2])], 3, dtype=np.int32).dtype == np.int32


def test_next_item_examples_shift_targets_by_one_and_drop_short_sequences():
    items = [np.array([10, 11, 12, 13]), np.array([5]), np.array([7, 8])]
    events = [np.array([1, 2, 3, 1]), np.array([1]), np.array([3, 1])]
    inputs, input_events, targets = next_item_examples(items, events, max_len=4)
    assert inputs.tolist() == [[0, 10, 11, 12], [0, 0, 0, 7]]
    assert input_events.tolist() == [[0, 1, 2, 3], [0, 0, 0, 3]]
    assert targets.tolist() == [[0, 11, 12, 13], [0, 0, 0, 8]]
    inputs, _, targets = next_item_examples(items[:1], events[:1], max_len=2)  # keeps the latest
    assert inputs.tolist() == [[11, 12]] and targets.tolist() == [[12, 13]]


def test_next_item_examples_with_all_windows_train_every_transition_once():
    items, events = [np.arange(1, 9), np.array([4, 5])], [np.ones(8, dtype=np.int64), np.array([1, 2])]
    inputs, input_events, targets = next_item_examples(items, events, max_len=3, all_windows=True)
    assert inputs.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 1], [0, 0, 4]]
    assert targets.tolist() == [[6, 7, 8], [3, 4, 5], [0, 0, 2], [0, 0, 5]]
    assert input_events.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 0, 1]]


def test_windowed_gap_buckets_keep_the_gap_before_a_later_windows_first_position():
    items = [np.arange(1, 9), np.array([4, 5])]
    seconds = [np.array([0, 1, 4, 11, 26, 57, 120, 247]), np.array([50, 50])]
    gaps = [time_gap_buckets(s, 24) for s in seconds]  # on the whole sequence: [1, 3, 4, 5, 6, 7, 8, 9], [1, 2]
    inputs, _, _ = next_item_examples(items, [np.ones(len(s)) for s in items], max_len=3, all_windows=True)
    windowed = next_item_inputs(items, gaps, max_len=3, all_windows=True)
    assert inputs.tolist() == [[5, 6, 7], [2, 3, 4], [0, 0, 1], [0, 0, 4]]
    # Row 0 starts at item 5, 15 s after item 4: bucket 6, not "first event" (1); row 2 is the true start.
    assert windowed.tolist() == [[6, 7, 8], [3, 4, 5], [0, 0, 1], [0, 0, 1]]
    latest = next_item_inputs(items, gaps, max_len=3)  # without all_windows: the most recent rows only
    assert latest.tolist() == [[6, 7, 8], [0, 0, 1]]


def test_windowed_values_must_align_with_the_items():
    with pytest.raises(ValueError, match="align"):
        next_item_inputs([np.array([1, 2, 3])], [np.array([1, 1])], max_len=4)


def test_next_item_examples_reject_misaligned_event_types():
    with pytest.raises(ValueError, match="align"):
        next_item_examples([np.array([1, 2, 3])], [np.array([1, 1])], max_len=4)


def test_leave_last_out_holds_out_the_last_item_and_drops_single_item_histories():
    items = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    events = [np.array([1, 1, 2]), np.array([1]), np.array([3, 1])]
    train_items, train_events, held_out = leave_last_out(items, events)
    assert [s.tolist() for s in train_items] == [[1, 2], [5]]
    assert [s.tolist() for s in train_events] == [[1, 1], [3]]
    assert held_out.tolist() == [3, 6] and held_out.dtype == np.int64


def test_length_buckets_cover_every_index_once_and_group_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=103)
    batches = length_buckets(lengths, batch_size=10, rng=rng)
    assert len(batches) == 11 and max(len(b) for b in batches) == 10
    assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    # Sorted before chunking: the batches' length ranges do not interleave.
    spans = sorted((lengths[b].min(), lengths[b].max()) for b in batches)
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))


def test_a_learned_history_bias_scores_each_history_item_once_in_the_loss_and_in_ranking():
    """The loss with a history bias equals position-by-position cross-entropy of UserEncoder.scores
    with that position's history (a repeated item gets the bias once, a repeated target too), and
    the bias gets the same gradient as autograd gives the reference."""
    model = tiny_model(replace(TINY, history_bias=True))
    with torch.no_grad():
        model.history_bias.fill_(-1.5)
    inputs = torch.tensor([[0, 0, 3, 4, 3, 3], [1, 2, 3, 4, 5, 6]])
    targets = torch.tensor([[0, 0, 4, 3, 5, 4], [2, 3, 4, 5, 6, 1]])  # row 0 repeats 3 and 4 as targets
    losses, grads = [], []
    for fast in (True, False):
        model.zero_grad()
        hidden = model(inputs)
        if fast:
            loss = full_softmax_loss(model, hidden, targets, history=inputs)
        else:
            terms = [torch.nn.functional.cross_entropy(
                model.scores(torch.nn.functional.normalize(hidden[b, t], dim=-1)[None], inputs[b, None, : t + 1]),
                targets[b, t, None]) for b in range(2) for t in range(6) if targets[b, t]]
            loss = torch.stack(terms).mean()
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1])
    assert grads[0]["history_bias"] != 0
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    users = model.user_embeddings(inputs)
    biased, plain = model.scores(users, inputs), model.scores(users)
    torch.testing.assert_close(biased[0, 3] - plain[0, 3], torch.tensor(-1.5))  # item 3 read three times: once
    torch.testing.assert_close(biased[0, 7], plain[0, 7])  # not in row 0's history


def test_a_history_bias_learns_to_push_down_items_users_never_take_twice():
    """Data where the next item is never one already read: the bias learns a negative score."""
    inputs, events, targets = cyclic_batch(num_items=20, length=8)
    model = tiny_model(replace(TINY, history_bias=True)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = full_softmax_loss(model, model(inputs, events), targets, history=inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(model.history_bias) < -0.1


def test_a_model_pickled_before_the_history_bias_existed_still_scores_and_trains():
    """Champions in the MLflow registry are pickled modules; one from before the field has no bias."""
    import pickle

    model = tiny_model()
    inputs, events, targets = cyclic_batch(num_items=20, length=8)
    users = model.user_embeddings(inputs, events)
    expected = model.scores(users)
    del model.__dict__["history_bias"]  # as pickled by the code before history_bias
    loaded = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(loaded.scores(users, inputs), expected)
    assert loaded.history_bias is None and not loaded.cfg.history_bias
    full_softmax_loss(loaded, loaded(inputs, events), targets, history=inputs).backward()
