"""`factory bench ...` (or `python -m jobs.bench ...`): the benchmark commands and their options.

Import-light on purpose (typer and the shared helpers only): jobs.cli mounts this app, and each
command imports its benchmark module (torch, Ray, Spark, faiss) only when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jobs.bench.common import (
    RESULTS,
    LoadSampler,
    benchmark_run,
    flat_metrics,
    invocation,
    machine,
    parse_ints,
    report,
    setup_logging,
    write_result,
)
from jobs.bench.perf import SECTIONS
from jobs.config import load_config, with_overrides
from jobs.days import parse_ds
from jobs.errors import FactoryError

bench_app = typer.Typer(help="Benchmarks (results: benchmarks/results/, docs/benchmarks.md, MLflow).", no_args_is_help=True,
                        add_completion=False, pretty_exceptions_enable=False)
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (Spark, Ray, MLflow settings).")]
MlflowOption = Annotated[bool, typer.Option(help="Log the run to MLflow (<experiment>_benchmarks).")]


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
    out: Annotated[Path | None, typer.Option(help="JSON result (default: benchmarks/results/encoder_<dataset>.json, "
                                                  "<dataset> = ml-1m / amazon-beauty for those files, "
                                                  "else the file's stem).")] = None,
    workers: Annotated[int, typer.Option(help="Ray Train workers (each gets cores // workers threads).")] = 1,
    d_model: Annotated[int, typer.Option(help="Width of the transformer.")] = 64,
    n_layers: Annotated[int | None, typer.Option(help="Transformer blocks (default: 4 for long histories and "
                                                                  "--minutes >= 30, else 2).")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout on embeddings, residuals and MLP (default: 0.5 for short "
                                                       "histories, < 20 events per user; else 0.1, 0.2 for "
                                                       "--minutes >= 30).")] = None,
    max_len: Annotated[int, typer.Option(help="Longest history the model reads.")] = 200,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warmup, then cosine decay over the budget).")] = 3e-3,
    batch_size: Annotated[int | None, typer.Option(help="Sequences per step, length-bucketed (default: 64 for long "
                                                        "histories and --minutes < 30, else 128).")] = None,
    warmup_steps: Annotated[int, typer.Option(help="Linear lr warmup steps.")] = 100,
    weight_decay: Annotated[float, typer.Option(help="AdamW decoupled weight decay.")] = 0.0,
    temperature: Annotated[float | None, typer.Option(help="Scores are cosine / temperature (default: 0.1 for short "
                                                           "histories, else 0.05).")] = None,
    patience: Annotated[int, typer.Option(help="Early stop after this many epochs without a better validation NDCG@10.")] = 20,
    anneal_after: Annotated[int | None, typer.Option(help="After this many epochs without a better validation NDCG@10, go "
                                                          "back to the best weights and anneal the lr to 0 over 10 epochs "
                                                          "(0 = off; default: off).")] = None,
    mask_history_in_loss: Annotated[bool | None, typer.Option(help="Train each position against unseen items only "
                                                                   "(default: on for long histories, off for short).")] = None,
    all_windows: Annotated[bool | None, typer.Option(help="Also train on transitions older than a user's last max_len "
                                                          "(default: on for long histories, off for short).")] = None,
    history_bias: Annotated[bool | None, typer.Option(help="Learn one score added to the user's own history items "
                                                           "when ranking, in place of the history mask (default: on "
                                                           "for short histories, off for long).")] = None,
    bf16: Annotated[bool, typer.Option(help="bfloat16 autocast for forward and loss.")] = False,
    item_codes: Annotated[Path | None, typer.Option(help="SID index (LETTER's Beauty.index.json): item vectors = one "
                                                        "vector per code and level + a per-item residual.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Ray Train run name; reuse one to resume an interrupted run.")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the run to MLflow and register the model.")] = True,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (Ray, MLflow settings).")] = None,
) -> None:
    """Train the user encoder on DATA for MINUTES and report leave-one-out full-ranking metrics."""
    from jobs.bench import encoder as bench

    setup_logging()
    # Settings beyond the defaults get their own file: the default one holds what a user gets without flags.
    out = out or RESULTS / f"encoder_{bench.result_name(data)}{'_item-codes' if item_codes else ''}.json"
    command = invocation("encoder")
    report(lambda: bench.run_benchmark(
        data, minutes, seed, out, workers=workers, d_model=d_model, n_layers=n_layers, dropout=dropout,
        max_len=max_len, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps, weight_decay=weight_decay,
        temperature=temperature, patience=patience, anneal_after=anneal_after, mask_history_in_loss=mask_history_in_loss,
        all_windows=all_windows, history_bias=history_bias, bf16=bf16, item_codes=item_codes,
        cfg=with_overrides(load_config(config), ray={"log_to_driver": True}),  # per-epoch progress lines
        log_to_mlflow=mlflow, run_name=run_name, command=command,
    ), bench.render_markdown, out)


@bench_app.command("encoder-seeds")
def encoder_seeds(
    results: Annotated[list[Path], typer.Argument(help="Result files of `factory bench encoder`, one per seed, "
                                                       "same data and settings.")],
    out: Annotated[Path | None, typer.Option(help="JSON result "
                                                  "(default: benchmarks/results/encoder_<dataset>_seeds.json).")] = None,
    mlflow: MlflowOption = True,
    config: ConfigOption = None,
) -> None:
    """Mean ± sd over seeds of `factory bench encoder` runs; a known dataset's bars judged on the mean."""
    from jobs.bench import encoder_seeds as bench
    from jobs.bench.common import log_summary

    setup_logging()
    out = out or RESULTS / f"encoder_{bench.dataset_name(results[0])}_seeds.json"

    def measure() -> dict:
        result = bench.combine(results, invocation("encoder-seeds"))
        rows = bench.summary_rows(result)
        if mlflow:
            log_summary(load_config(config), "bench encoder seeds", "bench_encoder_seeds.json", result, rows)
        return write_result(out, result, rows)

    report(measure, bench.render_markdown, out)


