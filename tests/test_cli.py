"""User mistakes get one line and a non-zero exit, never a traceback."""

import os
import re
import subprocess
import sys
from collections import Counter

import pytest


def factory(*args: str, env_state: str) -> subprocess.CompletedProcess:
    env = {"FACTORY__PATHS__STATE_DIR": env_state, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args, message", [
    (("run", "--ds", "2026-13-01"), "is not a date in YYYY-MM-DD form"),
    (("run", "--ds", "2026-01-01", "--step", "nope"), "Unknown step(s) nope"),
    (("run", "--ds", "2026-01-01", "--step", "catalog"), "No catalog drop for ds=2026-01-01"),
    (("backfill", "--from", "2026-01-05", "--to", "2026-01-01"), "the end is before the start"),
    (("profile", "show", "u_000001"), "No taste profiles yet; run a day through the profile step first"),
    (("profile", "edit", "u_000001", "--more", "genr:jazz"), "Unknown kind 'genr' in 'genr:jazz'; kinds are genre"),
    (("profile", "edit", "u_000001", "--less", "genre:jazz"), "No day has been built yet"),
    (("profile", "edit", "u_000001"), "Nothing to do; pass --more, --less, --forget or --withdraw KIND:NAME."),
])
def test_user_mistake_prints_one_error_line_and_exits_1(tmp_path, args, message):
    done = factory(*args, env_state=str(tmp_path))
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_every_command_has_help(tmp_path):
    for command in ("generate", "run", "backfill", "show", "demo", "airflow", "mlflow-ui", "sid", "profile"):
        done = factory(command, "--help", env_state=str(tmp_path))
        assert done.returncode == 0 and "Usage" in done.stdout, command


def test_airflow_tasks_report_to_the_api_server_on_its_configured_port(monkeypatch):
    from jobs.config import load_config
    from jobs.runtime.airflow_env import airflow_env

    monkeypatch.setenv("AIRFLOW__API__PORT", "18080")
    monkeypatch.delenv("AIRFLOW__API__HOST", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", raising=False)
    assert airflow_env(load_config())["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"


# --- a calm terminal (jobs/runtime/quiet.py) ----------------------------------------------------------

# What differs between two otherwise identical lines: timestamps, process ids, durations and counts.
VOLATILE = re.compile(r"\d+([.:,-]\d+)*")


def repeated_lines(output: str, limit: int = 3) -> dict[str, int]:
    """Lines (digits masked) that occur more than `limit` times."""
    counts = Counter(VOLATILE.sub("#", line).strip() for line in output.splitlines() if line.strip())
    return {line: n for line, n in counts.items() if n > limit}


def test_repeated_lines_mask_numbers_but_not_words():
    assert repeated_lines("epoch 1 at 0.1 min\nepoch 2 at 0.2 min\nepoch 3 at 0.3 min\nepoch 4 at 0.4 min") == {
        "epoch # at # min": 4}
    assert repeated_lines("a\nb\nc\nd\na\nb") == {}


def test_a_day_of_spark_and_ray_train_steps_prints_no_repeated_line_and_no_traceback(tmp_path):
    """generate + catalog, ingest, features (Spark) and train (Ray Train, workers' output shown in the
    driver as the encoder benchmark shows it): no line more than 3 times, no traceback, no py4j
    logging error at exit. Before quiet.py: Spark's start-up WARNs, MLflow's system-metrics lines
    around every step, Ray Train's per-epoch INFO lines and the PlacementGroupCleaner's message once a second."""
    from jobs.config import env_overrides
    from jobs.synthetic.worlds import TINY_WORLD
    from tests import REPO

    env = {**os.environ, **env_overrides({**TINY_WORLD, "generator.days": "1", "ray.log_to_driver": "true"}),
           "FACTORY__PATHS__STATE_DIR": str(tmp_path), "COLUMNS": "200"}
    for name in ("SPARK_SUBMIT_OPTS", "PYTHONWARNINGS"):  # what the CLI sets itself, not inherited from the suite
        env.pop(name, None)
    output = ""
    for args in (("generate",), ("run", "--ds", "2026-01-01", "--step", "catalog", "--step", "ingest",
                                 "--step", "features", "--step", "train")):
        done = subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, env=env,
                              cwd=REPO)
        output += done.stdout + done.stderr
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in output and "Logging error" not in output, output[-5000:]
    assert repeated_lines(output) == {}, output[-5000:]
    assert " WARN " not in output, output[-5000:]  # Spark's log4j start-up warnings
