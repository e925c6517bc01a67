"""`factory bench features`: the features step's Spark transformation against the same SQL in DuckDB.

Input: synthetic EVENTS as hive-style parquet (`events/ds=YYYY-MM-DD/part-0.parquet`, one file per
day of a 30-day window) plus an ITEM_VOCAB parquet, generated once per (size, seed) into a cache
folder and reused: ~50 events per user (users with Zipf(0.5) activity, so 20M events ≈ 400k users),
a 50k-item vocabulary with Zipf(1) popularity (90% tracks, 10% episodes, 0.1% of events on items
outside the vocabulary), 70% plays / 25% skips / 5% saves, millisecond timestamps. Generated day by
day: no process ever holds more than one day of events.

On the same files, per size: Spark runs the step's own `jobs.steps.features.user_sequences` (local[2], the
session of jobs.lakehouse.spark with the factory's settings, warmed up first; session start reported apart)
and DuckDB runs the same computation in SQL (row_number window, filter, ordered list aggregation)
with 2 threads in a child process. Both write the full result to parquet (rows unordered in both: the
step sorts the collected result by user_id in Arrow), and the two outputs are compared row by row.
Reported: seconds, ratio Spark/DuckDB, events/s, seconds per million events between sizes
(linearity), peak RSS of the Python driver, the Spark JVM and the DuckDB process.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import typer

from jobs.bench.common import LoadSampler, benchmark_run, machine, summary_row, write_result
from jobs.bench.features_data import DAYS, END_DS, EVENTS_PER_USER, VOCAB_ITEMS, generate_events
from jobs.config import FactoryConfig, load_config
from jobs.errors import FactoryError
from jobs.lakehouse.tables import EVENTS
from jobs.tracking.memory import RssSampler

log = logging.getLogger(__name__)
DEFAULT_SIZES = (1_000_000, 5_000_000, 20_000_000)
BARS = {"max_ratio_at_largest": 4.0}


# ---------------------------------------------------------------- the two engines

DUCKDB_SQL = """
COPY (
  WITH kept AS (
    SELECT e.user_id, e.event_id, e.ts, epoch_ms(e.ts) AS ts_ms, v.item_idx,
           CASE e.event_type WHEN 'play' THEN 1 WHEN 'skip' THEN 2 END::TINYINT AS event_type
    FROM read_parquet($events) e JOIN read_parquet($vocab) v ON e.item_id = v.item_id
    WHERE e.event_type IN ('play', 'skip')
  ), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY ts DESC, event_id DESC) AS recency,
           count(*) OVER (PARTITION BY user_id) AS events_in_window
    FROM kept
  )
  SELECT user_id,
         list(item_idx ORDER BY ts_ms, event_id) AS item_idx,
         list(event_type ORDER BY ts_ms, event_id) AS event_type,
         list(ts_ms ORDER BY ts_ms, event_id) AS ts,
         any_value(events_in_window) AS events_in_window, max(ts) AS last_ts, $ds AS ds
  FROM ranked WHERE recency <= $max_seq_len
  GROUP BY user_id
) TO '{out}' (FORMAT parquet)
"""

COMPARE_SQL = """
SELECT count(*) FILTER (WHERE s.user_id IS NULL OR d.user_id IS NULL) AS users_in_one_only,
       count(*) FILTER (WHERE s.item_idx IS DISTINCT FROM d.item_idx OR s.event_type IS DISTINCT FROM d.event_type
                        OR s.ts IS DISTINCT FROM d.ts OR s.events_in_window IS DISTINCT FROM d.events_in_window
                        OR epoch_us(s.last_ts) IS DISTINCT FROM epoch_us(d.last_ts) OR s.ds IS DISTINCT FROM d.ds)
         AS rows_differing,
       count(s.user_id) AS spark_users, count(d.user_id) AS duckdb_users,
       sum(len(d.item_idx)) AS duckdb_sequence_events
