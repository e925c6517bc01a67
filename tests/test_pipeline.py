"""End to end on a tiny generated world: Airflow's `dags test` runs day 1, the CLI's pipeline runs
day 2, then day 2 is rerun. Real Spark, Ray Train, Ray Data, MLflow (SQLite), delta-rs and faiss.

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
from jobs.lakehouse.tables import ALL_TABLES, EVENTS, ITEM_TOKENS, ITEMS, PUBLISH, QUARANTINE
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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    os.environ["FACTORY__PATHS__STATE_DIR"] = str(state)
    cfg = load_config(overrides=TINY_WORLD)
    summary = generate_drops(cfg.generator, Path(cfg.landing_uri))
    day1, day2 = generated_days(cfg.generator)
    env = {**os.environ, **env_overrides(TINY_WORLD)}
    airflow = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "airflow", "dags", "test", "daily_embeddings", day1],
        env=env, capture_output=True, text=True, cwd=REPO,
    )
    if airflow.returncode != 0:  # day 2 builds on day 1: stop here with Airflow's own words
        pytest.fail(f"airflow dags test failed:\n{airflow.stdout[-4000:]}\n{airflow.stderr[-4000:]}")
    first_run = run_day(day2, cfg)
    before = table_digests(cfg)
    rerun = run_day(day2, cfg)
    yield {"cfg": cfg, "summary": summary, "days": (day1, day2), "airflow": airflow,
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
    for day in world["summary"].days:
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
    assert all(t["version"] is not None and t["rows"] > 0 for t in by_name.values())
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
    for step in ("train", "semantic_ids", "embed"):
        pipeline.run_step(step, "2026-01-02", None, force_retrain=True, force_codebook_rebuild=False)
    assert calls == {"train": {"force": True}, "semantic_ids": {"force_refit": False}, "embed": {}}
    with pytest.raises(TypeError, match="force_everything"):
        pipeline.run_step("train", "2026-01-02", None, force_everything=True)
