"""`factory bench encoder`: the user encoder on any SASRec-format file, leave-one-out, full ranking.

Input: `user item` per line, each user's lines in time order (SASRec's data format). Protocol (as
in the SASRec literature): each user's last item is the test target, the second-to-last the
validation target, the rest is training data; every target is ranked against ALL items. Metrics are
reported twice: with the user's already-seen items removed from the ranking ("seen-filtered", the
protocol of the SASRec+ numbers) and without ("unfiltered"). Model selection and early stopping use
validation NDCG@10 only; the test split is read once per reported model, never during training.

Training is jobs/steps/encoder_training.py's Ray Train loop (the nightly job's code) with a training-clock budget;
the quality-vs-time curve reports, at each clock minute, the test metrics of the model validation
had selected by then. The run's wall time, machine load (os.getloadavg samples), throughput and a
popularity baseline are part of every result, printed as markdown and written as JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import pandas as pd
import ray
import torch
import typer

from jobs.bench.common import invocation, report
from jobs.config import FactoryConfig, load_config, with_overrides
from jobs.errors import FactoryError
from jobs.steps import encoder_fit, encoder_training
from jobs.tracking import registry
from models.ranking_metrics import ranking_summary, target_ranks
from models.sequences import next_item_examples, pad_left
from models.user_encoder import UserEncoder, UserEncoderConfig

log = logging.getLogger(__name__)

DEFAULT_MARKS = (5.0, 10.0, 20.0, 30.0, 60.0)
PROTOCOL = ("leave-one-out (last item = test, second-to-last = validation, rest = train), target ranked "
            "against all items; seen-filtered = the user's earlier items removed from the ranking, "
            "unfiltered = nothing removed; selection and early stopping on validation NDCG@10 (seen-filtered)")
ML1M_SHA256 = "b725f3acb3986fe3130bffd1e77a74d182a1f51799567a236dbd60270f95b0a2"  # SASRec's ml-1m.txt
# Published full-ranking numbers on that exact file (HR@10, NDCG@10), for the comparison table only.
PUBLISHED_ML1M = {
    "SASRec (BCE)": (0.2853, 0.1603), "gSASRec": (0.3003, 0.1726),
    "SASRec+ (full CE, seen-filtered)": (0.3152, 0.1821), "HSTU": (0.3097, 0.1720),
}


@dataclasses.dataclass(frozen=True)
class SasrecData:
    sequences: list[np.ndarray]  # per user, item ids 1..num_items, oldest first
    num_items: int
    interactions: int
    sha256: str


def read_sasrec(path: Path) -> SasrecData:
    """Read a `user item` per line file; users' lines must be in time order (kept as read).

    Item ids are kept if they already are 1..num_items, else mapped to that range in sorted order.
    """
    path = Path(path)
    if not path.is_file():
        raise FactoryError(f"--data {path} does not exist; pass a SASRec-format file (`user item` per line).")
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, usecols=[0, 1], dtype=np.int64, engine="c")
    except (ValueError, pd.errors.ParserError) as err:
        raise FactoryError(f"{path} is not in SASRec format (two integers per line: user item): {err}") from None
    users, items = frame[0].to_numpy(), frame[1].to_numpy()
    if len(users) == 0:
        raise FactoryError(f"{path} has no lines; pass a SASRec-format file (`user item` per line).")
    known = np.unique(items)
    if known[0] != 1 or known[-1] != len(known):
        items = np.searchsorted(known, items) + 1
    order = np.argsort(users, kind="stable")  # group by user, keep each user's file order
    _, starts = np.unique(users[order], return_index=True)
    sequences = np.split(items[order], starts[1:])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return SasrecData(sequences, int(len(known)), int(len(items)), digest)


@dataclasses.dataclass(frozen=True)
class TestSplit:
    inputs: np.ndarray  # (U, L) everything but the last item
    events: np.ndarray
    targets: np.ndarray  # (U,) the last item
    seen: tuple[np.ndarray, ...]  # everything but the last item (hidden when seen-filtered)


def leave_one_out(data: SasrecData, max_len: int, all_windows: bool = False) -> tuple[encoder_training.TrainingData, TestSplit]:
    """SASRec's split. Users with fewer than 3 items only train (nothing left to validate/test on).

    all_windows: also train on the transitions before a user's last max_len (extra rows).
    """
    evaluated = [s for s in data.sequences if len(s) >= 3]
    train_seqs = [s[:-2] for s in evaluated] + [s for s in data.sequences if len(s) < 3]
    ones = [np.ones_like(s) for s in train_seqs]  # the format has no event types: everything is a play
    inputs, input_events, targets = next_item_examples(train_seqs, ones, max_len, all_windows=all_windows)
    val_hist = [s[:-2] for s in evaluated]
    test_hist = [s[:-1] for s in evaluated]
    training = encoder_training.TrainingData(
        inputs, input_events, targets,
        val_inputs=pad_left(val_hist, max_len), val_events=pad_left([np.ones_like(s) for s in val_hist], max_len),
        val_targets=np.array([s[-2] for s in evaluated], dtype=np.int64), val_seen=tuple(val_hist),
    )
    test = TestSplit(pad_left(test_hist, max_len), pad_left([np.ones_like(s) for s in test_hist], max_len),
                     np.array([s[-1] for s in evaluated], dtype=np.int64), tuple(test_hist))
    return training, test


def popularity_ranks(counts: np.ndarray, targets: np.ndarray, seen, batch_size: int = 1024):
    """Ranks of targets under a popularity ranking (training-split counts), (unfiltered, seen-filtered)."""
    scores = torch.from_numpy(counts.astype(np.float32))
    scores[0] = float("-inf")
    plain, filtered = [], []
    for start in range(0, len(targets), batch_size):
        rows = slice(start, start + batch_size)
        batch = scores.expand(len(targets[rows]), -1)
        wanted = torch.from_numpy(targets[rows])
        plain.append(target_ranks(batch, wanted))
        filtered.append(target_ranks(batch, wanted, exclude=list(seen[rows])))
    return np.concatenate(plain), np.concatenate(filtered)


def both_protocols(plain: np.ndarray, filtered: np.ndarray) -> dict:
    return {"seen_filtered": ranking_summary(filtered), "unfiltered": ranking_summary(plain)}


class LoadSampler:
    """os.getloadavg() every `every` seconds on a daemon thread, so results say how busy the machine was."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        one, five, fifteen = os.getloadavg()
        self.samples.append({"t_s": round(time.perf_counter() - self._started, 1),
                             "load1": one, "load5": five, "load15": fifteen})

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.every):
                return

    def summary(self) -> dict:
        one = np.array([s["load1"] for s in self.samples])
        return {"cores": os.cpu_count(), "load1_mean": float(one.mean()), "load1_min": float(one.min()),
                "load1_max": float(one.max()), "sample_every_s": self.every, "samples": self.samples,
                "note": "1-minute load average; our own training contributes about its thread count "
                        "(2 on 2 cores), anything above that was other processes competing for the cores"}


