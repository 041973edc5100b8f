"""Training cost with the GradientMonitor at its default interval against off, side by side.

For each experiment (its quick setting, more steps; the VAE on digits at its documented model
and batch) and estimator, monitored and unmonitored runs of the same training alternate in one
process at one thread (off, on, then on, off, ...: each pair in the other order than the last,
so a load trend on the shared machine does not favour one side). CPU time, not wall time, is
compared (``time.process_time`` plus the CPU of any child process: robust to the other
processes on the machine):

* ``train CPU``: the training loop's CPU per step (``result["cpu_s"]``, recorded by the loop:
  the steps, the validations and, when on, the measurements; not the data loading, final
  evaluation or pictures, which the monitor does not touch except the pictures' two panels);
* ``on/off - 1``: each pair's ratio of training-loop CPU, median and range over the pairs: the
  overhead the issue's "at most 5% of training time" is about;
* ``whole run``: the same ratio for the whole ``run_experiment`` call (pictures included);
* ``monitor share``: in the "on" runs, the CPU the loop spent inside the measurements
  (``result["monitor_cpu_s"]``) over the rest of the loop's CPU, in the same run (immune to load
  changes between runs);
* ``steady``: the share at the interval alone, ``cost of one measurement / (every x CPU of one
  step)``: what a long run pays (the step-1 measurement's weight falls with the run's length).

Whole runs alternating are noisy on a loaded machine (CPU time per step moves by +-20% between
runs of the same setting, larger than the effect), so the first table comes from **lockstep**
runs: the same training (the experiment's model, data, batch and estimator, the loop's own batch
sampler and optimiser) twice from the same initialisation, one with the monitor and one without,
advancing one step each in turn in one process, each step timed by ``time.process_time``. Load
changes then hit both sides within milliseconds of each other, and the ratio of their summed CPU
is the monitor's overhead, side effects included (if measuring slowed the next steps, it would
show). The lockstep loop leaves out validation, checkpoints and pictures (the same on both sides),
so it overstates the share of a real run.

Usage: python bench_monitor.py [--every N] [--repeats R] [--steps S] [--experiments ...]

``--quick`` (tests/test_benchmarks.py) runs graph-layout only, 20 steps, every 10, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pickgrad.diagnostics.monitor import DEFAULT_EVERY, GradientMonitor
from pickgrad.experiments import get_experiment, run_experiment
from pickgrad.experiments.base import Experiment
from pickgrad.experiments.config import TrainingConfig
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.loop import _sample_batch
from pickgrad.experiments.seeding import derived_seed, shard_generator

#: Per experiment: overrides of its quick config (a monitored method and two estimators).
SETTINGS: dict[str, dict[str, Any]] = {
    "graph-layout": dict(methods=("tree",), estimators=("st-gumbel", "reinforce")),
    "vae": dict(
        methods=("categorical",),
        estimators=("st-gumbel", "reinforce"),
        # The documented model and batch (vae.VaeConfig's defaults), on digits.
        hidden=(128, 128),
        categoricals=20,
        classes=10,
        batch_size=100,
        n_samples=4,
        valid_size=200,
        test_size=200,
    ),
    "listops": dict(methods=("arborescence",), estimators=("st-gumbel", "reinforce")),
}


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def spread(values: list[float], scale: float = 1.0, form: str = ".1f") -> str:
    """``median (v1, v2, ...)``."""
    inner = ", ".join(f"{v * scale:{form}}" for v in values)
    return f"{statistics.median(values) * scale:{form}} ({inner})"


def lockstep(
    experiment: Experiment, config: TrainingConfig, estimator: str, every: int, cache: Path
) -> dict[str, Any]:
    """Train off and on side by side, one step each in turn; CPU seconds of each side's steps."""
    data = experiment.load_data(config, cache)
    method = config.methods[0]
    structure = experiment.structure(config, method)
    sides = {}
    for side in ("off", "on"):
        choice = resolve_estimator(estimator, structure)
        torch.manual_seed(derived_seed(0, "init"))
        model = experiment.build_model(config, method, choice)
        sides[side] = {
            "model": model,
            "optimizer": torch.optim.Adam(model.parameters(), lr=config.lr),
            "generator": shard_generator(0, 0),
            "cpu": 0.0,
            "monitor_cpu": 0.0,
        }
    monitor = GradientMonitor(None, every=every, seed=derived_seed(0, "monitor"), label=estimator)
    for step in range(config.steps):
        for name in ("off", "on") if step % 2 == 0 else ("on", "off"):
            side = sides[name]
            start = time.process_time()
            side["optimizer"].zero_grad(set_to_none=True)
            batch = _sample_batch(data.train, 0, 1, config.batch_size, side["generator"])
            loss, _ = side["model"](batch, side["generator"])
            loss.backward()
            if name == "on" and monitor.due(step + 1):
                measured = time.process_time()
                probe = side["model"].monitor_probe(
                    tuple(t[: config.monitor_examples] for t in batch)
                )
                if probe is not None:
                    monitor.measure(step + 1, probe)
                side["monitor_cpu"] += time.process_time() - measured
            side["optimizer"].step()
            side["cpu"] += time.process_time() - start
    return {
        "off": sides["off"]["cpu"],
        "on": sides["on"]["cpu"],
        "monitor": sides["on"]["monitor_cpu"],
        "measurements": len(monitor.records),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--experiments", nargs="+", default=list(SETTINGS))
    parser.add_argument("--estimators", nargs="+", default=None, help="override the settings'")
    parser.add_argument("--whole-repeats", type=int, default=2, help="whole-run pairs (0: none)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    args = parser.parse_args()
    if args.quick:
        args.every, args.repeats, args.steps, args.experiments = 10, 1, 20, ["graph-layout"]
        args.whole_repeats = 1
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_monitor_"))
    print(
        f"every={args.every} steps={args.steps} lockstep repeats={args.repeats} "
        f"whole-run pairs={args.whole_repeats} threads=1"
    )
    configs = {}
    for name in args.experiments:
        experiment = get_experiment(name)
        settings = dict(SETTINGS[name])
        if args.estimators:
            settings["estimators"] = tuple(args.estimators)
        configs[name] = dataclasses.replace(
            experiment.default_config(quick=True),
            steps=args.steps,
            eval_every=args.steps,
            checkpoint_every=10 * args.steps,
            progress=False,
            threads=1,
            **settings,
        )
    print("\nLockstep (off and on one step each in turn; CPU of the training steps):\n")
    print(
        "| experiment | estimator | off: CPU ms/step (repeats) | on: CPU ms/step (repeats) "
        "| on/off (median) | on/off - 1 (median; repeats) | monitor's own share (repeats) "
        "| CPU ms per measurement "
        "| = training steps | steady share at the interval | measurements |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, config in configs.items():
        experiment = get_experiment(name)
        for estimator in config.estimators:
            rows = [
                lockstep(experiment, config, estimator, args.every, root / "cache")
                for _ in range(args.repeats)
            ]
            off = [r["off"] / args.steps for r in rows]
            on = [r["on"] / args.steps for r in rows]
            ratios = [r["on"] / r["off"] - 1 for r in rows]
            own = [r["monitor"] / (r["on"] - r["monitor"]) for r in rows]
            per = [r["monitor"] / r["measurements"] for r in rows]
            in_steps = [m / o for m, o in zip(per, off, strict=True)]
            steady = [n / args.every for n in in_steps]
            print(
                f"| {name} | {estimator} | {spread(off, 1e3, '.2f')} | {spread(on, 1e3, '.2f')} "
                f"| {1 + statistics.median(ratios):.3f}x "
                f"| {statistics.median(ratios):+.1%} ({', '.join(f'{r:+.1%}' for r in ratios)}) "
                f"| {spread(own, 100, '.1f')}% | {statistics.median(per) * 1e3:.0f} "
                f"| {statistics.median(in_steps):.1f} | {statistics.median(steady):.1%} "
                f"| {rows[0]['measurements']} |",
                flush=True,
            )
    if args.whole_repeats == 0:
        return
    print("\nWhole runs alternating (run_experiment; CPU of the process and its children):\n")
    print(
        "| experiment | estimator | off: train CPU ms/step (runs) | on: train CPU ms/step (runs) "
        "| on/off - 1, training loop (median; runs) | on/off - 1, whole run (median; runs) "
        "| monitor share of the loop's CPU (runs) | CPU ms per measurement | steady share at "
        "the interval | measurements |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, base in configs.items():
        experiment = get_experiment(name)
        experiment.load_data(base, root / "cache")  # generated once, outside the timings
        # Warm-up (imports, plotting, first-call costs) outside the timings.
        run_experiment(
            experiment,
            dataclasses.replace(base, steps=2, eval_every=2, monitor_every=1),
            root / f"{name}_warmup",
            cache_dir=root / "cache",
        )
        for estimator in base.estimators:
            loop: dict[int, list[float]] = {0: [], args.every: []}
            whole: dict[int, list[float]] = {0: [], args.every: []}
            shares, costs, steady, counts = [], [], [], 0
            for repeat in range(args.whole_repeats):
                order = (0, args.every) if repeat % 2 == 0 else (args.every, 0)
                for every in order:
                    config = dataclasses.replace(base, monitor_every=every, estimators=(estimator,))
                    start = cpu_now()
                    results = run_experiment(
                        experiment,
                        config,
                        root / f"{name}_{estimator}_{every}_{repeat}",
                        cache_dir=root / "cache",
                    )
                    whole[every].append(cpu_now() - start)
                    (run,) = results["runs"]
                    loop[every].append(run["cpu_s"])
                    if every:
                        monitor = run["monitor_cpu_s"]
                        counts = len(run["monitor"])
                        shares.append(monitor / (run["cpu_s"] - monitor))
                        costs.append(monitor / counts)
                        step_cost = (run["cpu_s"] - monitor) / args.steps
                        steady.append(monitor / counts / (args.every * step_cost))
            pairs = list(zip(loop[0], loop[args.every], strict=True))
            ratios = [on / off - 1 for off, on in pairs]
            whole_ratios = [
                on / off - 1 for off, on in zip(whole[0], whole[args.every], strict=True)
            ]
            per_step = 1e3 / args.steps
            print(
                f"| {name} | {estimator} | {spread(loop[0], per_step)} "
                f"| {spread(loop[args.every], per_step)} "
                f"| {statistics.median(ratios):+.1%} ({', '.join(f'{r:+.1%}' for r in ratios)}) "
                f"| {statistics.median(whole_ratios):+.1%} "
                f"({', '.join(f'{r:+.1%}' for r in whole_ratios)}) "
                f"| {statistics.median(shares):.1%} ({', '.join(f'{s:.1%}' for s in shares)}) "
                f"| {statistics.median(costs) * 1e3:.0f} "
                f"| {statistics.median(steady):.1%} ({', '.join(f'{s:.1%}' for s in steady)}) "
                f"| {counts} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
