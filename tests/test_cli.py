"""User mistakes get one line and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest


def factory(*args: str, env_state: str) -> subprocess.CompletedProcess:
    env = {"FACTORY__PATHS__STATE_DIR": env_state, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args, message", [
    (("run", "--ds", "2026-13-01"), "is not a date in YYYY-MM-DD form"),
    (("run", "--ds", "2026-01-01", "--step", "nope"), "Unknown step(s) nope"),
    (("run", "--ds", "2026-01-01", "--step", "catalog"), "No catalog drop for ds=2026-01-01"),
    (("backfill", "--from", "2026-01-05", "--to", "2026-01-01"), "the end is before the start"),
])
def test_user_mistake_prints_one_error_line_and_exits_1(tmp_path, args, message):
    done = factory(*args, env_state=str(tmp_path))
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_every_command_has_help(tmp_path):
    for command in ("generate", "run", "backfill", "show", "demo", "airflow", "mlflow-ui", "sid"):
        done = factory(command, "--help", env_state=str(tmp_path))
        assert done.returncode == 0 and "Usage" in done.stdout, command


def test_airflow_tasks_report_to_the_api_server_on_its_configured_port(monkeypatch):
    from jobs.config import load_config
    from jobs.runtime.airflow_env import airflow_env

    monkeypatch.setenv("AIRFLOW__API__PORT", "18080")
    monkeypatch.delenv("AIRFLOW__API__HOST", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", raising=False)
    assert airflow_env(load_config())["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
