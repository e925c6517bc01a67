"""`factory bench inference`: users/s of the embed step against a plain torch loop and the GEMM roofline.

On generated user_sequences (lengths log-normal with median max_len/4, capped at max_len; item ids
Zipf-like over 20,000 items) written to a scratch lake, for each encoder config, side by side in one run:
  ray       the pipeline's own `jobs.steps.embed.embed_users` on the day's Parquet files with the default
            engine (`ray.inference_engine = "pool"`: the long-lived actor pool, warm; Ray start-up and the
            pool's cold start are timed separately and excluded), median of --reps runs;
  ray_data  the same through a Ray Data map_batches job (`"ray_data"`: a new actor pool per call);
  loop      the same predictor class in-process over the same batches (inference_batch_size rows
            read from the same files) with the same torch thread count, interleaved with the ray runs;
  roofline  the encoder's GEMM FLOPs per user (counted below) / the fp32 torch.mm rate measured now
            at the model's shapes with the same threads -> users/s a GEMM-only machine would reach.
FLOPs counted per user with n real tokens (padding is not counted; it is overhead): per block but
the last, 24·n·d² (QKV 6, out 2, MLP 16) + 2·d·n(n+1) (causal QKᵀ and AV); the last block computes
only the last position: 4·n·d² (K, V) + 20·d² (Q, out, MLP) + 4·d·n. Embeddings, LayerNorm, GELU,
softmax and masks are not counted (memory-bound, no GEMM). `full_forward_flops` counts the plain
all-positions forward, for comparison. Also: a torch.profiler summary of the loop by kind of op, an
incremental day (10% of users active) against a full recompute through `jobs.steps.embed.embed_day`, and
the peak RSS of the process tree (driver + Ray) while the Ray jobs ran.
"""

from __future__ import annotations

import cProfile
import dataclasses
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from jobs.bench.common import gemm_rate, machine, summary_row
from jobs.config import FactoryConfig, load_config
from jobs.days import shift
from jobs.errors import FactoryError
from jobs.lakehouse import delta
from jobs.lakehouse.tables import USER_EMBEDDINGS, USER_SEQUENCES
from jobs.runtime.ray_cluster import ensure_ray
from jobs.steps import embed, inference_pool
from jobs.steps.user_predictor import flat_lists
from jobs.tracking import registry
from jobs.tracking.memory import RssSampler
from jobs.tracking.progress import progress
from models.user_encoder import UserEncoder, UserEncoderConfig

DS = "2026-01-02"
TINY_DS = "2025-06-01"
NUM_ITEMS = 20_000