@bench_app.command()
def sid(
    items: Annotated[Path | None, typer.Option(help="Catalog file: JSONL or CSV with id,text[,label].")] = None,
    movielens: Annotated[Path | None, typer.Option(help="MovieLens folder with movies.dat and item_map.csv (ML-1M).")] = None,
    lake_ds: Annotated[str | None, typer.Option(help="Use the factory lake's catalog and item_embeddings of this day.")] = None,
    levels: Annotated[str, typer.Option(help="Codebook depths to measure, comma-separated; the first is used for "
                                             "stability and speed.")] = "3,4",
    codes: Annotated[int, typer.Option(help="Codes per level.")] = 256,
    seeds: Annotated[str, typer.Option(help="Quantiser seeds, comma-separated.")] = "0,1,2",
    stability_days: Annotated[int, typer.Option(help="Simulated days before the warm refit (0 skips stability).")] = 7,
    speed_sizes: Annotated[str, typer.Option(help="Synthetic catalog sizes for build time ('' skips).")] = "100000,1000000",
    stickiness: Annotated[float, typer.Option(help="sid.refit_stickiness for the stability run.")] = 1.0,
    out: Annotated[Path | None, typer.Option(help="JSON result (default: benchmarks/results/sid_<name>.json).")] = None,
    mlflow: MlflowOption = True,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (MLflow settings).")] = None,
) -> None:
    """Semantic-ID quality, stability and speed on an item catalog (see jobs/bench/sid.py)."""
    from jobs.bench import sid as bench

    setup_logging()
    command = invocation("sid")
    name = (f"lake_{lake_ds}" if lake_ds else "ml-1m" if movielens and movielens.name == "ml-1m"
            else (items or movielens).stem if (items or movielens) else "")
    out = out or RESULTS / f"sid_{name}.json"

    def measure() -> dict:
        from jobs.bench import sid_catalogs

        if sum(x is not None for x in (items, movielens, lake_ds)) != 1:
            raise FactoryError("Pass exactly one of --items PATH, --movielens DIR or --lake-ds DS.")
        cfg = load_config(config)
        if lake_ds:
            parse_ds(lake_ds)
        if items:
            catalog = sid_catalogs.read_catalog(items)
        elif movielens:
            catalog = sid_catalogs.read_movielens(movielens)
        else:
            catalog = sid_catalogs.read_lake(cfg, lake_ds)
        return bench.run_benchmark(catalog, levels=parse_ints(levels, "levels"), codes=codes, seeds=parse_ints(seeds, "seeds"),
                                   stability_days=stability_days, speed_sizes=parse_ints(speed_sizes, "speed-sizes"),
                                   stickiness=stickiness, cfg=cfg, out=out, log_to_mlflow=mlflow, command=command)

    report(measure, bench.render_markdown, out)


