"""`factory bench sid` (jobs/bench/sid.py) on tiny generated catalogs; never on ML-1M."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.bench import sid as bench_sid
from jobs.bench import sid_catalogs
from jobs.bench.cli import bench_app
from jobs.config import GeneratorConfig, load_config
from jobs.errors import FactoryError
from jobs.tracking import day_runs

TINY_WORLD = GeneratorConfig(users=20, genres=3, artists_per_genre=3, tracks=60, shows=3, episodes=15,
                             new_items_per_day=2, edited_items_per_day=1)


pytestmark = pytest.mark.usefixtures("fake_text_encoder")  # tests/conftest.py: no MiniLM


def write(path, text: str):
    path.write_text(text)
    return path


def test_reads_jsonl_and_csv_catalogs_with_single_and_multi_value_labels(tmp_path):
    jsonl = sid_catalogs.read_catalog(write(tmp_path / "c.jsonl", '{"id": 1, "text": "a song", "label": "rock|pop"}\n\n'
                                                               '{"id": "x", "text": "a talk", "label": ["news"]}\n'))
    assert jsonl.ids == ["1", "x"] and jsonl.labels == [("rock", "pop"), ("news",)]
    csv = sid_catalogs.read_catalog(write(tmp_path / "c.csv", "id,text\n1,first\n2,\"second, with comma\"\n"))
    assert csv.texts == ["first", "second, with comma"] and csv.labels is None


@pytest.mark.parametrize("name, body, message", [
    ("empty.jsonl", "", "holds no items"),
    ("bad.jsonl", '{"id": 1, "text": "ok"}\n{"id": 2, "text": \n', "line 2 is not JSON"),
    ("list.jsonl", '[1, 2]\n', "line 1 is not a JSON object"),
    ("notext.jsonl", '{"id": 1, "title": "no text"}\n', "line 1 lacks a non-empty id or text"),
    ("header.csv", "item,title\n1,a\n", "needs a header with columns id,text"),
    ("dupes.csv", "id,text\n1,a\n1,b\n", "repeats item ids"),
    ("catalog.parquet", "x", "unknown catalog format"),
])
def test_a_malformed_or_empty_catalog_is_a_clear_error(tmp_path, name, body, message):
    with pytest.raises(FactoryError, match=message):
        sid_catalogs.read_catalog(write(tmp_path / name, body))


def test_missing_catalog_file_is_a_clear_error(tmp_path):
    with pytest.raises(FactoryError, match="does not exist"):
        sid_catalogs.read_catalog(tmp_path / "nope.jsonl")


def movielens_folder(tmp_path, ratings: bool = True):
    folder = tmp_path / "ml"
    folder.mkdir()
    genres = ["Action", "Comedy", "Drama"]
    (folder / "movies.dat").write_bytes("".join(
        f"{i}::Film {i} caf\xe9 ({1950 + i})::{genres[i % 3]}|{genres[(i + 1) % 3]}\n" for i in range(1, 41)).encode("latin-1"))
    (folder / "item_map.csv").write_text("sasrec_item_id,movie_id\n" + "".join(f"{n + 1},{i}\n" for n,
                                                                               i in enumerate(range(2, 41, 2))))
    if ratings:
        rng = np.random.default_rng(0)
        (folder / "ml-1m.txt").write_text("".join(f"{u} {rng.integers(1, 21)}\n" for u in range(1, 30) for _ in range(8)))
    return folder


def test_movielens_adapter_keeps_mapped_movies_with_titles_as_text_and_genres_as_labels(tmp_path):
    catalog = sid_catalogs.read_movielens(movielens_folder(tmp_path))
    assert catalog.ids[:2] == ["2", "4"] and len(catalog.ids) == 20
    assert catalog.texts[0] == "Film 2 caf\xe9 (1952)" and catalog.labels[0] == ("Drama", "Action")
    assert catalog.collaborative.shape[0] == 20 and "ml-1m.txt" in catalog.collaborative_source
    with pytest.raises(FactoryError, match="lacks movies.dat"):
        sid_catalogs.read_movielens(tmp_path)


def test_benchmark_reports_quality_fusion_and_speed_and_writes_json(tmp_path):
    catalog = sid_catalogs.read_movielens(movielens_folder(tmp_path))
    out = tmp_path / "sid.json"
    result = bench_sid.run_benchmark(
        catalog, levels=[2, 3], codes=4, seeds=[0, 1], stability_days=0, speed_sizes=[500],
        cfg=load_config(overrides={"paths.state_dir": str(tmp_path)}), out=out, log_to_mlflow=False, command="test")
    assert json.loads(out.read_text())["command"] == "test"
    assert set(result["quality"]) == {"2x4", "3x4"}
    summary = result["quality"]["2x4"]["summary"]
    assert {"collision_rate_before_dedup", "largest_bucket", "level1_perplexity", "purity_level2_lift"} <= set(summary)
    assert set(result["quality"]["2x4"]["near_duplicates"]) == {"0.95", "0.9"}
    assert result["checks"]["zero_full_sid_duplicates"]
    assert set(result["fusion"]["weights"]) == {"0.25", "0.5", "1.0 (collaborative only)"}
    assert result["build_speed"][0]["items"] == 500
    assert "collisions before dedup" in bench_sid.render_markdown(result)


def test_stability_runs_the_steps_daily_and_replays_the_refit(tmp_path, mlflow_store):
    stable = bench_sid.stability(TINY_WORLD, days=2, levels=2, codes=4, stickiness=1.0, folder=tmp_path, tracking=mlflow_store)
    assert [d["refit_reason"] for d in stable["daily"]] == ["no_codebook", "none", "cadence"]
    assert stable["unchanged_sid_changes_between_refits"] == 0
    assert all(d["full_sid_duplicates"] == 0 for d in stable["daily"])
    assert stable["refit"]["warm"]["equals_what_the_step_wrote"]
    assert stable["refit"]["cold"]["unchanged_sid_change_share"] >= stable["refit"]["warm"]["unchanged_sid_change_share"]
    cfg = load_config(overrides={"paths.state_dir": str(tmp_path), **mlflow_store, "mlflow.experiment": "bench_sid_stability"})
    outcomes = [day_runs.day_outcome(cfg, d["ds"]) for d in stable["daily"]]
    assert [(o["status"], o["outcome"]) for o in outcomes] == [("FINISHED", "partial")] * 3  # no parent run left RUNNING


def test_command_needs_exactly_one_catalog_and_exits_1_with_one_line(tmp_path):
    done = CliRunner().invoke(bench_app, ["sid", "--out", str(tmp_path / "x.json")])
    assert done.exit_code == 1 and "exactly one of --items PATH, --movielens DIR or --lake-ds DS" in done.output
    done = CliRunner().invoke(bench_app, ["sid", "--items", str(write(tmp_path / "e.csv", "id,text\n"))])
    assert done.exit_code == 1 and "holds no items" in done.output
