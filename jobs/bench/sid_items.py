"""`factory bench sid-items`: SID-based item vectors inside the encoder vs per-item ids (issue 19).

On a SASRec-format file (ML-1M, Amazon Beauty), leave-one-out, full ranking: the same encoder and
loop trained for the same clock with three item representations — per-item ids, the sum of the
item's SID code vectors (models/sid_item_table.py), and that sum plus a per-item residual — and
a cold-item split: a seeded share of the items is removed from every training and validation
sequence (kept only as a user's last, test item), so test users whose target is such an item ask
for an item the model never trained on. Per-item ids can only give it its random start; SID arms
give it the vector of its codes. Reported per arm: item parameters, HR@10 / NDCG@10 on warm and on
cold test targets, both protocols (unfiltered; seen-filtered).

SIDs: `--movielens DIR` encodes titles and genres with MiniLM and quantises them with residual
k-means (text only: no interaction leaks into a cold item's codes); `--sid-index FILE` reads
published codes (LETTER's Beauty.index.json: 0-based item -> ["<a_x>", ...]; they were learnt with
collaborative signal over all items, so a cold item's codes there carry some of its interactions).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from jobs.bench.common import LoadSampler, machine, summary_row, write_result
from jobs.bench.encoder import SasrecData, leave_one_out, read_sasrec
from jobs.errors import FactoryError
from jobs.steps import encoder_training
from models.ranking_metrics import hit_rate_at_k, ndcg_at_k
from models.residual_quantizer import ResidualQuantizer, ResidualQuantizerConfig
from models.sid_item_table import SidItemTable
from models.user_encoder import UserEncoder, UserEncoderConfig

ARMS = ("per_item_ids", "sid", "sid_residual")


def movielens_texts(folder: Path, num_items: int) -> list[str]:
    """Text (title | genres) of SASRec items 1..num_items from DIR/movies.dat and DIR/item_map.csv."""
    movies, item_map = Path(folder) / "movies.dat", Path(folder) / "item_map.csv"
    for needed in (movies, item_map):
        if not needed.is_file():
            raise FactoryError(f"--movielens {folder} lacks {needed.name}; pass the folder with movies.dat and item_map.csv.")
    titles = {}
    for line in movies.read_bytes().decode("latin-1").splitlines():
        movie, title, genres = line.split("::")
        titles[int(movie)] = f"{title} | {genres.replace('|', ', ')}"
    texts = [""] * num_items
    for line in item_map.read_text().splitlines()[1:]:
        item, movie = (int(x) for x in line.split(","))
        if 1 <= item <= num_items:
            texts[item - 1] = titles.get(movie, "")
    return texts


def text_codes(texts: list[str], levels: int, codes_per_level: int, seed: int) -> np.ndarray:
    """(N, levels) codes: MiniLM vectors of the texts, residual k-means."""
    from jobs.steps.text_encoder import encode

    vectors = encode(texts, batch_size=256)[0]
    quantizer = ResidualQuantizer(ResidualQuantizerConfig(levels=levels, codes_per_level=codes_per_level, seed=seed))
    return quantizer.fit(vectors, encode=False).assign(vectors).astype(np.int64)


def index_codes(path: Path, num_items: int) -> tuple[np.ndarray, int]:
    """((N, levels) codes, codes per level) from a LETTER/TIGER index file: item_id0 -> ["<a_12>", ...]."""
    raw = json.loads(Path(path).read_text())
    rows = [[int(re.sub(r"\D", "", token)) for token in raw[str(i)]] for i in range(num_items)]
    codes = np.array(rows, np.int64)
    return codes, int(codes.max()) + 1


def cold_split(data: SasrecData, share: float, seed: int) -> tuple[SasrecData, np.ndarray]:
    """(data without the cold items except as a user's last item, (num_items + 1,) bool: cold)."""
    rng = np.random.default_rng(seed)
    cold = np.zeros(data.num_items + 1, bool)
    cold[1 + rng.choice(data.num_items, int(share * data.num_items), replace=False)] = True
    sequences = [np.append(s[:-1][~cold[s[:-1]]], s[-1]) for s in data.sequences]
    return dataclasses.replace(data, sequences=sequences), cold


def train_arm(arm: str, training: encoder_training.TrainingData, codes: np.ndarray, codes_per_level: int,
              encoder_cfg: UserEncoderConfig, loop: encoder_training.LoopConfig) -> UserEncoder:
    torch.manual_seed(loop.seed)
    model = UserEncoder(encoder_cfg)
    if arm != "per_item_ids":
        padded = torch.cat([torch.zeros(1, codes.shape[1], dtype=torch.int64), torch.from_numpy(codes)])
        model.item_emb = SidItemTable(padded, codes_per_level, encoder_cfg.d_model, residual=arm == "sid_residual")
    run = encoder_training.TrainingRun(model, training, loop)
    state = run.run()
    model.load_state_dict(run.best_weights)
    model.training_state = {"epochs": state.epoch, "steps": state.step, "stop_reason": state.stop_reason,
                            "best_val_ndcg10_seen_filtered": state.best}
    return model.eval()


def figures(ranks: np.ndarray, rows: np.ndarray) -> dict:
    if not rows.any():
        return {"users": 0}
    return {"users": int(rows.sum()), "hr10": hit_rate_at_k(ranks[rows], 10), "ndcg10": ndcg_at_k(ranks[rows], 10)}


def run(data_path: Path, minutes: float, *, movielens: Path | None = None, sid_index: Path | None = None,
        levels: int = 3, codes_per_level: int = 64, cold_share: float = 0.1, max_len: int = 50, d_model: int = 64,
        seed: int = 0, arms: tuple[str, ...] = ARMS, progress=print) -> dict:
    if (movielens is None) == (sid_index is None):
        raise FactoryError("Pass exactly one of --movielens DIR (codes from item text) or --sid-index FILE.")
    started = time.perf_counter()
    with LoadSampler() as load:
        data = read_sasrec(data_path)
        if movielens is not None:
            codes = text_codes(movielens_texts(movielens, data.num_items), levels, codes_per_level, seed)
        else:
            codes, codes_per_level = index_codes(sid_index, data.num_items)
        split, cold = cold_split(data, cold_share, seed)
        training, test = leave_one_out(split, max_len)
        cold_rows = cold[test.targets]
        encoder_cfg = UserEncoderConfig(num_items=data.num_items, max_len=max_len, d_model=d_model, n_layers=2, n_heads=2,
                                        dropout=0.2, temperature=0.05)
        loop = encoder_training.LoopConfig(lr=3e-3, batch_size=128, max_epochs=10_000, patience=3, seed=seed,
                                           minutes=minutes, select_on="val_ndcg10_seen_filtered", threads=2)
        result_arms = {}
        for arm in arms:
            model = train_arm(arm, training, codes, codes_per_level, encoder_cfg, loop)
            plain, filtered = encoder_training.rank_targets(model, test.inputs, test.events, test.targets, test.seen)
            item_parameters = (model.item_emb.parameter_count() if isinstance(model.item_emb, SidItemTable)
                               else model.item_emb.weight.numel())
            result_arms[arm] = {"item_parameters": int(item_parameters), "training": model.training_state,
                                "parameters": int(sum(p.numel() for p in model.parameters())),
                                **{f"{protocol}_{part}": figures(ranks, rows)
                                   for protocol, ranks in (("unfiltered", plain), ("seen_filtered", filtered))
                                   for part, rows in (("warm", ~cold_rows), ("cold", cold_rows))}}
            progress(f"{arm}: {item_parameters:,} item parameters, warm HR@10 "
                     f"{result_arms[arm]['unfiltered_warm']['hr10']:.4f}, cold HR@10 "
                     f"{result_arms[arm]['unfiltered_cold'].get('hr10', 0):.4f}")
    return {"data": str(data_path), "sha256": data.sha256, "num_items": data.num_items,
            "codes": "MiniLM text + residual k-means" if movielens else f"index file {sid_index}",
            "levels": int(codes.shape[1]), "codes_per_level": codes_per_level, "cold_share": cold_share,
            "cold_items": int(cold.sum()), "test_users": len(test.targets), "cold_test_users": int(cold_rows.sum()),
            "minutes_per_arm": minutes, "max_len": max_len, "d_model": d_model, "seed": seed, "arms": result_arms,
            "seconds": time.perf_counter() - started, "machine": machine(), "load": load.summary()}


def summary_rows(result: dict) -> list[dict]:
    ids = result["arms"].get("per_item_ids")
    rows = []
    for arm, values in result["arms"].items():
        for part in ("warm", "cold"):
            got = values[f"unfiltered_{part}"]
            if got.get("users"):
                base = ids[f"unfiltered_{part}"].get("hr10") if ids else None
                versus = f"; per-item ids {base:.4f}" if base is not None else ""
                rows.append(summary_row(f"{arm}: {part} HR@10 (unfiltered)", got["hr10"], "HR@10", "", None,
                                        f"NDCG@10 {got['ndcg10']:.4f}; {got['users']} test users; item parameters "
                                        f"{values['item_parameters']:,}{versus}"))
    return rows


def run_benchmark(out: Path, command: str, data: Path, minutes: float, log=None, **kwargs) -> dict:
    result = run(data, minutes, **kwargs)
    result["command"] = command
    if log is not None:
        log(result)
    return write_result(out, result, summary_rows(result))


def render_markdown(result: dict) -> str:
    lines = ["| item representation | item parameters | warm HR@10 | warm NDCG@10 | cold HR@10 | cold NDCG@10 |",
             "|---|---|---|---|---|---|"]
    for arm, v in result["arms"].items():
        warm, cold = v["unfiltered_warm"], v["unfiltered_cold"]
        lines.append(f"| {arm} | {v['item_parameters']:,} | {warm.get('hr10', 0):.4f} | {warm.get('ndcg10', 0):.4f} | "
                     f"{cold.get('hr10', 0):.4f} | {cold.get('ndcg10', 0):.4f} |")
    return "\n".join(lines)
