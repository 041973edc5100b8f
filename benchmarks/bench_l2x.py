"""Speed of the l2x experiment: a profile of one training step, pickgrad's share, and the peer.

For each method x estimator at the default sizes (batch 128, 10 features, k = 4: orange skin),
one training step is split into data (drawing the batch from the training set), selector
(scores), pickgrad (``select`` / ``estimate``, or L2X's own relaxation for ``l2x``; for
score-function estimators the predictor calls inside are subtracted), predictor, backward (all
of it) and Adam, plus pickgrad's backward measured alone on the same scores with a random
upstream gradient; the share is ``(pickgrad + pickgrad backward) / step``, against the 20 %
target. CPU time of this process, one thread: on a shared machine wall time mostly measures
the queue.

Side by side, the hand-written baseline ``/work/shared/baselines/l2x_train.py`` (its own problem:
20 features, k = 3, batch 128, smaller networks, MSE), if that file exists: its CPU seconds per
step (child CPU time of ``--steps N`` less that of ``--steps 0``, so start-up and data are
excluded) against one step of this experiment, as a ratio of steps per second.

    python benchmarks/bench_l2x.py            # every method x estimator, the baseline
    python benchmarks/bench_l2x.py --batch-size 1000   # the released L2X code's batch
    python benchmarks/bench_l2x.py --quick    # seconds (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pickgrad
from _timing import child_cpu_seconds
from pickgrad.experiments import get_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.l2x import _soft_cross_entropy, l2x_relaxation
from pickgrad.experiments.l2x_data import generate_synthetic

_now = time.process_time
BASELINE = Path("/work/shared/baselines/l2x_train.py")


def profile_step(experiment, config, method, estimator, data, repeats):
    """Median CPU seconds of each part of one training step, over ``repeats`` steps."""
    choice = resolve_estimator(estimator, experiment.structure(config, "subset"))
    torch.manual_seed(0)
    model = experiment.build_model(config, method, choice)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    names = ("data", "selector", "pickgrad", "predictor", "backward", "adam", "pickgrad bwd")
    parts = {k: [] for k in names}
    count = data[0].shape[0]
    est = model.estimator
    for repeat in range(repeats + 2):
        start = _now()
        index = torch.randint(count, (config.batch_size,), generator=generator)
        x, target = data[0][index], data[1][index]
        t_data = _now()
        scores = model.selector(x)
        t_selector = _now()
        predictor_time = [0.0]
        if method == "l2x":
            mask = l2x_relaxation(scores, model.k, config.tau, generator=generator)
        elif est.needs_loss:

            def loss_fn(masks, x=x, target=target, predictor_time=predictor_time):
                begin = _now()
                out = _soft_cross_entropy(model.predictor(x * masks), target)
                predictor_time[0] += _now() - begin
                return out

            loss = pickgrad.estimate(
                loss_fn, scores, model.structure, est.estimator, n_samples=config.n_samples,
                tau=config.tau, generator=generator,
            )  # fmt: skip
        else:
            mask = pickgrad.select(
                scores, model.structure, est.estimator, tau=config.tau, generator=generator
            )
        t_pick = _now() - predictor_time[0]
        if method == "l2x" or not est.needs_loss:
            begin = _now()
            loss = _soft_cross_entropy(model.predictor(x * mask), target).mean()
            predictor_time[0] = _now() - begin
        t_predictor = _now()
        optimizer.zero_grad()
        loss.backward()
        t_backward = _now()
        optimizer.step()
        t_adam = _now()
        leaf = scores.detach().requires_grad_()
        if est.needs_loss and method != "l2x":
            weights = torch.randn(leaf.shape)
            surrogate = pickgrad.estimate(
                lambda m, w=weights: (m * w).sum(-1), leaf, model.structure, est.estimator,
                n_samples=config.n_samples, tau=config.tau, generator=generator,
            )  # fmt: skip
            begin = _now()
            surrogate.backward()
        else:
            if method == "l2x":
                out = l2x_relaxation(leaf, model.k, config.tau, generator=generator)
            else:
                out = pickgrad.select(
                    leaf, model.structure, est.estimator, tau=config.tau, generator=generator
                )
            upstream = torch.randn_like(out)
            begin = _now()
            torch.autograd.grad(out, leaf, upstream)
        t_pick_back = _now() - begin
        if repeat < 2:
            continue  # warm-up
        parts["data"].append(t_data - start)
        parts["selector"].append(t_selector - t_data)
        parts["pickgrad"].append(t_pick - t_selector)
        parts["predictor"].append(predictor_time[0])
        parts["backward"].append(t_backward - t_predictor)
        parts["adam"].append(t_adam - t_backward)
        parts["pickgrad bwd"].append(t_pick_back)
    return {k: float(np.median(v)) for k, v in parts.items()}


def baseline_seconds_per_step(estimator, steps):
    """CPU seconds per step of the hand-written baseline: the cost of ``steps`` steps over that
    of none (start-up, data, one evaluation). ``math.nan`` when the difference is lost in the
    start-up's own variation (a few steps: their cost is a few milliseconds against seconds of
    start-up); None if the file is absent."""
    if not BASELINE.exists():
        return None
    command = [sys.executable, str(BASELINE), "--est", estimator]
    idle = child_cpu_seconds([*command, "--steps", "0"], timeout=600)
    busy = child_cpu_seconds([*command, "--steps", str(steps)], timeout=600)
    if busy - idle < 0.05 * idle:  # within the run-to-run variation of the start-up
        return math.nan
    return (busy - idle) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--baseline-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the default (128)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = get_experiment("l2x")
    config = dataclasses.replace(experiment.default_config(quick=False), dataset="orange-skin")
    if args.batch_size:
        config = dataclasses.replace(config, batch_size=args.batch_size)
    pairs = [(m, "gumbel-relaxed") for m in config.methods]
    pairs += [("subset", e) for e in ("st-gumbel", "imle", "perturbed", "reinforce")]
    repeats, examples, baseline_steps = args.repeats, 20_000, args.baseline_steps
    if args.quick:
        repeats, examples, baseline_steps = 2, 512, 20
        pairs = [("subset", "gumbel-relaxed"), ("l2x", "gumbel-relaxed"), ("subset", "reinforce")]
    part = generate_synthetic("orange-skin", examples, torch.Generator().manual_seed(0))
    data = (part["x"], part["target"])
    print(
        f"one l2x training step at batch {config.batch_size}, {config.features} features, "
        f"k = {config.chosen}, 1 thread; median of {repeats} steps, CPU milliseconds; "
        "machine shared"
    )
    print(
        f"{'method':<22} {'estimator':<15} {'data':>5} {'select':>7} {'pickgrad':>9} "
        f"{'pg bwd':>7} {'predict':>8} {'backward':>9} {'adam':>5} {'step':>6} {'share':>6}"
    )
    shares, steps = [], {}
    for method, estimator in pairs:
        p = profile_step(experiment, config, method, estimator, data, repeats)
        step = sum(v for k, v in p.items() if k != "pickgrad bwd")
        steps[(method, estimator)] = step
        share = (p["pickgrad"] + p["pickgrad bwd"]) / step
        shares.append((share, method, estimator))
        print(
            f"{method:<22} {estimator:<15} {p['data'] * 1e3:5.2f} {p['selector'] * 1e3:7.2f} "
            f"{p['pickgrad'] * 1e3:9.2f} {p['pickgrad bwd'] * 1e3:7.2f} "
            f"{p['predictor'] * 1e3:8.2f} {p['backward'] * 1e3:9.2f} {p['adam'] * 1e3:5.2f} "
            f"{step * 1e3:6.2f} {share:6.0%}"
        )
    worst = max(s for s in shares if s[1] != "l2x")
    print(
        f"largest pickgrad share: {worst[0]:.0%} ({worst[1]} / {worst[2]}); target <= 20%: "
        f"{worst[0] / 0.20:.2f}x of the target"
    )
    for estimator in ("st-gumbel",) if not args.quick else ("gumbel-relaxed",):
        ours = steps.get(("subset", estimator))
        if ours is None:
            ours = profile_step(experiment, config, "subset", estimator, data, repeats)
            ours = sum(v for k, v in ours.items() if k != "pickgrad bwd")
        theirs = baseline_seconds_per_step(estimator, baseline_steps)
        if theirs is None:
            print(f"hand-written baseline {BASELINE} not found: ratio not measured")
            continue
        if math.isnan(theirs):
            print(
                f"subset / {estimator}: the hand-written baseline's {baseline_steps} steps cost "
                f"less than its start-up varies: ratio not measured (--baseline-steps 600)"
            )
            continue
        print(
            f"subset / {estimator}: this experiment {1 / ours:7.0f} steps/s, hand-written "
            f"baseline {1 / theirs:7.0f} steps/s (its own, smaller problem); ratio "
            f"{theirs / ours:.2f}x (> 1: this experiment is faster)"
        )


if __name__ == "__main__":
    main()
