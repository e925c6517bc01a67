"""jobs/steps/text_encoder.py: length-bucketed MiniLM (the real model, bundled offline) against
sentence-transformers' own encode, which the semantic_ids step used before."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.errors import FactoryError
from jobs.runtime import compute
from jobs.steps import text_encoder

GENRES = ["jazz", "techno", "folk", "hip hop", "classical", "ambient", "true crime podcast", "news"]


def catalog_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Item texts of very different lengths, as the catalog's: a short title to a long description."""
    rng = np.random.default_rng(seed)
    words = "the of night blue river song live remastered edition episode interview with about city".split()
    return [f"{GENRES[i % len(GENRES)]} " + " ".join(rng.choice(words, int(rng.integers(1, 60)))) for i in range(n)]


@pytest.fixture(scope="module")
def encoded():
    """(texts, vectors of sentence-transformers' encode = the old path, new vectors, new stats)."""
    texts = catalog_texts(160)
    model = text_encoder.text_model("cpu")
    old = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    new, stats = text_encoder.encode(texts, batch_size=64, threads=1)
    return texts, np.asarray(old, np.float32), new, stats


def test_bucketed_vectors_are_within_cosine_0999_of_the_old_path_in_input_order(encoded):
    texts, old, new, stats = encoded
    cosine = (new * old).sum(1)
    assert new.shape == (len(texts), text_encoder.TEXT_DIM) and new.dtype == np.float32
    assert cosine.min() >= 0.999, cosine.min()
    assert np.allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)
    assert stats.texts == len(texts) and stats.batches >= 5 and stats.threads == 1


def test_length_buckets_keep_padding_waste_under_ten_percent(encoded):
    texts, _, _, stats = encoded
    assert 0 <= stats.padding_waste < 0.10, stats.as_dict()
    longest = max(len(ids) for ids in text_encoder.text_model().tokenizer(texts)["input_ids"])
    assert 1 - stats.tokens / (len(texts) * longest) > 0.3  # one batch padded to the longest text would waste more


def test_length_batches_fill_up_when_lengths_are_close_and_split_when_they_spread():
    same = text_encoder.length_batches(np.full(1000, 12), batch_size=256)
    assert [len(b) for b in same] == [256, 256, 256, 232]
    spread = text_encoder.length_batches(np.array([5, 100, 5, 101, 5]), batch_size=256)
    assert [sorted(b.tolist()) for b in spread] == [[0, 2, 4], [1, 3]]
    assert sorted(np.concatenate(spread).tolist()) == list(range(5))


def test_flops_count_real_tokens_at_about_21_mflop_each():
    per_token = text_encoder.text_flops(np.array([1]), 384, 1536, 6)[0]
    assert 21.2e6 <= per_token <= 21.3e6  # 6 x (24 d² + 4 d)
    _, stats = text_encoder.encode(["a short title", "jazz"], batch_size=8, threads=1)
    assert stats.tokens == sum(len(t) for t in text_encoder.text_model().tokenizer(["a short title", "jazz"])["input_ids"])
    assert stats.as_dict()["mflop_per_text"] == pytest.approx(stats.flops / 2 / 1e6)


def test_bf16_text_vectors_are_refused_in_one_sentence_below_the_bar(monkeypatch):
    monkeypatch.setattr(compute, "MIN_BF16_COSINE", 1.0)
    with pytest.raises(FactoryError, match="moves item-text vectors to cosine"):
        text_encoder.encode(catalog_texts(20), batch_size=8, dtype="bf16", threads=1)


def test_no_texts_give_an_empty_array():
    vectors, stats = text_encoder.encode([], batch_size=8)
    assert vectors.shape == (0, text_encoder.TEXT_DIM) and stats.texts == 0
