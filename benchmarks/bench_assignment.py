"""Linear assignment: the batched torch solver against the scipy loop, side by side.

Times, on random normal scores ``(B, s, n)``:

* ``linear_assignment``: the batched shortest-augmenting-path solver in torch
  (``pickgrad.structures._assignment``), on ``--device``;
* ``scipy loop``: ``scipy.optimize.linear_sum_assignment`` on each item, on the host, the way
  ``Permutation.argmax`` did it (``scipy_assignment``; batches of 128 or more are split over
  torch's thread count); on a GPU this includes the copies to the host and back;
* ``solve_assignment``: the dispatcher ``Permutation.argmax`` uses, to show it picks the faster.

Every size is timed in one run, alternating the solvers, and the ratio ``torch / scipy`` is
printed (below 1.00x the torch solver is faster). The objectives are compared too: both are
exact, so they must agree to float64 rounding. Timings are the fastest of ``--repeats`` calls.

Run:
    python benchmarks/bench_assignment.py                    # (1024, 20, 20), (64, 100, 100),
                                                             # (4, 1000, 1000), default threads
    python benchmarks/bench_assignment.py --threads 1        # one torch thread
    python benchmarks/bench_assignment.py --device cuda      # on a GPU (benchmarks/gpu_assignment.sh)
    python benchmarks/bench_assignment.py --quick            # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from pickgrad.structures._assignment import linear_assignment, scipy_assignment, solve_assignment

SIZES = [(1024, 20, 20), (64, 100, 100), (4, 1000, 1000)]
QUICK_SIZES = [(64, 6, 6), (8, 20, 30)]


def timed(function: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="device of the scores (cpu, cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per solver and size")
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated BxSxN sizes, e.g. 1024x20x20,64x100x100 (default: the three above)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.sizes:
        sizes = [tuple(int(part) for part in size.split("x")) for size in args.sizes.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else SIZES
    repeats = 1 if args.quick else args.repeats
    print(f"device {device}, torch threads {torch.get_num_threads()}, fastest of {repeats}")
    print(f"{'size':>16} {'torch s':>10} {'scipy s':>10} {'dispatch s':>10} {'ratio':>8} obj diff")
    generator = torch.Generator().manual_seed(0)
    for batch, s, n in sizes:
        scores = torch.randn(batch, s, n, generator=generator).to(device)
        solvers = {
            "torch": lambda scores=scores: linear_assignment(scores),
            "scipy": lambda scores=scores: scipy_assignment(scores),
            "dispatch": lambda scores=scores: solve_assignment(scores),
        }
        for solver in solvers.values():  # warm-up
            solver()
        best = {name: float("inf") for name in solvers}
        results = {}
        for _ in range(repeats):
            for name, solver in solvers.items():
                seconds, results[name] = timed(solver, device)
                best[name] = min(best[name], seconds)
        objective = {
            name: (x.double() * scores.double()).sum((-1, -2)) for name, x in results.items()
        }
        difference = float((objective["torch"] - objective["scipy"]).abs().max())
        ratio = best["torch"] / best["scipy"]
        print(
            f"{f'({batch}, {s}, {n})':>16} {best['torch']:10.4f} {best['scipy']:10.4f} "
            f"{best['dispatch']:10.4f} {ratio:7.2f}x {difference:.1e}"
        )


if __name__ == "__main__":
    main()
