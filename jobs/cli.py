"""`factory`: the command line for everything a person does by hand.

Errors a user can fix (bad ds, missing drop, bad config, unreachable service) print one line and
exit 1; a traceback means a bug.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# bench and faults are leaves nothing else imports: the CLI mounts their typer apps, which are
# import-light (each command imports its benchmark or scenarios when it runs).
from jobs.bench.cli import bench_app
from jobs.config import ConfigError, FactoryConfig, configure_logging, load_config
from jobs.days import parse_ds
from jobs.errors import FactoryError
from jobs.faults.cli import faults as faults_command
from jobs.runtime.quiet import quiet_third_parties
from jobs.steps import FORCE_CODEBOOK_REBUILD, FORCE_RETRAIN, STEP_NAMES

app = typer.Typer(help="Daily embedding factory: user/item embeddings and semantic IDs from listening logs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
sid_app = typer.Typer(help="Semantic-ID lookups: item <-> SID, and valid next tokens under a prefix.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
lake_app = typer.Typer(help="Lake maintenance.", no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False)
app.add_typer(sid_app, name="sid")
app.add_typer(lake_app, name="lake")
app.add_typer(bench_app, name="bench")
cluster_app = typer.Typer(help="A local Spark standalone cluster and a two-node Ray on this machine (addresses from the config).",
                          no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(cluster_app, name="cluster")
profile_app = typer.Typer(help="Taste profiles: what the factory thinks a user likes, and the user's edits of it.",
                          no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(profile_app, name="profile")
app.command("faults")(faults_command)
console = Console(stderr=True)
ConfigOption = Annotated[Path | None, typer.Option("--config", "-c",
                                                   help="TOML config (default: $FACTORY_CONFIG or ./factory.toml).")]


def _config(path: Path | None) -> FactoryConfig:
    configure_logging()
    quiet_third_parties()
    return load_config(path)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def _spinner(ds: str, step: str):
    return console.status(f"{ds} [bold]{step}[/] running...")


def _print_step(result) -> None:
    shown = ", ".join(f"{k}={v:g}" for k, v in list(result.metrics.items())[:6])
    console.print(f"[green]✓[/] {result.ds} [bold]{result.step:<13}[/] {result.wall_seconds:6.1f}s  {shown}", highlight=False)
    for note in result.notes:
        console.print(f"    {note}", highlight=False, style="dim")


@app.command()
def generate(
    config: ConfigOption = None,
    days: Annotated[int | None, typer.Option(help="Days to generate (default: generator.days).")] = None,
    users: Annotated[int | None, typer.Option(help="Initial users (default: generator.users).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: generator.seed).")] = None,
) -> None:
    """Write seeded synthetic catalog and listening-log drops into the landing folder."""
    import dataclasses

    from jobs.synthetic.generate import generate_drops

    cfg = _config(config)
    overrides = {k: v for k, v in {"days": days, "users": users, "seed": seed}.items() if v is not None}
    gen = dataclasses.replace(cfg.generator, **overrides)
    summary = generate_drops(gen, Path(cfg.landing_uri), progress=lambda line: console.print(line, highlight=False))
    total = sum(d.raw_lines for d in summary.days)
    console.print(f"wrote {len(summary.days)} days, {total} raw event lines to {cfg.landing_uri}", highlight=False)


@app.command()
def run(
    ds: Annotated[str, typer.Option("--ds", help="Logical date YYYY-MM-DD.")],
    step: Annotated[list[str] | None, typer.Option("--step",
                                                   help=f"Only these steps (repeatable): {', '.join(STEP_NAMES)}.")] = None,
    force_retrain: Annotated[bool, typer.Option(help=FORCE_RETRAIN.help)] = False,
    force_codebook_rebuild: Annotated[bool, typer.Option(help=FORCE_CODEBOOK_REBUILD.help)] = False,
    config: ConfigOption = None,
) -> None:
    """Run the day's pipeline (all steps, or --step NAME) for one ds, without Airflow."""
    cfg = _config(config)
    parse_ds(ds)
    unknown = [s for s in step or [] if s not in STEP_NAMES]
    if unknown:
        _fail(f"Unknown step(s) {', '.join(unknown)}; steps are: {', '.join(STEP_NAMES)}.")
    ordered = [s for s in STEP_NAMES if s in step] if step else None
    from jobs.pipeline import run_day  # torch, Spark, Ray: only once the arguments are known to be good

    run_day(ds, cfg, steps=ordered, on_step=_print_step, while_running=_spinner, force_retrain=force_retrain,
            force_codebook_rebuild=force_codebook_rebuild)


