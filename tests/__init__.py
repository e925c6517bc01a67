"""The factory's tests, one folder per package of jobs/ (steps, lakehouse, ...); shared fixtures in conftest.py."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root
