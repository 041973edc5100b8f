"""Timing shared by the benchmark scripts (each imports it from its own folder)."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "best_time",
    "child_cpu_seconds",
    "cpu_seconds_per_step",
    "forward_backward",
    "interleaved_best",
]


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


def interleaved_best(
    runs: dict[str, Callable[[], object]],
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Minimum time of each of ``runs`` in seconds by ``clock``, after one warm-up call each,
    over ``repeats`` rounds that call every run once in turn, so that a burst of load on a
    shared machine hits every contender alike."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            run()
            best[name] = min(best[name], clock() - start)
    return best


def forward_backward(
    fn: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor
) -> Callable[[], None]:
    """One forward pass and one backward pass of ``(fn(scores) * direction).sum()``, with a
    fixed random ``direction``."""
    direction = torch.randn(scores.shape, generator=torch.Generator().manual_seed(1)).to(
        scores.dtype
    )

    def run() -> None:
        leaf = scores.detach().requires_grad_()
        (fn(leaf) * direction).sum().backward()

    return run


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