@app.command()
def backfill(
    from_ds: Annotated[str, typer.Option("--from", help="First ds (YYYY-MM-DD).")],
    to_ds: Annotated[str, typer.Option("--to", help="Last ds, inclusive.")],
    config: ConfigOption = None,
) -> None:
    """Run every day of a range in order, without Airflow (Airflow: `factory airflow backfill create ...`)."""
    from jobs.days import day_range

    cfg = _config(config)
    day_range(from_ds, to_ds)  # a bad range fails before the heavy imports
    from jobs.pipeline import backfill as run_backfill

    run_backfill(from_ds, to_ds, cfg, on_step=_print_step, while_running=_spinner)


@app.command()
def show(
    ds: Annotated[str | None, typer.Option("--ds", help="Day to show (default: the latest published day).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    config: ConfigOption = None,
) -> None:
    """Every table with its Delta version and rows, the day's MLflow runs, metrics and published pointer."""
    from jobs.serving.show import day_report

    cfg = _config(config)
    if ds:
        parse_ds(ds)
    report = day_report(cfg, ds)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    out = Console()
    tables = Table(title=f"Tables (lake {report['lake']})")
    for column in ("table", "version", "rows", f"rows ds={report['ds']}"):
        tables.add_column(column)
    for t in report["tables"]:
        tables.add_row(t["table"], str(t["version"]), str(t["rows"]), "" if t["rows_for_ds"] is None else str(t["rows_for_ds"]))
    out.print(tables)
    day = report["day"]
    if day:
        out.print(f"day ds={report['ds']}: {day['status']} ({day['outcome']}) in {day['seconds']:.0f}s, "
                  f"MLflow run {day['run_id']}", highlight=False)
        out.print(day["description"].splitlines()[0] if day["description"] else "", highlight=False)
    steps = Table(title=f"MLflow step runs for ds={report['ds']} ({report['mlflow_tracking_uri']})")
    for column in ("step", "run id", "status", "wall s"):
        steps.add_column(column)
    for s in report["steps"]:
        steps.add_row(s["step"], s["run_id"], s["status"], f"{s['metrics'].get('wall_seconds', 0):.1f}")
    out.print(steps)
    for m in report["eval_metrics"]:
        out.print(f"{m['method']:>10} {m['metric']:<20} {m['value']:.4f}  (embeddings of {m['embeddings_ds']})")
    out.print(f"semantic IDs: {report['semantic_ids']}")
    out.print(f"published: {report['published']}")


@app.command()
def tables() -> None:
    """Print every table's name, key, partitioning, owner step and schema as Markdown."""
    from jobs.lakehouse.tables import tables_markdown

    print(tables_markdown())


@lake_app.command("vacuum")
def lake_vacuum(
    table: Annotated[list[str] | None, typer.Option("--table", help="Table name (repeatable; default: every table).")] = None,
    retention_hours: Annotated[int, typer.Option(help="Keep unreferenced files younger than this: a running "
                                                      "writer's, or an old version's that readers time-travel to.")] = 168,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files, delete nothing.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete files no table version references any more: partitions replaced since, and the files of
    writers killed before their commit (never visible to readers)."""
    from jobs.lakehouse import commit
    from jobs.lakehouse.tables import ALL_TABLES, TABLES_BY_NAME

    cfg = _config(config)
    unknown = sorted(set(table or ()) - set(TABLES_BY_NAME))
    if unknown:
        _fail(f"no table named {', '.join(unknown)}; tables: {', '.join(TABLES_BY_NAME)}")
    for spec in [TABLES_BY_NAME[name] for name in table] if table else ALL_TABLES:
        files = commit.vacuum(cfg, spec, retention_hours, dry_run)
        print(f"{spec.name}: {len(files)} file(s) {'to delete' if dry_run else 'deleted'}")
        for path in files:
            print(f"  {path}")


@app.command()
def neighbours(
    user_id: Annotated[str, typer.Argument(help="A user id, e.g. u_000042.")],
    ds: Annotated[str | None, typer.Option("--ds", help="Day (default: the latest published day).")] = None,
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    config: ConfigOption = None,
) -> None:
    """A user's nearest items on the shared sphere (the day's faiss index), with titles and SIDs."""
    from jobs.serving.neighbours import nearest_items

    cfg = _config(config)
    if ds:
        parse_ds(ds)
    out = Table(title=f"nearest items for {user_id}")
    for column in ("rank", "score", "item", "type", "genre", "title", "SID"):
        out.add_column(column)
    for row in nearest_items(cfg, user_id, ds, k):
        out.add_row(str(row["rank"]), f"{row['score']:.3f}", row["item_id"], row.get("item_type", ""),
                    row.get("genre", ""), row.get("title", ""), row.get("sid") or "")
    Console().print(out)


@app.command()
def recommend(
    user_id: Annotated[str, typer.Argument(help="A user id, e.g. u_000042.")],
    ds: Annotated[str | None, typer.Option("--ds", help="Day (default: the day of the latest generative model).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="How many items to keep after re-ranking.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    model_from: Annotated[str, typer.Option("--model-from", help="auto (this host's state folder, else MLflow), local, "
                                                                  "or mlflow (the generative run's logged model).")] = "auto",
    config: ConfigOption = None,
) -> None:
    """Generated SIDs for a user -> items -> why each was kept or dropped (needs generative.enabled)."""
    from jobs.serving.recommend import recommend as ask
    from jobs.steps.generative_data import MODEL_SOURCES

    cfg = _config(config)
    if ds:
        parse_ds(ds)
    if k < 1:
        _fail(f"--k must be >= 1, got {k}.")
    if model_from not in MODEL_SOURCES:
        _fail(f"--model-from must be one of {', '.join(MODEL_SOURCES)}, got {model_from!r}.")
    answer = ask(cfg, user_id, ds, k, model_from)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    prompt = " ".join(answer["prompt"]) or "-"
    out = Table(title=f"{user_id} on {answer['ds']}: generated SIDs -> items -> re-ranking (prompt {prompt}, "
                      f"soft token {'on' if answer['soft_token'] else 'off'})")
    for column in ("SID", "item", "type", "title", "log p", "kept", "why"):
        out.add_column(column)
    for d in answer["decisions"]:
        out.add_row(d["sid"], d["item_id"], d["type"], d["title"], f"{d['score']:.2f}", "yes" if d["kept"] else "no", d["reason"])
    Console().print(out)


# --- factory sid: lookups in one codebook version (jobs/steps/sid_lookup.py) ---------------------

VersionOption = Annotated[int | None, typer.Option("--version", help="Codebook version (default: the latest).")]
PolicyOption = Annotated[str | None, typer.Option(
    "--policy", help="Collision policy: dedup or popular (default: sid.collision_policy).")]
DsOption = Annotated[str | None, typer.Option(
    "--ds", help="Day whose plays resolve bare codes under the popular policy (default: latest).")]


@sid_app.command("lookup")
def sid_lookup(
    key: Annotated[str, typer.Argument(help="An item id (e.g. trk_000123), a SID (12-201-7-0) or a bare code (12-201-7).")],
    version: VersionOption = None, policy: PolicyOption = None, ds: DsOption = None, config: ConfigOption = None,
) -> None:
    """Item -> SID, or SID (or bare code) -> item, for a codebook version; prints one JSON object."""
    from jobs.steps.sid_lookup import load_lookup, parse_sid

    lookup = load_lookup(load_config(config), version, policy, ds)
    is_sid = key.replace("-", "").isdigit()
    item = lookup.item(key) if is_sid else key
    sid = lookup.sid(item)
    out = {"codebook_version": lookup.codebook_version, "item_id": item, "sid": sid, "policy": lookup.policy}
    if is_sid and len(parse_sid(key)) == lookup.levels:
        out.update(code=key, items_sharing_code=lookup.items_under(key), resolved_by_plays_of=lookup.ds)
    print(json.dumps(out))


@sid_app.command("prefix")
def sid_prefix(
    prefix: Annotated[str, typer.Argument(help="Tokens joined by dashes, e.g. 12-201 ('' for the root).")],
    limit: Annotated[int, typer.Option(help="Show at most this many items.")] = 20,
    version: VersionOption = None, policy: PolicyOption = None, ds: DsOption = None, config: ConfigOption = None,
) -> None:
    """Valid next tokens after PREFIX (what a constrained decoder may generate) and the items under it."""
    from jobs.steps.sid_lookup import load_lookup, parse_sid

    lookup = load_lookup(load_config(config), version, policy, ds)
    tokens = parse_sid(prefix)
    items = lookup.trie.items(tokens)
    if not items and tokens:
        raise FactoryError(f"No SID starts with {prefix} in codebook version {lookup.codebook_version}.")
    print(json.dumps({
        "codebook_version": lookup.codebook_version, "policy": lookup.policy, "prefix": prefix,
        "depth": lookup.trie.depth, "next_tokens": lookup.trie.next_tokens(tokens),
        "complete_item": lookup.trie.item(tokens), "items": len(items), "first_items": items[:limit],
    }))


# --- factory profile: a readable, editable taste profile (jobs/steps/profile.py, profile_edits.py) --

FacetsOption = Annotated[list[str] | None, typer.Option(metavar="KIND:NAME",
                                                        help="Repeatable; kinds: genre, artist, show, item.")]


@profile_app.command("show")
def profile_show(
    user_id: Annotated[str, typer.Argument(help="A user id, e.g. u_000001.")],
    ds: Annotated[str | None, typer.Option("--ds", help="Day of the profile (default: the latest built).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config: ConfigOption = None,
) -> None:
    """The user's taste profile of a day: the text, its facets and regions, and the user's edits."""
    from jobs.serving.taste_profile import show_profile

    cfg = _config(config)
    if ds:
        parse_ds(ds)
    profile = show_profile(cfg, user_id, ds)
    if as_json:
        print(json.dumps(profile, indent=2, default=str))
        return
    out = Console()
    out.print(f"[bold]{user_id}[/] on {profile['ds']} (model {profile['model_version'] or '-'}"
              f"{', vector steered by edits' if profile['steered'] else ''})", highlight=False)
    out.print(profile["text"], highlight=False)
    facets = Table(title="facets (share of the window's plays) and nearest catalog regions (cosine)")
    for column in ("kind", "name", "weight"):
        facets.add_column(column)
    for facet in [*profile["facets"], *profile["regions"]]:
        facets.add_row(facet["kind"], facet["name"], f"{facet['weight']:.2f}")
    out.print(facets)
    if profile["edits"]:
        edits = Table(title="edits")
        for column in ("edit", "status", "source", "edited at"):
            edits.add_column(column)
        for edit in profile["edits"]:
            edits.add_row(edit["edit"], edit["status"], edit["source"], str(edit["edited_at"])[:19])
        out.print(edits)


@profile_app.command("edit")
def profile_edit(
    user_id: Annotated[str, typer.Argument(help="A user id, e.g. u_000001.")],
    more: FacetsOption = None, less: FacetsOption = None, forget: FacetsOption = None,
    withdraw: FacetsOption = None,
    from_ds: Annotated[str | None, typer.Option("--from-ds", help="First day the edits apply (default: the next run).")] = None,
    config: ConfigOption = None,
) -> None:
    """Record edits (--more/--less/--forget KIND:NAME) or withdraw them (--withdraw KIND:NAME); the next
    daily run applies them. Repeating an edit changes nothing."""
    from jobs.serving.taste_profile import check_user
    from jobs.steps.profile_edits import catalog_names, parse_facet, record_edit, resolve_name, withdraw_edit

    cfg = _config(config)
    if from_ds:
        parse_ds(from_ds)
    asked = [(action, parse_facet(text)) for action, texts in
             (("more", more), ("less", less), ("forget", forget), ("withdraw", withdraw)) for text in texts or []]
    if not asked:
        _fail("Nothing to do; pass --more, --less, --forget or --withdraw KIND:NAME.")
    check_user(cfg, user_id)
    for action, (kind, name) in asked:
        if action == "withdraw":
            changed = withdraw_edit(cfg, user_id, kind, name, from_ds)
        else:
            name = resolve_name(kind, name, catalog_names(cfg, kind))  # the catalog's spelling, as recorded
            changed = record_edit(cfg, user_id, action, kind, name, from_ds, source="cli")
        done = f"withdrew {kind}:{name}" if action == "withdraw" else f"recorded {action} {kind}:{name}"
        console.print(done + ("" if changed else " (unchanged: it already was)"), highlight=False)


@profile_app.command("withdraw")
def profile_withdraw(
    user_id: Annotated[str, typer.Argument(help="A user id, e.g. u_000001.")],
    facet: Annotated[list[str], typer.Argument(metavar="KIND:NAME", help="The edited facets to withdraw.")],
    from_ds: Annotated[str | None, typer.Option("--from-ds", help="First day without the edit (default: the next run).")] = None,
    config: ConfigOption = None,
) -> None:
    """Withdraw edits (the same as `factory profile edit USER --withdraw KIND:NAME`)."""
    profile_edit(user_id, withdraw=facet, from_ds=from_ds, config=config)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def airflow(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run any Airflow command with the factory's local Airflow (SQLite, LocalExecutor, dags/).

    Examples: `factory airflow dags test daily_embeddings 2026-01-01`;
    `factory airflow standalone` (scheduler + dag-processor + api-server on 127.0.0.1:8080), then
    `factory airflow backfill create --dag-id daily_embeddings --from-date 2026-01-01 --to-date 2026-01-04`.
    """
    from jobs.runtime.airflow_env import airflow_command

    cfg = _config(config)
    completed = airflow_command(cfg, list(ctx.args), check=False)
    raise typer.Exit(completed.returncode)


@cluster_app.command("up")
def cluster_up(config: ConfigOption = None) -> None:
    """Start a Spark master + worker and a Ray head + second node on 127.0.0.1; wait until they are ready."""
    from jobs.runtime import local_cluster

    state = local_cluster.up(_config(config), progress=lambda line: console.print(line, highlight=False))
    print(json.dumps(state))


@cluster_app.command("down")
def cluster_down(config: ConfigOption = None) -> None:
    """Stop exactly the processes `factory cluster up` started (pids under <state_dir>/cluster)."""
    from jobs.runtime import local_cluster

    stopped = local_cluster.down(_config(config))
    console.print(f"stopped {', '.join(stopped)}" if stopped else "no local cluster was running", highlight=False)


@cluster_app.command("status")
def cluster_status(config: ConfigOption = None) -> None:
    """The local cluster's processes, the Spark master's alive workers and Ray's alive nodes (JSON)."""
    from jobs.runtime import local_cluster

    print(json.dumps(local_cluster.status(_config(config))))


@app.command("mlflow-ui")
def mlflow_ui(config: ConfigOption = None, port: int = 5000) -> None:
    """Open the MLflow UI over the local store on http://127.0.0.1:PORT."""
    cfg = _config(config)
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {cfg.mlflow_tracking_uri}); Ctrl-C stops it.")
    mlflow = str(Path(sys.executable).parent / "mlflow")
    raise typer.Exit(subprocess.call([mlflow, "ui", "--backend-store-uri", cfg.mlflow_tracking_uri,
                                      "--default-artifact-root", cfg.mlflow_artifact_uri, "--host",
                                      "127.0.0.1", "--port", str(port)]))


@app.command()
def demo(
    config: ConfigOption = None,
    use_airflow: Annotated[bool, typer.Option("--airflow/--no-airflow", help="Run each day with `airflow dags test`.")] = True,
) -> None:
    """Generate data, run every generated day through the pipeline, and print where to look."""
    from jobs.synthetic.demo import run_demo

    run_demo(_config(config), use_airflow, console)


def main(argv: list[str] | None = None) -> None:
    """Entry point (argv: the arguments after `factory`, default sys.argv): usage errors are click's;
    errors a user can fix print one line and exit 1."""
    quiet_third_parties()
    try:
        app(args=argv, prog_name="factory")
    except (FactoryError, ConfigError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
