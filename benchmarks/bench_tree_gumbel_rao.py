"""Gumbel-Rao on spanning trees: its time against ``st-gumbel``'s, the mixing of the Gibbs
sampler behind it, and its gradient variance against ``st-gumbel``'s.

Run ``python benchmarks/bench_tree_gumbel_rao.py`` (``--quick`` for a seconds-long smoke run).

* speed: ``pickgrad.select(scores, SpanningTree(), name, tau=0.5)`` then a backward pass of
  ``(x * g).sum()``, for ``st-gumbel`` and ``gumbel-rao`` (10 draws), side by side at
  (batch, n, n) = (128, 10, 10) and (16, 50, 50); ratio = gumbel-rao time / st-gumbel time
  (target: at most 5), in wall time and in the process's CPU time (steadier on a shared
  machine). Also the sampler's own time (``conditional_gumbel`` from a start, gumbel-rao's
  path, with validation off) and the
  floor any sampler leaves: ``relax`` forward and backward on the 10 draws alone.
* mixing (``--mixing``, also in the default run): on random 4- and 5-node graphs, draws of
  ``conditional_gumbel`` after s sweeps against rejection sampling from the unconditional law,
  for the most likely tree and a less likely one: the mean over coordinates of the squared
  z-score of the difference of means (1 is Monte Carlo noise alone; larger is burn-in bias).
* burn-in at larger sizes (``--burn-in``, also in the default run): where rejection sampling
  is out of reach (n = 10, 50), chains after s sweeps against chains after 64 sweeps (near
  stationary), same statistic (mean squared z-score of the edge means' difference).
* chains (``--chains``, also in the default run): K = 10 draws from K independent chains
  against fewer chains each giving d successive states (``draws_per_chain`` d, ``thin``):
  gumbel-rao's gradient variance relative to st-gumbel's (10 nodes, tau 0.5), the largest
  |z| of its mean against st-gumbel's, and the sampler's CPU time at both speed sizes.
* variance: per-sample gradients of a random linear loss on a 10-node problem at tau = 0.5;
  the sum over edges of their variance, gumbel-rao (10 draws) / st-gumbel (the Rao-Blackwell
  reduction), and the z-score of the difference of their means (no bias: |z| small).

Timings are the minimum over repeats (the machine may be shared); the speed candidates are
timed interleaved, one call each per repeat, so that they share the load.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

import pickgrad
from pickgrad import SpanningTree
from pickgrad.noise import sample_gumbel
from pickgrad.structures import edge_index
from pickgrad.structures._tree_conditional import conditional_tree_gumbel, default_sweeps


def gumbel(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return sample_gumbel(shape, dtype=like.dtype, device=like.device, generator=generator)


def best_cpu_time(fn: Callable[[], object], repeats: int) -> float:
    """Minimum CPU time of this process (one thread) over ``repeats`` calls, after a warm-up:
    time spent waiting for the CPU on a loaded machine is not counted."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


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

    forward = gumbel(scores.shape, scores, generator)
    x = tree.argmax(scores + forward)
    noisy = scores + gumbel((n_draws, batch, n, n), scores, generator)

    def relax_draws() -> None:
        leaf = noisy.clone().requires_grad_()
        (tree.relax(leaf, 0.5).mean(0) * target).sum().backward()

    def sampler() -> None:
        with pickgrad.validation(False):
            tree.conditional_gumbel(scores, x, n_draws, generator=generator, start=forward)

    # Interleaved: each repeat times every candidate once, so that they share the machine's
    # load; the minimum per candidate and clock is kept.
    candidates = {
        "st": step("st-gumbel"),
        "rao": step("gumbel-rao", n_draws=n_draws),
        "sampler": sampler,
        "relax": relax_draws,
    }
    best = {(name, clock): math.inf for name in candidates for clock in ("wall", "cpu ")}
    for fn in candidates.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in candidates.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            best[name, "cpu "] = min(best[name, "cpu "], time.process_time() - cpu)
            best[name, "wall"] = min(best[name, "wall"], time.perf_counter() - wall)
    for label in ("wall", "cpu "):
        straight, rao = best["st", label], best["rao", label]
        alone, floor = best["sampler", label], best["relax", label]
        print(
            f"  ({batch}, {n}, {n}) {label}: st-gumbel {straight * 1e3:7.2f} ms   "
            f"gumbel-rao(K={n_draws}) {rao * 1e3:7.2f} ms   ratio {rao / straight:5.2f}x   "
            f"(sampler alone {alone * 1e3:.2f} ms; relax of the {n_draws} draws alone "
            f"{floor * 1e3:.2f} ms = {floor / straight:.2f}x st-gumbel)"
        )