def machine() -> dict:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"nproc": os.cpu_count(), "ram_gb": round(ram, 1), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "gpu": False}


def run_benchmark(data: Path, minutes: float, seed: int, out: Path | None, *, marks=DEFAULT_MARKS,
                  workers: int = 1, d_model: int = 64, n_layers: int = 2, n_heads: int = 2, dropout: float = 0.2,
                  max_len: int = 200, temperature: float = 0.05, lr: float = 3e-3, batch_size: int = 128,
                  warmup_steps: int = 100, weight_decay: float = 0.0, patience: int = 20,
                  mask_history_in_loss: bool = False, all_windows: bool = False, bf16: bool = False,
                  max_epochs: int = 10_000,
                  cfg: FactoryConfig | None = None, log_to_mlflow: bool = True, run_name: str | None = None,
                  command: str | None = None, trainer=encoder_fit.fit) -> dict:
    """Train for `minutes` of training clock on `data`, evaluate, and return (and write) the result.

    The result dict holds the metrics of the encoder and of a popularity baseline under both
    protocols, the quality-vs-time curve, every evaluation, throughput, wall time, machine load
    and the exact settings; `out` (if given) receives it as JSON. run_name: reuse one to resume a
    run that was interrupted (Ray Train restores its latest checkpoint). trainer: encoder_fit.fit (Ray
    Train) or encoder_fit.fit_in_process (same loop without Ray, for tests).
    """
    if minutes <= 0:
        raise FactoryError(f"--minutes must be > 0, got {minutes}.")
    cfg = cfg or load_config()
    started = time.perf_counter()
    with LoadSampler() as load:
        dataset = read_sasrec(data)
        training, test = leave_one_out(dataset, max_len, all_windows)
        if len(test.targets) == 0:
            raise FactoryError(f"{data}: no user has 3 or more items, so nothing can be validated and tested.")
        counts = np.bincount(training.targets.ravel(), minlength=dataset.num_items + 1).astype(np.float64)
        counts[0] = 0
        popularity = {"test": both_protocols(*popularity_ranks(counts, test.targets, test.seen)),
                      "validation": both_protocols(*popularity_ranks(counts, training.val_targets, training.val_seen))}
        encoder_cfg = UserEncoderConfig(num_items=dataset.num_items, max_len=max_len, d_model=d_model,
                                        n_layers=n_layers, n_heads=n_heads, dropout=dropout, temperature=temperature)
        curve_marks = tuple(sorted({float(m) for m in marks if m < minutes} | {float(minutes)}))
        loop = encoder_training.LoopConfig(lr=lr, batch_size=batch_size, max_epochs=max_epochs, patience=patience, seed=seed,
                                schedule="cosine", warmup_steps=warmup_steps, weight_decay=weight_decay,
                                minutes=minutes, mark_minutes=curve_marks, select_on="val_ndcg10_seen_filtered",
                                mask_history_in_loss=mask_history_in_loss, bf16=bf16)
        torch.manual_seed(seed)
        run_name = run_name or f"bench_encoder_{Path(data).stem}_{uuid.uuid4().hex[:6]}"
        log.info("training %s for %s minutes of training clock (Ray run %s)", data, minutes, run_name)
        fit_started = time.perf_counter()
        fitted = trainer(cfg, training, encoder_cfg, None, run_name, loop, workers=workers)
        fit_seconds = time.perf_counter() - fit_started

        torch.set_num_threads(os.cpu_count() or 1)
        infer_started = time.perf_counter()
        test_ranks = encoder_training.rank_targets(fitted.model, test.inputs, test.events, test.targets, test.seen)
        infer_seconds = time.perf_counter() - infer_started
        val_ranks = encoder_training.rank_targets(fitted.model, training.val_inputs, training.val_events,
                                       training.val_targets, training.val_seen)
        trained_minutes = fitted.state.elapsed / 60
        curve = []
        for mark in curve_marks:
            model = fitted.marks.get(mark, fitted.model)  # a mark after training ended: the final model
            ranks = encoder_training.rank_targets(model, test.inputs, test.events, test.targets, test.seen)
            selected = max((r for r in fitted.history if r["elapsed_minutes"] <= max(mark, 0)),
                           key=lambda r: r[loop.select_on], default=None)
            curve.append({"minute": mark, "reached": mark in fitted.marks,
                          "val_ndcg10_seen_filtered": selected[loop.select_on] if selected else None,
                          "test": both_protocols(*ranks)})
    epochs = [r for r in fitted.history if r["kind"] == "epoch"]
    result = {
        "benchmark": "encoder", "date": time.strftime("%Y-%m-%d"), "command": command,
        "dataset": {"path": str(data), "sha256": dataset.sha256, "users": len(dataset.sequences),
                    "evaluated_users": int(len(test.targets)), "items": dataset.num_items,
                    "interactions": dataset.interactions, "train_sequences": int(len(training.inputs)),
                    "train_positions": int((training.targets != 0).sum())},
        "protocol": PROTOCOL, "seed": seed, "ray_run": run_name, "all_windows": all_windows,
        "encoder_config": dataclasses.asdict(encoder_cfg),
        "loop_config": {**dataclasses.asdict(dataclasses.replace(loop, threads=0)), "threads": "cores // workers"},
        "workers": workers, "machine": machine(), "load": load.summary(),
        "wall_seconds": {"total": time.perf_counter() - started, "fit_including_ray_startup": fit_seconds,
                         "training_clock": fitted.state.elapsed},
        "training": {"epochs": fitted.state.epoch, "steps": fitted.state.step, "stop_reason": fitted.state.stop_reason,
                     "trained_minutes": trained_minutes, "best_val_ndcg10_seen_filtered": fitted.state.best,
                     "train_sequences_per_s": float(np.median([r["train_sequences_per_s"] for r in epochs])),
                     "train_tokens_per_s": float(np.median([r["train_tokens_per_s"] for r in epochs]))},
        "inference": {"users": int(len(test.targets)), "seconds": infer_seconds,
                      "sequences_per_s": len(test.targets) / infer_seconds,
                      "note": "embed every test user (bucketed, max_len history) and rank all items, both protocols"},
        "results": {"encoder": {"test": both_protocols(*test_ranks), "validation": both_protocols(*val_ranks)},
                    "popularity": popularity},
        "curve": curve, "history": fitted.history,
        "published_ml1m": PUBLISHED_ML1M if dataset.sha256 == ML1M_SHA256 else None,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    if log_to_mlflow:
        _log_mlflow(cfg, result, fitted.model, Path(data).stem)
    return result


def _log_mlflow(cfg: FactoryConfig, result: dict, model: UserEncoder, name: str) -> None:
    import mlflow

    from jobs.tracking.runs import configure_mlflow

    bench_cfg = with_overrides(cfg, mlflow={"experiment": f"{cfg.mlflow.experiment}_benchmarks",
                                            "registered_model": f"user_encoder_bench_{name}"})
    experiment_id = configure_mlflow(bench_cfg)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"bench encoder {name}") as run:
        mlflow.log_params({"data": result["dataset"]["path"], "data_sha256": result["dataset"]["sha256"],
                           "seed": result["seed"], "workers": result["workers"], "command": result["command"],
                           **{f"encoder_{k}": v for k, v in result["encoder_config"].items()},
                           **{f"loop_{k}": v for k, v in result["loop_config"].items()}})
        encoder_fit.log_history(result["history"])
        for point in result["curve"]:
            for protocol, metrics in point["test"].items():
                mlflow.log_metrics({f"curve_test_{k}_{protocol}": v for k, v in metrics.items()}, step=int(point["minute"]))
        for who, splits in result["results"].items():
            for split, protocols in splits.items():
                for protocol, metrics in protocols.items():
                    mlflow.log_metrics({f"{who}_{split}_{k}_{protocol}": v for k, v in metrics.items()})
        mlflow.log_metrics({"wall_seconds": result["wall_seconds"]["total"], "load1_mean": result["load"]["load1_mean"],
                            "train_sequences_per_s": result["training"]["train_sequences_per_s"],
                            "inference_sequences_per_s": result["inference"]["sequences_per_s"]})
        mlflow.log_dict(result, "bench_encoder.json")
        version = registry.register(bench_cfg, model, {"benchmark": name, "data_sha256": result["dataset"]["sha256"]}, "bench")
        result["mlflow"] = {"run_id": run.info.run_id, "experiment": bench_cfg.mlflow.experiment,
                            "registered_model": bench_cfg.mlflow.registered_model, "version": version}


