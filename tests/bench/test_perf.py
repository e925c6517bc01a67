import json

from jobs.bench import perf as bench_perf
from jobs.bench.perf import SMOKE, run


def test_rerunning_one_section_keeps_the_others_from_the_earlier_run(tmp_path, monkeypatch):
    calls = []

    def section(value):
        def measure(sizes, cfg, state, progress):
            calls.append(value)
            return {"value": value}
        return measure

    monkeypatch.setattr(bench_perf, "SECTIONS", {"first": section(1), "second": section(2)})
    out = tmp_path / "perf.json"
    run(["first", "second"], SMOKE, None, tmp_path, "all", out, progress=lambda line: None)
    monkeypatch.setattr(bench_perf, "SECTIONS", {"first": section(10), "second": section(20)})
    result = run(["second"], SMOKE, None, tmp_path, "--only second", out, progress=lambda line: None)
    assert calls == [1, 2, 20]
    assert result["sections"] == {"first": {"value": 1}, "second": {"value": 20}}
    assert result["section_runs"]["first"]["command"] == "all"
    assert json.loads(out.read_text())["sections"]["second"] == {"value": 20}


def test_an_earlier_run_of_other_sizes_is_not_mixed_in(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_perf, "SECTIONS", {"first": lambda *a: {"v": 1}, "second": lambda *a: {"v": 2}})
    out = tmp_path / "perf.json"
    run(["first"], bench_perf.FULL, None, tmp_path, "full", out, progress=lambda line: None)
    result = run(["second"], SMOKE, None, tmp_path, "smoke", out, progress=lambda line: None)
    assert list(result["sections"]) == ["second"]
