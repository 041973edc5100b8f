"""Permutation: argmax against a Python loop of scipy, and Sinkhorn forward + backward.

1. ``Permutation().argmax`` on a batch against the loop a user would write by hand: convert the
   batch to numpy, call ``scipy.optimize.linear_sum_assignment(maximize=True)`` on each matrix,
   build the permutation matrices. Target: at most 1.2x the time of the loop.
2. ``Permutation().relax`` (log-domain Sinkhorn, unrolled autograd) forward + backward, with its
   default stopping rule and with a fixed 20 rounds, next to a plain 20-round log-domain
   Sinkhorn written out as in Mena et al. (2018).

Run:
    python benchmarks/bench_permutation.py            # argmax batch 1024, n 20; Sinkhorn 256, n 50
    python benchmarks/bench_permutation.py --quick    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pickgrad import Permutation


def best_time(function: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls after a warm-up: on a shared machine the minimum
    is the least disturbed by other load."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def scipy_loop_argmax(scores: torch.Tensor) -> torch.Tensor:
    matrices = scores.numpy()
    x = np.zeros_like(matrices)
    for item, matrix in enumerate(matrices):
        rows, columns = linear_sum_assignment(matrix, maximize=True)
        x[item, rows, columns] = 1.0
    return torch.from_numpy(x)


def mena_sinkhorn(log_alpha: torch.Tensor, n_iters: int = 20) -> torch.Tensor:
    for _ in range(n_iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True)
    return log_alpha.exp()


def forward_backward(relax: Callable[[torch.Tensor], torch.Tensor], scores, upstream) -> None:
    leaf = scores.detach().requires_grad_()
    (relax(leaf) * upstream).sum().backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    parser.add_argument("--argmax-batch", type=int, default=1024)
    parser.add_argument("--argmax-n", type=int, default=20)
    parser.add_argument("--sinkhorn-batch", type=int, default=256)
    parser.add_argument("--sinkhorn-n", type=int, default=50)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.argmax_batch, args.argmax_n, args.sinkhorn_batch, args.sinkhorn_n = 64, 8, 16, 10
        args.repeats = 2

    generator = torch.Generator().manual_seed(0)
    structure = Permutation()
    print(f"torch threads {torch.get_num_threads()}")

    scores = torch.randn(args.argmax_batch, args.argmax_n, args.argmax_n, generator=generator)
    assert torch.equal(structure.argmax(scores), scipy_loop_argmax(scores))
    ours = best_time(lambda: structure.argmax(scores), args.repeats)
    unvalidated = best_time(lambda: structure._argmax(scores), args.repeats)
    loop = best_time(lambda: scipy_loop_argmax(scores), args.repeats)
    print(f"Permutation.argmax, batch {args.argmax_batch}, n {args.argmax_n} (float32, CPU)")
    print(f"  pickgrad argmax:                  {ours * 1e3:8.1f} ms (best of {args.repeats})")
    print(f"  pickgrad _argmax (no input check): {unvalidated * 1e3:8.1f} ms")
    print(f"  scipy loop:                       {loop * 1e3:8.1f} ms")
    print(f"  ratio pickgrad / scipy loop: {ours / loop:.2f} (target <= 1.2)")

    shape = (args.sinkhorn_batch, args.sinkhorn_n, args.sinkhorn_n)
    scores = torch.randn(shape, generator=generator)
    upstream = torch.randn(shape, generator=generator)
    tau = args.tau
    default = best_time(
        lambda: forward_backward(lambda s: structure.relax(s, tau), scores, upstream), args.repeats
    )
    fixed = best_time(
        lambda: forward_backward(
            lambda s: structure.relax(s, tau, tol=0, max_iter=20), scores, upstream
        ),
        args.repeats,
    )
    plain = best_time(
        lambda: forward_backward(lambda s: mena_sinkhorn(s / tau), scores, upstream), args.repeats
    )
    error = float((structure.relax(scores, tau).sum(-2) - 1).abs().max())
    print(
        f"Sinkhorn forward+backward, batch {args.sinkhorn_batch}, n {args.sinkhorn_n}, tau {tau} (float32, CPU)"
    )
    print(
        f"  pickgrad, default (tol 1e-5, max_iter 100): {default * 1e3:8.1f} ms; column-sum error {error:.1e}"
    )
    print(f"  pickgrad, 20 rounds (tol=0, max_iter=20):   {fixed * 1e3:8.1f} ms")
    print(f"  plain 20-round log-domain Sinkhorn:         {plain * 1e3:8.1f} ms")
    print(f"  ratio pickgrad 20 rounds / plain: {fixed / plain:.2f}")


if __name__ == "__main__":
    main()
