"""Generative retrieval: constrained decoding, soft tokens, the pretrained path, training, re-ranking."""

import numpy as np
import pytest
import torch

from jobs.steps.generative_training import Examples, FitConfig, Teacher, fit, generate, hit_metrics
from models.generative import (
    SID_EMBEDDING_NORM,
    SOFT,
    GenerativeRecommender,
    SidVocabulary,
    TinyLlamaConfig,
    TrieTables,
    build_sequences,
    constrained_beam_search,
    pretrained_lm,
    sid_token_vectors,
    teacher_sid_targets,
    tiny_llama,
)
from models.reranking import Candidate, RerankRules, rerank
from models.residual_quantizer import sid_string

LEVELS = (4, 4, 3)
TINY = TinyLlamaConfig(hidden=32, layers=1, heads=2, intermediate=64, max_positions=128)


def catalog(n: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(0, LEVELS, size=(n, len(LEVELS))), axis=0)


def model_for(vocab: SidVocabulary, user_dim: int = 0, seed: int = 0) -> GenerativeRecommender:
    return GenerativeRecommender(tiny_llama(vocab, TINY, seed), vocab, user_dim).eval()


def inputs(vocab, tokens, rows=3, soft=False, seed=0):
    rng = np.random.default_rng(seed)
    histories = [tokens[rng.integers(0, len(tokens), n)] for n in range(rows)]
    ids, mask = build_sequences(vocab, histories, [["a"]] * rows, soft)
    return torch.from_numpy(ids), torch.from_numpy(mask), histories