@bench_app.command()
def generative(
    data: Annotated[Path, typer.Option(help="SASRec-format file (ml-1m.txt, beauty.txt). Titles (movies.dat, item_map.csv) "
                                            "and users (users.dat, user_map.csv) beside it are used where present.")],
    sids: Annotated[Path | None, typer.Option(help="Published SIDs: item_id0 -> ['<a_x>', ...] JSON (LETTER's "
                                                   "Beauty.index.json) instead of the factory's codes.")] = None,
    seeds: Annotated[str, typer.Option(help="Seeds, comma-separated (each configuration trains once per seed).")] = "0,1,2",
    minutes: Annotated[float, typer.Option(help="Training clock per configuration and seed (caps --steps).")] = 2.5,
    steps: Annotated[int, typer.Option(help="Optimiser steps per configuration and seed (0 = the clock only): the same "
                                             "compute for every run however busy the machine is.")] = 0,
    encoder_minutes: Annotated[float, typer.Option(help="Training clock of the user encoder (soft tokens, "
                                                        "reference row).")] = 5.0,
    encoder_model: Annotated[str, typer.Option(help="Reuse the encoder `factory bench encoder` registered on the same "
                                                    "file instead of training one, e.g. "
                                                    "models:/user_encoder_bench_ml-1m@bench.")] = "",
    history: Annotated[int | None, typer.Option(help="History items (as SIDs) in each sequence (default: 5 for long "
                                                      "histories (ML-1M), 20 for short ones (Beauty)).",
                                                 show_default=False)] = None,
    targets_per_user: Annotated[int | None, typer.Option(help="Training targets per user (the last ones before the test "
                                                               "item) (default: 32 long, 16 short).",
                                                          show_default=False)] = None,
    train_user_share: Annotated[float, typer.Option(help="Share of users whose examples train the model (and its "
                                                         "projector).")] = 0.85,
    eval_users: Annotated[int, typer.Option(help="Evaluate on this many random users, a fixed sample (0 = all).")] = 2000,
    beams: Annotated[int, typer.Option(help="Beam width of constrained decoding.")] = 30,
    hidden: Annotated[int, typer.Option(help="Hidden size of the tiny Llama (MLP 4x).")] = 64,
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 2,
    model_dir: Annotated[str, typer.Option(help="Fine-tune a pretrained causal LM from this local directory instead.")] = "",
    titles: Annotated[bool, typer.Option(help="Code items by their titles where movies.dat is beside the data "
                                              "(MiniLM + residual k-means) instead of the default: the factory's "
                                              "quantiser over the encoder's item vectors (better on ML-1M "
                                              "validation: docs/benchmarks.md).")] = False,
    configs: Annotated[str, typer.Option(help="Configurations to run, comma-separated (default: all four): baseline, "
                                              "+ soft token, + prompt, + soft token + prompt; e.g. a steps curve of "
                                              "one.")] = "",
    history_bias: Annotated[bool, typer.Option(help="Learn one logit for the last SID token of items the user consumed "
                                                    "before (whether users take an item again), in training and in "
                                                    "the beam.")] = True,
    distill: Annotated[float | None, typer.Option(help="Share of the loss that matches the encoder's own ranking (its softmax "
                                                "over the items not yet consumed, as per-level SID token "
                                                "distributions); 0 = the target's SID only (default: 0.9 for long "
                                                "histories (ML-1M), 0 for short ones (Beauty)).",
                                           show_default=False)] = None,
    teacher_temperature_scale: Annotated[float, typer.Option(help="The teacher's softmax temperature as a multiple of the "
                                                                  "encoder's own (below 1: sharper than the encoder "
                                                                  "trained with).")] = 0.5,
    out: Annotated[Path | None, typer.Option(help="JSON result (default: benchmarks/results/generative_<folder>.json).")] = None,
    mlflow: MlflowOption = True,
) -> None:
    """Generative retrieval ablation (baseline, + soft token, + prompt, + both) on a SASRec-format file."""
    from jobs.bench import generative as bench
    from models.generative import TinyLlamaConfig

    setup_logging(with_time=True)
    out = out or RESULTS / f"generative_{data.parent.name}{'_' + sids.stem.split('.')[0] if sids else ''}.json"
    command = invocation("generative")
    report(lambda: bench.run_benchmark(
        data, seeds=parse_ints(seeds, "seeds"), minutes=minutes, steps=steps, encoder_minutes=encoder_minutes,
        history=history, targets_per_user=targets_per_user, train_user_share=train_user_share, eval_users=eval_users,
        beams=beams, lm=TinyLlamaConfig(hidden=hidden, layers=layers, intermediate=4 * hidden), model_dir=model_dir,
        out=out, command=command, log_to_mlflow=mlflow, sids_file=sids, encoder_model=encoder_model,
        history_bias=history_bias, titles=titles, configs=bench.parse_configs(configs), distill=distill,
        teacher_temperature_scale=teacher_temperature_scale,
    ), bench.render_markdown, out)


