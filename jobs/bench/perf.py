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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.bench.common import benchmark_run, flat_metrics, machine, summary_row, write_result
from jobs.bench.text_encoding import text_encoder_rows
from jobs.config import FactoryConfig


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
    incremental_users: int = 1_000_000  # features incremental vs window re-read (~50 events per user)


FULL = Sizes()
SMOKE = Sizes(inference=((2_000, "64:2:50"),), feature_events=(20_000, 40_000), quantiser_items=(5_000,), encode_items=64,
              e2e=(1_000, 600, 10.0), scale_users=(500, 1_000), scale_items=600, scale_events_per_user=6.0,
              incremental_users=2_000)


# --- sections -----------------------------------------------------------------------------------

def sid_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    """Quantiser build time at 100k / 1M items; MiniLM items/s cold, cached, and on a day with 3% new texts."""
    from jobs.bench.sid import TextCache, build_speed
    from jobs.bench.text_encoding import text_encoder_roofline
    from jobs.config import GeneratorConfig
    from jobs.steps.catalog import item_text
    from jobs.steps.text_encoder import EncodeStats
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
    cache.stats = EncodeStats()  # the cold pass only
    started = time.perf_counter()
    cache(texts[8:])
    cold = (n - 8) / (time.perf_counter() - started)
    progress("sid: the GEMM roofline at the text encoder's shapes")
    text_encoder = text_encoder_roofline(cache.stats)
    started = time.perf_counter()
    cache(texts)
    cached = n / (time.perf_counter() - started)
    edited = [t + " (remastered)" for t in texts[: n * 3 // 100]]  # a day: 3% new or edited texts
    started = time.perf_counter()
    cache(texts[n * 3 // 100:] + edited)
    day = n / (time.perf_counter() - started)
    return {"quantiser": builds, "encode": {"items": n, "cold_items_per_s": cold, "cached_items_per_s": cached,
                                            "day_with_3pct_new_items_per_s": day, "cache_speedup_on_a_day": day / cold,
                                            "text_encoder": text_encoder}}


def e2e_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench.scale import run_world
    from jobs.synthetic.worlds import ScaleWorld

    users, items, events = sizes.e2e
    return run_world(ScaleWorld(users, items, events), state / "scale", progress)


def scale_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench.scale import driver_peaks, linearity, run_world
    from jobs.synthetic.worlds import ScaleWorld

    worlds = [run_world(ScaleWorld(u, sizes.scale_items, sizes.scale_events_per_user), state / "scale", progress)
              for u in sizes.scale_users]
    return {"worlds": worlds, "linearity": linearity(worlds), "driver_peaks": driver_peaks(worlds)}


def inference_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench import inference

    users = [n for n, _ in sizes.inference]
    encoders = inference.parse_encoders(",".join(spec for _, spec in sizes.inference))
    return inference.run(users=users, cfg=cfg, encoders=encoders, progress=progress)


def features_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench import features

    return features.run(sizes=list(sizes.feature_events), cfg=cfg, out=state / "features.json", log_to_mlflow=False,
                         command="factory bench all --only features")


def features_incremental_section(sizes: Sizes, cfg: FactoryConfig, state: Path, progress: Callable[[str], None]) -> dict:
    from jobs.bench import features_incremental

    return features_incremental.run(sizes.incremental_users, cfg, state / "features", progress)


SECTIONS: dict[str, Callable[..., dict]] = {
    "inference": inference_section, "features": features_section, "sid": sid_section,
    "e2e": e2e_section, "scale": scale_section, "features_incremental": features_incremental_section,
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
        result = write_result(out, result, summary_rows(result["sections"]))
    return result


def _jsonable(value):
    return json.loads(json.dumps(value, default=float))


# --- the table ----------------------------------------------------------------------------------

def summary_rows(sections: dict) -> list[dict]:
    """One row per judged figure (jobs.bench.common): inference and features as their own benchmarks
    judge them, then the quantiser and encoder speed, the end-to-end day and the scaling."""
    from jobs.bench import features, inference

    rows = []
    if "inference" in sections:
        rows += inference.summary_rows(sections["inference"])
    if "features" in sections:
        rows += features.summary_rows(sections["features"])
    if "sid" in sections:
        for b in sections["sid"]["quantiser"]:
            rows.append(summary_row(f"quantiser {b['items']:,} x {b['dim']}d into {b['levels']} x {b['codes_per_level']}",
                                    b["build_seconds"], "s", "< 300 s at 1M",
                                    b["build_seconds"] < 300 if b["items"] >= 1_000_000 else None))
        enc = sections["sid"]["encode"]
        rows.append(summary_row("MiniLM encode, cold", enc["cold_items_per_s"], "items/s"))
        rows.append(summary_row("MiniLM encode, a day with 3% new texts (cache): speed-up vs cold", enc["cache_speedup_on_a_day"],
                                "x", detail=f"{enc['day_with_3pct_new_items_per_s']:.0f} items/s"))
        rows += text_encoder_rows(enc.get("text_encoder"))
    if "e2e" in sections:
        e2e = sections["e2e"]
        for day in e2e["days"]:
            rows.append(summary_row(f"e2e {e2e['label']} {day['ds']} ({day['raw_lines']:,} raw lines)", day["wall_seconds"], "s",
                                    "< 900 s (steady day)", day["wall_seconds"] < 900 if day is e2e["days"][-1] else None))
    if "scale" in sections:
        fit = sections["scale"]["linearity"]
        for point in fit["points"]:
            rows.append(summary_row(f"scale {point['users']:,} users: ingest+features+embed+evaluate", point["seconds"], "s",
                                    detail=f"{point['ms_per_user']:.2f} ms/user incl. fixed start-up"))
        for m in fit["marginal"]:
            figure = f"scale marginal cost {m['from_users']:,} → {m['to_users']:,} users, relative to the first step up"
            rows.append(summary_row(figure, m.get("relative_to_first"), "x", "flat: ≈1.0 vs the first step up",
                                    detail=f"{m['ms_per_user']:.3f} ms/user"))
        rows += _driver_peak_rows(sections["scale"].get("driver_peaks", []))
    if "features_incremental" in sections:
        from jobs.bench import features_incremental

        rows += features_incremental.summary_rows(sections["features_incremental"])
    return rows


def _driver_peak_rows(peaks: list[dict]) -> list[dict]:
    from jobs.bench.scale import DRIVER_FLAT_BAR

    return [summary_row(f"driver peak {p['step']}, {p['users']:,} / {p['baseline_users']:,} users", p["ratio"], "x",
                        f"≤ {DRIVER_FLAT_BAR}", p["ratio"] <= DRIVER_FLAT_BAR,
                        detail=f"{p['peak_mb']:,.0f} vs {p['baseline_peak_mb']:,.0f} MiB")
            for p in peaks]


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"`{result['command']}` — {m['date']}, nproc {m['nproc']}, {m['ram_gib']} GiB, load "
             f"{m['load_at_start'][0]:.1f} → {m['load_at_end'][0]:.1f}", "",
             "| figure | value | unit | bar | met | detail |", "|---|---|---|---|---|---|"]
    for r in result["summary"]:
        value = "" if r["value"] is None else f"{r['value']:,.3g}" if abs(r["value"]) < 100 else f"{r['value']:,.0f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {value} | {r['unit']} | {r['bar']} | {met} | {r['detail']} |")
    lines.append("")
    lines.append("Section wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))
    for name, section_run in result.get("section_runs", {}).items():
        lines.append(f"- {name}: `{section_run['command']}` at {section_run['date']}, "
                     f"load at its end {section_run['load_at_end'][0]:.1f}")
    return "\n".join(lines) + "\n"


def log_mlflow(cfg: FactoryConfig, result: dict, markdown: str) -> None:
    import mlflow

    with benchmark_run(cfg, "bench all (performance)", "perf.json", result):
        mlflow.log_params({"command": result["command"], "sections": ",".join(result["sections"]),
                           **{f"machine.{k}": str(v) for k, v in result["machine"].items()}})
        numbers = flat_metrics("", {"seconds": result["seconds"]})
        for i, row in enumerate(result["summary"]):
            if row["value"] is not None:
                numbers[f"summary.{i:02d}"] = float(row["value"])
        mlflow.log_metrics(numbers)
        mlflow.log_text(markdown, "perf.md")
