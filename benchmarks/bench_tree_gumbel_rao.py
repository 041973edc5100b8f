"""Gumbel-Rao on spanning trees: its time against ``st-gumbel``'s, the mixing of the Gibbs
sampler behind it, and its gradient variance against ``st-gumbel``'s.

Run ``python benchmarks/bench_tree_gumbel_rao.py`` (``--quick`` for a seconds-long smoke run).

* speed: ``pickgrad.select(scores, SpanningTree(), name, tau=0.5)`` then a backward pass of
  ``(x * g).sum()``, for ``st-gumbel`` and ``gumbel-rao`` (10 draws), side by side at
  (batch, n, n) = (128, 10, 10) and (16, 50, 50); ratio = gumbel-rao time / st-gumbel time
  (target: at most 5). Also the sampler's own share (``conditional_gumbel`` alone).
* mixing (``--mixing``, also in the default run): on random 4- and 5-node graphs, draws of
  ``conditional_gumbel`` after s sweeps against rejection sampling from the unconditional law,
  for the most likely tree and a less likely one: the mean over coordinates of the squared
  z-score of the difference of means (1 is Monte Carlo noise alone; larger is burn-in bias).
* variance: per-sample gradients of a random linear loss on a 10-node problem at tau = 0.5;
  the sum over edges of their variance, gumbel-rao (10 draws) / st-gumbel (the Rao-Blackwell
  reduction), and the z-score of the difference of their means (no bias: |z| small).

Timings are the minimum over repeats (the machine may be shared).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import pickgrad
from _timing import best_time
from pickgrad import SpanningTree
from pickgrad.structures import edge_index


def bench_speed(batch: int, n: int, repeats: int, n_draws: int = 10) -> None:
    tree = SpanningTree()
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(batch, n, n, generator=generator)
    target = torch.randn(batch, n, n, generator=generator)

    def step(name: str, **options: object) -> Callable[[], None]:
        def run() -> None:
            leaf = scores.clone().requires_grad_()
            x = pickgrad.select(leaf, tree, name, tau=0.5, generator=generator, **options)
            (x * target).sum().backward()

        return run

    straight = best_time(step("st-gumbel"), repeats)
    rao = best_time(step("gumbel-rao", n_draws=n_draws), repeats)
    x = tree.argmax(scores)
    sampler = best_time(
        lambda: tree.conditional_gumbel(scores, x, n_draws, generator=generator), repeats
    )
    print(
        f"  ({batch}, {n}, {n}): st-gumbel {straight * 1e3:8.2f} ms   gumbel-rao(K={n_draws}) "
        f"{rao * 1e3:8.2f} ms   ratio {rao / straight:5.2f}x   "
        f"(sampler alone {sampler * 1e3:.2f} ms, {sampler / rao:.0%} of gumbel-rao)"
    )


def mixing(n: int, sweeps: list[int], n_samples: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    reference_tree = SpanningTree()
    index = edge_index(n)
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator) * 1.5
    uniform = torch.rand((n_samples, n, n), dtype=torch.float64, generator=generator)
    noise = -(-uniform.clamp_min(1e-300).log()).log()
    trees = reference_tree.argmax(scores + noise)[:, index[0], index[1]]
    unique, inverse, counts = torch.unique(trees, dim=0, return_inverse=True, return_counts=True)
    order = counts.argsort(descending=True)
    rare = [int(g) for g in order if counts[g] >= 2000][-1]
    for label, group in (("likeliest", int(order[0])), ("less likely", rare)):
        reference = noise[inverse == group][:, index[0], index[1]][:20_000]
        adjacency = torch.zeros(n, n, dtype=torch.float64)
        adjacency[index[0], index[1]] = unique[group]
        x = adjacency + adjacency.T
        line = []
        for n_sweeps in sweeps:
            draws = SpanningTree(n_sweeps=n_sweeps).conditional_gumbel(
                scores, x, reference.shape[0], generator=generator
            )[:, index[0], index[1]]
            se = (draws.var(0) / draws.shape[0] + reference.var(0) / reference.shape[0]).sqrt()
            z2 = ((draws.mean(0) - reference.mean(0)) / se).square().mean()
            line.append(f"{n_sweeps}: {float(z2):6.1f}")
        share = float(counts[group]) / n_samples
        print(f"  n={n} seed={seed} {label} tree (p={share:.3f}, {reference.shape[0]} draws):")
        print("    mean z^2 by sweeps  " + "  ".join(line))


def variance(n: int, n_samples: int) -> None:
    generator = torch.Generator().manual_seed(3)
    tree = SpanningTree()
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator)
    weights = torch.randn(n, n, dtype=torch.float64, generator=generator)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)

    def gradients(name: str, count: int, **options: object) -> torch.Tensor:
        leaf = scores.expand(count, n, n).clone().requires_grad_()
        x = pickgrad.select(leaf, tree, name, tau=0.5, generator=generator, **options)
        (grad,) = torch.autograd.grad((x * weights).sum(), leaf)
        return grad[:, upper]

    straight = gradients("st-gumbel", n_samples)
    rao = gradients("gumbel-rao", n_samples, n_draws=10)
    ratio = float(rao.var(0).sum() / straight.var(0).sum())
    se = (rao.var(0) / n_samples + straight.var(0) / n_samples).sqrt()
    z = float(((rao.mean(0) - straight.mean(0)) / se).abs().max())
    print(
        f"  n={n}, tau=0.5, {n_samples} samples each: total gradient variance gumbel-rao(K=10) / "
        f"st-gumbel = {ratio:.3f}x; largest |z| of the mean difference over "
        f"{int(upper.sum())} edges: {z:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--mixing", action="store_true", help="only the mixing measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared machines: one thread measures more steadily
    if not args.mixing:
        print("speed, forward + backward (minimum over repeats):")
        if args.quick:
            bench_speed(16, 10, repeats=2)
        else:
            bench_speed(128, 10, repeats=7)
            bench_speed(16, 50, repeats=5)
    print("mixing of conditional_gumbel against rejection sampling:")
    if args.quick:
        mixing(4, [1, 8], 20_000, seed=0)
    else:
        for n, seed in [(4, 0), (4, 1), (5, 0), (5, 1)]:
            mixing(n, [1, 2, 3, 4, 6, 8, 12, 16], 300_000, seed)
    if not args.mixing:
        print("gradient variance:")
        variance(5 if args.quick else 10, 500 if args.quick else 8000)


if __name__ == "__main__":
    main()
