"""The long-lived inference pool of step embed (jobs/steps/inference_pool.py): work items cover every
row once, the actors survive between calls and reload only a changed model, and release() frees them."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.steps import inference_pool
from jobs.steps.user_predictor import UserEmbeddingPredictor
from tests.steps.test_embed import histories, model, sequences_table


def write_files(tmp_path, sizes: list[int], row_group_size: int) -> list[str]:
    paths, first = [], 0
    for n, size in enumerate(sizes):
        items, events = histories(size, seed=n)
        table = sequences_table([f"u{first + i:03d}" for i in range(size)], items, events)
        path = str(tmp_path / f"part-{n}.parquet")
        pq.write_table(table, path, row_group_size=row_group_size)
        paths.append(path)
        first += size
    return paths


def test_work_items_cover_every_row_of_every_file_once_in_whole_batches(tmp_path):
    paths = write_files(tmp_path, [0, 37, 200], row_group_size=30)
    items = inference_pool.plan_items(paths, batch_size=8, actors=2)
    covered = {(item.path, row) for item in items for row in range(item.first, item.first + item.rows)}
    assert len(covered) == sum(item.rows for item in items) == 237
    assert all(item.rows % 8 == 0 or item.first + item.rows == pq.read_metadata(item.path).num_rows for item in items)
    assert len(items) >= 8  # about four per actor, so one slow actor does not hold up the end


def test_the_pool_keeps_its_actors_reloads_only_a_new_model_and_release_frees_the_cpus(tmp_path, one_torch_thread):
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False)
    paths = write_files(tmp_path, [45, 30], row_group_size=20)
    table = ray.data.read_parquet(paths).to_arrow_refs()  # the reference input, in one table
    table = pa.concat_tables(ray.get(table)).sort_by("user_id")
    first, second = model(seed=0), model(seed=1)

    def kwargs(m):
        return {"state_dict": m.state_dict(), "encoder_config": dataclasses.asdict(m.cfg), "model_version": "3",
                "threads": 1, "tokens_per_forward": 64}

    def embedded(m, folder=None):
        out = inference_pool.embed(paths, kwargs(m), actors=2, num_cpus=0.5, num_gpus=0.0, batch_size=8,
                                   folder_uri=folder)
        out = pa.concat_tables(out)
        return out if folder else out.sort_by("user_id")

    def vectors(t):
        return np.stack(t.column("embedding").to_numpy(zero_copy_only=False))

    try:
        one = embedded(first)
        actors, loaded = list(inference_pool._pool.actors), inference_pool._pool.model_key
        again = embedded(first)
        assert inference_pool._pool.actors == actors and inference_pool._pool.model_key == loaded  # nothing restarted
        other = embedded(second)
        assert inference_pool._pool.actors == actors and inference_pool._pool.model_key != loaded
        written = embedded(second, folder=str(tmp_path / "out"))
        assert written.column("rows").to_pylist() and sum(written.column("rows").to_pylist()) == 75
        from_files = pq.read_table(tmp_path / "out").sort_by("user_id")
        assert ray.available_resources().get("CPU", 0) == pytest.approx(1.0)  # two actors x 0.5 CPU
        inference_pool.release()
        assert inference_pool._pool is None
        for _ in range(50):  # the killed actors' CPUs come back asynchronously
            if ray.available_resources().get("CPU", 0) == pytest.approx(2.0):
                break
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == pytest.approx(2.0)
    finally:
        inference_pool.release()
        if started:
            ray.shutdown()
    for m, out in ((first, one), (first, again), (second, other), (second, from_files)):
        expected = UserEmbeddingPredictor(**kwargs(m))(table)
        assert out.column("user_id").to_pylist() == table.column("user_id").to_pylist()
        np.testing.assert_allclose(vectors(out), vectors(expected), rtol=1e-5, atol=1e-6)
    assert not np.allclose(vectors(one), vectors(other))