def burn_in(n: int, batch: int, sweeps: list[int], n_chains: int, seed: int) -> None:
    """Independent chains without a start (one draw each) after s sweeps against chains after
    64 sweeps: the mean over edges of the squared z-score of the difference of the means."""
    generator = torch.Generator().manual_seed(seed)
    tree = SpanningTree()
    index = edge_index(n)
    scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    x = tree.argmax(scores + gumbel(scores.shape, scores, generator))

    def draws(n_sweeps: int) -> torch.Tensor:
        noise = conditional_tree_gumbel(
            scores, x, n_chains, generator, n_sweeps=n_sweeps, draws_per_chain=1
        )
        return noise[..., index[0], index[1]].reshape(n_chains, -1)

    reference = draws(64)
    line = []
    for n_sweeps in sweeps:
        sample = draws(n_sweeps)
        se = (sample.var(0) / n_chains + reference.var(0) / n_chains).sqrt()
        z2 = ((sample.mean(0) - reference.mean(0)) / se).square().mean()
        line.append(f"{n_sweeps}: {float(z2):6.2f}")
    print(
        f"  n={n}, {batch} graphs x {index.shape[1]} edges, {n_chains} chains each, vs 64 "
        f"sweeps (default {default_sweeps(n)}):"
    )
    print("    mean z^2 by sweeps  " + "  ".join(line))


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


