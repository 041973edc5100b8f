"""Permutation: argmax against a Python loop of scipy, and Sinkhorn forward + backward.

1. ``Permutation().argmax`` on a batch against the loop a user would write by hand: convert the
   batch to numpy, call ``scipy.optimize.linear_sum_assignment(maximize=True)`` on each matrix,
   build the permutation matrices. Target: at most 1.2x the time of the loop.
2. Gumbel-Sinkhorn forward + backward on ``scores + G`` (G standard Gumbel, drawn inside every
   timed call): ``Permutation().relax`` (converged to its documented tolerance, implicit
   backward) and ``select(..., "st-gumbel")`` (argmax forward, the same relax backward), next to
   a plain 20-round log-domain Sinkhorn written out as in Mena et al. (2018), differentiated by
   autograd through its rounds. The plain 20 rounds are usually not converged at small tau:
   the column-sum error each method reaches is printed beside its time. Targets (issue 13):
   at most 1.5x the plain 20 rounds at tau = 1, 3x at tau = 0.1.

Run:
    python benchmarks/bench_permutation.py                # every size, default threads
    python benchmarks/bench_permutation.py --threads 1    # one thread
    python benchmarks/bench_permutation.py --quick        # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from _timing import best_time
from pickgrad import Permutation, select
from pickgrad.noise import sample_gumbel


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


def sum_error(x: torch.Tensor) -> float:
    """Largest deviation of a row or column sum from 1 (every size here is square)."""
    x = x.detach().double()
    return max(float((x.sum(-1) - 1).abs().max()), float((x.sum(-2) - 1).abs().max()))


def plain_sinkhorn_forward_backward(scores, upstream, tau: float) -> float:
    """Plain 20-round Gumbel-Sinkhorn, forward and backward; returns its column-sum error."""
    leaf = scores.detach().requires_grad_()
    noise = sample_gumbel(scores.shape, dtype=scores.dtype, device=scores.device)
    x = mena_sinkhorn((leaf + noise) / tau)
    (x * upstream).sum().backward()
    return sum_error(x)


def relax_forward_backward(scores, upstream, tau: float) -> float:
    leaf = scores.detach().requires_grad_()
    noise = sample_gumbel(scores.shape, dtype=scores.dtype, device=scores.device)
    x = Permutation().relax(leaf + noise, tau)
    (x * upstream).sum().backward()
    return sum_error(x)


def st_gumbel_forward_backward(scores, upstream, tau: float) -> float:
    leaf = scores.detach().requires_grad_()
    x = select(leaf, Permutation(), "st-gumbel", tau=tau)
    (x * upstream).sum().backward()
    return sum_error(x)


def best_run(function: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Fastest time of ``repeats`` calls after a warm-up, and the largest error they report."""
    errors = [function()]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        errors.append(function())
        times.append(time.perf_counter() - start)
    return min(times), max(errors)


def bench_sinkhorn(shape: tuple[int, int, int], tau: float, repeats: int) -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(shape, generator=generator)
    upstream = torch.randn(shape, generator=generator)
    plain, plain_error = best_run(
        lambda: plain_sinkhorn_forward_backward(scores, upstream, tau), repeats
    )
    relax, relax_error = best_run(lambda: relax_forward_backward(scores, upstream, tau), repeats)
    st, _ = best_run(lambda: st_gumbel_forward_backward(scores, upstream, tau), repeats)
    target = 1.5 if tau >= 1 else 3.0
    print(
        f"  {shape!s:16s} tau {tau:<4g} plain-20 {plain * 1e3:8.1f} ms (err "
        f"{plain_error:.1e}) | relax {relax * 1e3:8.1f} ms (err {relax_error:.1e}) "
        f"{relax / plain:5.2f}x | st-gumbel {st * 1e3:8.1f} ms {st / plain:5.2f}x "
        f"(target <= {target}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--argmax-batch", type=int, default=1024)
    parser.add_argument("--argmax-n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shapes = [(64, 6, 6), (256, 50, 50), (16, 200, 200)]
    if args.quick:
        args.argmax_batch, args.argmax_n, args.repeats = 64, 8, 1
        shapes = [(64, 6, 6), (8, 20, 20)]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

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

    print(
        "Gumbel-Sinkhorn forward+backward (float32, CPU; best of repeats, "
        "largest row/column-sum error)"
    )
    for shape in shapes:
        for tau in (1.0, 0.1):
            bench_sinkhorn(shape, tau, args.repeats)


if __name__ == "__main__":
    main()