FROM read_parquet($spark) s FULL OUTER JOIN read_parquet($duckdb) d ON s.user_id = d.user_id
"""


def duckdb_user_sequences(files: list[str], vocab: str, out: str, ds: str, max_seq_len: int, threads: int = 2) -> dict:
    """The features computation in DuckDB SQL, written to the parquet file `out`; seconds and peak RSS."""
    import duckdb

    con = duckdb.connect(config={"threads": threads})
    con.execute("SET enable_progress_bar = false")  # it would write to stdout, where the answer goes
    started, cpu = time.perf_counter(), _cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))
    con.execute(DUCKDB_SQL.format(out=out.replace("'", "''")),
                {"events": files, "vocab": vocab, "ds": ds, "max_seq_len": max_seq_len})
    seconds, usage = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "cpu_seconds": _cpu_seconds(usage) - cpu, "peak_rss_mb": usage.ru_maxrss / 1024}


def _cpu_seconds(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def compare_outputs(spark_out: str, duckdb_out: str) -> dict:
    """Row-by-row comparison of two user_sequences parquet outputs (in DuckDB, so no rows enter Python)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    con.execute("SET enable_progress_bar = false")
    row = con.execute(COMPARE_SQL, {"spark": [str(p) for p in sorted(Path(spark_out).glob("*.parquet"))],
                                    "duckdb": duckdb_out}).fetchone()
    names = ("users_in_one_only", "rows_differing", "spark_users", "duckdb_users", "duckdb_sequence_events")
    result = dict(zip(names, (int(v or 0) for v in row)))
    result["identical"] = result["users_in_one_only"] == 0 and result["rows_differing"] == 0
    return result


def _child_main() -> None:
    """Entry of the DuckDB child process: one JSON request on stdin, one JSON answer on stdout."""
    request = json.loads(sys.stdin.read())
    op = request.pop("op")
    answer = duckdb_user_sequences(**request) if op == "run" else compare_outputs(**request)
    sys.stdout.write("\n" + json.dumps(answer) + "\n")


