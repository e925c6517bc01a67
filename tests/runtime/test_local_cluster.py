"""`factory cluster` (jobs/runtime/local_cluster.py) without starting anything: the plan it derives
from the config and the one-line refusals. The real start/stop is tests/test_cluster.py (marker cluster)."""

from __future__ import annotations

import socket

import pytest

from jobs.config import load_config
from jobs.errors import FactoryError
from jobs.runtime import local_cluster

LOCAL = {"spark.master": "spark://127.0.0.1:17077", "ray.address": "127.0.0.1:16390"}


def test_the_plan_takes_its_addresses_from_spark_master_and_ray_address(tmp_path):
    cfg = load_config(overrides={**LOCAL, "paths.state_dir": str(tmp_path)})
    p = local_cluster.plan(cfg)
    assert (p.spark_master, p.ray_address) == ("spark://127.0.0.1:17077", "127.0.0.1:16390")
    assert p.ray_temp_dir == "/tmp/factory-ray-16390" and p.folder == tmp_path / "cluster"


@pytest.mark.parametrize("setting", [{"spark.master": "local[2]"}, {"ray.address": ""}])
def test_a_config_without_a_local_cluster_is_refused_in_one_line(tmp_path, setting):
    cfg = load_config(overrides={**LOCAL, **setting, "paths.state_dir": str(tmp_path)})
    with pytest.raises(FactoryError, match="local cluster needs"):
        local_cluster.plan(cfg)


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = load_config(overrides={**LOCAL, "spark.master": f"spark://127.0.0.1:{port}", "paths.state_dir": str(tmp_path)})
        with pytest.raises(FactoryError, match=f"port {port} \\(spark.master\\) is busy"):
            local_cluster.up(cfg)
    assert not (tmp_path / "cluster" / "pids.json").exists()


def test_down_without_a_cluster_stops_nothing(tmp_path):
    cfg = load_config(overrides={**LOCAL, "paths.state_dir": str(tmp_path)})
    assert local_cluster.down(cfg) == []