@bench_app.command()
def features(
    sizes: Annotated[str, typer.Option(help="Event counts to measure, comma-separated.")] = "1000000,5000000,20000000",
    repeats: Annotated[int, typer.Option(help="Rounds of (Spark, DuckDB) per size; the best of each engine is reported.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic events.")] = 0,
    cache: Annotated[Path | None, typer.Option(help="Folder for the generated events "
                                                    "(default <state_dir>/bench/features).")] = None,
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "features.json",
    mlflow: MlflowOption = True,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (Spark and MLflow settings).")] = None,
) -> None:
    """Spark's user-sequence job against the same SQL in DuckDB at growing sizes (see jobs/bench/features.py)."""
    from jobs.bench import features as bench

    setup_logging()
    command = invocation("features")
    report(lambda: bench.run(parse_ints(sizes, "sizes"), seed=seed, repeats=repeats, cache=cache, cfg=load_config(config),
                             out=out, log_to_mlflow=mlflow, command=command), bench.render_markdown, out)


@bench_app.command()
def inference(
    users: Annotated[str, typer.Option(help="Users per encoder config, comma-separated (aligned with "
                                            "--encoders).")] = "100000,10000",
    encoders: Annotated[str, typer.Option(help="Encoder configs d_model:layers:max_len, comma-separated.")] = "64:2:50,256:2:200",
    reps: Annotated[int, typer.Option(help="Interleaved ray/loop repetitions (medians are reported).")] = 3,
    active_share: Annotated[float, typer.Option(help="Share of users active on the incremental day.")] = 0.1,
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "inference.json",
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config ([ray] settings).")] = None,
) -> None:
    """Users/s of the embed step vs a plain torch loop and the GEMM roofline (see jobs/bench/inference.py)."""
    from jobs.bench import inference as bench

    setup_logging()

    def measure() -> dict:
        sizes = parse_ints(users, "users")
        configs = bench.parse_encoders(encoders)
        if len(sizes) != len(configs):
            raise FactoryError(f"--users has {len(sizes)} values but --encoders {len(configs)}; give one size per config.")
        result = bench.run(sizes, load_config(config), configs, reps=reps, active_share=active_share)
        result["command"] = invocation("inference")
        return write_result(out, result, bench.summary_rows(result))

    report(measure, bench.render_markdown, out)


@bench_app.command()
def taste(
    users_per_group: Annotated[int, typer.Option(help="Users given each probe edit (more, less, forget).")] = 25,
    seed: Annotated[int, typer.Option(help="Seed of the choice of probe users.")] = 0,
    world_seed: Annotated[int | None, typer.Option(help="generator.seed of the world (default: the generator's); "
                                                           "another seed gives a world to choose settings on.")] = None,
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "taste_profile.json",
    mlflow: MlflowOption = True,
    config: ConfigOption = None,
) -> None:
    """Taste-profile edits on a generated 3,000-user world: steering, forget leakage, shifted users' HR@10
    (see jobs/bench/taste_profile.py; a fresh world under <state_dir>/bench/taste_profile)."""
    from jobs.bench import taste_profile as bench

    setup_logging()
    command = invocation("taste")

    def measure() -> dict:
        cfg = load_config(config)
        with LoadSampler() as load:
            result = bench.run(cfg, cfg.state_dir / "bench" / "taste_profile", per_group=users_per_group, seed=seed,
                               world_seed=world_seed, progress=lambda line: typer.echo(line, err=True))
        result.update(command=command, machine=machine(), load=load.summary())
        summary = bench.summary_rows(result)
        if mlflow:
            import mlflow as tracking

            with benchmark_run(cfg, "taste_profile", "taste_profile.json", result):
                tracking.log_metrics(flat_metrics("", {k: v for k, v in result.items() if k != "world"}))
        return write_result(out, result, summary)

    report(measure, bench.render_markdown, out)


