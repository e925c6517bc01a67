"""jobs/bench/text_encoding.py: the text encoder's judged rows next to the GEMM roofline."""

from __future__ import annotations

from jobs.bench import text_encoding
from jobs.steps.text_encoder import EncodeStats
from tests.bench.test_common import assert_summary


def test_text_encoder_rows_judge_the_roofline_share_and_padding_waste(monkeypatch):
    calls = []

    def fake_gemm(d, rows, threads, ffn=None):
        calls.append((d, rows, threads, ffn))
        return {"model_shapes_gflops": 100.0, "runs": 5, "model_shapes_spread": 0.04}

    monkeypatch.setattr(text_encoding, "gemm_rate", fake_gemm)
    stats = EncodeStats(texts=1000, tokens=20_000, padded_tokens=21_000, seconds=10.0, flops=20_000 * 21.2e6,
                        threads=2, batches=4)
    result = text_encoding.text_encoder_roofline(stats)
    assert calls == [(384, 5250, 2, 1536)]  # the encoder's shapes: padded tokens per batch, MLP 4d, its threads
    assert result["share_of_gemm_roofline"] == result["achieved_gflops"] / 100.0
    rows = text_encoding.text_encoder_rows(result)
    assert_summary(rows)
    assert [r["figure"] for r in rows] == ["text encoder / GEMM roofline", "text encoder: padding waste"]
    assert rows[0]["value"] == 20_000 * 21.2e6 / 10 / 1e9 / 100 and rows[0]["met"] is False  # 42.4 of 100 GFLOP/s
    assert "2,000 tokens/s, 424 MFLOP per text" in rows[0]["detail"]
    assert rows[1]["met"] is True and abs(rows[1]["value"] - 1 / 21) < 1e-12


def test_nothing_encoded_gives_no_rows_and_no_gemm_run(monkeypatch):
    monkeypatch.setattr(text_encoding, "gemm_rate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert text_encoding.text_encoder_rows(text_encoding.text_encoder_roofline(EncodeStats())) == []
