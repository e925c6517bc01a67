"""Connect to Ray once per process: a local Ray by default, a cluster when [ray].address is set."""

from __future__ import annotations

import logging
import os

import ray

from jobs.config import FactoryConfig, ray_address
from jobs.errors import FactoryError
from jobs.runtime.quiet import quiet_loggers, quiet_ray_worker

log = logging.getLogger(__name__)


def ensure_ray(cfg: FactoryConfig) -> None:
    if ray.is_initialized():
        return
    address = ray_address(cfg)[0] or None
    # Every worker process drops the same known chatter as the driver (jobs/runtime/quiet.py).
    kwargs = dict(include_dashboard=False, log_to_driver=cfg.ray.log_to_driver, configure_logging=False,
                  runtime_env={"worker_process_setup_hook": quiet_ray_worker})
    if address is None:
        kwargs["num_cpus"] = cfg.ray.num_cpus or os.cpu_count()
    # Progress bars of Ray Data would interleave with ours; the step logs its own progress. (Set, not
    # read: a default for the Ray processes started from here.)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    log.info("starting Ray (%s)", address or "local")
    quiet_loggers()
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise FactoryError(f"Cannot reach the Ray cluster at {address!r} ([ray].address / RAY_ADDRESS): {err}") from None
