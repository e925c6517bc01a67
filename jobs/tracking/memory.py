"""Peak memory of a piece of work: the driver process and its whole process tree (Spark JVM, Ray).

A background thread samples RSS with psutil every `interval` seconds. The tree figure sums the RSS
of the driver and every descendant (a local Spark JVM, a local Ray's raylet and workers), so pages
shared between processes (Ray's object store) can be counted more than once: an upper bound.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass
class PeakRss:
    driver_mb: float = 0.0
    tree_mb: float = 0.0


class RssSampler:
    """`with RssSampler() as peak: ...` then read peak.driver_mb and peak.tree_mb."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak = PeakRss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="rss-sampler", daemon=True)
        self._process = psutil.Process()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self.peak

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        driver = self._process.memory_info().rss
        tree = driver
        for child in self._process.children(recursive=True):
            try:
                tree += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that ended between listing and reading
        self.peak.driver_mb = max(self.peak.driver_mb, driver / MB)
        self.peak.tree_mb = max(self.peak.tree_mb, tree / MB)
