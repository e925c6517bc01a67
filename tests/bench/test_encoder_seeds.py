"""`factory bench encoder-seeds` (jobs/bench/encoder_seeds.py): runs of one configuration over seeds,
combined into mean ± sd, with a known dataset's bars judged on the mean."""

from __future__ import annotations

import json
import statistics

import pytest

from jobs.bench import encoder as bench_encoder
from jobs.bench import encoder_seeds
from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.steps import encoder_fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def tiny_runs(tmp_path, monkeypatch, write_sasrec):
    """run(seed, **settings) -> the result file of a tiny `factory bench encoder` run."""
    write_sasrec(tmp_path / "tiny.txt", users=60)
    monkeypatch.setenv("FACTORY__PATHS__STATE_DIR", str(tmp_path / "state"))

    def run(seed: int, **settings):
        out = tmp_path / f"run_{seed}_{len(settings)}.json"
        bench_encoder.run_benchmark(tmp_path / "tiny.txt", minutes=0.01, seed=seed, out=out, marks=(0.005,),
                                    d_model=16, n_layers=1, max_len=12, batch_size=16, cfg=load_config(),
                                    log_to_mlflow=False, trainer=encoder_fit.fit_in_process, **settings)
        return out

    return run


def test_seeds_are_combined_into_mean_and_sample_sd_per_protocol_and_clock_mark(tiny_runs):
    paths = [tiny_runs(0), tiny_runs(1), tiny_runs(2)]
    result = encoder_seeds.combine(paths, "test")
    runs = [json.loads(p.read_text()) for p in paths]
    for protocol in ("unfiltered", "seen_filtered"):
        values = [r["results"]["encoder"]["test"][protocol]["ndcg10"] for r in runs]
        assert result["test"][protocol]["ndcg10"]["mean"] == pytest.approx(statistics.fmean(values))
        assert result["test"][protocol]["ndcg10"]["sd"] == pytest.approx(statistics.stdev(values))
    assert [p["minute"] for p in result["curve"]] == [0.005, 0.01]
    assert [r["seed"] for r in result["runs"]] == [0, 1, 2]
    rows = encoder_seeds.summary_rows(result)
    assert rows[0]["figure"] == "encoder test HR@10 (unfiltered), 0.01 min of training clock (mean over seeds)"
    assert all(row["met"] is None for row in rows)  # an unknown dataset has no bars
    assert "mean ± sd" in encoder_seeds.render_markdown(result)


def test_a_known_datasets_bars_are_judged_on_the_mean_over_seeds():
    beauty = bench_encoder.known_facts("3033c84a07a0e9fb2626aa640919393edb983a63acfd129481c199bf07c9e537")
    stats = {m: {"mean": 0.04, "sd": 0.001, "values": [0.039, 0.041]} for m in encoder_seeds.METRICS}
    result = {"known_dataset": beauty, "minutes": 30.0, "test": {"unfiltered": stats, "seen_filtered": stats}}
    judged = {row["figure"]: row["met"] for row in encoder_seeds.summary_rows(result) if row["met"] is not None}
    assert judged == {"encoder test HR@10 (unfiltered), 30 min of training clock (mean over seeds)": False,
                      "encoder test NDCG@10 (unfiltered), 30 min of training clock (mean over seeds)": True}


def test_runs_that_differ_in_more_than_the_seed_are_one_clear_error(tiny_runs, tmp_path):
    first = tiny_runs(0)
    with pytest.raises(FactoryError, match="differs .* in encoder_config"):
        encoder_seeds.combine([first, tiny_runs(1, dropout=0.1)])
    with pytest.raises(FactoryError, match="distinct seeds"):
        encoder_seeds.combine([first, first])
    (tmp_path / "other.json").write_text('{"benchmark": "nightly"}')
    with pytest.raises(FactoryError, match="not a result of `factory bench encoder`"):
        encoder_seeds.combine([first, tmp_path / "other.json"])