@bench_app.command()
def nightly(
    days: Annotated[int, typer.Option(help="Evaluated days (the world is simulated for one more).")] = 7,
    users: Annotated[int, typer.Option(help="Users on the first day (the e2e world of `make bench`).")] = 100_000,
    items: Annotated[int, typer.Option(help="Items on the first day.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Seed of the generated world.")] = 7,
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "nightly_quality.json",
    mlflow: MlflowOption = True,
    config: ConfigOption = None,
) -> None:
    """The nightly encoder with the config's train settings over a week of generated days: next-day HR@10 /
    NDCG@10 against popularity per day (jobs/bench/nightly.py)."""
    from jobs.bench import nightly as bench
    from jobs.bench.common import log_summary

    setup_logging()
    command = invocation("nightly")

    def measure() -> dict:
        cfg = load_config(config)
        if min(days, users, items) < 1:
            raise FactoryError("--days, --users and --items must be >= 1.")
        settings = bench.NightlySettings(users=users, items=items, days=days, max_len=cfg.features.max_seq_len, seed=seed)
        log = (lambda result: log_summary(cfg, "bench nightly", "bench_nightly.json", result,
                                          bench.summary_rows(result))) if mlflow else None
        return bench.run_benchmark(out, command, settings, cfg.train, progress=lambda line: typer.echo(line, err=True),
                                   log=log)

    report(measure, bench.render_markdown, out)


@bench_app.command()
def compatibility(
    promotions: Annotated[int, typer.Option(help="Daily warm-started retrains after the first model (each promoted).")] = 3,
    compat_weight: Annotated[float, typer.Option(help="train.compat_weight of the run with compatibility on.")] = 10.0,
    first_day: Annotated[int, typer.Option(help="Day index the first model is trained on.")] = 3,
    item_facets: Annotated[bool, typer.Option(help="The encoder's item table: catalog facets + residual (train.item_facets, "
                                                   "the default) or per-item ids (--no-item-facets).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the generated world.")] = 7,
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "compatibility.json",
    mlflow: MlflowOption = True,
    config: ConfigOption = None,
) -> None:
    """Cross-version vs same-version next-day HR@10 at each promotion, compatibility off and on (jobs/bench/compatibility.py)."""
    from jobs.bench import compatibility as bench
    from jobs.bench.common import log_summary
    from jobs.bench.retrain_world import ModelSettings

    setup_logging()
    command = invocation("compatibility")

    def measure() -> dict:
        cfg = load_config(config)
        log = (lambda result: log_summary(cfg, "bench compatibility", "bench_compatibility.json", result,
                                          bench.summary_rows(result))) if mlflow else None
        return bench.run_benchmark(out, command, first_day=first_day, promotions=promotions, compat_weight=compat_weight,
                                   settings=ModelSettings(item_facets=item_facets), seed=seed,
                                   progress=lambda line: typer.echo(line, err=True), log=log)

    report(measure, bench.render_markdown, out)


@bench_app.command("cold-items")
def cold_items(
    stale_days: Annotated[int, typer.Option(help="Days the champion keeps serving while new items arrive.")] = 2,
    champion_day: Annotated[int, typer.Option(help="Day index the champion is trained on.")] = 3,
    min_events: Annotated[int, typer.Option(help="cold_items.min_events: fit the map on known items with this many "
                                                 "events in the day's sequences.")] = 10,
    sid_levels: Annotated[int, typer.Option(help="Levels of the SID-based item representation arm (0 skips it).")] = 3,
    sid_codes: Annotated[int, typer.Option(help="Codes per level of that arm.")] = 32,
    item_facets: Annotated[bool, typer.Option(help="The encoder's item table: catalog facets + residual (train.item_facets, "
                                                   "the default) or per-item ids (--no-item-facets).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the generated world.")] = 7,
    out: Annotated[Path, typer.Option(help="JSON result.")] = RESULTS / "cold_items.json",
    mlflow: MlflowOption = True,
    config: ConfigOption = None,
) -> None:
    """Next-day recall of new items' plays: day-one vectors vs a retrained model (jobs/bench/cold_items.py)."""
    from jobs.bench import cold_items as bench
    from jobs.bench.common import log_summary
    from jobs.bench.retrain_world import ModelSettings

    setup_logging()
    command = invocation("cold-items")

    def measure() -> dict:
        cfg = load_config(config)
        log = (lambda result: log_summary(cfg, "bench cold-items", "bench_cold_items.json", result,
                                          bench.summary_rows(result))) if mlflow else None
        return bench.run_benchmark(out, command, champion_day=champion_day, stale_days=stale_days, seed=seed,
                                   settings=ModelSettings(item_facets=item_facets),
                                   progress=lambda line: typer.echo(line, err=True), log=log, min_events=min_events,
                                   sid_levels=sid_levels, sid_codes=sid_codes)

    report(measure, bench.render_markdown, out)


