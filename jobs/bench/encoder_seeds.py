"""`factory bench encoder-seeds`: one configuration's `factory bench encoder` results over seeds, as mean ± sd.

Input: the JSON files of runs that differ only in their seed (same data, training clock and
settings; checked). Output: every run's test metrics under both protocols, their mean and sample
standard deviation, the quality-vs-time curve per clock mark, and a known dataset's bars judged
on the mean (issue 17 judges "the mean of 3 seeds").
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from jobs.bench.common import machine, summary_row
from jobs.bench.encoder import METRIC_LABELS, known_facts
from jobs.errors import FactoryError

PROTOCOLS = ("unfiltered", "seen_filtered")
METRICS = ("hr10", "ndcg10", "hr50", "ndcg50", "hr200")
SAME_IN_EVERY_RUN = ("encoder_config", "all_windows", "item_codes", "workers")  # with loop_config: what they trained with
NEEDED = ("dataset", "seed", "encoder_config", "loop_config", "load", "training", "results", "curve")


def read_runs(paths: list[Path]) -> list[dict]:
    """The results, checked to be one configuration on one file with distinct seeds."""
    if len(paths) < 2:
        raise FactoryError("pass at least two result files of `factory bench encoder` (one per seed).")
    runs = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise FactoryError(f"{path}: not a readable result file ({err}).") from None
        if result.get("benchmark") != "encoder":
            raise FactoryError(f"{path} is not a result of `factory bench encoder`.")
        missing = [key for key in NEEDED if key not in result]
        if missing:
            raise FactoryError(f"{path} lacks {', '.join(missing)}: not a whole result of `factory bench encoder`.")
        runs.append(result)
    first, expected = runs[0], trained_with(runs[0])
    for path, run in zip(paths[1:], runs[1:]):
        if run["dataset"]["sha256"] != first["dataset"]["sha256"]:
            raise FactoryError(f"{path} is a run on another data file than {paths[0]}.")
        settings = trained_with(run)
        differ = sorted(k for k in settings if settings[k] != expected[k])
        if differ:
            raise FactoryError(f"{path} differs from {paths[0]} in {', '.join(differ)}: only the seed may differ.")
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise FactoryError(f"the runs must have distinct seeds, got {seeds}.")
    return runs


def trained_with(run: dict) -> dict:
    """The settings a run trained with: everything that must match across seeds."""
    return {**{key: run.get(key) for key in SAME_IN_EVERY_RUN},
            "loop_config": {k: v for k, v in run["loop_config"].items() if k != "seed"}}


def dataset_name(path: Path) -> str:
    """A result's dataset name for file names: the known dataset's (ml-1m, amazon-beauty), else the data
    file's stem ("unknown" when the result cannot be read; combine says why)."""
    try:
        result = json.loads(Path(path).read_text())
        return (known_facts(result["dataset"]["sha256"]) or {}).get("name") or Path(result["dataset"]["path"]).stem
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values), "values": values}


def combine(paths: list[Path], command: str | None = None) -> dict:
    """The runs in `paths` as one result: per run, mean ± sd of the test metrics and of the curve."""
    runs = read_runs(paths)
    first = runs[0]
    test = {protocol: {metric: mean_sd([r["results"]["encoder"]["test"][protocol][metric] for r in runs])
                       for metric in METRICS} for protocol in PROTOCOLS}
    marks = sorted({point["minute"] for r in runs for point in r["curve"]})
    curve = []
    for mark in marks:
        points = [next((p for p in r["curve"] if p["minute"] == mark), None) for r in runs]
        if any(p is None for p in points):
            continue
        curve.append({"minute": mark, **{protocol: {metric: mean_sd([p["test"][protocol][metric] for p in points])
                                                    for metric in METRIC_LABELS} for protocol in PROTOCOLS}})
    return {
        "benchmark": "encoder_seeds", "command": command, "dataset": first["dataset"],
        "known_dataset": known_facts(first["dataset"]["sha256"]), "minutes": first["loop_config"]["minutes"],
        **trained_with(first),
        "runs": [{"file": str(path), "seed": r["seed"], "command": r.get("command"), "date": r.get("date"),
                  "load1_mean": r["load"]["load1_mean"], "epochs": r["training"]["epochs"],
                  "trained_minutes": r["training"]["trained_minutes"], "stop_reason": r["training"]["stop_reason"],
                  "best_val_ndcg10_seen_filtered": r["training"]["best_val_ndcg10_seen_filtered"],
                  "learned_history_bias": r["training"].get("learned_history_bias"),
                  "test": r["results"]["encoder"]["test"]} for path, r in zip(paths, runs)],
        "test": test, "curve": curve, "machine": machine(),
    }


def summary_rows(result: dict) -> list[dict]:
    """HR@10 / NDCG@10 under both protocols, mean over seeds; a known dataset's bars judged on the mean."""
    known, minutes = result.get("known_dataset") or {}, result["minutes"]
    within = sorted((b for b in known.get("bars", []) if minutes <= b["minutes"]), key=lambda b: -b["minutes"])
    bars = {(b["protocol"], b["metric"]): b for b in within}  # per figure, the bar with the shortest clock
    rows = []
    for protocol in PROTOCOLS:
        for metric, label in METRIC_LABELS.items():
            stats, bar = result["test"][protocol][metric], bars.get((protocol, metric))
            rows.append(summary_row(
                f"encoder test {label} ({protocol.replace('_', '-')}), {minutes:g} min of training clock (mean over seeds)",
                stats["mean"], "", f"≥ {bar['at_least']:g}" if bar else "",
                stats["mean"] >= bar["at_least"] if bar else None,
                f"sample sd {stats['sd']:.4f} over {len(stats['values'])} seeds: "
                + ", ".join(f"{v:.4f}" for v in stats["values"])))
    return rows


def render_markdown(result: dict) -> str:
    """Per seed and mean ± sd (test, both protocols), then the curve."""
    lines = [f"`factory bench encoder` over seeds on `{result['dataset']['path']}`, {result['minutes']:g} min of "
             "training clock each.", "",
             "| seed | HR@10 unf | NDCG@10 unf | HR@10 sf | NDCG@10 sf | trained | stop |", "|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        t = run["test"]
        lines.append(f"| {run['seed']} | {t['unfiltered']['hr10']:.4f} | {t['unfiltered']['ndcg10']:.4f} | "
                     f"{t['seen_filtered']['hr10']:.4f} | {t['seen_filtered']['ndcg10']:.4f} | "
                     f"{run['trained_minutes']:.1f} min | {run['stop_reason']} |")
    lines.append(f"| mean ± sd | {_mean_sd_cells(result['test'])} | | |")
    lines += ["", "| clock min | HR@10 unf | NDCG@10 unf | HR@10 sf | NDCG@10 sf |", "|---|---|---|---|---|"]
    lines += [f"| {point['minute']:g} | {_mean_sd_cells(point)} |" for point in result["curve"]]
    return "\n".join(lines)


def _mean_sd_cells(stats: dict) -> str:
    """HR@10 and NDCG@10 as `mean ± sd`, unfiltered then seen-filtered, joined as table cells."""
    return " | ".join(f"{stats[p][m]['mean']:.4f} ± {stats[p][m]['sd']:.4f}" for p in PROTOCOLS for m in METRIC_LABELS)
