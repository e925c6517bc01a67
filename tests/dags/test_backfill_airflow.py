"""A real Airflow backfill: `airflow standalone` (scheduler, dag-processor, api-server) executes the
runs that `airflow backfill create` queues. Slow (several minutes): `make test-slow`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.config import env_overrides
from jobs.synthetic.worlds import TINY_WORLD
from tests import REPO

pytestmark = pytest.mark.slow


def factory(env: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, **kwargs)


def test_airflow_backfill_runs_every_day_to_success(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(env_overrides(TINY_WORLD))
    env["FACTORY__PATHS__STATE_DIR"] = str(tmp_path)
    env["AIRFLOW__API__PORT"] = "18080"
    assert factory(env, "generate").returncode == 0
    # Create the metadata DB before anything runs concurrently: two first-time `db migrate`s of one
    # SQLite file (standalone's and the polling `dags list`'s) race and one fails.
    assert factory(env, "airflow", "version").returncode == 0
    server = subprocess.Popen([sys.executable, "-m", "jobs.cli", "airflow", "standalone"], env=env, cwd=REPO,
                              stdout=open(tmp_path / "standalone.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while "daily_embeddings" not in factory(env, "airflow", "dags", "list").stdout:
            assert time.monotonic() < deadline, "the dag-processor never parsed the DAG"
            time.sleep(5)
        created = factory(env, "airflow", "backfill", "create", "--dag-id", "daily_embeddings",
                          "--from-date", "2026-01-01", "--to-date", "2026-01-02", "--max-active-runs", "1")
        assert created.returncode == 0, created.stderr[-2000:]
        deadline = time.monotonic() + 1200
        while True:
            listed = factory(env, "airflow", "dags", "list-runs", "daily_embeddings", "--output", "json")
            runs = {r["run_id"]: r["state"] for r in _json_rows(listed.stdout) if r["run_id"].startswith("backfill")}
            if len(runs) == 2 and all(state in ("success", "failed") for state in runs.values()):
                break
            assert time.monotonic() < deadline, f"backfill did not finish: {runs}"
            time.sleep(10)
        assert set(runs.values()) == {"success"}, runs
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _json_rows(stdout: str) -> list[dict]:
    """The JSON list Airflow prints, without the warnings its logging writes to stdout before it."""
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    return json.loads(lines[-1]) if lines else []
