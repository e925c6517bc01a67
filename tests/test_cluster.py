"""The factory on a real local cluster (marker `cluster`: `make test-cluster`, and .ci/run after make test).

`factory cluster up` starts a Spark standalone master + worker and a Ray head + a second Ray node on
127.0.0.1 (free ports picked here). The same generated multi-day tiny world then runs twice with
`factory backfill`: embedded (local[2], a local Ray, one Ray Train worker) and on the cluster
(spark.master = spark://127.0.0.1:PORT, ray.address = the head, ray.train_workers = 2 spread over the
two nodes). Then:
- every table no training touches equals the embedded run's row for row (all rows, sorted);
- the tables downstream of training have the same rows per day and unit vectors, and next-day HR@10
  is within HR_TOLERANCE of the embedded run's (two workers see other batches than one: not equal);
- the Spark application ran on the master (its JSON status lists it as completed) and every trained
  model was trained by 2 Ray Train workers on 2 nodes (the train step's MLflow params);
- `factory cluster down` (in a finally) leaves none of the cluster's processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pytest

from jobs.config import env_overrides, load_config
from jobs.lakehouse import delta
from jobs.lakehouse.tables import ALL_TABLES, EVAL_METRICS, ITEM_EMBEDDINGS, PUBLISH, USER_EMBEDDINGS
from jobs.runtime import local_cluster
from jobs.synthetic.generate import generate_drops, generated_days
from jobs.synthetic.worlds import TINY_WORLD
from tests import REPO

pytestmark = pytest.mark.cluster

WORLD = {**TINY_WORLD, "generator.days": "2"}
# Tables written from the model's outputs (and the day's record of them): compared by shape, not rows.
FROM_TRAINING = {USER_EMBEDDINGS.name, ITEM_EMBEDDINGS.name, EVAL_METRICS.name, PUBLISH.name,
                 "taste_profiles"}  # regions and model version come from the vectors
# Next-day HR@10 of the cluster run (2 workers) against the embedded run (1 worker), absolute. On the
# tiny world (~150 users, 2 epochs) one user's hit moves HR@10 by ~0.01; the two runs see other batches.
HR_TOLERANCE = 0.1
TIMEOUT_SECONDS = 1500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_pair() -> int:
    """A port p with p + 1 free too (the master's and the worker's web UI)."""
    for _ in range(50):
        port = _free_port()
        if port < 65000 and local_cluster._port_bindable(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def _factory(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT_SECONDS)
    if done.returncode != 0:
        pytest.fail(f"factory {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    landing = root / "landing"
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY")}
    base.update(env_overrides({**WORLD, "paths.landing_uri": str(landing)}))
    gen_cfg = load_config(overrides={**WORLD, "paths.state_dir": str(root / "gen"), "paths.landing_uri": str(landing)})
    generate_drops(gen_cfg.generator, landing)
    first, last = generated_days(gen_cfg.generator)[0], generated_days(gen_cfg.generator)[-1]

    started = time.perf_counter()
    embedded_env = {**base, "FACTORY__PATHS__STATE_DIR": str(root / "embedded"), "FACTORY__SPARK__MASTER": "local[2]"}
    _factory(["backfill", "--from", first, "--to", last], embedded_env)
    embedded_seconds = time.perf_counter() - started

    config = root / "local-cluster.toml"
    config.write_text(
        f'[spark]\nmaster = "spark://127.0.0.1:{_free_port()}"\n'
        '[spark.extra_conf]\n"spark.executor.memory" = "1g"\n"spark.executor.cores" = "1"\n'
        f'[ray]\naddress = "127.0.0.1:{_free_port()}"\ntrain_workers = 2\ntrain_placement = "SPREAD"\n'
        f'[local_cluster]\nspark_webui_port = {_free_pair()}\nspark_worker_memory = "1g"\n'
        f"ray_port_base = {random.randrange(30000, 45000, 200)}\n")
    cluster_env = {**base, "FACTORY_CONFIG": str(config), "FACTORY__PATHS__STATE_DIR": str(root / "on-cluster")}
    cluster_cfg = _load(cluster_env)
    plan = local_cluster.plan(cluster_cfg)
    started = time.perf_counter()
    try:
        up = json.loads(_factory(["cluster", "up"], cluster_env).stdout)
        _factory(["backfill", "--from", first, "--to", last], cluster_env)
        master = local_cluster.spark_master_state(plan)
        cluster_seconds = time.perf_counter() - started
    finally:
        subprocess.run([sys.executable, "-m", "jobs.cli", "cluster", "down"], env=cluster_env, cwd=REPO,
                       capture_output=True, timeout=300)
    print(f"\nembedded run {embedded_seconds:.0f} s, cluster up + run {cluster_seconds:.0f} s "
          f"(load average {os.getloadavg()[0]:.1f})")
    yield {"embedded": _load(embedded_env), "cluster": cluster_cfg, "up": up, "master": master, "plan": plan,
           "days": generated_days(gen_cfg.generator)}


def _load(env: dict[str, str]):
    """The config a child process with this environment reads."""
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _digest(cfg, spec) -> str:
    rows = sorted(json.dumps(row, sort_keys=True, default=repr) for row in delta.read(cfg, spec).to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def test_the_cluster_came_up_with_a_spark_worker_and_two_ray_nodes(runs):
    assert runs["up"]["spark_alive_workers"] == 1 and runs["up"]["ray_alive_nodes"] == 2


def test_tables_no_training_touches_equal_the_embedded_run_row_for_row(runs):
    deterministic = [spec for spec in ALL_TABLES if spec.name not in FROM_TRAINING]
    assert len(deterministic) >= 6
    different = [spec.name for spec in deterministic if _digest(runs["embedded"], spec) != _digest(runs["cluster"], spec)]
    assert different == []


def test_tables_from_training_have_the_same_rows_unit_vectors_and_a_close_hr10(runs):
    embedded, cluster = runs["embedded"], runs["cluster"]
    for spec in (USER_EMBEDDINGS, ITEM_EMBEDDINGS, PUBLISH):
        for ds in runs["days"]:
            assert delta.read(cluster, spec, where={"ds": ds}).num_rows == delta.read(embedded, spec, where={"ds": ds}).num_rows
    users = delta.read(cluster, USER_EMBEDDINGS)
    alone = delta.read(embedded, USER_EMBEDDINGS)
    assert sorted(users.column("user_id").to_pylist()) == sorted(alone.column("user_id").to_pylist())
    vectors = pc.list_flatten(users.column("embedding")).to_numpy().reshape(users.num_rows, -1)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    def hr10(cfg) -> dict:
        rows = delta.read(cfg, EVAL_METRICS).to_pylist()
        return {(r["ds"], r["method"]): r["value"] for r in rows if r["metric"] == "hr_at_10"}

    on_cluster, alone = hr10(cluster), hr10(embedded)
    print(f"\nnext-day HR@10 on the cluster {on_cluster}, embedded {alone}")
    assert on_cluster.keys() == alone.keys() and (runs["days"][-1], "encoder") in alone
    for key, value in alone.items():
        assert abs(on_cluster[key] - value) <= HR_TOLERANCE, (key, on_cluster[key], value)


def test_the_spark_application_ran_on_the_standalone_master(runs):
    apps = runs["master"].get("completedapps", []) + runs["master"].get("activeapps", [])
    assert runs["master"]["url"] == runs["plan"].spark_master
    assert any(app["name"] == "embedding-factory" for app in apps)


def test_ray_train_ran_two_workers_on_two_nodes(runs):
    from mlflow.tracking import MlflowClient

    cfg = runs["cluster"]
    client = MlflowClient(cfg.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    trained = [r.data.params for r in client.search_runs([experiment.experiment_id]) if "train_workers" in r.data.params]
    assert len(trained) == len(runs["days"])  # retrain_every_days = 1: a model per day
    assert all(p["train_workers"] == "2" and p["train_nodes"] == "2" for p in trained), trained


def test_cluster_down_left_no_process_of_the_cluster(runs):
    assert local_cluster.status(runs["cluster"])["processes"] == {}
    assert local_cluster._processes_under(runs["plan"].ray_temp_dir) == []