def in_child(op: str, **request) -> dict:
    """Run DuckDB in its own process, so its memory is measured apart from the Spark driver's."""
    done = subprocess.run([sys.executable, "-c", "from jobs.bench.features import _child_main; _child_main()"],
                          input=json.dumps({"op": op, **request}), capture_output=True, text=True)
    if done.returncode != 0:
        raise FactoryError(f"DuckDB child process failed ({op}): {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # the answer is the last line


def _jvm_cpu_seconds() -> float:
    """CPU seconds (user + system) the Spark JVM child of this process has used so far: robust to other
    load, unlike wall time."""
    jvm = next((c for c in psutil.Process().children(recursive=True) if "java" in c.name()), None)
    return sum(jvm.cpu_times()[:2]) if jvm else 0.0


def spark_user_sequences(spark, files: list[str], events_dir: str, vocab: str, out: str, ds: str, max_seq_len: int) -> dict:
    """The step's own transformation on the same files, written to parquet by Spark's executors."""
    from jobs.steps.features import user_sequences

    started, cpu_before = time.perf_counter(), _jvm_cpu_seconds()
    with RssSampler(interval=0.1, named="java") as peak:
        events = spark.read.option("basePath", events_dir).parquet(*files).select(*EVENTS.schema.names)
        user_sequences(events, spark.read.parquet(vocab), ds, max_seq_len).write.mode("overwrite").parquet(out)
    return {"seconds": time.perf_counter() - started, "jvm_cpu_seconds": _jvm_cpu_seconds() - cpu_before,
            "driver_python_peak_rss_mb": peak.driver_mb, "jvm_peak_rss_mb": peak.named_mb}


# ---------------------------------------------------------------- the benchmark

def run(sizes: list[int] = DEFAULT_SIZES, *, seed: int = 0, repeats: int = 2, cache: Path | None = None,
        cfg: FactoryConfig | None = None, out: Path | None = None, log_to_mlflow: bool = True,
        command: str | None = None, generator_options: dict | None = None) -> dict:
    """Generate (or reuse) each size, time Spark and DuckDB side by side, compare outputs; the result dict.

    Per size, `repeats` rounds of (Spark, DuckDB); the best round of each engine gives the headline
    seconds and ratio, every round is kept. `out` receives the result as JSON. generator_options:
    keyword arguments of generate_events other than the size and seed (tests shrink the data shape).
    """
    if not sizes or any(s <= 0 for s in sizes):
        raise FactoryError(f"--sizes must be positive event counts, got {sizes}.")
    if repeats < 1:
        raise FactoryError(f"--repeats must be >= 1, got {repeats}.")
    from jobs.lakehouse.spark import spark_session

    cfg = cfg or load_config()
    cache = Path(cache or Path(cfg.paths.state_dir) / "bench" / "features")
    max_seq_len, ds = cfg.features.max_seq_len, END_DS
    started = time.perf_counter()
    uptime_before = os.getloadavg()
    with LoadSampler() as load:
        datasets = {size: _dataset(cache / f"events_{size}_seed{seed}", size, seed, generator_options or {})
                    for size in sorted(sizes)}
        t = time.perf_counter()
        spark = spark_session(cfg)
        session_seconds = time.perf_counter() - t
        log_progress(f"Spark session started in {session_seconds:.1f} s")
        scratch = cache / "out"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        folder = cache / f"events_{min(sizes)}_seed{seed}"
        t = time.perf_counter()
        spark_user_sequences(spark, datasets[min(sizes)]["files"], str(folder / "events"),
                             str(folder / "item_vocab.parquet"), str(scratch / "warmup"), ds, max_seq_len)
        warmup_seconds = time.perf_counter() - t
        log_progress(f"Spark warm-up on {min(sizes):,} events: {warmup_seconds:.1f} s (not counted)")
        rows = [_measure_size(spark, size, datasets[size], cache / f"events_{size}_seed{seed}", scratch, ds,
                              max_seq_len, repeats) for size in sorted(sizes)]
    ratios = [r["ratio"] for r in rows]
    checks = {"outputs_identical": all(r["outputs"]["identical"] for r in rows),
              "ratio_at_largest_le_4": ratios[-1] <= BARS["max_ratio_at_largest"],
              "ratio_falls_as_events_grow": all(b < a for a, b in zip(ratios, ratios[1:]))}
    spark_conf = {k: v for k, v in spark.sparkContext.getConf().getAll()
                  if k.startswith(("spark.sql", "spark.driver.memory", "spark.master", "spark.executor"))}
    result = {
        "benchmark": "features", "date": time.strftime("%Y-%m-%d"), "command": command,
        "params": {"sizes": sorted(sizes), "seed": seed, "repeats": repeats, "max_seq_len": max_seq_len, "ds": ds,
                   "window_days": DAYS, "events_per_user": EVENTS_PER_USER, "vocab_items": VOCAB_ITEMS,
                   "duckdb_threads": 2, "spark_conf": spark_conf,
                   "materialised_as": "both engines write the full result to parquet (Spark: DataFrame.write.parquet "
                                      "by the executors; DuckDB: COPY ... TO parquet), timed from reading the files",
                   "spark_transformation": "jobs.steps.features.user_sequences"},
        "bars": BARS, "checks": checks, "spark_session_start_seconds": session_seconds,
        "spark_warmup_seconds": warmup_seconds, "sizes": rows, "growth": growth(rows),
        "machine": machine(), "load": {**load.summary(), "before": uptime_before, "after": os.getloadavg()},
        "wall_seconds": time.perf_counter() - started,
    }
    if log_to_mlflow:
        _log_mlflow(cfg, result)
    if out is not None:
        result = write_result(out, result, summary_rows(result))
    return result


def _dataset(folder: Path, size: int, seed: int, options: dict) -> dict:
    """generate_events (or its cached manifest) with the generator's peak RSS."""
    with RssSampler(interval=0.1) as peak:
        data = generate_events(folder, size, seed, **options)
    data["python_peak_rss_mb"] = peak.driver_mb
    made = "reused" if data["reused"] else f"generated in {data['generate_seconds']:.0f} s"
    log_progress(f"data {size:,} events: {data['users']:,} users, {made}")
    return data


def _measure_size(spark, size: int, data: dict, folder: Path, scratch: Path, ds: str, max_seq_len: int,
                  repeats: int) -> dict:
    """`repeats` rounds of (Spark, DuckDB) on one size, the outputs compared; the best round of each engine."""
    rounds = []
    for r in range(repeats):
        spark_out, duck_out = str(scratch / f"spark_{size}"), str(scratch / f"duckdb_{size}.parquet")
        s = spark_user_sequences(spark, data["files"], str(folder / "events"), str(folder / "item_vocab.parquet"),
                                 spark_out, ds, max_seq_len)
        d = in_child("run", files=data["files"], vocab=str(folder / "item_vocab.parquet"), out=duck_out,
                     ds=ds, max_seq_len=max_seq_len, threads=2)
        rounds.append({"spark": s, "duckdb": d, "ratio": s["seconds"] / d["seconds"], "load1": os.getloadavg()[0]})
        log_progress(f"{size:,} events round {r + 1}: Spark {s['seconds']:.1f} s ({s['jvm_cpu_seconds']:.1f} s CPU), "
                     f"DuckDB {d['seconds']:.1f} s ({d['cpu_seconds']:.1f} s CPU), ratio {s['seconds'] / d['seconds']:.2f}, "
                     f"load {os.getloadavg()[0]:.1f}")
    same = in_child("compare", spark_out=spark_out, duckdb_out=duck_out)
    log_progress(f"{size:,} events: outputs identical = {same['identical']} ({same['duckdb_users']:,} users)")
    spark_s = min(x["spark"]["seconds"] for x in rounds)
    duck_s = min(x["duckdb"]["seconds"] for x in rounds)
    return {
        "events": size, "users": data["users"], "input_bytes": data["bytes"], "spark_seconds": spark_s,
        "duckdb_seconds": duck_s, "ratio": spark_s / duck_s,
        "spark_events_per_s": size / spark_s, "duckdb_events_per_s": size / duck_s,
        "spark_jvm_cpu_seconds": min(x["spark"]["jvm_cpu_seconds"] for x in rounds),
        "duckdb_cpu_seconds": min(x["duckdb"]["cpu_seconds"] for x in rounds),
        "driver_python_peak_rss_mb": max(x["spark"]["driver_python_peak_rss_mb"] for x in rounds),
        "jvm_peak_rss_mb": max(x["spark"]["jvm_peak_rss_mb"] for x in rounds),
        "duckdb_peak_rss_mb": max(x["duckdb"]["peak_rss_mb"] for x in rounds),
        "cpu_ratio": min(x["spark"]["jvm_cpu_seconds"] for x in rounds) / min(x["duckdb"]["cpu_seconds"] for x in rounds),
        "generate_python_peak_rss_mb": data["python_peak_rss_mb"], "outputs": same, "rounds": rounds,
    }


def growth(rows: list[dict]) -> list[dict]:
    """Between consecutive sizes: seconds per million events, and time growth / size growth (1 = linear)."""
    return [{"from": a["events"], "to": b["events"],
             "spark_seconds_per_million": (b["spark_seconds"] - a["spark_seconds"]) / ((b["events"] - a["events"]) / 1e6),
             "duckdb_seconds_per_million": (b["duckdb_seconds"] - a["duckdb_seconds"]) / ((b["events"] - a["events"]) / 1e6),
             "spark_time_growth_per_size_growth": (b["spark_seconds"] / a["spark_seconds"]) / (b["events"] / a["events"]),
             "duckdb_time_growth_per_size_growth": (b["duckdb_seconds"] / a["duckdb_seconds"]) / (b["events"] / a["events"])}
            for a, b in zip(rows, rows[1:])]


def summary_rows(result: dict) -> list[dict]:
    """Judged figures: Spark/DuckDB time per size (bar: <= 4 at the largest, falling), growth, checks."""
    rows, largest = [], result["sizes"][-1]["events"]
    for size in result["sizes"]:
        rows.append(summary_row(f"features {size['events']:,} events: Spark vs DuckDB time", size["ratio"], "x",
                                "≤ 4 at the largest, falling", size["ratio"] <= 4 if size["events"] == largest else None,
                                f"{size['spark_seconds']:.1f} s vs {size['duckdb_seconds']:.1f} s"))
    for g in result["growth"]:
        rows.append(summary_row(f"features growth {g['from']:,} → {g['to']:,} events: Spark time growth / event growth",
                                g["spark_time_growth_per_size_growth"], "x", "≤ ~1 (linear)"))
    checks = result["checks"]
    rows.append(summary_row("features: outputs of both engines identical", int(checks["outputs_identical"]), "yes=1",
                            "identical", checks["outputs_identical"]))
    rows.append(summary_row("features: ratio falls as events grow", int(checks["ratio_falls_as_events_grow"]), "yes=1",
                            "falls", checks["ratio_falls_as_events_grow"]))
    return rows


def log_progress(message: str) -> None:
    log.info(message)
    typer.echo(f"[bench features] {message}", err=True)


def _log_mlflow(cfg: FactoryConfig, result: dict) -> None:
    import mlflow

    with benchmark_run(cfg, "bench features", "bench_features.json", result):
        mlflow.log_params({"command": result["command"], **{k: str(v) for k, v in result["params"].items()
                                                            if k != "spark_conf"}})
        metrics = {"spark_session_start_seconds": result["spark_session_start_seconds"],
                   "wall_seconds": result["wall_seconds"], "load1_mean": result["load"]["load1_mean"],
                   **{f"checks.{k}": float(v) for k, v in result["checks"].items()}}
        for row in result["sizes"]:
            for key in ("spark_seconds", "duckdb_seconds", "ratio", "spark_events_per_s", "duckdb_events_per_s",
                        "spark_jvm_cpu_seconds", "duckdb_cpu_seconds", "cpu_ratio",
                        "driver_python_peak_rss_mb", "jvm_peak_rss_mb", "duckdb_peak_rss_mb"):
                metrics[f"{key}.{row['events']}"] = row[key]
        for g in result["growth"]:
            metrics[f"spark_seconds_per_million.{g['from']}_{g['to']}"] = g["spark_seconds_per_million"]
            metrics[f"duckdb_seconds_per_million.{g['from']}_{g['to']}"] = g["duckdb_seconds_per_million"]
        mlflow.log_metrics(metrics)
        mlflow.log_text(render_markdown(result), "bench_features.md")


def render_markdown(result: dict) -> str:
    """The per-size table and the growth between sizes as markdown."""
    lines = ["| events | users | Spark s | DuckDB s | ratio | Spark events/s | DuckDB events/s | CPU s Spark JVM / DuckDB "
             "(ratio) | driver Python peak RSS | JVM peak RSS | DuckDB peak RSS | outputs identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["sizes"]:
        lines.append(f"| {r['events']:,} | {r['users']:,} | {r['spark_seconds']:.1f} | {r['duckdb_seconds']:.2f} | "
                     f"{r['ratio']:.2f} | {r['spark_events_per_s'] / 1e6:.2f}M | {r['duckdb_events_per_s'] / 1e6:.2f}M | "
                     f"{r['spark_jvm_cpu_seconds']:.1f} / {r['duckdb_cpu_seconds']:.1f} ({r['cpu_ratio']:.2f}) | "
                     f"{r['driver_python_peak_rss_mb']:.0f} MB | {r['jvm_peak_rss_mb']:.0f} MB | "
                     f"{r['duckdb_peak_rss_mb']:.0f} MB | {r['outputs']['identical']} |")
    lines += ["", "| growth | Spark s per M events | DuckDB s per M events | Spark time x / size x | DuckDB time x / size x |",
              "|---|---|---|---|---|"]
    for g in result["growth"]:
        lines.append(f"| {g['from']:,} → {g['to']:,} | {g['spark_seconds_per_million']:.2f} | "
                     f"{g['duckdb_seconds_per_million']:.3f} | {g['spark_time_growth_per_size_growth']:.2f} | "
                     f"{g['duckdb_time_growth_per_size_growth']:.2f} |")
    load, m = result["load"], result["machine"]
    lines += ["", f"Spark session start {result['spark_session_start_seconds']:.1f} s, warm-up run "
              f"{result['spark_warmup_seconds']:.1f} s (neither counted). Best of {result['params']['repeats']} "
              f"rounds per engine; every round is in the JSON.",
              f"Checks: {', '.join(f'{k}={v}' for k, v in result['checks'].items())}.",
              f"Wall {result['wall_seconds'] / 60:.1f} min on {m['nproc']} cores, {m['ram_gib']} GiB; load (1 min) "
              f"before {load['before'][0]:.2f}, mean {load['load1_mean']:.2f}, max {load['load1_max']:.2f}, "
              f"after {load['after'][0]:.2f}."]
    return "\n".join(lines)


