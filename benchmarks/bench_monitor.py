"""Training cost with the GradientMonitor at an interval against off, side by side.

For each experiment (quick settings, more steps) and estimator, runs alternate (off, on, off,
on, ...) in one process at one thread, so load changes on the shared machine hit both; each
run's CPU time (``time.process_time``: robust to other processes on the machine) is compared,
and the monitor's own share of the "on" runs is read from its records (wall time of the
measurements over the run's training wall time, same window).

Usage: python bench_monitor.py [--every N] [--repeats R] [--steps S] [--quick]

``--quick`` (tests/test_benchmarks.py) runs graph-layout only, 20 steps, every 10, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pickgrad.diagnostics.monitor import DEFAULT_EVERY
from pickgrad.experiments import get_experiment, run_experiment

SETTINGS = {
    "graph-layout": dict(methods=("tree",), estimators=("st-gumbel", "reinforce")),
    "listops": dict(methods=("arborescence",), estimators=("st-gumbel", "reinforce")),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--experiments", nargs="+", default=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.quick:
        args.every, args.repeats, args.steps, args.experiments = 10, 1, 20, ["graph-layout"]
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_monitor_"))
    print(f"every={args.every} steps={args.steps} repeats={args.repeats} threads=1")
    print(
        "| experiment | estimator | off: CPU ms/step (runs) | on: CPU ms/step (runs) "
        "| on/off (medians) | on/off - 1 (median; runs) | monitor share of training wall time (runs) "
        "| ms per measurement | measurements |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.experiments:
        experiment = get_experiment(name)
        quick = experiment.default_config(quick=True)
        base = dataclasses.replace(
            quick,
            steps=args.steps,
            eval_every=args.steps,
            checkpoint_every=10 * args.steps,
            progress=False,
            threads=1,
            **SETTINGS[name],
        )
        experiment.load_data(base, root / "cache")  # generated once, outside the timings
        # Warm-up (imports, plotting, first-call costs) outside the timings.
        run_experiment(
            experiment,
            dataclasses.replace(base, steps=2, eval_every=2, monitor_every=1),
            root / f"{name}_warmup",
            cache_dir=root / "cache",
        )
        for estimator in base.estimators:
            cpu: dict[int, list[float]] = {0: [], args.every: []}
            shares, costs, counts = [], [], 0
            for repeat in range(args.repeats):
                for every in (0, args.every):
                    config = dataclasses.replace(base, monitor_every=every, estimators=(estimator,))
                    start = time.process_time()
                    results = run_experiment(
                        experiment,
                        config,
                        root / f"{name}_{estimator}_{every}_{repeat}",
                        cache_dir=root / "cache",
                    )
                    cpu[every].append((time.process_time() - start) / args.steps)
                    if every:
                        (run,) = results["runs"]
                        seconds = sum(r["seconds"] for r in run["monitor"])
                        shares.append(seconds / (run["wall_s"] - seconds))
                        costs.append(seconds / len(run["monitor"]))
                        counts = len(run["monitor"])
            off, on = cpu[0], cpu[args.every]
            ratios = [b / a - 1 for a, b in zip(off, on, strict=True)]
            print(
                f"| {name} | {estimator} | {statistics.median(off) * 1e3:.1f} "
                f"({', '.join(f'{t * 1e3:.1f}' for t in off)}) "
                f"| {statistics.median(on) * 1e3:.1f} ({', '.join(f'{t * 1e3:.1f}' for t in on)}) "
                f"| {statistics.median(on) / statistics.median(off):.3f}x "
                f"| {statistics.median(ratios):+.1%} ({', '.join(f'{r:+.1%}' for r in ratios)}) "
                f"| {statistics.median(shares):.1%} ({', '.join(f'{s:.1%}' for s in shares)}) "
                f"| {statistics.median(costs) * 1e3:.0f} | {counts} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
