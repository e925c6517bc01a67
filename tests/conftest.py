"""Test-wide settings: Airflow must not touch ~/airflow or load its example DAGs."""

import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


import pytest  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and other tests may be using the second core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
