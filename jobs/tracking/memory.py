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
    named_mb: float = 0.0  # descendants whose name contains RssSampler's `named` (e.g. "java": a Spark JVM)


class RssSampler:
    """`with RssSampler() as peak: ...` then read peak.driver_mb, peak.tree_mb (and peak.named_mb)."""

    def __init__(self, interval: float = 0.5, named: str = ""):
        self.interval = interval
        self.named = named
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
        tree = named = 0
        for child in self._process.children(recursive=True):
            try:
                rss = child.memory_info().rss
                named += rss if self.named and self.named in child.name() else 0
                tree += rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that ended between listing and reading
        self.peak.driver_mb = max(self.peak.driver_mb, driver / MB)
        self.peak.tree_mb = max(self.peak.tree_mb, (driver + tree) / MB)
        self.peak.named_mb = max(self.peak.named_mb, named / MB)
