"""Threads: every structure's hot op at one torch thread against torch's default thread count, on
a quiet machine and beside one busy process (issue 13.6).

For each op (argmax, or relax / st-gumbel forward + backward) at the training-step sizes of the
other benchmarks, the wall time at one thread and at the default count is measured in
interleaved rounds (one call at each count in turn, so slow drift hits both), and the ratio
default / one thread is printed: above 1 the extra threads cost time. With ``--busy`` a second
process spins on one core for the whole run (the documented load: ``python -c "while True:
pass"``), the situation of a user training beside other work. The target of issue 13.6 is a
ratio of at most 1.2x everywhere, in both conditions.

Wall time, not CPU time: threads are what is measured, and CPU time counts every thread.

    python benchmarks/bench_threads.py            # quiet machine
    python benchmarks/bench_threads.py --busy     # beside one spinning process
    python benchmarks/bench_threads.py --quick    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import pickgrad
from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset


def forward_backward(
    structure: object, shape: tuple[int, ...], estimator: str | None, **options: object
) -> Callable[[], None]:
    """One ``relax`` (estimator None) or ``select`` forward and backward on fresh random scores."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(shape, generator=generator).requires_grad_()
    weights = torch.randn(shape, generator=generator)

    def run() -> None:
        if estimator is None:
            out = structure.relax(scores, 1.0, **options)  # type: ignore[attr-defined]
        else:
            out = pickgrad.select(scores, structure, estimator, tau=1.0, **options)  # type: ignore[arg-type]
        (out * weights).sum().backward()
        scores.grad = None

    return run


def argmax(structure: object, shape: tuple[int, ...], **options: object) -> Callable[[], None]:
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return lambda: structure.argmax(scores, **options)  # type: ignore[attr-defined]


def cases(quick: bool) -> list[tuple[str, Callable[[], None]]]:
    """The ops of issue 13.6: the sizes of issues 13.1 to 13.3 (and OneHot's demo size)."""
    listops = torch.randint(10, 51, (100,), generator=torch.Generator().manual_seed(1))
    listops[0] = 50
    if quick:
        return [
            ("Subset(3) st-gumbel (128, 20)", forward_backward(Subset(3), (128, 20), "st-gumbel")),
            ("SpanningTree argmax (64, 10, 10)", argmax(SpanningTree(), (64, 10, 10))),
        ]
    out: list[tuple[str, Callable[[], None]]] = [
        (
            "OneHot st-gumbel (4096, 16, 64)",
            forward_backward(OneHot(), (4096, 16, 64), "st-gumbel"),
        ),
    ]
    for k, shape in ((3, (128, 20)), (9, (128, 90)), (10, (1024, 200))):
        out.append((f"Subset({k}) relax {shape}", forward_backward(Subset(k), shape, None)))
        out.append(
            (f"Subset({k}) st-gumbel {shape}", forward_backward(Subset(k), shape, "st-gumbel"))
        )
    for shape in ((64, 6, 6), (256, 50, 50), (16, 200, 200)):
        out.append((f"Permutation relax {shape}", forward_backward(Permutation(), shape, None)))
        out.append((f"Permutation argmax {shape}", argmax(Permutation(), shape)))
    out.append(("Permutation argmax (1024, 20, 20)", argmax(Permutation(), (1024, 20, 20))))
    for label, structure in (("SpanningTree", SpanningTree()), ("Arborescence", Arborescence())):
        for shape in ((64, 10, 10), (1024, 10, 10), (8, 50, 50)):
            out.append((f"{label} relax {shape}", forward_backward(structure, shape, None)))
            out.append((f"{label} argmax {shape}", argmax(structure, shape)))
        shape = (100, 50, 50)
        out.append(
            (
                f"{label} relax {shape} lengths",
                forward_backward(structure, shape, None, lengths=listops),
            )
        )
        out.append((f"{label} argmax {shape} lengths", argmax(structure, shape, lengths=listops)))
    return out


def interleaved(run: Callable[[], None], counts: list[int], rounds: int) -> list[float]:
    """Median over ``rounds`` of the wall time of one call at each thread count in turn."""
    times: dict[int, list[float]] = {count: [] for count in counts}
    for count in counts:  # warm-up at each count
        torch.set_num_threads(count)
        run()
    for _ in range(rounds):
        for count in counts:
            torch.set_num_threads(count)
            start = time.perf_counter()
            run()
            times[count].append(time.perf_counter() - start)
    return [statistics.median(times[count]) for count in counts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--busy", action="store_true", help="beside one process spinning on a core")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per op")
    args = parser.parse_args()
    default = torch.get_num_threads()
    counts = [1, default]
    rounds = 3 if args.quick else args.rounds
    spinner = None
    if args.busy:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        condition = "beside one busy process" if args.busy else "no other load started"
        print(
            f"torch {torch.__version__}, default threads {default}, {condition}; median of {rounds}"
        )
        worst = 0.0
        with pickgrad.validation(True):
            for label, run in cases(args.quick):
                one, many = interleaved(run, counts, rounds)
                ratio = many / one
                worst = max(worst, ratio)
                flag = "  <-- over 1.2x" if ratio > 1.2 else ""
                print(
                    f"{label:44s} 1 thread {one * 1e3:9.2f} ms   {default} threads "
                    f"{many * 1e3:9.2f} ms   ratio {ratio:5.2f}x{flag}"
                )
        print(f"worst ratio default / one thread: {worst:.2f}x (target <= 1.2x)")
    finally:
        torch.set_num_threads(default)
        if spinner is not None:
            spinner.kill()
            spinner.wait()


if __name__ == "__main__":
    main()
