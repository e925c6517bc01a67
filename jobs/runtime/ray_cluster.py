"""Connect to Ray once per process: a local Ray by default, a cluster when [ray].address is set."""

from __future__ import annotations

import logging
import os

import ray

from jobs.config import FactoryConfig, ray_address
from jobs.errors import FactoryError

log = logging.getLogger(__name__)


def ensure_ray(cfg: FactoryConfig) -> None:
    if ray.is_initialized():
        return
    address = ray_address(cfg)[0] or None
    kwargs = dict(include_dashboard=False, log_to_driver=cfg.ray.log_to_driver, configure_logging=False)
    if address is None:
        kwargs["num_cpus"] = cfg.ray.num_cpus or os.cpu_count()
    # Progress bars of Ray Data would interleave with ours; the step logs its own progress. (Set, not
    # read: a default for the Ray processes started from here.)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    log.info("starting Ray (%s)", address or "local")
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-operator progress lines every few seconds
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise FactoryError(f"Cannot reach the Ray cluster at {address!r} ([ray].address / RAY_ADDRESS): {err}") from None
