"""`make screenshots` (infra/screenshots/take.py) on the finished demo in .state: every page shows
the names it should, in a real browser. Slow and needs `make demo` and Debian's chromium: by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests import REPO

pytestmark = pytest.mark.slow


def test_screenshots_of_the_finished_demo_show_the_expected_names(tmp_path):
    if shutil.which("chromium") is None or not (REPO / ".state" / "mlflow.db").is_file():
        pytest.skip("needs chromium and a finished `make demo` in .state")
    done = subprocess.run([sys.executable, "infra/screenshots/take.py", "--no-backfill", "--out", str(tmp_path),
                           "--mlflow-port", "5056", "--airflow-port", "8090", "--browser-port", "9334"],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "airflow-backfill-grid.png", "mlflow-day-runs.png", "mlflow-registry.png", "mlflow-step-artifacts.png",
        "mlflow-step-metrics.png"]
    assert all(p.stat().st_size < 500_000 for p in tmp_path.glob("*.png"))