def say(message: str) -> None:
    print(f"[bench inference {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- data ------------------------------------------------------------------------------------------

def generate_sequences(users: int, max_len: int, seed: int = 0) -> pa.Table:
    """user_sequences rows (without ds) for `users` users; see the module docstring for the shape."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(max(max_len / 4, 1)), 0.9, users)), 1, max_len).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    items = np.minimum(rng.zipf(1.2, int(offsets[-1])), NUM_ITEMS).astype(np.int32)
    events = rng.choice(np.array([1, 2, 3], np.int8), int(offsets[-1]), p=[0.8, 0.15, 0.05])
    ts = np.arange(int(offsets[-1]), dtype=np.int64)
    return pa.table({
        "user_id": pa.array([f"u{i:08d}" for i in range(users)], pa.string()),
        "item_idx": pa.ListArray.from_arrays(offsets, items), "event_type": pa.ListArray.from_arrays(offsets, events),
        "ts": pa.ListArray.from_arrays(offsets, ts), "events_in_window": pa.array(lengths),
        "last_ts": pa.nulls(users, USER_SEQUENCES.schema.field("last_ts").type),
    })


def next_day(table: pa.Table, active_share: float, seed: int = 1) -> pa.Table:
    """The same users a day later: `active_share` of them (random) have one more play at the end."""
    rng = np.random.default_rng(seed)
    active = rng.random(table.num_rows) < active_share
    columns = {}
    for name, new_value in (("item_idx", 1), ("event_type", 1), ("ts", 10**12)):
        values, offsets = flat_lists(table.column(name))
        lengths = np.diff(offsets) + active
        new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        out = np.full(int(new_offsets[-1]), new_value, values.dtype)
        keep = np.ones(len(out), bool)
        keep[new_offsets[1:][active] - 1] = False  # the appended slot of each active user
        out[keep] = values
        columns[name] = pa.ListArray.from_arrays(new_offsets, out)
    return table.drop_columns(list(columns)).append_column("item_idx", columns["item_idx"]).append_column(
        "event_type", columns["event_type"]).append_column("ts", columns["ts"]).select(table.column_names)


def write_day(cfg: FactoryConfig, ds: str, table: pa.Table) -> tuple[int, list[str]]:
    delta.replace_partition(cfg, USER_SEQUENCES, table.append_column("ds", pa.array([ds] * table.num_rows)), {"ds": ds})
    return delta.snapshot_files(cfg, USER_SEQUENCES, where_in={"ds": [ds]})


# --- FLOPs and the GEMM rate -------------------------------------------------------------------------

def encoder_flops(cfg: UserEncoderConfig, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(as run: last block on the last position only, full forward) GEMM FLOPs per user, (N,) each."""
    n, d, layers = np.minimum(lengths, cfg.max_len).astype(np.float64), cfg.d_model, cfg.n_layers
    block = 24 * n * d * d + 2 * d * n * (n + 1)
    last = 4 * n * d * d + 20 * d * d + 4 * d * n
    return (layers - 1) * block + last, layers * block


# --- the two ways to run it ------------------------------------------------------------------------

def plain_loop(cfg: FactoryConfig, files: list[str], champion: registry.RegisteredEncoder, threads: int) -> pa.Table:
    """What embed_users does, without Ray: same files, same batches, same predictor, `threads` torch threads."""
    table = pads.dataset(files).to_table(columns=embed.input_columns(champion.model.cfg))
    predictor = embed.UserEmbeddingPredictor(**{**embed.predictor_kwargs(cfg, champion), "threads": threads})
    size = cfg.ray.inference_batch_size
    out = [predictor(table.slice(first, size)) for first in range(0, table.num_rows, size)]
    return pa.concat_tables(out).sort_by("user_id")


def profile_loop(cfg: FactoryConfig, files: list[str], champion: registry.RegisteredEncoder, rows: int,
                 threads: int) -> dict:
    """Where one actor's time goes: cProfile of the predictor over `rows` users, grouped by kind.

    torch's kernels are C functions called from Python, so cProfile's own time of each is the op's
    time; everything else (padding, Arrow, module dispatch) is Python/numpy overhead."""
    kinds = {"linear layers (GEMM + bias)": ("linear",), "attention (sdpa)": ("scaled_dot_product_attention",),
             "layernorm / gelu / normalise": ("layer_norm", "gelu", "norm", "clamp_min", "div"),
             "embedding lookups": ("embedding",),
             "masks / residual adds / other torch": ("tril", "eye", "ones", "arange", "add", "__and__", "__or__", "ne")}
    table = pads.dataset(files).to_table(columns=embed.input_columns(champion.model.cfg)).slice(0, rows)
    predictor = embed.UserEmbeddingPredictor(**{**embed.predictor_kwargs(cfg, champion), "threads": threads})
    size = cfg.ray.inference_batch_size
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for first in range(0, table.num_rows, size):
        predictor(table.slice(first, size))
    profiler.disable()
    wall = time.perf_counter() - start
    by_kind = dict.fromkeys(kinds, 0.0)
    top = []
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, ncalls, tottime, cumtime, callers)}
    for (file, _, name), (_, calls, own, _, _) in sorted(stats.items(), key=lambda kv: -kv[1][2]):
        short = name.removeprefix("<built-in method ").removesuffix(">").split(".")[-1].split(" ")[0]
        kind = next((k for k, names in kinds.items() if short in names and "~" in file), None)
        if kind:
            by_kind[kind] += own
        if len(top) < 10:
            top.append({"function": name if "~" in file else f"{Path(file).name}:{name}", "own_seconds": round(own, 4),
                        "calls": calls})
    by_kind["python / numpy / arrow and tensor operators cProfile cannot see (x + y, a & b)"] = max(0.0,
                                                                                                    wall - sum(by_kind.values()))
    return {"users": table.num_rows, "threads": threads, "wall_seconds_under_cprofile": wall,
            "share_of_wall": {k: round(v / wall, 3) for k, v in by_kind.items()}, "top_functions": top}


