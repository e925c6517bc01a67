"""The environment the factory's Airflow runs with: SQLite and LocalExecutor under the state dir.

`factory airflow ...` runs any Airflow command with it (dags test, standalone, backfill create), so
what a user starts by hand and what the tests and the demo start is the same Airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jobs.config import FactoryConfig, child_environment
from jobs.errors import FactoryError
from jobs.runtime.quiet import quiet_third_parties

DAG_ID = "daily_embeddings"


def airflow_env(cfg: FactoryConfig) -> dict[str, str]:
    """This process's environment plus the factory's Airflow settings (variables already set by the user win)."""
    home = cfg.airflow_home
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(cfg.root) / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 2 cores: the default parallelism forks 32 task workers.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Tasks must find the same state dir and interpreter whatever their working directory.
        "FACTORY__PATHS__STATE_DIR": str(cfg.state_dir),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    if (Path(cfg.root) / "factory.toml").is_file():
        defaults["FACTORY_CONFIG"] = str(Path(cfg.root) / "factory.toml")
    env = {**defaults, **child_environment()}
    # Task processes report to the API server's execution API: follow its host and port (e.g. a
    # user's AIRFLOW__API__PORT), unless the user set the URL themselves.
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                   f"http://{env['AIRFLOW__API__HOST']}:{env['AIRFLOW__API__PORT']}/execution/")
    # `airflow standalone` starts its components as `airflow ...` found on PATH: the venv's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def airflow_command(cfg: FactoryConfig, args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run `airflow <args>` with the factory's environment; migrate the metadata DB first."""
    quiet_third_parties()  # its environment defaults reach Airflow and the tasks it runs
    env = airflow_env(cfg)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    database = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    sqlite_file = Path(database.removeprefix("sqlite:///")) if database.startswith("sqlite:///") else None
    if sqlite_file is None or not sqlite_file.exists():
        if sqlite_file is not None:
            sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        migrated = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
        if migrated.returncode != 0:
            raise FactoryError(f"`airflow db migrate` failed for {database}: {migrated.stderr.strip().splitlines()[-1:]}")
    return subprocess.run([airflow, *args], env=env, check=check, **kwargs)
