"""Timing shared by the benchmark scripts (each imports it from its own folder)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["best_time"]


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``fn`` in seconds over ``repeats`` calls, after one warm-up call.

    On a shared machine the minimum is the time least disturbed by other load.
    """
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