# --- one encoder config ----------------------------------------------------------------------------

def bench_encoder(base: FactoryConfig, encoder: UserEncoderConfig, users: int, reps: int, active_share: float,
                  profile_users: int, say: Callable[[str], None] = say) -> dict:
    champion = registry.RegisteredEncoder("1", UserEncoder(encoder).eval(), {})
    day0 = generate_sequences(users, encoder.max_len)
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as state:
        cfg = dataclasses.replace(base, paths=dataclasses.replace(base.paths, state_dir=state, lake_uri="", landing_uri=""))
        version, files = write_day(cfg, DS, day0)
        lengths = np.diff(flat_lists(day0.column("item_idx"))[1])
        flops, full_flops = encoder_flops(encoder, lengths)
        kwargs = embed.predictor_kwargs(cfg, champion)
        actor_threads = kwargs["threads"]
        cores = actor_threads * cfg.ray.inference_actors  # the plain loop gets the same number of threads
        say(f"d_model={encoder.d_model} layers={encoder.n_layers} max_len={encoder.max_len}: {users:,} users, "
            f"mean length {lengths.mean():.1f}; ray: {cfg.ray.inference_actors} actor(s) x {actor_threads} thread(s); "
            f"loop: {cores} thread(s) and 1 thread")
        started = time.perf_counter()
        ensure_ray(cfg)
        ray_start = time.perf_counter() - started
        _, tiny = write_day(cfg, TINY_DS, day0.slice(0, 8))  # 8 users: a call's fixed cost
        ray_data_cfg = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, inference_engine="ray_data"))
        inference_pool.release()
        t = time.perf_counter()
        embed.embed_users(cfg, tiny, champion)  # the pool's cold start: actors, torch import, model load
        pool_cold = time.perf_counter() - t
        say(f"  pool cold start (actors, torch import, model load; 8 users): {pool_cold:.2f} s")
        times: dict[str, list[float]] = {"ray": [], "ray_fixed": [], "ray_data": [], "loop": [], "loop_1_thread": []}
        outputs: dict[str, pa.Table] = {}
        with RssSampler(interval=0.1) as rss, progress("inference reps", total=reps, unit="reps") as bar:
            for rep in range(reps):
                for name, job in (("ray_fixed", lambda: embed.embed_users(cfg, tiny, champion)),
                                  ("ray", lambda: embed.embed_users(cfg, files, champion)),
                                  ("loop", lambda: plain_loop(cfg, files, champion, cores)),
                                  ("loop_1_thread", lambda: plain_loop(cfg, files, champion, 1))):
                    t = time.perf_counter()
                    output = job()
                    times[name].append(time.perf_counter() - t)
                    outputs[name] = output
                say(f"  rep {rep + 1}/{reps}: " + ", ".join(
                    f"{k} {v[-1]:.2f} s" + ("" if k == "ray_fixed" else f" ({users / v[-1]:,.0f} users/s)")
                    for k, v in times.items() if v))
                bar.advance(1)
            # Ray Data's jobs after the pool is gone: its actors and read tasks need the CPUs the pool holds.
            inference_pool.release()
            for rep in range(reps):
                t = time.perf_counter()
                outputs["ray_data"] = embed.embed_users(ray_data_cfg, files, champion)
                times["ray_data"].append(time.perf_counter() - t)
                say(f"  ray_data rep {rep + 1}/{reps}: {times['ray_data'][-1]:.2f} s "
                    f"({users / times['ray_data'][-1]:,.0f} users/s)")
        same = np.allclose(np.stack(outputs["ray"].column("embedding").to_numpy(zero_copy_only=False)),
                           np.stack(outputs["loop"].column("embedding").to_numpy(zero_copy_only=False)), atol=1e-5)
        rows = cfg.ray.inference_tokens_per_forward  # tokens per model call = rows of the GEMMs
        # Best of GEMM_RUNS runs each, measured here (per encoder config) at this config's shapes and threads.
        gemm = {"threads_1": gemm_rate(encoder.d_model, rows, 1), f"threads_{cores}": gemm_rate(encoder.d_model, rows, cores)}
        # The cores' GEMM rate: the better of one process with `cores` threads and `cores` single-threaded
        # processes (assumed to scale linearly: an upper bound, so the roofline is not flattered).
        rate = max(gemm[f"threads_{cores}"]["model_shapes_gflops"], cores * gemm["threads_1"]["model_shapes_gflops"])
        roofline = rate * 1e9 / flops.mean()
        med = {k: statistics.median(v) for k, v in times.items()}
        say(f"  GEMM {rate:.1f} GFLOP/s on {cores} core(s) at model shapes -> roofline {roofline:,.0f} users/s")
        profile = profile_loop(cfg, files, champion, min(profile_users, users), actor_threads)
        say(f"  profile (one actor's work, {actor_threads} thread(s)): {profile['share_of_wall']}")
        incremental = bench_incremental(cfg, champion, day0, version, files, active_share, say)
        return {
            "encoder": {"d_model": encoder.d_model, "n_layers": encoder.n_layers, "n_heads": encoder.n_heads,
                        "max_len": encoder.max_len, "num_items": encoder.num_items},
            "users": users, "mean_length": float(lengths.mean()), "actor_threads": actor_threads, "cores": cores,
            "inference_batch_size": cfg.ray.inference_batch_size, "tokens_per_forward": cfg.ray.inference_tokens_per_forward,
            "inference_actors": cfg.ray.inference_actors, "actor_num_cpus": cfg.ray.actor_num_cpus,
            "inference_engine": cfg.ray.inference_engine, "pool_cold_start_seconds": pool_cold,
            "ray_start_seconds": ray_start, "seconds": times, "median_seconds": med,
            "ray_data_users_per_s": users / med["ray_data"], "ray_data_over_loop_time": med["ray_data"] / med["loop"],
            "ray_users_per_s": users / med["ray"], "loop_users_per_s": users / med["loop"],
            "loop_1_thread_users_per_s": users / med["loop_1_thread"],
            "ray_users_per_s_without_fixed_cost": users / max(med["ray"] - med["ray_fixed"], 1e-9),
            "roofline_users_per_s": roofline, "gemm_gflops_cores": rate,
            "ray_over_loop_time": med["ray"] / med["loop"],
            "ray_over_loop_1_thread_time_per_core": med["ray"] * cores / med["loop_1_thread"],
            "ray_share_of_roofline": users / med["ray"] / roofline,
            "loop_1_thread_share_of_1_thread_roofline": users / med["loop_1_thread"] * flops.mean()
            / (gemm["threads_1"]["model_shapes_gflops"] * 1e9),
            "ray_equals_loop": bool(same),
            "gflop_per_user": float(flops.mean() / 1e9), "full_forward_gflop_per_user": float(full_flops.mean() / 1e9),
            "achieved_gflops_ray": float(flops.sum() / med["ray"] / 1e9), "gemm": gemm,
            "peak_rss_mib_process_tree": round(rss.tree_mb), "peak_rss_mib_driver": round(rss.driver_mb),
            "profile": profile, "incremental": incremental,
        }


