"""Counts the Python garbage collector's runs and the wall time they take, per generation (``gc.callbacks``).

Benchmarks use it to tell a slow run caused by a full collection (which walks every tracked object of a process
holding a model) from one caused by the code being timed or by the host.
"""

from __future__ import annotations

import collections
import gc
import time


class GcClock:
    def __init__(self):
        self.count = collections.Counter()
        self.seconds = collections.Counter()
        self._t = None

    def __call__(self, phase, info):
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            g = info["generation"]
            self.count[g] += 1
            self.seconds[g] += time.perf_counter() - self._t
            self._t = None

    def reset(self):
        self.count.clear()
        self.seconds.clear()

    def __enter__(self):
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self)