def test_constrained_decoding_never_returns_an_invalid_sid_even_when_logits_favour_invalid_tokens(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(9)
    model = model_for(vocab)
    invalid = torch.zeros(vocab.size)
    for level, size in enumerate(LEVELS):  # a huge bias on every code no catalog SID uses at that level
        unused = sorted(set(range(size)) - set(tokens[:, level].tolist()))
        invalid[[vocab.level_start(level) + c for c in unused]] = 50.0
    invalid[: vocab.sid_start] = 80.0  # and on every non-SID token
    with torch.no_grad():
        model.lm.lm_head.weight.zero_()
        model.lm.lm_head.bias = torch.nn.Parameter(invalid)
    ids, mask, _ = inputs(vocab, tokens)
    items, scores = constrained_beam_search(model, ids, mask, None, TrieTables(tokens, LEVELS), beams=30)
    valid = items[items >= 0]
    assert len(valid) == 3 * len(tokens)  # every catalog SID exactly once per row, nothing else
    for row in items:
        got = row[row >= 0].tolist()
        assert sorted(got) == list(range(len(tokens)))
    assert torch.isinf(scores[items < 0]).all()


def test_beam_search_equals_exhaustive_scoring_and_greedy_is_beam_one(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model, trie = model_for(vocab, seed=1), TrieTables(tokens, LEVELS)
    ids, mask, histories = inputs(vocab, tokens, seed=1)
    items, scores = constrained_beam_search(model, ids, mask, None, trie, beams=len(tokens))
    greedy, _ = constrained_beam_search(model, ids, mask, None, trie, beams=1)
    for r, history in enumerate(histories):  # score every catalog SID with one full forward each
        all_ids, all_mask = build_sequences(vocab, [history] * len(tokens), [["a"]] * len(tokens), False, targets=tokens)
        t = torch.from_numpy(all_ids)
        with torch.no_grad():
            logp = model(t, torch.from_numpy(all_mask)).logits.float().log_softmax(-1)
        total = logp[:, -4:-1].gather(2, t[:, -3:, None]).squeeze(-1).sum(1)
        assert items[r].tolist() == total.argsort(descending=True).tolist()
        torch.testing.assert_close(scores[r], total.sort(descending=True).values, atol=1e-4, rtol=1e-4)
    # greedy (beam 1) takes the most likely valid token level by level, e.g. the first one:
    with torch.no_grad():
        first = model(ids, mask).logits[:, -1, vocab.level_start(0):vocab.level_start(0) + LEVELS[0]]
    first = first.masked_fill(~trie.allowed[0][0], float("-inf")).argmax(-1)
    assert [int(tokens[g][0]) for g in greedy[:, 0]] == first.tolist()


def test_excluded_items_are_masked_inside_the_beam_and_the_freed_slots_go_to_the_next_best(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model, trie = model_for(vocab, seed=1), TrieTables(tokens, LEVELS)
    ids, mask, _ = inputs(vocab, tokens, seed=1)
    full, full_scores = constrained_beam_search(model, ids, mask, None, trie, beams=len(tokens))  # exact ranking
    exclude = [full[r, [0, 2, 5]].numpy() for r in range(3)]  # each row's 1st, 3rd and 6th best
    masked, scores = constrained_beam_search(model, ids, mask, None, trie, beams=len(tokens), exclude=exclude)
    for r in range(3):
        rest = [i for i in full[r].tolist() if i not in set(exclude[r].tolist())]
        assert masked[r, :len(rest)].tolist() == rest  # the same order, nothing excluded
        assert (masked[r, len(rest):] == -1).all()
        torch.testing.assert_close(scores[r, :len(rest)], full_scores[r][~np.isin(full[r].numpy(), exclude[r])])
    few, _ = constrained_beam_search(model, ids, mask, None, trie, beams=3, exclude=exclude)
    assert (few >= 0).all() and not any(set(few[r].tolist()) & set(exclude[r].tolist()) for r in range(3))


def test_a_prefix_whose_items_are_all_excluded_is_closed_even_when_the_model_wants_it(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model, trie = model_for(vocab), TrieTables(tokens, LEVELS)
    favourite = int(tokens[0, 0])  # every item starting with this code is excluded
    bias = torch.zeros(vocab.size)
    bias[vocab.level_start(0) + favourite] = 50.0
    with torch.no_grad():
        model.lm.lm_head.bias = torch.nn.Parameter(bias)
    ids, mask, _ = inputs(vocab, tokens, rows=2)
    under = np.flatnonzero(tokens[:, 0] == favourite)
    plain, _ = constrained_beam_search(model, ids, mask, None, trie, beams=1)
    assert (tokens[plain[:, 0].numpy(), 0] == favourite).all()
    greedy, _ = constrained_beam_search(model, ids, mask, None, trie, beams=1, exclude=[under, under])
    assert (greedy[:, 0] >= 0).all() and (tokens[greedy[:, 0].numpy(), 0] != favourite).all()


def test_every_generated_item_exists_in_the_catalog(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(15)
    model, trie = model_for(vocab, seed=2), TrieTables(tokens, LEVELS)
    examples = Examples([tokens[:k] for k in range(5)], [["a"]] * 5, None, None)
    rows, _ = generate(model, examples, trie, beams=8, batch_size=2)
    assert rows.shape == (5, 8) and (rows >= 0).all() and (rows < len(tokens)).all()
    for row in rows:
        assert len(set(row.tolist())) == 8  # no item twice in a list


def test_more_beams_than_catalog_items_pads_with_minus_one(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(4)
    ids, mask, _ = inputs(vocab, tokens, rows=2)
    items, scores = constrained_beam_search(model_for(vocab), ids, mask, None, TrieTables(tokens, LEVELS), beams=10)
    assert (items[:, :len(tokens)] >= 0).all() and (items[:, len(tokens):] == -1).all()


def test_soft_token_changes_the_output_and_gradients_reach_the_projector(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(10)
    model = model_for(vocab, user_dim=8)
    ids, mask, _ = inputs(vocab, tokens, rows=2, soft=True)
    assert (ids == vocab.special(SOFT)).sum() == 2
    users = torch.randn(2, 8)
    a = model(ids, mask, users).logits[:, -1]
    b = model(ids, mask, users * -3).logits[:, -1]
    assert not torch.allclose(a, b)
    model.train()
    targets, tmask = build_sequences(vocab, [tokens[:2], tokens[2:3]], None, True, targets=tokens[:2])
    model.target_loss(torch.from_numpy(targets), torch.from_numpy(tmask), users).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    with pytest.raises(ValueError, match="SOFT"):
        GenerativeRecommender(model.lm, vocab, 0)(ids, mask, None)


def test_the_soft_token_sits_right_before_the_target_and_older_models_keep_it_after_bos():
    tokens = catalog(6)
    for soft_last in (True, False):
        vocab = SidVocabulary(("a",), LEVELS, soft_last=soft_last)
        ids, mask = build_sequences(vocab, [tokens[:2], tokens[2:3]], [["a"], []], True, targets=tokens[:2])
        for row, real in zip(ids, mask):
            row = row[real.astype(bool)].tolist()
            soft_at = row.index(vocab.special(SOFT))
            assert soft_at == (len(row) - len(LEVELS) - 1 if soft_last else 1)
            assert row.count(vocab.special(SOFT)) == 1


def test_a_saved_model_keeps_its_sequence_layout_and_history_bias(tmp_path, one_torch_thread):
    from jobs.steps.generative_data import load_model, save_model

    for soft_last in (True, False):
        vocab = SidVocabulary(("a",), LEVELS, soft_last=soft_last)
        model = GenerativeRecommender(tiny_llama(vocab, TINY, 0), vocab, 4, history_bias=soft_last)
        if soft_last:
            model.history_bias.data.fill_(-3.0)
        save_model(tmp_path / str(soft_last), model, {"user_dim": 4})
        loaded = load_model(tmp_path / str(soft_last))[0]
        assert loaded.vocab.soft_last is soft_last
        assert (loaded.history_bias is None if not soft_last else float(loaded.history_bias) == -3.0)
    meta = tmp_path / "True" / "meta.json"  # a model saved before the field existed
    meta.write_text(meta.read_text().replace('"soft_last": true', '"unrelated": 0'))
    assert load_model(tmp_path / "True")[0].vocab.soft_last is False


def test_the_history_bias_is_added_to_consumed_completions_of_the_targets_prefix_in_the_loss(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model = GenerativeRecommender(tiny_llama(vocab, TINY, 0), vocab, history_bias=True)
    with torch.no_grad():
        model.history_bias.fill_(2.5)
    target = tokens[5]
    siblings = [t for t in tokens if (t[:-1] == target[:-1]).all() and t[-1] != target[-1]]
    others = [t for t in tokens if t[0] != target[0]][:2]
    examples = Examples([tokens[:3]], None, None, target[None], [np.array(siblings + others + [target])])
    consumed = examples.consumed_last(vocab)[0]
    assert sorted(np.flatnonzero(consumed.numpy())) == sorted([int(t[-1]) for t in siblings] + [int(target[-1])])
    ids, mask, _ = examples.tensors(vocab, with_targets=True)
    loss = model.target_loss(ids, mask, None, consumed[None])
    logits = model(ids, mask).logits[:, -len(LEVELS) - 1:-1].float()
    start = vocab.level_start(len(LEVELS) - 1)
    logits[0, -1, start:start + LEVELS[-1]] += 2.5 * consumed.float()
    expected = torch.nn.functional.cross_entropy(logits[0], ids[0, -len(LEVELS):])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.history_bias.grad is not None and model.history_bias.grad != 0


def test_the_history_bias_moves_consumed_items_in_the_beam_only_when_the_history_is_given(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    model = GenerativeRecommender(tiny_llama(vocab, TINY, 0), vocab, history_bias=True).eval()
    ids, mask, _ = inputs(vocab, tokens, rows=2)
    trie = TrieTables(tokens, LEVELS)
    plain, _ = constrained_beam_search(model, ids, mask, None, trie, beams=len(tokens))
    consumed = [plain[0, -3:].numpy(), plain[1, :2].numpy()]  # row 0: its three worst; row 1: its two best
    for bias in (30.0, -30.0):
        with torch.no_grad():
            model.history_bias.fill_(bias)
        items, _ = constrained_beam_search(model, ids, mask, None, trie, beams=len(tokens), history=consumed)
        for row, c in zip(items.numpy(), consumed):
            assert sorted(row) == list(range(len(tokens)))  # nothing masked: every item still returned
            top, bottom = set(row[:len(c)]), set(row[-len(c):])
            assert (top if bias > 0 else bottom) == set(c)
        same, _ = constrained_beam_search(model, ids, mask, None, trie, beams=len(tokens))
        torch.testing.assert_close(same, plain)


def test_a_history_bias_learns_that_users_never_take_an_item_twice(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(20)
    rng = np.random.default_rng(0)
    targets = rng.integers(0, len(tokens), 200)
    # each user consumed the target's siblings (same prefix, another last code) and never the target
    consumed = [np.array([t for t in tokens if (t[:-1] == tokens[i][:-1]).all() and t[-1] != tokens[i][-1]]
                         ).reshape(-1, len(LEVELS)) for i in targets]
    examples = Examples([tokens[rng.integers(0, len(tokens), 3)] for _ in targets], None, None, tokens[targets], consumed)
    model = GenerativeRecommender(tiny_llama(vocab, TINY, 0), vocab, history_bias=True)
    fit(model, examples, FitConfig(minutes=1.0, max_epochs=20, lr=3e-2, batch_size=50, warmup_steps=2, threads=1))
    assert float(model.history_bias) < -1.0


def test_sid_token_vectors_are_the_residuals_each_level_adds_to_its_items():
    rng = np.random.default_rng(0)
    tokens = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2]])
    vectors = rng.normal(size=(5, 6))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    first, second = sid_token_vectors(tokens, vectors, (3, 3))
    np.testing.assert_allclose(first[0], unit[:2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(first[1], unit[2:].mean(0), rtol=1e-5)
    assert not first[2].any()  # a code no item has
    prefix = np.where(tokens[:, :1] == 0, first[0], first[1])
    np.testing.assert_allclose(second[2], (unit[4] - prefix[4]), rtol=1e-5)  # code 2 only under prefix 1
    np.testing.assert_allclose(second[0], (unit[[0, 2]] - prefix[[0, 2]]).mean(0), rtol=1e-5, atol=1e-7)


def test_sid_embeddings_start_along_their_items_and_leave_other_tokens_alone(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(15)
    model = model_for(vocab)
    before = model.lm.get_input_embeddings().weight.detach().clone()
    levels = sid_token_vectors(tokens, np.random.default_rng(1).normal(size=(len(tokens), TINY.hidden)), LEVELS)
    model.init_sid_embeddings(levels)
    table = model.lm.get_input_embeddings().weight.detach()
    torch.testing.assert_close(table[:vocab.sid_start], before[:vocab.sid_start])
    for level, vectors in enumerate(levels):
        rows = table[vocab.level_start(level):vocab.level_start(level) + LEVELS[level]]
        used = torch.from_numpy(np.abs(vectors).sum(1) > 0)
        cosine = torch.nn.functional.cosine_similarity(rows[used], torch.from_numpy(vectors)[used])
        torch.testing.assert_close(cosine, torch.ones_like(cosine))
        assert rows[used].norm(dim=1).mean() == pytest.approx(SID_EMBEDDING_NORM, rel=1e-4)
    assert model.lm.lm_head.weight.data_ptr() == model.lm.get_input_embeddings().weight.data_ptr()  # tied: scores too


def test_pretrained_model_from_a_local_directory_gets_the_sid_vocabulary(tmp_path, one_torch_thread):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))
    base.save_pretrained(tmp_path / "tiny-llama")
    lm, vocab = pretrained_lm(str(tmp_path / "tiny-llama"), SidVocabulary(("a", "b"), LEVELS))
    assert vocab.base == 50 and lm.get_input_embeddings().num_embeddings == vocab.size == 50 + 4 + 2 + sum(LEVELS)
    torch.testing.assert_close(lm.get_input_embeddings().weight[:50], base.get_input_embeddings().weight)
    tokens = catalog(12)
    model = GenerativeRecommender(lm, vocab, user_dim=8).eval()
    ids, mask, _ = inputs(vocab, tokens, soft=True)
    items, _ = constrained_beam_search(model, ids, mask, torch.randn(3, 8), TrieTables(tokens, LEVELS), beams=5)
    assert (items >= 0).all() and ids.min() >= 50  # our tokens live above the base vocabulary


def test_fit_on_generated_sequences_reduces_the_loss_and_learns_the_pattern(one_torch_thread):
    # Users walk the catalog in order: the next item is the one after the last; the soft token is noise.
    vocab, tokens = SidVocabulary(("a", "b"), LEVELS), catalog(12)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(tokens) - 4, 300)
    examples = Examples([tokens[s:s + 3] for s in starts], [["a"]] * 300, rng.normal(size=(300, 4)).astype(np.float32),
                        tokens[starts + 3])
    model = GenerativeRecommender(tiny_llama(vocab, TINY, 0), vocab, user_dim=4)
    fitted = fit(model, examples, FitConfig(minutes=1.0, max_epochs=25, lr=1e-2, batch_size=64, warmup_steps=5, threads=1))
    losses = [h["loss"] for h in fitted["history"]]
    assert losses[-1] < 0.5 * losses[0]
    rows, _ = generate(model, examples.rows(np.arange(50)), TrieTables(tokens, LEVELS), beams=3)
    assert hit_metrics([list(r) for r in rows], starts[:50] + 3, ks=(3,), ndcg_ks=())["hr3"] > 0.5


def test_teacher_targets_multiply_back_into_the_teachers_item_distribution():
    tokens = catalog(30)
    torch.manual_seed(0)
    logits = torch.randn(len(tokens), len(tokens))  # row r: a teacher's scores; its target is item r
    levels = teacher_sid_targets(logits, torch.from_numpy(tokens), torch.from_numpy(tokens), LEVELS)
    assert all(torch.allclose(q.sum(1), torch.ones(len(tokens))) for q in levels)
    along_target = torch.stack([q[torch.arange(len(tokens)), torch.from_numpy(tokens[:, d])] for d, q in enumerate(levels)])
    assert torch.allclose(along_target.prod(0), torch.softmax(logits, 1).diagonal(), atol=1e-6)


def test_the_teacher_puts_no_mass_on_what_the_user_consumed():
    tokens = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [2, 0, 0]])  # target item 0; items 1 and 2 consumed
    teacher = Teacher(torch.eye(4, 3), torch.from_numpy(tokens), TrieTables(tokens, LEVELS), 1.0, 1.0)
    examples = Examples([tokens[:0]], None, None, tokens[:1], [tokens[1:3].astype(np.int16)], np.ones((1, 3), np.float32))
    first, second, last = teacher.targets(examples, SidVocabulary((), LEVELS))
    assert first[0, 1] == 0 and first[0, 0] > 0 and first[0, 2] > 0  # code 1 holds only a consumed item
    assert second[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # under code 0, item 1 is consumed: all mass on item 0
    assert last[0].tolist() == [1.0, 0.0, 0.0]


def test_distillation_teaches_the_teachers_ranking_where_the_targets_are_noise(one_torch_thread):
    # Targets are random; the teacher ranks items by their vector's match with the user vector (the soft
    # token). Only the teacher's signal can make greedy decoding agree with its top item.
    vocab, tokens = SidVocabulary((), LEVELS), catalog(12)
    rng = np.random.default_rng(0)
    vectors = torch.nn.functional.normalize(torch.randn(len(tokens), 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    users = rng.normal(size=(400, 4)).astype(np.float32)
    best = (torch.from_numpy(users) @ vectors.T).argmax(1).numpy()
    examples = Examples([tokens[:0]] * 400, None, users, tokens[rng.integers(0, len(tokens), 400)], None, users)
    agreement = {}
    for weight in (0.0, 1.0):
        model = GenerativeRecommender(tiny_llama(vocab, TINY, 0), vocab, user_dim=4)
        teacher = Teacher(vectors, torch.from_numpy(tokens), TrieTables(tokens, LEVELS), 0.1, weight) if weight else None
        fit(model, examples, FitConfig(minutes=1.0, max_epochs=20, lr=1e-2, batch_size=64, warmup_steps=5, threads=1), teacher)
        rows, _ = generate(model, examples.rows(np.arange(200)), TrieTables(tokens, LEVELS), beams=1)
        agreement[weight] = float(np.mean(rows[:, 0] == best[:200]))
    assert agreement[1.0] > 0.6 > agreement[0.0] + 0.3


def test_trie_rejects_duplicate_sids():
    with pytest.raises(ValueError, match="same SID"):
        TrieTables(np.array([[1, 2, 0], [1, 2, 0]]), LEVELS)


def c(item, sid, kind="track"):
    return Candidate(item, tuple(sid), 0.0, kind)


def test_rerank_drops_consumed_items():
    decisions = rerank([c("a", [1, 1]), c("b", [2, 1]), c("c", [3, 1])], {"b"}, RerankRules(k=5))
    assert [d.candidate.item_id for d in decisions if d.kept] == ["a", "c"]
    assert decisions[1].reason.startswith("consumed")


def test_rerank_type_quota_caps_episodes():
    cands = [c("e1", [1], "episode"), c("e2", [2], "episode"), c("t1", [3]), c("e3", [4], "episode"), c("t2", [5])]
    decisions = rerank(cands, set(), RerankRules(k=10, type_quotas={"episode": 2}))
    assert [d.candidate.item_id for d in decisions if d.kept] == ["e1", "e2", "t1", "t2"]
    assert decisions[3].reason == "quota episode: 2 already kept"


def test_rerank_prefix_cap_spreads_the_list_and_k_limits_it():
    cands = [c("a", [7, 1, 0]), c("b", [7, 2, 0]), c("c", [7, 3, 0]), c("d", [8, 1, 0]), c("e", [9, 1, 0])]
    decisions = rerank(cands, set(), RerankRules(k=3, prefix_len=1, max_per_prefix=2))
    assert [d.candidate.item_id for d in decisions if d.kept] == ["a", "b", "d"]
    assert decisions[2].reason.startswith("prefix cap 7") and decisions[4].reason.startswith("list full")


DS = "2026-01-03"


def tiny_lake(tmp_path, enabled: bool):
    """A lake with only what the generative step reads: 12 items with SIDs, 30 users, embeddings of ds and ds-1."""
    import pyarrow as pa

    from jobs.config import load_config
    from jobs.days import day_bounds_ms, shift
    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import (
        ITEM_EMBEDDINGS,
        ITEM_TOKENS,
        ITEM_VOCAB,
        ITEMS,
        USER_EMBEDDINGS,
        USER_SEQUENCES,
    )

    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), "generative.enabled": str(enabled).lower(),
                                 "generative.minutes": "0.05", "generative.hidden": "32", "generative.layers": "1",
                                 "generative.heads": "2", "generative.beams": "6", "generative.max_per_prefix": "2"})
    tokens = catalog(12)
    items = [f"{'ep' if i % 3 == 0 else 'trk'}_{i:03d}" for i in range(len(tokens))]
    delta.upsert(cfg, ITEMS, pa.Table.from_pylist([{"item_id": it, "item_type": "episode" if it.startswith("ep") else "track",
                                                   "title": f"title {it}"} for it in items], schema=ITEMS.schema))
    delta.upsert(cfg, ITEM_VOCAB, pa.Table.from_pylist([{"item_id": it, "item_idx": i + 1, "first_seen_ds": DS}
                                                       for i, it in enumerate(items)], schema=ITEM_VOCAB.schema))
    delta.upsert(cfg, ITEM_TOKENS, pa.Table.from_pylist([{"codebook_version": 1, "item_id": it, "tokens": t.tolist(),
                                                         "sid": sid_string(t)} for it, t in zip(items, tokens)],
                                                       schema=ITEM_TOKENS.schema))
    start, _ = day_bounds_ms(DS)
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        s = int(rng.integers(0, 6))
        idx = [(s + j) % len(items) + 1 for j in range(6)]
        rows.append({"user_id": f"u_{u:03d}", "item_idx": idx, "ts": [start - 5000 + 1000 * j for j in range(6)], "ds": DS})
    delta.replace_partition(cfg, USER_SEQUENCES, pa.Table.from_pylist(rows, schema=USER_SEQUENCES.schema), {"ds": DS})
    for day in (shift(DS, -1), DS):
        vectors = [{"user_id": f"u_{u:03d}", "embedding": rng.normal(size=8).astype(np.float32).tolist(),
                    "model_version": "1", "ds": day} for u in range(30)]
        delta.replace_partition(cfg, USER_EMBEDDINGS, pa.Table.from_pylist(vectors, schema=USER_EMBEDDINGS.schema), {"ds": day})
    item_vectors = [{"item_id": it, "item_idx": i + 1, "embedding": rng.normal(size=8).astype(np.float32).tolist(),
                     "model_version": "1", "vector_source": "encoder", "ds": shift(DS, -1)} for i, it in enumerate(items)]
    delta.replace_partition(cfg, ITEM_EMBEDDINGS, pa.Table.from_pylist(item_vectors, schema=ITEM_EMBEDDINGS.schema),
                            {"ds": shift(DS, -1)})
    return cfg


def test_generative_step_disabled_by_default_records_that_it_was_disabled(tmp_path):
    from jobs.config import load_config
    from jobs.steps import generative

    assert load_config(overrides={}).generative.enabled is False
    result = generative.run(DS, tiny_lake(tmp_path, enabled=False))
    assert result.metrics["enabled"] == 0.0 and any("enabled = false" in note for note in result.notes)
    assert not (tmp_path / "generative").exists()


def test_generative_step_trains_logs_and_recommend_explains_each_item(tmp_path, one_torch_thread):
    from typer.testing import CliRunner

    from jobs.cli import app
    from jobs.errors import FactoryError
    from jobs.serving.recommend import recommend
    from jobs.steps import generative

    cfg = tiny_lake(tmp_path, enabled=True)
    result = generative.run(DS, cfg)
    assert result.metrics["enabled"] == 1.0 and result.metrics["examples"] > 0 and result.params["soft_token"] == "True"
    assert result.params["sid_embeddings"] == "item_embeddings of ds-1" and result.params["history_bias"] != "None"
    answer = recommend(cfg, "u_001", k=3)
    kept = [d for d in answer["decisions"] if d["kept"]]
    assert 0 < len(kept) <= 3 and answer["soft_token"]
    consumed = {f"{'ep' if i % 3 == 0 else 'trk'}_{i:03d}" for i in range(12)}  # ids of the catalog
    assert all(d["item_id"] in consumed for d in answer["decisions"])  # every generated item exists
    assert {d["reason"].split(":")[0].split(" ")[0] for d in answer["decisions"] if not d["kept"]} <= {"quota", "prefix",
                                                                                                       "list"}
    assert not any(d["reason"].startswith("consumed") for d in answer["decisions"])  # masked inside the beam
    with pytest.raises(FactoryError, match="no listening sequence"):
        recommend(cfg, "u_999")
    out = CliRunner().invoke(app, ["recommend", "u_002", "--k", "2", "--json"], env={"FACTORY__PATHS__STATE_DIR": str(tmp_path)})
    assert out.exit_code == 0, out.output


def test_fit_stops_at_the_step_budget(one_torch_thread):
    vocab, tokens = SidVocabulary(("a",), LEVELS), catalog(8)
    examples = Examples([tokens[:2]] * 40, None, None, tokens[np.arange(40) % len(tokens)])
    fitted = fit(model_for(vocab), examples, FitConfig(minutes=1.0, max_steps=3, batch_size=8, threads=1))
    assert fitted["steps"] == 3 and fitted["stop_reason"] == "max_steps"


def test_daily_examples_carry_what_was_consumed_and_sid_embeddings_start_from_yesterdays_item_vectors(tmp_path):
    from jobs.days import shift
    from jobs.lakehouse import delta
    from jobs.lakehouse.tables import ITEM_EMBEDDINGS
    from jobs.steps import generative_data as day_data

    cfg = tiny_lake(tmp_path, enabled=True)
    day = day_data.load_day(cfg, DS)
    examples = day_data.training_examples(day, DS, 20, 8, ["u_000"], soft=True)
    items, _ = day.sequences["u_000"]
    assert len(examples) > 0
    for target, before in zip(examples.targets, examples.consumed):  # every play before the target, full SIDs
        t = [day.sid(i).tolist() for i in items].index(target.tolist())
        assert t > 0 and before.tolist() == [day.sid(i).tolist() for i in items[:t]]
    table = delta.read(cfg, ITEM_EMBEDDINGS, where={"ds": shift(DS, -1)}, columns=["item_id", "embedding"])
    vectors = dict(zip(table.column("item_id").to_pylist(), table.column("embedding").to_pylist()))
    expected = sid_token_vectors(day.lookup.tokens, np.array([vectors[i] for i in day.lookup.item_ids], np.float32),
                                 day.vocabulary().level_sizes)
    got = day_data.sid_start_vectors(cfg, day, DS)
    assert [g.shape for g in got] == [e.shape for e in expected] and all(np.allclose(g, e) for g, e in zip(got, expected))
    assert day_data.sid_start_vectors(cfg, day, shift(DS, -1)) is None  # no item vectors the day before: random start
