"""Solver-based estimators against st-gumbel on OneHot: speed, and gradient quality vs exact.

Speed: time of ``select`` + ``backward`` on a batch of one-hot slots, as a ratio to st-gumbel.
Quality: on a tiny problem whose exact gradient of ``E[loss(x)]``, x ~ argmax(s + G), is known by
enumeration, the bias (relative norm of mean - exact), the cosine of the mean with the exact
gradient, the mean per-draw cosine, and the relative standard deviation of one draw.

Usage: ``python benchmarks/bench_solvers.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import pickgrad
from pickgrad import OneHot

ONEHOT = OneHot()

# name, options
ESTIMATORS: list[tuple[str, dict]] = [
    ("st-gumbel", {}),
    ("perturbed", {}),
    ("perturbed", {"n_perturbations": 10}),
    ("perturbed", {"n_perturbations": 10, "hard": True}),
    ("imle", {"lambda_": 1.0}),
    ("imle", {"lambda_": 1.0, "n_perturbations": 10}),
    ("imle", {"lambda_": 0.1, "n_perturbations": 10}),
    ("imle", {"lambda_": 1.0, "noise": "sum-of-gamma"}),
    ("blackbox", {"lambda_": 1.0}),
    ("blackbox", {"lambda_": 10.0}),
]


def _label(name: str, options: dict) -> str:
    return name + "".join(f" {key}={value}" for key, value in options.items())


def time_one(name: str, options: dict, shape: tuple[int, ...], repeats: int) -> float:
    """Median seconds of select + backward."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(shape, generator=gen).requires_grad_()
    weights = torch.randn(shape, generator=gen)
    times = []
    for _ in range(repeats + 1):
        scores.grad = None
        start = time.perf_counter()
        x = pickgrad.select(scores, ONEHOT, name, generator=gen, **options)
        (x * weights).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def tiny_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores (2, 4), loss weights, and the exact gradient of E[(<w, x> - 1)^2]."""
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    weights = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    picks = ONEHOT.enumerate((2, 4), dtype=torch.float64)  # (16, 2, 4)
    leaf = scores.clone().requires_grad_()
    log_p = (torch.log_softmax(leaf, -1) * picks).sum((-2, -1))
    losses = ((picks * weights).sum((-2, -1)) - 1) ** 2
    (log_p.exp() * losses).sum().backward()
    return scores, weights, leaf.grad


def quality(name: str, options: dict, draws: int) -> tuple[float, float, float, float]:
    scores, weights, exact = tiny_problem()
    gen = torch.Generator().manual_seed(2)
    grads = []
    for _ in range(draws):
        leaf = scores.clone().requires_grad_()
        surrogate = pickgrad.estimate(
            lambda x: ((x * weights).sum((-2, -1)) - 1) ** 2,
            leaf,
            ONEHOT,
            name,
            n_samples=1,
            generator=gen,
            **options,
        )
        surrogate.backward()
        grads.append(leaf.grad.flatten())
    grads_t = torch.stack(grads)
    exact_flat = exact.flatten()
    mean = grads_t.mean(0)
    bias = float((mean - exact_flat).norm() / exact_flat.norm())
    cosine_of_mean = float(torch.nn.functional.cosine_similarity(mean, exact_flat, dim=0))
    per_draw = torch.nn.functional.cosine_similarity(grads_t, exact_flat[None], dim=1)
    relative_sd = math.sqrt(float(grads_t.var(0).sum())) / float(exact_flat.norm())
    return bias, cosine_of_mean, float(per_draw.mean()), relative_sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = (16, 8, 32) if args.quick else (256, 8, 32)
    repeats = 3 if args.quick else 20
    draws = 50 if args.quick else 2000

    print(f"OneHot speed: select + backward on scores {shape}, median of {repeats}, 1 thread")
    times = [time_one(name, options, shape, repeats) for name, options in ESTIMATORS]
    reference = times[0]  # st-gumbel
    print(f"{'estimator':44s} {'ms':>9s} {'x st-gumbel':>12s}")
    for (name, options), seconds in zip(ESTIMATORS, times, strict=True):
        print(f"{_label(name, options):44s} {1e3 * seconds:9.3f} {seconds / reference:12.2f}")

    print()
    print(
        f"Gradient of E[(<w, x> - 1)^2], x in OneHot (2, 4), vs exact by enumeration; {draws} draws"
    )
    print(f"{'estimator':44s} {'bias':>8s} {'cos(mean)':>10s} {'cos/draw':>9s} {'sd/|g|':>8s}")
    for name, options in ESTIMATORS:
        bias, cosine_of_mean, per_draw, relative_sd = quality(name, options, draws)
        print(
            f"{_label(name, options):44s} {bias:8.3f} {cosine_of_mean:10.3f} "
            f"{per_draw:9.3f} {relative_sd:8.3f}"
        )


if __name__ == "__main__":
    main()
