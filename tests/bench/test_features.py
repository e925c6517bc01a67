"""`factory bench features` (jobs/bench/features.py) on tiny generated events: one shared Spark session."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs.bench import features as bench_features
from jobs.bench import features_data
from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.lakehouse.tables import EVENTS

TINY = {"events": 6_000, "days": 5, "vocab_items": 300, "events_per_user": 40, "ts_step_ms": 3_600_000}  # hourly ts: ties


@pytest.fixture(scope="module")
def spark():
    from jobs.lakehouse.spark import spark_session

    return spark_session(load_config())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "events"
    return folder, features_data.generate_events(folder, seed=3, **TINY)


def test_generator_writes_the_stated_counts_in_the_events_schema(tiny):
    folder, manifest = tiny
    assert manifest["events"] == TINY["events"] and manifest["users"] == TINY["events"] // TINY["events_per_user"]
    assert [p.split("ds=")[1][:10] for p in manifest["files"]] == features_data.window_days(days=TINY["days"])
    events = pq.read_table(folder / "events")  # hive partitions: ds comes back from the folders
    assert events.num_rows == TINY["events"]
    assert set(events.schema.names) == set(EVENTS.schema.names)
    assert len(events.column("event_id").unique()) == TINY["events"]
    assert set(events.column("event_type").unique().to_pylist()) == {"play", "skip", "save"}
    assert pc.max(events.column("user_id").value_counts().field("counts")).as_py() > 3 * TINY["events_per_user"]  # skewed
    assert pq.read_table(folder / "item_vocab.parquet").num_rows == TINY["vocab_items"]


def test_generator_is_deterministic_and_reuses_its_cache(tiny, tmp_path):
    folder, manifest = tiny
    again = features_data.generate_events(tmp_path / "again", seed=3, **TINY)
    assert not again["reused"] and features_data.generate_events(folder, seed=3, **TINY)["reused"]
    for a, b in zip(manifest["files"], again["files"]):
        assert pq.read_table(a).equals(pq.read_table(b))
    other = features_data.generate_events(tmp_path / "other", seed=4, **TINY)
    assert not pq.read_table(other["files"][0]).equals(pq.read_table(manifest["files"][0]))


def test_spark_and_duckdb_build_identical_sequences(spark, tiny, tmp_path):
    folder, manifest = tiny
    vocab, ds, max_seq_len = str(folder / "item_vocab.parquet"), bench_features.END_DS, 7
    spark_run = bench_features.spark_user_sequences(spark, manifest["files"], str(folder / "events"), vocab,
                                                    str(tmp_path / "spark"), ds, max_seq_len)
    duck_run = bench_features.duckdb_user_sequences(manifest["files"], vocab, str(tmp_path / "duck.parquet"), ds, max_seq_len)
    assert spark_run["seconds"] > 0 and spark_run["jvm_peak_rss_mb"] > 0 and duck_run["seconds"] > 0
    same = bench_features.compare_outputs(str(tmp_path / "spark"), str(tmp_path / "duck.parquet"))
    assert same["identical"] and same["spark_users"] == same["duckdb_users"] > 100
    # Not vacuous: sequences are truncated to max_seq_len, ordered by time, and ties (hourly ts) exist.
    out = pq.read_table(tmp_path / "duck.parquet").to_pylist()
    assert max(len(r["item_idx"]) for r in out) == max_seq_len and any(r["events_in_window"] > max_seq_len for r in out)
    assert all(r["ts"] == sorted(r["ts"]) for r in out) and any(len(set(r["ts"])) < len(r["ts"]) for r in out)
    assert {c for r in out for c in r["event_type"]} == {1, 2}
    # A different answer is caught.
    bench_features.duckdb_user_sequences(manifest["files"], vocab, str(tmp_path / "short.parquet"), ds, max_seq_len - 1)
    assert not bench_features.compare_outputs(str(tmp_path / "spark"), str(tmp_path / "short.parquet"))["identical"]


def test_run_reports_every_size_ratio_and_growth(spark, tmp_path):
    result = bench_features.run([2_000, 1_000], repeats=1, cache=tmp_path / "cache", cfg=load_config(),
                                out=tmp_path / "features.json", log_to_mlflow=False, command="test",
                                generator_options={"days": 3, "vocab_items": 200, "events_per_user": 20})
    assert [r["events"] for r in result["sizes"]] == [1_000, 2_000]
    assert all(r["outputs"]["identical"] and r["ratio"] > 0 and r["jvm_peak_rss_mb"] > 0 for r in result["sizes"])
    assert len(result["growth"]) == 1 and set(result["checks"]) >= {"outputs_identical", "ratio_at_largest_le_4"}
    assert json.loads((tmp_path / "features.json").read_text())["sizes"][1]["users"] == 100
    assert "| 2,000 |" in bench_features.render_markdown(result)


@pytest.mark.parametrize("sizes, repeats, message", [([], 1, "--sizes"), ([0], 1, "--sizes"), ([10], 0, "--repeats")])
def test_bad_arguments_are_clear_errors(sizes, repeats, message, tmp_path):
    with pytest.raises(FactoryError, match=message):
        bench_features.run(sizes, repeats=repeats, cache=tmp_path, log_to_mlflow=False)


def test_ids_are_zero_padded_strings():
    assert features_data._ids("ev", np.array([0, 42, 12345]), 5).to_pylist() == ["ev00000", "ev00042", "ev12345"]
