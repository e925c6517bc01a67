"""End to end on a tiny generated world: Airflow's `dags test` runs day 1, the CLI's pipeline runs
day 2, then day 2 is rerun; day 3 runs with a champion that is not due for retraining, so it is an
incremental day on the real Ray path (unchanged users carried forward, the others inferred). Real
Spark, Ray Train, Ray Data, MLflow (SQLite), delta-rs and faiss.

One module-scoped world keeps the suite fast: the expensive parts (JVM, Ray, MiniLM) start once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.config import env_overrides, load_config
from jobs.lakehouse import delta
from jobs.lakehouse.tables import (
    ALL_TABLES,
    EVENTS,
    ITEM_TOKENS,
    ITEMS,
    PUBLISH,
    QUARANTINE,
    USER_EMBEDDINGS,
    USER_SEQUENCES,
)
from jobs.pipeline import run_day
from jobs.serving.show import day_report
from jobs.synthetic.generate import generate_drops, generated_days
from jobs.synthetic.worlds import TINY_WORLD
from tests import REPO

# Columns that say when and at which table versions a day was published: a rerun writes new
# (identical) table versions and publishes again, so these two legitimately change.
PUBLISH_BOOKKEEPING = ("table_versions", "published_at")
# The generator's defect kinds, named as ingest names the rule each one breaks.
REASON_OF_DEFECT = {"missing_user_id": "missing_id", "negative_duration": "invalid_duration"}
WORLD = {**TINY_WORLD, "generator.days": "3"}  # day 3: the incremental day (fixture `incremental`)


@pytest.fixture(scope="module")
def incremental(world):
    """Day 3 with retraining not due (train.retrain_every_days=30): day 2's champion keeps serving, so
    embed carries unchanged users forward from day 2 and infers the others with Ray Data."""
    cfg = load_config(overrides={**WORLD, "train.retrain_every_days": "30"})
    day2, day3 = world["days"][1:]
    results = {r.step: r for r in run_day(day3, cfg, run_key="incremental_day3")}
    return {"cfg": cfg, "results": results, "day2": day2, "day3": day3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    os.environ["FACTORY__PATHS__STATE_DIR"] = str(state)
    cfg = load_config(overrides=WORLD)
    summary = generate_drops(cfg.generator, Path(cfg.landing_uri))
    day1, day2, day3 = generated_days(cfg.generator)
    env = {**os.environ, **env_overrides(WORLD)}
    airflow = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "airflow", "dags", "test", "daily_embeddings", day1],
        env=env, capture_output=True, text=True, cwd=REPO,
    )
    if airflow.returncode != 0:  # day 2 builds on day 1: stop here with Airflow's own words
        pytest.fail(f"airflow dags test failed:\n{airflow.stdout[-4000:]}\n{airflow.stderr[-4000:]}")
    first_run = run_day(day2, cfg)
    before = table_digests(cfg)
    rerun = run_day(day2, cfg)
    yield {"cfg": cfg, "summary": summary, "days": (day1, day2, day3), "airflow": airflow,
           "first_run": first_run, "rerun": rerun, "before": before, "after": table_digests(cfg)}
    os.environ.pop("FACTORY__PATHS__STATE_DIR", None)


def table_digests(cfg) -> dict[str, str]:
    """A content hash per table: rows sorted, so file layout and row order do not matter."""
    digests = {}
    for spec in ALL_TABLES:
        table = delta.read(cfg, spec)
        if spec is PUBLISH:
            table = table.drop_columns(list(PUBLISH_BOOKKEEPING))
        rows = sorted(json.dumps(row, sort_keys=True, default=repr) for row in table.to_pylist())
        digests[spec.name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return digests


def test_airflow_dags_test_runs_the_day_successfully(world):
    assert world["airflow"].returncode == 0, world["airflow"].stdout[-3000:] + world["airflow"].stderr[-3000:]
    assert "state=success" in world["airflow"].stdout + world["airflow"].stderr
    day1 = world["days"][0]
    assert delta.read(world["cfg"], PUBLISH, where={"ds": day1}).num_rows == 1


def test_rerun_of_a_day_leaves_every_table_unchanged(world):
    assert world["before"] == world["after"]
    assert all(delta.current_version(world["cfg"], spec) is not None for spec in ALL_TABLES)


def test_every_raw_row_is_clean_or_quarantined_with_the_injected_reason(world):
    cfg = world["cfg"]
    for day in world["summary"].days[:2]:  # days 1 and 2 (day 3 is ingested by the `incremental` fixture)
        clean = delta.read(cfg, EVENTS, where={"ds": day.ds}).num_rows
        quarantined = delta.read(cfg, QUARANTINE, where={"ds": day.ds, "source": "events"})
        assert clean + quarantined.num_rows == day.raw_lines
        reasons = pa.compute.value_counts(quarantined.column("reason")).to_pylist()
        counted = {r["values"]: r["counts"] for r in reasons}
        expected = {REASON_OF_DEFECT.get(kind, kind): n for kind, n in day.defects.items() if n}
        assert counted == expected


def test_quarantine_keeps_the_raw_bytes_of_non_utf8_lines(world):
    bad = delta.read(world["cfg"], QUARANTINE, where={"ds": world["days"][0], "source": "events"})
    rows = [r for r in bad.to_pylist() if r["reason"] == "non_utf8"]
    assert rows and all(isinstance(r["raw_bytes"], bytes) for r in rows)
    with pytest.raises(UnicodeDecodeError):
        rows[0]["raw_bytes"].decode("utf-8")


def test_every_item_has_a_unique_semantic_id_of_four_or_more_tokens(world):
    tokens = delta.read(world["cfg"], ITEM_TOKENS)
    latest = pa.compute.max(tokens.column("codebook_version")).as_py()
    current = tokens.filter(pa.compute.equal(tokens.column("codebook_version"), latest))
    items = delta.read(world["cfg"], ITEMS, columns=["item_id"])
    assert set(current.column("item_id").to_pylist()) == set(items.column("item_id").to_pylist())
    assert min(len(t) for t in current.column("tokens").to_pylist()) >= 4
    assert len(set(current.column("sid").to_pylist())) == current.num_rows


def test_rerun_reuses_the_model_trained_for_the_day(world):
    first = {r.step: r for r in world["first_run"]}
    again = {r.step: r for r in world["rerun"]}
    assert first["train"].metrics["trained"] == 1
    assert again["train"].metrics["trained"] == 0
    assert again["train"].metrics["reused_version"] == first["train"].metrics["model_version"]


def test_show_reports_every_table_with_a_version_and_the_day_runs(world):
    report = day_report(world["cfg"], world["days"][1])
    by_name = {t["table"]: t for t in report["tables"]}
    assert set(by_name) == {spec.name for spec in ALL_TABLES}
    # profile_edits is written by people (`factory profile edit`): the profile step creates it, empty here.
    assert all(t["version"] is not None and (t["rows"] > 0 or t["table"] == "profile_edits") for t in by_name.values())
    assert {s["step"] for s in report["steps"]} >= {"ingest", "features", "train", "embed", "publish"}
    assert all(s["parent_run_id"] for s in report["steps"])
    metrics = {(m["method"], m["metric"]) for m in report["eval_metrics"]}
    assert ("encoder", "hr_at_10") in metrics and ("popularity", "hr_at_10") in metrics


def test_champion_alias_points_at_a_registered_version(world):
    from jobs.tracking.registry import CHAMPION, load_alias

    champion = load_alias(world["cfg"], CHAMPION)
    assert champion is not None and champion.trained_ds in world["days"]


def test_run_step_passes_each_step_only_the_flags_it_takes(monkeypatch):
    from jobs import pipeline

    calls = {}

    def fake_step(step):
        return lambda ds, cfg, run_key, **kwargs: calls.setdefault(step, kwargs)

    monkeypatch.setattr(pipeline, "preflight", lambda cfg, step, ds: None)
    monkeypatch.setattr(pipeline, "step_function", fake_step)
    for name in ("step_started", "step_succeeded", "step_failed", "invocation_ended"):  # no MLflow here
        monkeypatch.setattr(pipeline.day_runs, name, lambda *args, **kwargs: None)
    for step in ("train", "semantic_ids", "embed"):
        pipeline.run_step(step, "2026-01-02", None, force_retrain=True, force_codebook_rebuild=False)
    assert calls == {"train": {"force": True}, "semantic_ids": {"force_refit": False}, "embed": {}}
    with pytest.raises(TypeError, match="force_everything"):
        pipeline.run_step("train", "2026-01-02", None, force_everything=True)


def test_an_incremental_day_reuses_the_champion_and_carries_unchanged_users_forward(incremental):
    from jobs.steps.embed import unchanged_inputs
    from jobs.steps.user_predictor import INPUT_COLUMNS

    cfg, results, day2, day3 = (incremental[k] for k in ("cfg", "results", "day2", "day3"))
    train, embed = results["train"], results["embed"]
    assert train.metrics["trained"] == 0 and embed.params["plan"].startswith("incremental")
    today = delta.read(cfg, USER_SEQUENCES, where={"ds": day3}, columns=INPUT_COLUMNS).sort_by("user_id")
    before = delta.read(cfg, USER_SEQUENCES, where={"ds": day2}, columns=INPUT_COLUMNS)
    carried = set(today.filter(pa.array(unchanged_inputs(today, before))).column("user_id").to_pylist())
    inferred, forward = embed.metrics["users_inferred"], embed.metrics["users_carried_forward"]
    assert forward == len(carried) > 0 and inferred > 0 and inferred + forward == today.num_rows
    vectors = {ds: dict(zip(*(delta.read(cfg, USER_EMBEDDINGS, where={"ds": ds}).column(c).to_pylist()
                             for c in ("user_id", "embedding")))) for ds in (day2, day3)}
    assert {u: vectors[day3][u] for u in carried} == {u: vectors[day2][u] for u in carried}
    assert any(vectors[day3][u] != vectors[day2].get(u) for u in set(vectors[day3]) - carried)


def test_the_day_parent_run_says_how_many_users_were_inferred_and_carried_forward(incremental):
    from jobs.tracking.day_runs import day_outcome

    day = day_outcome(incremental["cfg"], incremental["day3"])
    embed = incremental["results"]["embed"].metrics
    assert day["status"] == "FINISHED" and day["outcome"] == "published"
    assert day["metrics"]["embed.users_inferred"] == embed["users_inferred"]
    assert day["metrics"]["embed.users_carried_forward"] == embed["users_carried_forward"]
    assert day["metrics"]["train.reused_version"] == float(day["champion_version"])
    assert "evaluate.encoder.hr_at_10" in day["metrics"] and "evaluate.popularity.hr_at_10" in day["metrics"]
