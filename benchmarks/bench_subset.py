"""Subset(k): relax and st-gumbel forward+backward against a top-k straight-through, side by side.

Compared in one run, interleaved, on the same fresh inputs (a pool of score tensors cycled
through, so no timing sees the same data twice in a row: torch.topk is much faster on data it has
just seen):

* ``obvious``: the "obvious alternative" a user would write: a hard top-k mask
  (``torch.topk`` + ``scatter``) with the gradient of ``softmax(scores / tau)`` (straight-through).
* ``relax``: ``Subset(k).relax(scores, tau)`` (exact k-subset marginals) + ``backward``.
* ``st-gumbel``: ``pickgrad.select(scores, Subset(k), "st-gumbel")`` + ``backward``.
* ``gumbel-rao`` (K = 10 conditional draws) against ``st-gumbel`` at the first size.
* ``reference``: what published k-subset code does (a per-example Python dynamic programme with a
  finite-difference Jacobian), against ``relax``, on a small batch; the two must agree.

Ratios are ``time / time of the obvious alternative`` (targets: relax and st-gumbel <= 3x,
gumbel-rao <= 3x st-gumbel) and ``reference / relax`` (target >= 20x). Times are the best of
``--repeats`` interleaved runs (the least disturbed on a shared machine). Each row also prints the
float32 result's largest distance to the float64 result of the same inputs.

Run:
    python benchmarks/bench_subset.py                  # the three sizes, 1 thread and default
    python benchmarks/bench_subset.py --threads 1      # one thread only
    python benchmarks/bench_subset.py --quick          # a seconds-long smoke run
    python benchmarks/bench_subset.py --no-reference   # without the minutes-long reference
    python benchmarks/bench_subset.py --few-subsets    # the definition against the column form
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch

import pickgrad
from pickgrad import Subset
from pickgrad.structures import _subset_marginals

SIZES = ((128, 20, 3), (128, 90, 9), (1024, 200, 10))


def obvious_alternative(scores: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """Hard top-k mask in the forward pass, the gradient of softmax(scores / tau) backward."""
    hard = torch.zeros_like(scores).scatter_(-1, torch.topk(scores, k).indices, 1.0)
    soft = torch.softmax(scores / tau, -1)
    return hard + soft - soft.detach()


def forward_backward(
    method: Callable[[torch.Tensor], torch.Tensor], upstream: torch.Tensor
) -> Callable[[torch.Tensor], None]:
    def run(scores: torch.Tensor) -> None:
        leaf = scores.detach().requires_grad_()
        (method(leaf) * upstream).sum().backward()

    return run


def interleaved_best(
    methods: dict[str, Callable[[torch.Tensor], None]], pool: list[torch.Tensor], repeats: int
) -> dict[str, float]:
    """Best time in seconds of each method, run in turn on the same fresh input each round.

    The order rotates from round to round: the first method of a round meets the input out of
    cache, which costs it about 10% at these sizes."""
    for method in methods.values():
        method(pool[0])  # warm-up
    best = dict.fromkeys(methods, float("inf"))
    names = list(methods)
    for round_ in range(repeats):
        scores = pool[(round_ + 1) % len(pool)]
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            start = time.perf_counter()
            methods[name](scores)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


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


def _methods(
    structure: Subset, k: int, tau: float, upstream: torch.Tensor
) -> dict[str, Callable[[torch.Tensor], None]]:
    return {
        "obvious": forward_backward(lambda s: obvious_alternative(s, k, tau), upstream),
        "relax": forward_backward(lambda s: structure.relax(s, tau), upstream),
        "st-gumbel": forward_backward(
            lambda s: pickgrad.select(s, structure, "st-gumbel", tau=tau), upstream
        ),
    }


def run_sizes(sizes, tau: float, repeats: int, pool_size: int) -> None:
    for batch, n, k in sizes:
        generator = torch.Generator().manual_seed(batch * 1000 + n)
        pool = [torch.randn(batch, n, generator=generator) for _ in range(pool_size)]
        upstream = torch.randn(batch, n, generator=generator)
        structure = Subset(k)
        methods = _methods(structure, k, tau, upstream)
        best = interleaved_best(methods, pool, repeats)
        error = float(
            (structure.relax(pool[0], tau).double() - structure.relax(pool[0].double(), tau))
            .abs()
            .max()
        )
        base = best["obvious"]
        print(
            f"  ({batch}, {n}, k={k}): obvious {base * 1e3:8.3f} ms | relax {best['relax'] * 1e3:8.3f}"
            f" ms = {best['relax'] / base:5.2f}x | st-gumbel {best['st-gumbel'] * 1e3:8.3f} ms = "
            f"{best['st-gumbel'] / base:5.2f}x (target <= 3x) | float32 vs float64 {error:.1e}"
        )


def run_gumbel_rao(size, tau: float, repeats: int, pool_size: int) -> None:
    batch, n, k = size
    generator = torch.Generator().manual_seed(7)
    pool = [torch.randn(batch, n, generator=generator) for _ in range(pool_size)]
    upstream = torch.randn(batch, n, generator=generator)
    structure = Subset(k)
    methods = {
        "st-gumbel": forward_backward(
            lambda s: pickgrad.select(s, structure, "st-gumbel", tau=tau), upstream
        ),
        "gumbel-rao": forward_backward(
            lambda s: pickgrad.select(s, structure, "gumbel-rao", tau=tau), upstream
        ),
    }
    best = interleaved_best(methods, pool, repeats)
    print(
        f"  ({batch}, {n}, k={k}): st-gumbel {best['st-gumbel'] * 1e3:8.3f} ms | gumbel-rao "
        f"(K=10) {best['gumbel-rao'] * 1e3:8.3f} ms = "
        f"{best['gumbel-rao'] / best['st-gumbel']:5.2f}x st-gumbel (target <= 3x)"
    )


def run_reference(batch: int, n: int, k: int, tau: float, repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, n, generator=generator)
    upstream = torch.randn(batch, n, generator=generator)
    leaf_times = []
    for _ in range(repeats):
        leaf = scores.clone().requires_grad_()
        start = time.perf_counter()
        ours = Subset(k).relax(leaf, tau)
        (ours * upstream).sum().backward()
        leaf_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    theirs, their_grad = reference_forward_backward(
        scores.double().numpy(), upstream.double().numpy(), k, tau
    )
    reference_s = time.perf_counter() - start
    marginal_error = float(np.abs(ours.detach().double().numpy() - theirs).max())
    grad_error = float(np.abs(leaf.grad.double().numpy() - their_grad).max())
    print(
        f"  ({batch}, {n}, k={k}): relax {min(leaf_times) * 1e3:8.3f} ms | reference "
        f"{reference_s * 1e3:9.1f} ms = {reference_s / min(leaf_times):7.1f}x (target >= 20x) | "
        f"max |marginal diff| {marginal_error:.1e}, max |grad diff| {grad_error:.1e}"
    )


#: Sizes of the few-subsets comparison: C(n, k) from 120 to 924, around the limit (256).
FEW_SUBSETS = ((128, 10, 3), (128, 10, 4), (128, 10, 5), (128, 12, 4), (4096, 10, 4), (128, 12, 6))


class _ColumnProgramme:
    """Within it, the k-subset marginals use the column programme at every size."""

    def __enter__(self) -> None:
        self.saved = _subset_marginals._ENUMERATION_LIMIT
        _subset_marginals._ENUMERATION_LIMIT = 0

    def __exit__(self, *_: object) -> None:
        _subset_marginals._ENUMERATION_LIMIT = self.saved


def run_few_subsets(sizes, tau: float, repeats: int, pool_size: int) -> None:
    """The marginals from their definition (what ``C(n, k) <= 256`` uses) against the column
    programme, for relax, st-gumbel and gumbel-rao (K = 10) forward+backward, interleaved."""
    for batch, n, k in sizes:
        generator = torch.Generator().manual_seed(batch * 1000 + n)
        pool = [torch.randn(batch, n, generator=generator) for _ in range(pool_size)]
        upstream = torch.randn(batch, n, generator=generator)
        structure = Subset(k)
        calls = {
            "relax": lambda s, st=structure: st.relax(s, tau),
            "st-gumbel": lambda s, st=structure: pickgrad.select(s, st, "st-gumbel", tau=tau),
            "gumbel-rao": lambda s, st=structure: pickgrad.select(
                s, st, "gumbel-rao", tau=tau, n_draws=10
            ),
        }
        methods: dict[str, Callable[[torch.Tensor], None]] = {}
        for name, call in calls.items():
            plain = forward_backward(call, upstream)
            methods[f"{name} definition"] = plain

            def column(scores: torch.Tensor, plain=plain) -> None:
                with _ColumnProgramme():
                    plain(scores)

            methods[f"{name} column"] = column
        best = interleaved_best(methods, pool, repeats)
        with _ColumnProgramme():
            column_result = structure.relax(pool[0].double(), tau)
        error = float((structure.relax(pool[0].double(), tau) - column_result).abs().max())
        parts = [
            f"{name} {best[name + ' definition'] * 1e3:.3f} / {best[name + ' column'] * 1e3:.3f} ms"
            f" = {best[name + ' column'] / best[name + ' definition']:.2f}x"
            for name in calls
        ]
        print(
            f"  ({batch}, {n}, k={k}), C(n, k) = {math.comb(n, k)}: definition / column, "
            f"speed-up: {' | '.join(parts)} | largest difference {error:.1e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds-long smoke run")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds (best of)")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the per-example Python reference (minutes long on a busy machine)",
    )
    parser.add_argument(
        "--threads",
        default="1,default",
        help="comma-separated torch thread counts to run with ('default': torch's own count)",
    )
    parser.add_argument(
        "--few-subsets",
        action="store_true",
        help="only the marginals from their definition against the column programme, at "
        "C(n, k) from 120 to 924 (one thread)",
    )
    args = parser.parse_args()
    if args.few_subsets:
        torch.set_num_threads(1)
        sizes, repeats = (((16, 10, 4),), 3) if args.quick else (FEW_SUBSETS, args.repeats)
        print(f"torch threads 1; tau {args.tau}; float32 scores; best of {repeats}")
        run_few_subsets(sizes, args.tau, repeats, pool_size=7)
        return
    default_threads = torch.get_num_threads()
    threads = [
        default_threads if item.strip() == "default" else int(item)
        for item in args.threads.split(",")
    ]
    sizes: tuple[tuple[int, int, int], ...] = SIZES
    reference = (128, 90, 9)
    if args.quick:
        sizes, reference, args.repeats = ((16, 20, 3), (8, 40, 5)), (4, 20, 4), 3
    for count in dict.fromkeys(threads):
        torch.set_num_threads(count)
        label = f"{count} (default)" if count == default_threads else str(count)
        print(f"torch threads {label}; tau {args.tau}; float32 scores; best of {args.repeats}")
        print("relax and st-gumbel forward+backward, ratio to a top-k straight-through:")
        run_sizes(sizes, args.tau, args.repeats, pool_size=7)
        print("gumbel-rao against st-gumbel:")
        run_gumbel_rao(sizes[0], args.tau, args.repeats, pool_size=7)
        if not args.no_reference:
            print("relax against a per-example Python DP with finite differences (reference):")
            run_reference(*reference, args.tau, repeats=min(args.repeats, 5))
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