def bench_incremental(cfg: FactoryConfig, champion: registry.RegisteredEncoder, day0: pa.Table, version: int,
                      files: list[str], active_share: float, say: Callable[[str], None] = say) -> dict:
    """Day 1 with `active_share` of users active: embed_day carrying the rest vs a full recompute."""
    users, _, _ = embed.embed_day(cfg, DS, version, files, champion)  # day 0, full (no yesterday)
    delta.replace_partition(cfg, USER_EMBEDDINGS, users.append_column("ds", pa.array([DS] * users.num_rows)), {"ds": DS})
    day1 = shift(DS, 1)
    version1, files1 = write_day(cfg, day1, next_day(day0, active_share))
    result = {"active_share": active_share}
    # A new champion version (same weights) forces the full recompute through the same function.
    for name, model in (("incremental", champion), ("full", dataclasses.replace(champion, version="2"))):
        t = time.perf_counter()
        out, counts, plan = embed.embed_day(cfg, day1, version1, files1, model)
        result[name] = {"seconds": time.perf_counter() - t, **counts, "plan": plan}
        say(f"  {name}: {result[name]['seconds']:.2f} s, {counts}")
    result["full_over_incremental_time"] = result["full"]["seconds"] / result["incremental"]["seconds"]
    return result


def default_encoder(cfg: FactoryConfig) -> UserEncoderConfig:
    """The pipeline's encoder shape: [train] d_model / n_layers / n_heads / time_buckets, [features] max_seq_len."""
    return UserEncoderConfig(num_items=NUM_ITEMS, d_model=cfg.train.d_model, n_layers=cfg.train.n_layers,
                             n_heads=cfg.train.n_heads, max_len=cfg.features.max_seq_len,
                             n_time_buckets=cfg.train.time_buckets)


