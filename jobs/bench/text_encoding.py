"""The item-text encoder's figures next to the GEMM roofline measured in the same run (bench sid and
the sid section of bench all): tokens/s, FLOPs per text, padding waste, and the judged
`text encoder / GEMM roofline` row (bar ≥ 0.6; padding waste < 10%)."""

from __future__ import annotations

from jobs.bench.common import gemm_rate, summary_row
from jobs.steps.text_encoder import TEXT_DIM, EncodeStats


def text_encoder_roofline(stats: EncodeStats) -> dict:
    """The encoding's tokens/s, FLOPs per text and padding waste next to the fp32 GEMM rate measured
    now at the text encoder's shapes (d 384, MLP 1536, rows = padded tokens per batch) and threads."""
    took = stats.as_dict()
    if not stats.tokens:  # nothing encoded (everything cached, or a stand-in encoder in tests)
        return {**took, "gemm": None, "share_of_gemm_roofline": None}
    d, ffn = TEXT_DIM, 4 * TEXT_DIM
    rows = max(1, round(stats.padded_tokens / max(stats.batches, 1)))
    gemm = gemm_rate(d, rows, stats.threads or 1, ffn=ffn)
    return {**took, "gemm": gemm, "share_of_gemm_roofline": took["achieved_gflops"] / gemm["model_shapes_gflops"]}


def text_encoder_rows(text: dict | None) -> list[dict]:
    """`text encoder / GEMM roofline` (bar ≥ 0.6) and the padding waste (bar < 10%) of a cold encoding."""
    if not text or not text["tokens"]:
        return []
    gemm = text["gemm"]
    return [
        summary_row("text encoder / GEMM roofline", text["share_of_gemm_roofline"], "share", "≥ 0.6",
                    text["share_of_gemm_roofline"] >= 0.6,
                    f"{text['tokens_per_s']:,.0f} tokens/s, {text['mflop_per_text']:.0f} MFLOP per text "
                    f"({text['achieved_gflops']:.1f} GFLOP/s) vs GEMM {gemm['model_shapes_gflops']:.1f} GFLOP/s "
                    f"(best of {gemm['runs']}, spread {gemm['model_shapes_spread']:.0%}) on {text['threads']} thread(s)"),
        summary_row("text encoder: padding waste", text["padding_waste"], "share", "< 0.1", text["padding_waste"] < 0.1,
                    f"{text['tokens']:,} real of {text['padded_tokens']:,} computed tokens in {text['batches']} batches"),
    ]