@bench_app.command("sid-items")
def sid_items(
    data: Annotated[Path, typer.Option(help="SASRec-format file (ml-1m.txt, beauty.txt).")],
    movielens: Annotated[Path | None, typer.Option(help="MovieLens folder (movies.dat, item_map.csv): SIDs from the "
                                                        "item text.")] = None,
    sid_index: Annotated[Path | None, typer.Option(help="Published SIDs: item_id0 -> ['<a_x>', ...] JSON "
                                                        "(LETTER's Beauty.index.json).")] = None,
    minutes: Annotated[float, typer.Option(help="Training clock per item representation.")] = 3.0,
    levels: Annotated[int, typer.Option(help="SID levels (text codes).")] = 3,
    codes: Annotated[int, typer.Option(help="Codes per level (text codes).")] = 64,
    cold_share: Annotated[float, typer.Option(help="Share of items held out of training (cold items).")] = 0.1,
    max_len: Annotated[int, typer.Option(help="Longest history the model reads.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the split, codes and training.")] = 0,
    out: Annotated[Path | None, typer.Option(help="JSON result (default: benchmarks/results/sid_items_<stem>.json).")] = None,
    mlflow: MlflowOption = True,
    config: ConfigOption = None,
) -> None:
    """SID-based item vectors vs per-item ids in the encoder: warm and cold items (jobs/bench/sid_items.py)."""
    from jobs.bench import sid_items as bench
    from jobs.bench.common import log_summary

    setup_logging()
    command = invocation("sid-items")
    out = out or RESULTS / f"sid_items_{data.stem}.json"

    def measure() -> dict:
        cfg = load_config(config)
        log = (lambda result: log_summary(cfg, "bench sid-items", "bench_sid_items.json", result,
                                          bench.summary_rows(result))) if mlflow else None
        return bench.run_benchmark(out, command, data, minutes, log=log, movielens=movielens, sid_index=sid_index,
                                   levels=levels, codes_per_level=codes, cold_share=cold_share, max_len=max_len, seed=seed,
                                   progress=lambda line: typer.echo(line, err=True))

    report(measure, bench.render_markdown, out)


@bench_app.command("all")
def all_benchmarks(
    only: Annotated[str | None, typer.Option(help=f"Comma-separated sections: {', '.join(SECTIONS)} (default: all).")] = None,
    smoke: Annotated[bool, typer.Option(help="Tiny sizes: checks the suite runs, measures nothing worth quoting.")] = False,
    out: Annotated[Path | None, typer.Option(help="JSON result (default: benchmarks/results/perf.json; "
                                                  "smoke: perf_smoke.json).")] = None,
    mlflow: MlflowOption = True,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config (MLflow, Spark, Ray settings).")] = None,
) -> None:
    """Every performance benchmark (inference, features, semantic IDs, end to end, scaling): markdown + JSON + MLflow."""
    from jobs.bench import perf

    setup_logging()
    command = invocation("all")
    sections = [s.strip() for s in only.split(",")] if only else list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        typer.echo(f"error: unknown section(s) {', '.join(unknown)}; sections are: {', '.join(SECTIONS)}.", err=True)
        raise typer.Exit(1)
    out = out or RESULTS / ("perf_smoke.json" if smoke else "perf.json")

    def measure() -> dict:
        cfg = load_config(config)
        result = perf.run(sections, perf.SMOKE if smoke else perf.FULL, cfg, cfg.state_dir / "bench", command, out,
                          progress=lambda line: typer.echo(line, err=True))
        markdown = perf.render_markdown(result)
        if mlflow:
            perf.log_mlflow(cfg, result, markdown)
        result = write_result(out, result, result["summary"])
        out.with_suffix(".md").write_text(markdown)
        return result

    report(measure, perf.render_markdown, out)