def run(users: int | list[int] = 100_000, cfg: FactoryConfig | None = None,
        encoders: list[UserEncoderConfig] | None = None, reps: int = 3, active_share: float = 0.1,
        profile_users: int = 20_000, progress: Callable[[str], None] | None = None) -> dict:
    """One result per (users, encoder) pair (an int `users` means the pipeline's encoder only), as plain
    data for JSON (summary_rows(result) gives its judged figures)."""
    cfg = cfg or load_config()
    sizes = [users] if isinstance(users, int) else list(users)
    encoders = encoders or [default_encoder(cfg)] * len(sizes)
    if len(sizes) != len(encoders):
        raise FactoryError(f"{len(sizes)} user counts but {len(encoders)} encoder configs; give one size per config.")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "load_before": os.getloadavg(), "runs": []}
    for n, encoder in zip(sizes, encoders):
        result["runs"].append(bench_encoder(cfg, encoder, n, reps, active_share, profile_users, progress or say))
    result["load_after"] = os.getloadavg()
    return result


# The roofline bar (≥ 50%) is judged from this width up. At d_model 64 the GEMMs are 64-wide and
# about half the time goes to attention, LayerNorm/GELU and Python around them (the profile in each
# run), so there the share is reported with the profile, not judged (issue 20: "report d64 whatever
# it is, with the profile").
ROOFLINE_JUDGED_FROM_D_MODEL = 256