def render_markdown(result: dict) -> str:
    """The result as markdown tables: final metrics (both protocols), the curve, throughput, load."""
    def row(name: str, m: dict, keys=("hr10", "ndcg10", "hr50", "ndcg50", "hr200")) -> str:
        return f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |"

    head = "| model | HR@10 | NDCG@10 | HR@50 | NDCG@50 | HR@200 |\n|---|---|---|---|---|---|"
    enc, pop = result["results"]["encoder"]["test"], result["results"]["popularity"]["test"]
    d, t, load = result["dataset"], result["training"], result["load"]
    lines = [f"Data: `{d['path']}` (sha256 {d['sha256'][:12]}…, {d['users']} users, {d['items']} items, "
             f"{d['interactions']} interactions). Protocol: {result['protocol']}.", ""]
    for protocol in ("seen_filtered", "unfiltered"):
        lines += [f"Test, {protocol.replace('_', '-')}:", "", head, row("encoder", enc[protocol]),
                  row("popularity", pop[protocol])]
        if protocol == "seen_filtered" and result.get("published_ml1m"):
            lines += [f"| published: {name} | {hr:.4f} | {ndcg:.4f} | | | |"
                      for name, (hr, ndcg) in result["published_ml1m"].items()]
        lines.append("")
    lines += ["Quality vs training clock (test metrics of the model validation had selected by then):", "",
              "| clock min | reached | val NDCG@10 (sf) | test HR@10 sf | test NDCG@10 sf | test HR@10 unf | test NDCG@10 unf |",
              "|---|---|---|---|---|---|---|"]
    for p in result["curve"]:
        sf, un, v = p["test"]["seen_filtered"], p["test"]["unfiltered"], p["val_ndcg10_seen_filtered"]
        lines.append(f"| {p['minute']:g} | {'yes' if p['reached'] else 'training had ended'} | "
                     f"{v if v is None else f'{v:.4f}'} | {sf['hr10']:.4f} | {sf['ndcg10']:.4f} | "
                     f"{un['hr10']:.4f} | {un['ndcg10']:.4f} |")
    w, m = result["wall_seconds"], result["machine"]
    lines += ["", f"Training: {t['epochs']} epochs, {t['steps']} steps, {t['trained_minutes']:.1f} min of training "
              f"clock, stopped by {t['stop_reason']}; {t['train_sequences_per_s']:.0f} training sequences/s "
              f"({t['train_tokens_per_s']:.0f} positions/s, median epoch). Inference: "
              f"{result['inference']['sequences_per_s']:.0f} users/s (embed + rank all items). "
              f"Wall time {w['total'] / 60:.1f} min in all. Machine: {m['nproc']} cores ({m['cpu']}), "
              f"{m['ram_gb']} GB RAM, torch {m['torch']}, ray {m['ray']}, {result['workers']} Ray Train worker(s). "
              f"Load (1-min average) during the run: mean {load['load1_mean']:.2f}, min {load['load1_min']:.2f}, "
              f"max {load['load1_max']:.2f} on {load['cores']} cores. Seed {result['seed']}."]
    return "\n".join(lines)


