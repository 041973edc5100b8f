"""How each structure's cost grows with n: argmax, and relax forward + backward.

For every structure, times ``argmax`` and ``relax`` + ``backward`` at sizes n from 4 up to the
largest practical size (1,000 for OneHot and Subset, 500 for Permutation and the trees), fits the
exponent of ``time ~ n^p`` on the upper half of the sizes (where fixed per-call costs no longer
dominate), and prints it beside the algorithm's theoretical exponent. A log-log plot is written
to ``scaling.png``.

The batch is fixed per structure (``BATCH``), so a curve shows the cost of one batch of that
size. Subset uses ``k = max(1, n // 10)``, so its dynamic programme over items and counts costs
``n * k ~ n^2``.

Run:
    python benchmarks/bench_scaling.py               # full sizes, default threads
    python benchmarks/bench_scaling.py --threads 1   # one thread
    python benchmarks/bench_scaling.py --quick       # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import pickgrad

#: (structure factory from n, scores shape from n, batch, full sizes, theoretical exponents).
CASES: dict[str, tuple[Callable[[int], pickgrad.Structure], int, list[int], dict[str, str]]] = {
    "OneHot": (
        lambda n: pickgrad.OneHot(),
        256,
        [4, 8, 16, 32, 64, 128, 256, 512, 1000],
        {"argmax": "1 (argmax over n)", "relax": "1 (softmax)"},
    ),
    "Subset": (
        lambda n: pickgrad.Subset(max(1, n // 10)),
        64,
        [10, 20, 40, 80, 160, 320, 640, 1000],
        {"argmax": "1 (top-k, k = n/10: ~n log k)", "relax": "2 (DP over n items x k counts)"},
    ),
    "Permutation": (
        lambda n: pickgrad.Permutation(),
        4,
        [4, 8, 16, 32, 64, 128, 256, 500],
        {"argmax": "3 (Hungarian / JV)", "relax": "2 per Sinkhorn iteration"},
    ),
    "SpanningTree": (
        lambda n: pickgrad.SpanningTree(),
        4,
        [4, 8, 16, 32, 64, 128, 256, 500],
        {"argmax": "2 (Prim on a dense graph)", "relax": "3 (Laplacian inverse)"},
    ),
    "Arborescence": (
        lambda n: pickgrad.Arborescence(),
        4,
        [4, 8, 16, 32, 64, 128, 256, 500],
        {"argmax": "2 to 3 (Chu-Liu/Edmonds, n contraction rounds)", "relax": "3 (inverse)"},
    ),
}

QUICK_SIZES = [4, 8, 12]


def scores_for(name: str, n: int, batch: int) -> torch.Tensor:
    shape = (batch, n) if name in ("OneHot", "Subset") else (batch, n, n)
    return torch.randn(shape, generator=torch.Generator().manual_seed(n))


def median_time(fn: Callable[[], object], budget: float, min_repeats: int = 3) -> float:
    """Median wall time of ``fn`` over repeats that fit in ``budget`` seconds (at least 3)."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < budget and len(times) < 50):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def fit_exponent(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) against log(n) over the upper half of the sizes."""
    half = max(2, len(sizes) // 2)
    xs = [math.log(n) for n in sizes[-half:]]
    ys = [math.log(t) for t in times[-half:]]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def measure(name: str, sizes: list[int], budget: float) -> dict[str, list[float]]:
    factory, batch, _, _ = CASES[name]
    out: dict[str, list[float]] = {"argmax": [], "relax": []}
    for n in sizes:
        structure = factory(n)
        scores = scores_for(name, n, batch)
        leaf = scores.clone().requires_grad_(True)

        def relax_step(structure: pickgrad.Structure = structure, leaf: torch.Tensor = leaf):
            leaf.grad = None
            structure.relax(leaf, tau=1.0).sum().backward()

        out["argmax"].append(
            median_time(lambda s=structure, x=scores: s.argmax(x), budget)  # type: ignore[misc]
        )
        out["relax"].append(median_time(relax_step, budget))
    return out


def plot(results: dict[str, tuple[list[int], dict[str, list[float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, op in zip(axes, ("argmax", "relax"), strict=True):
        for name, (sizes, times) in results.items():
            ax.loglog(sizes, [t * 1e3 for t in times[op]], marker="o", label=name)
        ax.set_xlabel("n")
        ax.set_ylabel("ms per batch")
        ax.set_title("argmax" if op == "argmax" else "relax forward + backward (tau = 1)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"pickgrad scaling, {torch.get_num_threads()} thread(s); batch per structure")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--structures", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of repeats per point")
    parser.add_argument("--plot", type=Path, default=Path("scaling.png"))
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    budget = 0.02 if args.quick else args.budget

    results: dict[str, tuple[list[int], dict[str, list[float]]]] = {}
    print(f"threads: {torch.get_num_threads()}")
    print(
        "| structure | batch | op | n range | fitted exponent | time per doubling of n | theoretical |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.structures:
        _, batch, full_sizes, theory = CASES[name]
        sizes = QUICK_SIZES if args.quick else full_sizes
        times = measure(name, sizes, budget)
        results[name] = (sizes, times)
        for op in ("argmax", "relax"):
            exponent = fit_exponent(sizes, times[op])
            print(
                f"| {name} | {batch} | {op} | {sizes[0]}-{sizes[-1]} | {exponent:.2f} "
                f"| {2**exponent:.2f}x | {theory[op]} |"
            )
    print()
    print("| structure | op | n range | ms per batch at each n |")
    print("|---|---|---|---|")
    for name, (sizes, times) in results.items():
        for op in ("argmax", "relax"):
            cells = ", ".join(f"{n}: {t * 1e3:.3g}" for n, t in zip(sizes, times[op], strict=True))
            print(f"| {name} | {op} | {sizes[0]}-{sizes[-1]} | {cells} |")
    plot(results, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