def chains(n_samples: int, settings: list[tuple[bool, int, int, int]], repeats: int) -> None:
    """Each setting ``(start, chains, n_sweeps, thin[, half_sweeps])``: K = 10 draws from
    ``chains`` chains per graph, started at the forward noise (``start``) or not (burn-in), the
    first state kept after ``n_sweeps`` sweeps and then every ``thin`` sweeps (with
    ``half_sweeps``, also the state after each tree update)."""
    generator = torch.Generator().manual_seed(3)
    tree = SpanningTree()
    n, n_draws = 10, 10
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator)
    weights = torch.randn(n, n, dtype=torch.float64, generator=generator)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    batch = scores.expand(n_samples, n, n)
    leaf = batch.clone().requires_grad_()
    x = pickgrad.select(leaf, tree, "st-gumbel", tau=0.5, generator=generator)
    (straight,) = torch.autograd.grad((x * weights).sum(), leaf)
    straight = straight[:, upper]
    sizes = [(128, 10), (16, 50)]
    problems = []
    for size, nodes in sizes:
        s = torch.randn(size, nodes, nodes, generator=generator)
        g = gumbel(s.shape, s, generator)
        problems.append((s, tree.argmax(s + g), g))
    for from_start, count, n_sweeps, thin, *half in settings:
        per_chain = -(-n_draws // count)
        options: dict[str, object] = {"draws_per_chain": per_chain, "thin": thin}
        options.update(n_sweeps=n_sweeps, half_sweeps=bool(half and half[0]))
        forward = gumbel(batch.shape, batch, generator)
        hard = tree.argmax(batch + forward)
        start = forward if from_start else None
        noise = conditional_tree_gumbel(batch, hard, n_draws, generator, start=start, **options)
        leaf = batch.clone().requires_grad_()
        soft = tree.relax(leaf + noise, 0.5).mean(0)
        (rao,) = torch.autograd.grad((soft * weights).sum(), leaf)
        rao = rao[:, upper]
        ratio = float(rao.var(0).sum() / straight.var(0).sum())
        se = (rao.var(0) / n_samples + straight.var(0) / n_samples).sqrt()
        z = float(((rao.mean(0) - straight.mean(0)) / se).abs().max())
        times = []
        for s, t, g in problems:
            begin = g if from_start else None
            times.append(
                best_cpu_time(
                    lambda s=s, t=t, b=begin, o=options: conditional_tree_gumbel(
                        s, t, n_draws, generator, start=b, **o
                    ),
                    repeats,
                )
            )
        label = ("start" if from_start else "burn-in") + (
            " + half-sweep states" if half and half[0] else ""
        )
        print(
            f"  {label:26s} chains {count:2d} x draws {per_chain:2d}, first after {n_sweeps:2d} "
            f"sweeps, thin {thin}: variance {ratio:.3f}x st-gumbel, max |z| {z:.2f}; sampler "
            f"CPU (128, 10, 10) {times[0] * 1e3:.1f} ms, (16, 50, 50) {times[1] * 1e3:.1f} ms"
        )


#: (n, graphs, chains per graph) of ``--burn-in``, and the sweeps compared.
BURN_IN_SIZES = [(10, 4, 4000), (20, 2, 3000), (30, 2, 2000), (50, 1, 2000), (100, 1, 1000)]
BURN_IN_SWEEPS = [2, 4, 6, 8, 12, 16, 20, 24, 32]

#: The chain layouts compared by ``--chains``: (start, chains per graph, sweeps to the first
#: kept state, thin[, half_sweeps: also keep the state after each tree update]).
CHAIN_SETTINGS = [
    (False, 10, 8, 1),
    (False, 2, 8, 1),
    (True, 10, 1, 1),
    (True, 10, 2, 1),
    (True, 5, 1, 1),
    (True, 2, 1, 1),
    (True, 1, 1, 1),
    (True, 1, 1, 2),
    (True, 2, 2, 2),
    (True, 1, 1, 1, True),
    (True, 2, 1, 1, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--mixing", action="store_true", help="only the mixing measurement")
    parser.add_argument("--burn-in", action="store_true", help="only the burn-in at n = 10, 50")
    parser.add_argument("--chains", action="store_true", help="only draws per chain")
    parser.add_argument("--speed", action="store_true", help="only the speed side by side")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared machines: one thread measures more steadily
    only = args.mixing or args.burn_in or args.chains or args.speed
    if args.speed or not only:
        print("speed, forward + backward (minimum over repeats):")
        if args.quick:
            bench_speed(16, 10, repeats=2)
        else:
            bench_speed(128, 10, repeats=15)
            bench_speed(16, 50, repeats=10)
    if args.mixing or not only:
        print("mixing of conditional_gumbel against rejection sampling:")
        if args.quick:
            mixing(4, [1, 8], 20_000, seed=0)
        else:
            for n, seed in [(4, 0), (4, 1), (5, 0), (5, 1)]:
                mixing(n, [1, 2, 3, 4, 6, 8, 12, 16], 300_000, seed)
    if args.burn_in or not only:
        print("burn-in of conditional_gumbel against long chains:")
        if args.quick:
            burn_in(6, 2, [1, 8], 500, seed=0)
        else:
            for n, batch, n_chains in BURN_IN_SIZES:
                burn_in(n, batch, BURN_IN_SWEEPS, n_chains, seed=0)
    if args.chains or not only:
        print("K = 10 draws from fewer chains (gumbel-rao's gradient, 10 nodes, tau 0.5):")
        if args.quick:
            chains(300, [(False, 2, 8, 1), (True, 1, 1, 1)], repeats=1)
        else:
            chains(3000, CHAIN_SETTINGS, repeats=5)
    if not only:
        print("gradient variance:")
        variance(5 if args.quick else 10, 500 if args.quick else 8000)


if __name__ == "__main__":
    main()
