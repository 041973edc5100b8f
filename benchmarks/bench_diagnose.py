"""The estimator advisor on every built-in problem: full tables and recommendations.

Runs ``pickgrad diagnose`` on every built-in problem (the two demo tasks at their initial
network, the Bernoulli toy, the three polynomial toys, the categorical quadratic) with a
temperature sweep, printing each problem's table (bias, noise floor, std, MSE, cosines, sign
agreement, time per gradient, MSE x time), its MSE-against-tau table and the recommendation,
then a summary of the recommendations. These are the tables recorded in BENCHMARKS.md.

    python benchmarks/bench_diagnose.py            # about a minute or two on 2 CPU cores
    python benchmarks/bench_diagnose.py --quick    # seconds-long smoke run
"""

from __future__ import annotations

import argparse
import sys
import time

from pickgrad.cli import main as pickgrad_main

TAU_SWEEP = ("0.25", "0.5", "1", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--n-samples", type=int, default=200, help="gradient draws per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="pickgrad-out/bench-diagnose")
    args = parser.parse_args(argv)
    command = [
        "diagnose",
        "--n-samples",
        str(args.n_samples),
        "--tau",
        "1",
        "--tau-sweep",
        *TAU_SWEEP,
        "--seed",
        str(args.seed),
        "--out",
        args.out,
        "--no-progress",
    ]
    if args.quick:
        command += ["--quick", "--problem", "bernoulli", "polynomial-2"]
    print("command: pickgrad " + " ".join(command))
    print()
    start = time.perf_counter()
    code = pickgrad_main(command)
    print(f"total wall time: {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
