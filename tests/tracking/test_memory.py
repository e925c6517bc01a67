import subprocess
import sys
import time

import numpy as np

from jobs.tracking.memory import RssSampler


def test_peak_rss_sees_memory_the_driver_allocated_and_released():
    with RssSampler(interval=0.05) as peak:
        before = peak.driver_mb
        block = np.ones(200 * 1024 * 1024 // 8)  # 200 MB, touched
        time.sleep(0.2)
        del block
    assert peak.driver_mb - before > 150


def test_tree_peak_counts_child_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 * 1024 * 1024); time.sleep(3)"])
    try:
        with RssSampler(interval=0.05, named="python") as peak:
            time.sleep(1.5)
    finally:
        child.kill()
        child.wait()
    assert peak.tree_mb - peak.driver_mb > 250
    assert peak.named_mb > 250  # the child by its process name (a benchmark watches "java": Spark's JVM)
