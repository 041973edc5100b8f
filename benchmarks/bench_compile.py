"""Step time of ``torch.compile(select, fullgraph=True)`` (inductor) against eager ``select``.

One step is ``x = select(scores); (x * w).sum().backward()`` with fixed weights ``w``, validation
off in both (``pickgrad.validation(False)``: the compiled graph has no value checks, so the eager
side runs without them too). Cases (float32):

* ``OneHot``, scores B x S x N (default 256 x 16 x 64): ``st``, ``relaxed``, ``st-gumbel``,
  ``gumbel-rao`` (n_draws=10), ``imle``. Eager ``st-gumbel`` and ``gumbel-rao`` take the fused
  OneHot paths; the compiled ones the generic composition, fused by inductor.
* ``Subset(8)`` of 64, 1024 rows: ``st``, ``perturbed`` (n_perturbations=16).
* ``SpanningTree``, 64 graphs of 12 nodes: ``st``, ``perturbed`` (n_perturbations=16).

The compiled step is compiled once (the compile time is printed), then the two variants run
interleaved, eager first then compiled, for ``--repeats`` rounds; each step is timed on its own,
in wall time and in process CPU time, and the median of each is reported with the ratio
compiled / eager (below 1: compiled is faster). CPU time moves less with other load on a shared
machine. ``--threads`` (default 1) sets ``torch.set_num_threads``.

Run:  ``python benchmarks/bench_compile.py`` (a few minutes on 2 CPU cores: each case compiles
C++ kernels), or ``--quick`` for a smoke run of one small OneHot case.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import pickgrad
from pickgrad import OneHot, SpanningTree, Subset
from pickgrad.structures.base import Structure


@dataclass(frozen=True)
class Case:
    label: str
    structure: Structure
    shape: tuple[int, ...]
    estimator: str
    options: dict[str, Any]


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("OneHot 32x8x16", OneHot(), (32, 8, 16), "st-gumbel", {})]
    onehot = (256, 16, 64)
    label = "OneHot 256x16x64"
    return [
        Case(label, OneHot(), onehot, "st", {}),
        Case(label, OneHot(), onehot, "relaxed", {}),
        Case(label, OneHot(), onehot, "st-gumbel", {}),
        Case(label, OneHot(), onehot, "gumbel-rao", {"n_draws": 10}),
        Case(label, OneHot(), onehot, "imle", {}),
        Case("Subset(8) 1024x64", Subset(8), (1024, 64), "st", {}),
        Case("Subset(8) 1024x64", Subset(8), (1024, 64), "perturbed", {"n_perturbations": 16}),
        Case("SpanningTree 64x12x12", SpanningTree(), (64, 12, 12), "st", {}),
        Case(
            "SpanningTree 64x12x12",
            SpanningTree(),
            (64, 12, 12),
            "perturbed",
            {"n_perturbations": 16},
        ),
    ]


def step_function(
    choose: Callable[[torch.Tensor], torch.Tensor], scores: torch.Tensor, weights: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        x = choose(scores)
        (x * weights).sum().backward()
        scores.grad = None

    return step


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of one call of ``step``."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: Case, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(case.shape, generator=generator).requires_grad_()
    weights = torch.randn(case.shape, generator=generator)

    def choose(s: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(s, case.structure, case.estimator, tau=0.5, **case.options)

    torch._dynamo.reset()
    compiled = torch.compile(choose, fullgraph=True, dynamic=False)
    eager_step = step_function(choose, scores, weights)
    compiled_step = step_function(compiled, scores, weights)
    start = time.perf_counter()
    compiled_step()  # compiles the forward and the backward graphs
    compile_seconds = time.perf_counter() - start
    eager_step()
    compiled_step()
    walls: dict[str, list[float]] = {"eager": [], "compiled": []}
    cpus: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for name, step in (("eager", eager_step), ("compiled", compiled_step)):
            wall, cpu = timed(step)
            walls[name].append(wall)
            cpus[name].append(cpu)
    result = {"compile_s": compile_seconds}
    for name in ("eager", "compiled"):
        result[f"{name}_wall_ms"] = 1e3 * statistics.median(walls[name])
        result[f"{name}_cpu_ms"] = 1e3 * statistics.median(cpus[name])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case, few repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 30)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {repeats} rounds, validation off; "
        "step = forward + backward of select, median of each"
    )
    print()
    print(
        "| case | estimator | eager ms (wall / cpu) | compiled ms (wall / cpu) "
        "| ratio compiled/eager (wall / cpu) | compile s |"
    )
    print("|---|---|---|---|---|---|")
    with pickgrad.validation(False), warnings.catch_warnings():
        # torch 2.13's own warnings while it traces (autograd.Function instantiation, jit).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for case in cases(args.quick):
            r = measure(case, repeats)
            wall_ratio = r["compiled_wall_ms"] / r["eager_wall_ms"]
            cpu_ratio = r["compiled_cpu_ms"] / r["eager_cpu_ms"]
            print(
                f"| {case.label} | {case.estimator} "
                f"| {r['eager_wall_ms']:.2f} / {r['eager_cpu_ms']:.2f} "
                f"| {r['compiled_wall_ms']:.2f} / {r['compiled_cpu_ms']:.2f} "
                f"| {wall_ratio:.2f}x / {cpu_ratio:.2f}x | {r['compile_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
