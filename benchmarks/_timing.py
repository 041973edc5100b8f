"""Timing shared by the benchmark scripts (each imports it from its own folder)."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["best_time", "child_cpu_seconds", "cpu_seconds_per_step"]


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


def child_cpu_seconds(
    command: Sequence[str], cwd: str | Path | None = None, timeout: float | None = None
) -> float:
    """CPU seconds (user + system) that ``command`` used, run to completion in ``cwd``.

    CPU time, unlike wall time, barely moves with other load on a shared machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_seconds_per_step(
    command: Callable[[int], Sequence[str]], short: int, long: int, cwd: str | Path | None = None
) -> float:
    """CPU seconds per training step of ``command(steps)``: a ``long``- and a ``short``-step run,
    their difference over ``long - short``, so start-up and data loading cancel out."""
    cost = child_cpu_seconds(command(long), cwd) - child_cpu_seconds(command(short), cwd)
    return cost / (long - short)