bench_app = typer.Typer(help="Benchmarks (results: benchmarks/results/, docs/benchmarks.md, MLflow).", no_args_is_help=True,
                        add_completion=False, pretty_exceptions_enable=False)


@bench_app.callback()
def bench() -> None:
    """Quality on public data (encoder, sid, generative); performance on generated data (all, inference, features).

    Results: benchmarks/results/, docs/benchmarks.md and the MLflow experiment <experiment>_benchmarks.
    """


@bench_app.command()
def encoder(
    data: Annotated[Path, typer.Option(help="SASRec-format file: `user item` per line, each user's lines in time order.")],
    minutes: Annotated[float, typer.Option(help="Training-clock budget in minutes (validation included).")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch order.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="JSON result (default: benchmarks/results/encoder_<data stem>.json).")] = None,
    workers: Annotated[int, typer.Option(help="Ray Train workers (each gets cores // workers threads).")] = 1,
    d_model: Annotated[int, typer.Option(help="Width of the transformer.")] = 64,
    n_layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 2,
    dropout: Annotated[float, typer.Option(help="Dropout on embeddings, residuals and MLP.")] = 0.2,
    max_len: Annotated[int, typer.Option(help="Longest history the model reads.")] = 200,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warmup, then cosine decay over the budget).")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Sequences per step (length-bucketed).")] = 128,
    warmup_steps: Annotated[int, typer.Option(help="Linear lr warmup steps.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW decoupled weight decay.")] = 0.0,
    temperature: Annotated[float, typer.Option(help="Scores are cosine / temperature.")] = 0.05,
    patience: Annotated[int, typer.Option(help="Early stop after this many epochs without a better validation NDCG@10.")] = 20,
    mask_history_in_loss: Annotated[bool, typer.Option(help="Train each position against unseen items only.")] = False,
    all_windows: Annotated[bool, typer.Option(help="Also train on transitions older than a user's last max_len.")] = False,
    bf16: Annotated[bool, typer.Option(help="bfloat16 autocast for forward and loss.")] = False,
    run_name: Annotated[Optional[str], typer.Option(help="Ray Train run name; reuse one to resume an interrupted run.")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the run to MLflow and register the model.")] = True,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config (Ray, MLflow settings).")] = None,
) -> None:
    """Train the user encoder on DATA for MINUTES and report leave-one-out full-ranking metrics."""
    logging.basicConfig(level=os.environ.get("FACTORY_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    out = out or Path("benchmarks/results") / f"encoder_{data.stem}.json"
    command = invocation("encoder", "jobs.bench.encoder")
    report(lambda: run_benchmark(
        data, minutes, seed, out, workers=workers, d_model=d_model, n_layers=n_layers, dropout=dropout,
        max_len=max_len, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps, weight_decay=weight_decay,
        temperature=temperature, patience=patience, mask_history_in_loss=mask_history_in_loss,
        all_windows=all_windows, bf16=bf16,
        cfg=with_overrides(load_config(config), ray={"log_to_driver": True}),  # per-epoch progress lines
        log_to_mlflow=mlflow, run_name=run_name, command=command,
    ), render_markdown, out)


if __name__ == "__main__":
    bench_app()
