"""Test-wide settings and the fixtures several test folders share.

Airflow must not touch ~/airflow or load its example DAGs. Shared fixtures: a config whose lake and
landing live in the test's tmp_path (`lake_cfg`), one SQLite MLflow store per test module
(`mlflow_store`), a fake text encoder instead of MiniLM (`fake_text_encoder`), SASRec-format files
(`write_sasrec`) and one torch thread (`one_torch_thread`). The tiny generated world of the
end-to-end tests is jobs.synthetic.worlds.TINY_WORLD.
"""

import hashlib
import os
import tempfile

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jobs.runtime.quiet import quiet_third_parties  # noqa: E402

quiet_third_parties()  # the suite's own output stays as calm as the CLI's (jobs/runtime/quiet.py)


def pytest_configure(config):
    """pytest shows every DeprecationWarning unless told otherwise: the known ones are told here."""
    from jobs.runtime.quiet import warning_filter_specs

    for spec in warning_filter_specs():
        config.addinivalue_line("filterwarnings", spec)


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and other tests may be using the second core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def lake_cfg(tmp_path):
    """The factory's config with its state (lake, landing, MLflow) under this test's tmp_path."""
    from jobs.config import load_config

    return load_config(overrides={"paths.state_dir": str(tmp_path)})


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> dict[str, str]:
    """One SQLite MLflow store per test module (creating one takes seconds), as config overrides."""
    from jobs.config import load_config
    from jobs.tracking.runs import configure_mlflow

    root = tmp_path_factory.mktemp("mlflow")
    store = {"mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "mlflow.artifact_uri": (root / "artifacts").as_uri()}
    configure_mlflow(load_config(overrides=store))
    return store


def hashed_unit_vectors(texts: list[str], batch_size: int, dim: int = 16, **_) -> np.ndarray:
    """A stand-in for MiniLM: one random unit vector per distinct text, seeded by the text."""
    x = np.array([np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).standard_normal(dim)
                  for t in texts], np.float32).reshape(-1, dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def fake_text_encoder(monkeypatch):
    """Replace the semantic_ids step's text encoder (MiniLM) by `encode` (default: hashed_unit_vectors)."""
    from jobs.steps import semantic_ids

    def install(encode=hashed_unit_vectors):
        monkeypatch.setattr(semantic_ids, "encode_texts", encode)

    install()
    return install


@pytest.fixture
def write_sasrec():
    """write(path, users=200, num_items=30, seed=0): a SASRec-format file (`user item` lines) where users
    walk the items cyclically (next item = current + 1), lines interleaved across users; returns the
    sequences."""

    def write(path, users: int = 200, num_items: int = 30, seed: int = 0) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        seqs = [[(int(rng.integers(num_items)) + j) % num_items + 1 for j in range(int(rng.integers(4, 16)))]
                for _ in range(users)]
        lines = [(u + 1, item, j) for u, s in enumerate(seqs) for j, item in enumerate(s)]
        lines.sort(key=lambda x: (x[2], x[0]))  # interleave users; each user's lines stay in order
        path.write_text("".join(f"{u} {item}\n" for u, item, _ in lines))
        return seqs

    return write
