"""`factory demo` / `make demo`: generated data through the whole pipeline, day by day.

With Airflow (default) every day is one `airflow dags test daily_embeddings <ds>` against the local
SQLite Airflow, so the demo exercises the same DAG a scheduler would run.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jobs.config import FactoryConfig
from jobs.errors import FactoryError
from jobs.runtime.airflow_env import DAG_ID, airflow_command
from jobs.serving.show import day_report
from jobs.steps import STEP_NAMES
from jobs.synthetic.generate import generate_drops, generated_days
from jobs.tracking.runs import day_summary


def run_demo(cfg: FactoryConfig, use_airflow: bool, console: Console) -> None:
    started = time.perf_counter()
    days = generated_days(cfg.generator)
    console.print(f"[bold]1/3[/] generating {len(days)} days of logs for {cfg.generator.users} users into {cfg.landing_uri}")
    generate_drops(cfg.generator, Path(cfg.landing_uri), progress=lambda line: console.print(f"    {line}", highlight=False))
    console.print(f"[bold]2/3[/] running the pipeline {'with airflow dags test' if use_airflow else 'in-process'}")
    logs = cfg.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for ds in days:
        day_started = time.perf_counter()
        if use_airflow:
            log_file = logs / f"airflow-dags-test-{ds}.log"
            with open(log_file, "w") as out, console.status(f"ds={ds}: airflow dags test {DAG_ID} {ds} ..."):
                done = airflow_command(cfg, ["dags", "test", DAG_ID, ds], check=False, stdout=out, stderr=out)
            if done.returncode != 0:
                raise FactoryError(f"`airflow dags test {DAG_ID} {ds}` failed; see {log_file}.")
        else:
            from jobs.pipeline import run_day

            run_day(ds, cfg, while_running=lambda ds, step: console.status(f"{ds} {step} running..."))
        console.print(f"    ds={ds} done in {time.perf_counter() - day_started:.0f}s", highlight=False)
    console.print("[bold]3/3[/] results")
    Console().print(step_times_table(cfg, days))
    Console().print(evaluation_table(cfg, days))
    report = day_report(cfg)
    console.print(f"semantic IDs: {report['semantic_ids']}", highlight=False)
    console.print(f"\n[bold]demo finished in {time.perf_counter() - started:.0f}s[/]", highlight=False)
    console.print(f"  lake (Delta tables): {cfg.lake_uri}\n  tables and versions: .venv/bin/factory show\n"
                  f"  MLflow UI:           make mlflow-ui   (store {cfg.mlflow_tracking_uri})\n"
                  f"  Airflow logs:        {logs}", highlight=False)


def step_times_table(cfg: FactoryConfig, days: list[str]) -> Table:
    table = Table(title="wall seconds per step (from MLflow)")
    table.add_column("step")
    for ds in days:
        table.add_column(ds, justify="right")
    seconds = {ds: {s["step"]: s["metrics"].get("wall_seconds", 0.0) for s in day_summary(cfg, ds)} for ds in days}
    for step in STEP_NAMES:
        table.add_row(step, *[f"{seconds[ds].get(step, float('nan')):.1f}" for ds in days])
    table.add_row("total", *[f"{sum(seconds[ds].values()):.1f}" for ds in days])
    return table


def evaluation_table(cfg: FactoryConfig, days: list[str]) -> Table:
    k = cfg.evaluate.k
    table = Table(title=f"next-day HR@{k} / NDCG@{k}: embeddings of ds-1 vs plays of ds")
    for column in ("ds", "users", f"encoder HR@{k}", f"popularity HR@{k}", f"encoder NDCG@{k}", f"popularity NDCG@{k}"):
        table.add_column(column, justify="right")
    for ds in days:
        rows = {(m["method"], m["metric"]): m["value"] for m in day_report(cfg, ds)["eval_metrics"]}
        def cell(method: str, metric: str, rows: dict = rows) -> str:
            return f"{rows[(method, metric)]:.4f}" if (method, metric) in rows else "-"

        table.add_row(ds, f"{rows.get(('encoder', 'users_evaluated'), 0):.0f}", cell("encoder", f"hr_at_{k}"),
                      cell("popularity", f"hr_at_{k}"), cell("encoder", f"ndcg_at_{k}"), cell("popularity", f"ndcg_at_{k}"))
    return table
