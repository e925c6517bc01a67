"""`factory bench all` (`make bench`): every performance benchmark of the factory in one run.

Sections (each also has its own command): inference (Ray Data vs a plain torch loop vs the GEMM
roofline, incremental days), features (Spark vs DuckDB at growing event counts), sid (quantiser
build time, text-encoder throughput with the cache), e2e (a 100k-user / 50k-item / 5M-event day
through the whole pipeline) and scale (10k → 1M users, cost per user). Ratios are measured side by
side in the same run, because this machine is shared and absolute times alone mean little.

Writes benchmarks/results/perf.json (every figure, ratio, size and the machine) and perf.md (the
table), and logs both to the MLflow experiment <experiment>_benchmarks.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import psutil
import typer

from jobs.bench.common import invocation
from jobs.config import FactoryConfig, load_config, with_overrides
from jobs.errors import FactoryError

RESULTS = Path("benchmarks/results")


@dataclass(frozen=True)
class Sizes:
    """What each section measures; `smoke` is a tiny run that checks the suite still works."""

    inference: tuple[tuple[int, str], ...] = ((100_000, "64:2:50"), (10_000, "256:2:200"))  # users, d_model:layers:max_len
    feature_events: tuple[int, ...] = (1_000_000, 5_000_000, 20_000_000)
    quantiser_items: tuple[int, ...] = (100_000, 1_000_000)
    encode_items: int = 2_000
    e2e: tuple[int, int, float] = (100_000, 50_000, 50.0)  # users, items, events per user per day
    scale_users: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    scale_items: int = 5_000
    scale_events_per_user: float = 6.0


FULL = Sizes()
SMOKE = Sizes(inference=((2_000, "64:2:50"),), feature_events=(20_000, 40_000), quantiser_items=(5_000,), encode_items=64,
              e2e=(1_000, 600, 10.0), scale_users=(500, 1_000), scale_items=600, scale_events_per_user=6.0)


def machine() -> dict:
    memory = psutil.virtual_memory().total
    return {"nproc": os.cpu_count(), "ram_gib": round(memory / 2**30, 1), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "load_at_start": os.getloadavg()}


# --- sections -----------------------------------------------------------------------------------

def sid_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    """Quantiser build time at 100k / 1M items; MiniLM items/s cold, cached, and on a day with 3% new texts."""
    from jobs.bench.sid import TextCache, build_speed
    from jobs.config import GeneratorConfig
    from jobs.steps.catalog import item_text
    from jobs.synthetic.catalog import build_catalog

    progress(f"sid: quantiser build at {', '.join(f'{n:,}' for n in sizes.quantiser_items)} items (3 x 256)")
    builds = build_speed(list(sizes.quantiser_items), levels=3, codes=256)
    n = sizes.encode_items
    catalog = build_catalog(GeneratorConfig(tracks=max(n, 300), episodes=max(n // 10, 12), shows=12),
                            np.random.default_rng(0))
    texts = [item_text(catalog.row(i)) for i in range(n)]
    cache = TextCache(cfg.sid.encode_batch_size)
    cache(texts[:8])  # load the model outside the timing
    progress(f"sid: encoding {n:,} generated item texts cold, then again from the cache")
    started = time.perf_counter()
    cache(texts[8:])
    cold = (n - 8) / (time.perf_counter() - started)
    started = time.perf_counter()
    cache(texts)
    cached = n / (time.perf_counter() - started)
    edited = [t + " (remastered)" for t in texts[: n * 3 // 100]]  # a day: 3% new or edited texts
    started = time.perf_counter()
    cache(texts[n * 3 // 100:] + edited)
    day = n / (time.perf_counter() - started)
    return {"quantiser": builds, "encode": {"items": n, "cold_items_per_s": cold, "cached_items_per_s": cached,
                                            "day_with_3pct_new_items_per_s": day, "cache_speedup_on_a_day": day / cold}}


def e2e_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench.scale import run_world
    from jobs.synthetic.worlds import ScaleWorld

    users, items, events = sizes.e2e
    return run_world(ScaleWorld(users, items, events), state / "scale", progress)


def scale_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench.scale import linearity, run_world
    from jobs.synthetic.worlds import ScaleWorld

    worlds = [run_world(ScaleWorld(u, sizes.scale_items, sizes.scale_events_per_user), state / "scale", progress)
              for u in sizes.scale_users]
    return {"worlds": worlds, "linearity": linearity(worlds)}


def inference_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench import inference as bench_inference

    users = [n for n, _ in sizes.inference]
    encoders = bench_inference._parse_encoders(",".join(spec for _, spec in sizes.inference))
    return bench_inference.run(users=users, cfg=cfg, encoders=encoders, progress=progress)


def features_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench import features as bench_features

    return bench_features.run(sizes=list(sizes.feature_events), cfg=cfg, out=state / "features.json", log_to_mlflow=False,
                              command="factory bench all --only features")


SECTIONS: dict[str, Callable[..., dict]] = {
    "inference": inference_section, "features": features_section, "sid": sid_section,
    "e2e": e2e_section, "scale": scale_section,
}


def run(sections: list[str], sizes: Sizes, cfg: FactoryConfig, state: Path, command: str, out: Path,
        progress: Callable[[str], None] = print) -> dict:
    """Run the sections in order; `out` is rewritten after each one, so a late failure keeps the rest.

    Sections already in `out` from an earlier run of the same sizes and not re-run here are kept
    (with that run's command and machine), so `--only scale` re-measures one section.
    """
    earlier = json.loads(out.read_text()) if out.exists() else {}
    if earlier.get("sizes") != _jsonable(sizes.__dict__):
        earlier = {}
    result = {"command": command, "machine": machine(), "sizes": _jsonable(sizes.__dict__), "sections": {}, "seconds": {},
              "section_runs": {k: v for k, v in earlier.get("section_runs", {}).items() if k not in sections}}
    for name in SECTIONS:  # keep the suite's order whatever the order of --only
        if name in sections or name not in earlier.get("sections", {}):
            continue
        result["sections"][name], result["seconds"][name] = earlier["sections"][name], earlier["seconds"][name]
    for name in [s for s in SECTIONS if s in sections]:
        started = time.perf_counter()
        progress(f"== {name} ==")
        result["sections"][name] = SECTIONS[name](sizes, cfg, state, progress)
        result["seconds"][name] = time.perf_counter() - started
        result["section_runs"][name] = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
                                        "load_at_end": os.getloadavg()}
        result["machine"]["load_at_end"] = os.getloadavg()
        result["summary"] = summary_rows(result["sections"])
        _write(out, result)
    return result


def _jsonable(value):
    return json.loads(json.dumps(value, default=float))


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")


# --- the table ----------------------------------------------------------------------------------

def summary_rows(sections: dict) -> list[dict]:
    """One row per judged figure: what, measured value, the ratio it is judged by, the bar, met?"""
    rows = []

    def add(figure: str, value: str, ratio: float | None, bar: str, met: bool | None) -> None:
        rows.append({"figure": figure, "value": value, "ratio": ratio, "bar": bar, "met": met})

    if "inference" in sections:
        for row in sections["inference"].get("summary_rows", []):
            rows.append(row)
    if "features" in sections:
        features = sections["features"]
        largest = features["sizes"][-1]["events"]
        for size in features["sizes"]:
            add(f"features {size['events']:,} events: Spark vs DuckDB", f"{size['spark_seconds']:.1f} s vs "
                f"{size['duckdb_seconds']:.1f} s", size["ratio"], "≤ 4 at the largest, falling",
                size["ratio"] <= 4 if size["events"] == largest else None)
        for g in features["growth"]:
            add(f"features growth {g['from']:,} → {g['to']:,} events: Spark time growth / event growth", "",
                g["spark_time_growth_per_size_growth"], "≤ ~1 (linear)", None)
        add("features: outputs of both engines identical", str(features["checks"]["outputs_identical"]), None, "identical",
            features["checks"]["outputs_identical"])
        add("features: ratio falls as events grow", str(features["checks"]["ratio_falls_as_events_grow"]), None, "falls",
            features["checks"]["ratio_falls_as_events_grow"])
    if "sid" in sections:
        for b in sections["sid"]["quantiser"]:
            add(f"quantiser {b['items']:,} x {b['dim']}d into {b['levels']} x {b['codes_per_level']}",
                f"{b['build_seconds']:.0f} s", None, "< 300 s at 1M", b["build_seconds"] < 300 if b["items"] >= 1_000_000 else None)
        enc = sections["sid"]["encode"]
        add("MiniLM encode, cold", f"{enc['cold_items_per_s']:.0f} items/s", None, "", None)
        add("MiniLM encode, a day with 3% new texts (cache)", f"{enc['day_with_3pct_new_items_per_s']:.0f} items/s",
            enc["cache_speedup_on_a_day"], "speed-up vs cold", None)
    if "e2e" in sections:
        e2e = sections["e2e"]
        for day in e2e["days"]:
            add(f"e2e {e2e['label']} {day['ds']} ({day['raw_lines']:,} raw lines)", f"{day['wall_seconds']:.0f} s", None,
                "< 900 s (steady day)", day["wall_seconds"] < 900 if day is e2e["days"][-1] else None)
    if "scale" in sections:
        fit = sections["scale"]["linearity"]
        for point in fit["points"]:
            add(f"scale {point['users']:,} users: ingest+features+embed+evaluate", f"{point['seconds']:.0f} s "
                f"({point['ms_per_user']:.2f} ms/user incl. fixed start-up)", None, "", None)
        for m in fit["marginal"]:
            add(f"scale marginal cost {m['from_users']:,} → {m['to_users']:,} users", f"{m['ms_per_user']:.3f} ms/user",
                m.get("relative_to_first"), "flat: ≈1.0 vs the first step up", None)
    return rows


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"`{result['command']}` — {m['date']}, nproc {m['nproc']}, {m['ram_gib']} GiB, load "
             f"{m['load_at_start'][0]:.1f} → {m['load_at_end'][0]:.1f}", "",
             "| figure | measured | ratio | bar | met |", "|---|---|---|---|---|"]
    for r in result["summary"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {r['value']} | {ratio} | {r['bar']} | {met} |")
    lines.append("")
    lines.append("Section wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))
    for name, section_run in result.get("section_runs", {}).items():
        lines.append(f"- {name}: `{section_run['command']}` at {section_run['date']}, load at its end {section_run['load_at_end'][0]:.1f}")
    return "\n".join(lines) + "\n"


def log_mlflow(cfg: FactoryConfig, result: dict, markdown: str) -> None:
    import mlflow

    from jobs.bench.sid import _flat
    from jobs.tracking.runs import configure_mlflow

    experiment_id = configure_mlflow(with_overrides(cfg, mlflow={"experiment": f"{cfg.mlflow.experiment}_benchmarks"}))
    with mlflow.start_run(experiment_id=experiment_id, run_name="bench all (performance)") as run:
        mlflow.log_params({"command": result["command"], "sections": ",".join(result["sections"]),
                           **{f"machine.{k}": str(v) for k, v in result["machine"].items()}})
        numbers = _flat("", {"seconds": result["seconds"]}, {})
        for i, row in enumerate(result["summary"]):
            if row["ratio"] is not None:
                numbers[f"ratio.{i:02d}"] = float(row["ratio"])
        mlflow.log_metrics(numbers)
        mlflow.log_dict(result, "perf.json")
        mlflow.log_text(markdown, "perf.md")
        result["mlflow"] = {"run_id": run.info.run_id, "experiment": f"{cfg.mlflow.experiment}_benchmarks"}


def all_benchmarks(
    only: Annotated[Optional[str], typer.Option(help=f"Comma-separated sections: {', '.join(SECTIONS)} (default: all).")] = None,
    smoke: Annotated[bool, typer.Option(help="Tiny sizes: checks the suite runs, measures nothing worth quoting.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="JSON result (default: benchmarks/results/perf.json; smoke: perf_smoke.json).")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the run to MLflow (<experiment>_benchmarks).")] = True,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML config (MLflow, Spark, Ray settings).")] = None,
) -> None:
    """Every performance benchmark (inference, features, semantic IDs, end to end, scaling): markdown + JSON + MLflow."""
    logging.basicConfig(level=os.environ.get("FACTORY_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    command = invocation("all", "jobs.bench.perf")
    sections = [s.strip() for s in only.split(",")] if only else list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        typer.echo(f"error: unknown section(s) {', '.join(unknown)}; sections are: {', '.join(SECTIONS)}.", err=True)
        raise typer.Exit(1)
    try:
        cfg = load_config(config)
        out = out or RESULTS / ("perf_smoke.json" if smoke else "perf.json")
        result = run(sections, SMOKE if smoke else FULL, cfg, cfg.state_dir / "bench", command, out,
                     progress=lambda line: typer.echo(line, err=True))
    except FactoryError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    markdown = render_markdown(result)
    if mlflow:
        log_mlflow(cfg, result, markdown)
    _write(out, result)
    out.with_suffix(".md").write_text(markdown)
    typer.echo(markdown)
    typer.echo(f"JSON: {out}")