def summary_rows(result: dict) -> list[dict]:
    """The judged figures of each run: Ray vs the loops (≤ 1.2x time), vs the roofline (≥ 50% from
    ROOFLINE_JUDGED_FROM_D_MODEL up; reported with the profile below it)."""
    rows = []
    for r in result["runs"]:
        e, inc = r["encoder"], r["incremental"]
        name = f"inference d{e['d_model']} L{e['n_layers']} T{e['max_len']}, {r['users']:,} users"
        ray, roof = r["ray_users_per_s"], r["roofline_users_per_s"]
        per_core = r["median_seconds"]["ray"] / r["median_seconds"]["loop_1_thread"]
        one_thread = r["loop_1_thread_share_of_1_thread_roofline"]
        judged = e["d_model"] >= ROOFLINE_JUDGED_FROM_D_MODEL
        profile = ", ".join(f"{kind.split(' (')[0]} {share:.0%}" for kind, share in
                            r.get("profile", {}).get("share_of_wall", {}).items() if share >= 0.05)
        rows += [
            summary_row(f"{name}: Ray / plain loop time ({r['cores']} threads, same cores)", r["ray_over_loop_time"], "x",
                        "≤ 1.2", r["ray_over_loop_time"] <= 1.2, f"{ray:,.0f} vs {r['loop_users_per_s']:,.0f} users/s"),
            summary_row(f"{name}: Ray / 1-thread loop time", per_core, "x", "≤ 1.2", per_core <= 1.2,
                        f"{ray:,.0f} vs {r['loop_1_thread_users_per_s']:,.0f} users/s"),
            summary_row(f"{name}: Ray / GEMM roofline", r["ray_share_of_roofline"], "share", "≥ 0.5" if judged else "",
                        r["ray_share_of_roofline"] >= 0.5 if judged else None,
                        f"{ray:,.0f} of {roof:,.0f} users/s; {gemm_detail(r)}"
                        + ("" if judged else f"; reported, not judged below d{ROOFLINE_JUDGED_FROM_D_MODEL}: "
                                             f"one actor's time is {profile}")),
            summary_row(f"{name}: 1-thread loop / 1-thread roofline", one_thread, "share", "≥ 0.5" if judged else "",
                        one_thread >= 0.5 if judged else None),
            *([summary_row(f"{name}: Ray Data map_batches (a new actor pool per call) / plain loop time",
                           r["ray_data_over_loop_time"], "x", detail=f"{r['ray_data_users_per_s']:,.0f} users/s; "
                           f"the pool's cold start {r['pool_cold_start_seconds']:.1f} s, once per process")]
              if "ray_data_over_loop_time" in r else []),
            summary_row(f"{name}: full recompute / {inc['active_share']:.0%}-active incremental day, time",
                        inc["full_over_incremental_time"], "x",
                        detail=f"{inc['full']['seconds']:.1f} s vs {inc['incremental']['seconds']:.1f} s "
                               f"({inc['incremental']['users_inferred']:,} inferred)"),
            summary_row(f"{name}: peak RSS of the process tree (driver + Ray)", r["peak_rss_mib_process_tree"], "MiB",
                        detail=f"driver {r['peak_rss_mib_driver']:,} MiB"),
        ]
    return rows


def gemm_runs(run: dict) -> int:
    return min(g.get("runs", 1) for g in run["gemm"].values())


def gemm_detail(run: dict) -> str:
    """The roofline's GEMM rate, its runs and their spread (a section measured before the best-of-N
    roofline existed has no spread: say so instead of failing the whole report)."""
    spreads = [g["model_shapes_spread"] for g in run["gemm"].values() if "model_shapes_spread" in g]
    spread = f", spread {max(spreads):.0%}" if spreads else " (single run, measured before best-of-N)"
    return f"GEMM {run['gemm_gflops_cores']:.0f} GFLOP/s, best of {gemm_runs(run)} runs{spread}"


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{result['date']}, nproc {m['nproc']}, {m['ram_gib']} GiB, load before/after "
             f"{result['load_before'][0]:.1f}/{result['load_after'][0]:.1f}", "",
             "| encoder | users | ray users/s | loop users/s (same threads) | loop 1 thread | roofline users/s "
             "| ray/loop time | ray/roofline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        e = r["encoder"]
        lines.append(f"| d{e['d_model']} L{e['n_layers']} T{e['max_len']} | {r['users']:,} | {r['ray_users_per_s']:,.0f} | "
                     f"{r['loop_users_per_s']:,.0f} | {r['loop_1_thread_users_per_s']:,.0f} | "
                     f"{r['roofline_users_per_s']:,.0f} | {r['ray_over_loop_time']:.2f} | "
                     f"{r['ray_share_of_roofline']:.0%} |")
    return "\n".join(lines)


def parse_encoders(text: str) -> list[UserEncoderConfig]:
    try:
        specs = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
        return [UserEncoderConfig(num_items=NUM_ITEMS, d_model=d, n_layers=layers, max_len=max_len, n_heads=2)
                for d, layers, max_len in specs]
    except ValueError:
        raise FactoryError(f"--encoders must look like 64:2:50,256:2:200 (d_model:layers:max_len), got {text!r}.") from None
