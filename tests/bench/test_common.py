"""What every benchmark shares (jobs/bench/common.py): the `summary` contract of every result JSON."""

from __future__ import annotations

import json

import pytest

from jobs.bench.common import SUMMARY_KEYS, machine, summary_row, write_result
from tests import REPO

RESULTS = REPO / "benchmarks" / "results"


def assert_summary(rows: list[dict]) -> None:
    assert rows, "a result must judge at least one figure"
    for row in rows:
        assert tuple(row) == SUMMARY_KEYS
        assert row["value"] is None or (isinstance(row["value"], int | float) and not isinstance(row["value"], bool))
        assert row["met"] in (True, False, None)
        assert all(isinstance(row[k], str) for k in ("figure", "unit", "bar", "detail"))


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_committed_result_carries_a_summary_of_numeric_judged_figures(path):
    assert_summary(json.loads(path.read_text())["summary"])


def test_a_summary_value_must_be_a_number_not_a_sentence():
    with pytest.raises(TypeError, match="must be a number"):
        summary_row("inference: Ray vs loop", "15,352 vs 34,900 users/s")
    assert summary_row("x", 2, "s", "< 3", True)["value"] == 2.0


def test_the_writer_puts_the_summary_first_and_checks_its_rows(tmp_path):
    rows = [summary_row("a", 1.5, "x", "≤ 2", True, "1.5 s vs 1 s")]
    written = write_result(tmp_path / "r.json", {"benchmark": "t", "summary": "stale"}, rows)
    assert list(json.loads((tmp_path / "r.json").read_text())) == ["summary", "benchmark"] == list(written)
    with pytest.raises(ValueError, match="exactly the keys"):
        write_result(tmp_path / "r.json", {}, [{"figure": "a", "value": 1}])


def test_machine_names_cores_memory_and_versions_with_one_key_set():
    assert {"nproc", "ram_gib", "cpu", "python", "torch", "ray", "date", "load_at_start"} <= set(machine())


def test_gemm_rate_is_the_best_of_its_runs_keeps_them_all_and_restores_threads():
    import torch

    from jobs.bench.common import gemm_rate

    before = torch.get_num_threads()
    rate = gemm_rate(d=16, rows=64, threads=1, runs=3, seconds=0.02)
    assert len(rate["model_shapes_runs_gflops"]) == 3 and rate["runs"] == 3
    assert rate["model_shapes_gflops"] == max(rate["model_shapes_runs_gflops"]) > 0
    assert 0 <= rate["model_shapes_spread"] < 1 and rate["square_2048_gflops"] > 0
    assert (rate["d"], rate["ffn"], rate["rows"], rate["threads"]) == (16, 64, 64, 1)
    assert torch.get_num_threads() == before
