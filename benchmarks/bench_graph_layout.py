"""Speed of the graph-layout experiment: a profile of one training step and steps per second.

For each method x estimator at batch 128 (n = 10, T = 10), one training step is split into
data (drawing the batch), encoder, pickgrad (sampling / relaxation forward, and its backward
measured alone on the same scores), decoder and backward (all of it), with pickgrad's share of
the step. With ``--baseline-dir`` (the folder holding the hand-written ``graph_layout_train.py``),
it also runs that script and ``pickgrad experiment graph-layout`` side by side on the same
settings (tree, st-gumbel, tau 1, lr 3e-3, batch 64, 5k training examples, one thread), from a
scratch folder under /tmp, and prints the ratio of their CPU time per training step.

    python benchmarks/bench_graph_layout.py                 # profile, batch 128
    python benchmarks/bench_graph_layout.py --baseline-dir /work/shared/baselines --baseline-steps 300
    python benchmarks/bench_graph_layout.py --quick         # seconds (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pickgrad
from _timing import child_cpu_seconds, cpu_seconds_per_step
from pickgrad.experiments import get_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.graph_layout_data import generate_split
from pickgrad.experiments.nri import pair_index

METHODS = ("tree", "top-k", "independent")


# CPU time of this process by default: on a shared machine wall time mostly measures the queue.
_CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_now = _CLOCK["cpu"]


def _timed(fn, *args, **kwargs):
    start = _now()
    out = fn(*args, **kwargs)
    return out, _now() - start


def profile_step(experiment, config, method, estimator, data, repeats):
    """Median seconds of each part of one training step, over ``repeats`` steps."""
    choice = resolve_estimator(estimator, experiment.structure(config, method))
    torch.manual_seed(0)
    model = experiment.build_model(config, method, choice)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as the runner
    generator = torch.Generator().manual_seed(0)
    trajectories = data[0]
    parts = {k: [] for k in ("data", "encoder", "pickgrad", "decoder", "backward", "optimizer")}
    parts["pickgrad backward"] = []
    n = config.vertices
    parts["wall"] = []
    for repeat in range(repeats + 2):
        wall_start = time.perf_counter()
        start = _now()
        index = torch.randint(trajectories.shape[0], (config.batch_size,), generator=generator)
        x = trajectories[index]
        t_data = _now()
        scores = model.scores(x)
        kl = pickgrad.experiments.graph_layout.gumbel_kl(scores).flatten(1).sum(1) / n
        structured = scores
        t_encoder = _now()
        decoder_time = [0.0]
        if choice.needs_loss:

            def loss_fn(samples, x=x, decoder_time=decoder_time):
                begin = _now()
                count = samples.shape[0]
                drawn = model.edges(samples).reshape(-1, model.pairs)
                out = (model.reconstruction(x.repeat(count, 1, 1, 1), drawn) / n).reshape(count, -1)
                decoder_time[0] += _now() - begin
                return out

            options = {}
            if model.baseline is not None:
                options["baseline_values"] = model.baseline(x.flatten(1))[:, 0]
            rec = pickgrad.estimate(
                loss_fn, structured, model.structure, choice.estimator,
                n_samples=config.n_samples, tau=config.tau, generator=generator, **options,
            )  # fmt: skip
            t_pick = _now() - decoder_time[0]
            t_decoder = _now()
        else:
            drawn = pickgrad.select(
                structured, model.structure, choice.estimator, tau=config.tau, generator=generator
            )
            t_pick = _now()
            rec = (model.reconstruction(x, model.edges(drawn)) / n).mean()
            t_decoder = _now()
        loss = rec + config.kl_weight * kl.mean()
        optimizer.zero_grad()
        loss.backward()
        t_backward = _now()
        optimizer.step()
        t_optimizer = _now()
        wall = time.perf_counter() - wall_start
        # pickgrad's backward alone: the same call on detached scores, a random upstream gradient.
        leaf = structured.detach().requires_grad_()
        if choice.needs_loss:
            weights = torch.randn(leaf.shape[:2])

            def cheap(samples, weights=weights):
                return (model.edges(samples) * weights[..., : model.pairs]).sum(-1)

            options = (
                {"baseline_values": torch.zeros(leaf.shape[0])}
                if model.baseline is not None
                else {}
            )
            surrogate = pickgrad.estimate(
                cheap, leaf, model.structure, choice.estimator, n_samples=config.n_samples,
                tau=config.tau, generator=generator, **options,
            )  # fmt: skip
            _, t_pick_back = _timed(surrogate.backward)
        else:
            out = pickgrad.select(
                leaf, model.structure, choice.estimator, tau=config.tau, generator=generator
            )
            upstream = torch.randn_like(out)
            _, t_pick_back = _timed(torch.autograd.grad, out, leaf, upstream)
        if repeat < 2:
            continue  # warm-up
        parts["data"].append(t_data - start)
        parts["encoder"].append(t_encoder - t_data)
        parts["pickgrad"].append(t_pick - t_encoder)
        parts["decoder"].append(t_decoder - t_pick if not choice.needs_loss else decoder_time[0])
        parts["backward"].append(t_backward - t_decoder)
        parts["optimizer"].append(t_optimizer - t_backward)
        parts["pickgrad backward"].append(t_pick_back)
        parts["wall"].append(wall)
    return {k: float(np.median(v)) for k, v in parts.items()}


def run_profile(args):
    experiment = get_experiment("graph-layout")
    config = experiment.default_config(quick=False)
    import dataclasses

    config = dataclasses.replace(config, batch_size=args.batch_size, **dict(_parse_set(args.set)))
    data = generate_split(
        args.examples, config.vertices, config.frames, torch.Generator().manual_seed(0)
    )
    print(
        f"one training step at batch {config.batch_size}, n = {config.vertices}, T = {config.frames}, "
        f"rollout {config.rollout}, {torch.get_num_threads()} thread(s); median of {args.repeats} "
        f"steps, milliseconds of {args.clock} time (steps/s from it; wall ms: the step's wall time)"
    )
    header = f"{'method':<12} {'estimator':<15} {'data':>6} {'encoder':>8} {'pickgrad':>9} {'decoder':>8} {'backward':>9} {'adam':>6} {'step':>7} {'steps/s':>8} {'wall ms':>7} {'pickgrad share':>15}"
    print(header)
    rows = []
    for method in args.methods:
        for estimator in args.estimators:
            parts = profile_step(experiment, config, method, estimator, data, args.repeats)
            step = sum(v for k, v in parts.items() if k not in ("pickgrad backward", "wall"))
            share = (parts["pickgrad"] + parts["pickgrad backward"]) / step
            rows.append(
                {"method": method, "estimator": estimator, **parts, "step": step, "share": share}
            )
            print(
                f"{method:<12} {estimator:<15} {parts['data'] * 1e3:6.2f} {parts['encoder'] * 1e3:8.2f} "
                f"{parts['pickgrad'] * 1e3:9.2f} {parts['decoder'] * 1e3:8.2f} {parts['backward'] * 1e3:9.2f} "
                f"{parts['optimizer'] * 1e3:6.2f} {step * 1e3:7.1f} {1 / step:8.1f} {parts['wall'] * 1e3:7.1f} "
                f"{share:14.0%} (fwd+bwd {(parts['pickgrad'] + parts['pickgrad backward']) * 1e3:.2f} ms)"
            )
    worst = max(rows, key=lambda r: r["share"])
    print(
        f"largest pickgrad share: {worst['share']:.0%} ({worst['method']} / {worst['estimator']}); target <= 20%: ratio {worst['share'] / 0.2:.2f}x of the target"
    )
    return rows


def _parse_set(items):
    for item in items:
        name, _, value = item.partition("=")
        yield (
            name,
            type(getattr(get_experiment("graph-layout").default_config(quick=False), name))(value),
        )


def _write_baseline_data(folder: Path, seed: int = 1) -> None:
    """The hand-written script's data file (5k train, 1k test), made with pickgrad's generator
    (networkx's semantics, tested equal) so the comparison does not wait for networkx."""
    n = 10
    rows, cols = pair_index(n)
    arrays = {}
    for name, count, s in (("tr", 5000, seed), ("te", 1000, seed + 1)):
        x, e = generate_split(count, n, 10, torch.Generator().manual_seed(s))
        a = torch.zeros(count, n, n)
        a[:, rows, cols] = e
        arrays[f"X{name}"], arrays[f"A{name}"] = x, a + a.transpose(1, 2)
    low, high = arrays["Xtr"].min(), arrays["Xtr"].max()
    for name in ("Xtr", "Xte"):
        arrays[name] = (arrays[name] - low) * 2 / (high - low) - 1
    np.savez(folder / "graph_layout_n10_T10.npz", **{k: v.numpy() for k, v in arrays.items()})


def run_side_by_side(args):
    """CPU seconds per training step of the hand-written script and of ``pickgrad experiment``.

    Each program runs twice, for ``short`` and ``long`` steps; the difference of their CPU times
    over the difference of steps is the cost of a step without start-up, data loading or the
    evaluations both runs share. CPU time, not wall time: the machine may be shared.
    """
    script = Path(args.baseline_dir) / "graph_layout_train.py"
    if not script.exists():
        raise SystemExit(f"--baseline-dir: no graph_layout_train.py in {args.baseline_dir}")
    scratch = Path(tempfile.mkdtemp(prefix="pickgrad-baseline-"))
    short, long = 20, args.baseline_steps
    try:
        shutil.copy(script, scratch / script.name)
        _write_baseline_data(scratch)

        def baseline(steps):
            return [sys.executable, script.name, "--struct", "tree", "--est", "st-gumbel",
                    "--tau", "1", "--lr", "3e-3", "--steps", str(steps)]  # fmt: skip

        def ours(steps, extra, out):
            return [
                sys.executable, "-m", "pickgrad", "experiment", "graph-layout", "--methods", "tree",
                "--estimators", "st-gumbel", "--seeds", "0", "--steps", str(steps),
                "--batch-size", "64", "--tau", "1", "--lr", "3e-3", "--eval-every", "500",
                "--threads", "1", "--no-progress", "--set", "train_size=5000",
                "--set", "valid_size=1000", "--set", "test_size=1000",
                # Every step draws a graph, as every step of the script does (equal work).
                "--set", "decoder_warmup=0",
                "--cache-dir", str(scratch / "cache"), "--out", str(scratch / out), *extra,
            ]  # fmt: skip

        variants = {"rollout 9 (the script's 9-step roll-out)": ["--set", "rollout=9"]}
        default_rollout = get_experiment("graph-layout").default_config(quick=False).rollout
        if default_rollout != 9:
            variants[f"default settings (rollout {default_rollout})"] = []
        child_cpu_seconds(ours(1, [], "warm"), scratch)  # generates and caches the data once
        theirs, mine = [], {k: [] for k in variants}
        for repeat in range(args.baseline_repeats):
            theirs.append(cpu_seconds_per_step(baseline, short, long, scratch))
            for index, (label, extra) in enumerate(variants.items()):

                def command(steps, extra=extra, out=f"ours-{repeat}-{index}"):
                    return ours(steps, extra, f"{out}-{steps}")

                mine[label].append(cpu_seconds_per_step(command, short, long, scratch))
        print(
            f"\nside by side: CPU ms per training step (from {short}- and {long}-step runs), batch 64, "
            "tree, st-gumbel, tau 1, lr 3e-3, 5k training examples, one thread"
        )
        print(f"  hand-written script: {', '.join(f'{t * 1e3:.1f}' for t in theirs)}")
        for label, times in mine.items():
            print(
                f"  pickgrad experiment, {label}: {', '.join(f'{t * 1e3:.1f}' for t in times)}; "
                f"{np.median(theirs) / np.median(times):.2f}x faster (median ratio)"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--examples", type=int, default=2000, help="training examples to draw from")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--estimators", nargs="+", default=["gumbel-relaxed", "st-gumbel", "reinforce", "nvil"]
    )
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(_CLOCK), default="cpu", help="time the parts by")
    parser.add_argument("--baseline-dir", help="folder with the hand-written graph_layout_train.py")
    parser.add_argument("--baseline-steps", type=int, default=300)
    parser.add_argument("--baseline-repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global _now
    _now = _CLOCK[args.clock]
    if args.quick:
        args.batch_size, args.repeats, args.examples = 16, 2, 64
        args.estimators = ["st-gumbel", "reinforce"]
    run_profile(args)
    if args.baseline_dir and not args.quick:
        run_side_by_side(args)


if __name__ == "__main__":
    main()
