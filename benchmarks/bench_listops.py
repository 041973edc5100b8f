"""Speed of the ListOps experiment: a profile of one training step and pickgrad's share of it.

For each method x estimator at batch 100 (ListOps expressions of 10 to 50 tokens, the batch cut to
its longest), one training step is split into data (drawing the batch), encoder (BiLSTM and arc
scores), pickgrad forward (sampling / relaxation; for score-function estimators the loss calls are
subtracted), graph network (message passing and readout), backward (all of it) and Adam, plus
pickgrad's backward measured alone on the same scores with a random upstream gradient; the share
is ``(pickgrad forward + pickgrad backward) / step``. CPU time of this process, one thread: on a
shared machine wall time mostly measures the queue.

The trees are drawn as training draws them, with ``lengths=`` through ``pickgrad.select`` /
``pickgrad.estimate``; ``gumbel-rao`` joins the estimators for the ``tree`` method (the only
tree with a conditional sampler). It also compares ``Arborescence.relax`` on the batch's real
lengths three ways at equal work (the same ``(B, n, n)`` scores): ``lengths=`` given, masking by
-1e4 scores (what training did before ``lengths=`` reached the estimators), and with every
length equal to ``n`` against no ``lengths`` at all, printing ratios.

    python benchmarks/bench_listops.py            # batch 100, every method x estimator
    python benchmarks/bench_listops.py --methods arborescence tree   # some methods only
    python benchmarks/bench_listops.py --quick    # seconds (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

import pickgrad
from pickgrad import Arborescence
from pickgrad.experiments import get_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.listops_data import generate_split
from pickgrad.experiments.listops_model import MASK_SCORE, allowed_arcs

_now = time.process_time


def profile_step(experiment, config, method, estimator, data, repeats):
    """Median CPU seconds of each part of one training step, over ``repeats`` steps."""
    choice = resolve_estimator(estimator, experiment.structure(config, method))
    torch.manual_seed(0)
    model = experiment.build_model(config, method, choice)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    names = ("data", "encoder", "pickgrad", "graph network", "backward", "adam", "pickgrad bwd")
    parts = {k: [] for k in names}
    count = data[0].shape[0]
    for repeat in range(repeats + 2):
        start = _now()
        index = torch.randint(count, (config.batch_size,), generator=generator)
        tokens, lengths, values, _ = model._inputs(tuple(t[index] for t in data))
        t_data = _now()
        states = model.network.encode(tokens, lengths)
        scores = model.scores(states, lengths) if method != "lstm" else None
        t_encoder = _now()
        network_time = [0.0]
        if scores is None:
            t_pick = _now()
            loss = F.cross_entropy(model.network.logits(states, lengths, None), values)
            network_time[0] = _now() - t_pick
        elif choice.needs_loss:

            def loss_fn(
                samples, states=states, lengths=lengths, values=values, network_time=network_time
            ):
                begin = _now()
                logits = model.network.logits(states, lengths, model.graph(samples))
                s = samples.shape[0]
                out = F.cross_entropy(
                    logits.flatten(0, 1), values.repeat(s), reduction="none"
                ).reshape(s, -1)
                network_time[0] += _now() - begin
                return out

            loss = pickgrad.estimate(
                loss_fn, scores, model.structure, choice.estimator,
                n_samples=config.n_samples, tau=config.tau, generator=generator,
                **model.lengths_option(lengths),
            )  # fmt: skip
            t_pick = _now() - network_time[0]
        else:
            drawn = pickgrad.select(
                scores, model.structure, choice.estimator, tau=config.tau, generator=generator,
                **model.lengths_option(lengths),
            )  # fmt: skip
            t_pick = _now()
            begin = _now()
            logits = model.network.logits(states, lengths, model.graph(drawn))
            loss = F.cross_entropy(logits, values)
            network_time[0] = _now() - begin
        t_network = _now()
        optimizer.zero_grad()
        loss.backward()
        t_backward = _now()
        optimizer.step()
        t_adam = _now()
        t_pick_back = 0.0
        if scores is not None:  # pickgrad's backward alone, on detached scores
            leaf = scores.detach().requires_grad_()
            if choice.needs_loss:
                weights = torch.randn(leaf.shape)
                surrogate = pickgrad.estimate(
                    lambda x, w=weights: (x * w).flatten(-2).sum(-1), leaf, model.structure,
                    choice.estimator, n_samples=config.n_samples, tau=config.tau,
                    generator=generator, **model.lengths_option(lengths),
                )  # fmt: skip
                begin = _now()
                surrogate.backward()
            else:
                out = pickgrad.select(
                    leaf, model.structure, choice.estimator, tau=config.tau,
                    generator=generator, **model.lengths_option(lengths),
                )  # fmt: skip
                upstream = torch.randn_like(out)
                begin = _now()
                torch.autograd.grad(out, leaf, upstream)
            t_pick_back = _now() - begin
        if repeat < 2:
            continue  # warm-up
        parts["data"].append(t_data - start)
        parts["encoder"].append(t_encoder - t_data)
        parts["pickgrad"].append(t_pick - t_encoder)
        parts["graph network"].append(network_time[0])
        parts["backward"].append(t_backward - t_network)
        parts["adam"].append(t_adam - t_backward)
        parts["pickgrad bwd"].append(t_pick_back)
    return {k: float(np.median(v)) for k, v in parts.items()}


def compare_lengths(data, batch_size, repeats):
    """CPU ms of ``Arborescence.relax``: lengths= vs -1e4 masking vs no lengths (all full)."""
    lengths = data[1][:batch_size]
    n = int(lengths.max())
    scores = torch.randn(batch_size, n, n, generator=torch.Generator().manual_seed(1))
    masked = scores.masked_fill(~allowed_arcs(lengths, n), MASK_SCORE)
    full = torch.full_like(lengths, n)
    structure = Arborescence(root=0)
    calls = {
        "lengths=": lambda: structure.relax(scores, lengths=lengths),
        "masked": lambda: structure.relax(masked),
        "lengths=n": lambda: structure.relax(scores, lengths=full),
        "no lengths": lambda: structure.relax(scores),
    }
    times = {}
    for name, call in calls.items():
        samples = []
        for _ in range(repeats + 1):
            begin = _now()
            call()
            samples.append(_now() - begin)
        times[name] = float(np.median(samples[1:]))
    return n, times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--methods", nargs="+", help="only these methods (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = get_experiment("listops")
    config = experiment.default_config(quick=False)
    methods = tuple(config.methods)
    estimators = tuple(config.estimators)
    batch, repeats, examples = args.batch_size, args.repeats, 2000
    if args.methods:
        methods = tuple(args.methods)
    if args.quick:
        batch, repeats, examples = 8, 1, 64
        methods, estimators = ("arborescence",), ("st-gumbel", "reinforce")
    import dataclasses

    config = dataclasses.replace(config, batch_size=batch)
    part = generate_split(examples, random.Random(0))
    data = (part["tokens"], part["lengths"], part["values"], part["heads"])
    print(
        f"one training step at batch {batch}, lengths 10-50 (cut to the batch's longest), "
        f"1 thread; median of {repeats} steps, CPU milliseconds; machine shared"
    )
    print(
        f"{'method':<13} {'estimator':<15} {'data':>6} {'encoder':>8} {'pickgrad':>9} "
        f"{'pg bwd':>7} {'graphnet':>9} {'backward':>9} {'adam':>6} {'step':>7} {'share':>6}"
    )
    shares = []
    for method in methods:
        extra = ("gumbel-rao",) if method == "tree" and not args.quick else ()
        for estimator in (*estimators, *extra):
            p = profile_step(experiment, config, method, estimator, data, repeats)
            step = sum(v for k, v in p.items() if k != "pickgrad bwd")
            share = (p["pickgrad"] + p["pickgrad bwd"]) / step
            shares.append((share, method, estimator))
            print(
                f"{method:<13} {estimator:<15} {p['data'] * 1e3:6.2f} {p['encoder'] * 1e3:8.2f} "
                f"{p['pickgrad'] * 1e3:9.2f} {p['pickgrad bwd'] * 1e3:7.2f} "
                f"{p['graph network'] * 1e3:9.2f} {p['backward'] * 1e3:9.2f} "
                f"{p['adam'] * 1e3:6.2f} {step * 1e3:7.1f} {share:6.0%}"
            )
    worst = max(shares)
    print(
        f"largest pickgrad share: {worst[0]:.0%} ({worst[1]} / {worst[2]}); target <= 25%: "
        f"{worst[0] / 0.25:.2f}x of the target"
    )
    n, times = compare_lengths(data, batch, max(repeats, 3))
    print(f"Arborescence.relax at batch {batch}, n = {n} (CPU ms):")
    for name, value in times.items():
        print(f"  {name:<11} {value * 1e3:8.2f}")
    print(
        f"lengths= / masked: {times['lengths='] / times['masked']:.2f}x; "
        f"lengths=n / no lengths: {times['lengths=n'] / times['no lengths']:.2f}x"
    )


if __name__ == "__main__":
    main()
