"""Speed of the VAE experiment: a profile of one training step, and the hand-written baseline.

For each latent space (categorical 20 x 10, binary 200 x 2) x estimator at the default sizes
(batch 100, Fashion-MNIST's 784 pixels, MLP 784-128-128), one training step is split into data
(drawing the batch), encoder (logits and the exact KL), pickgrad (``select``'s forward, or
``estimate`` less the decoder calls it makes), decoder (forward of the reconstruction), backward
(all of it) and Adam, plus pickgrad's backward measured alone on the same logits; pickgrad's
share is (its forward + its backward) / the step, against the 20% target of issue 16.4.
Images are random bits of the real size (the step's cost does not depend on their values).

With ``--baseline-dir`` (the folder of the hand-written ``vae_train.py``), it also runs that
script and ``pickgrad experiment vae`` side by side on its settings (categorical, st-gumbel,
tau 0.5, batch 64, MLP 784-128-128, Fashion-MNIST, one thread) from a scratch folder under
/tmp, each for a short and a long number of steps; the difference of their CPU times over the
difference of steps is the cost of a step without start-up, data loading and the final
evaluation. It prints both and their ratio (steps/s of ours over the script's).

    python benchmarks/bench_vae.py
    python benchmarks/bench_vae.py --baseline-dir /work/shared/baselines
    python benchmarks/bench_vae.py --quick          # seconds (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pickgrad
from _timing import child_cpu_seconds, cpu_seconds_per_step
from pickgrad.diagnostics.monitor import DEFAULT_EVERY
from pickgrad.experiments import get_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.vae_model import bernoulli_log_likelihood, kl_to_uniform

# CPU time of this process by default: on a shared machine wall time mostly measures the queue.
_CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_now = _CLOCK["cpu"]

#: Issue 16.4: pickgrad's share of a training step at the default sizes.
TARGET_SHARE = 0.20
ESTIMATORS = ("gumbel-relaxed", "st-gumbel", "gumbel-rao", "gumbel-rao:100", "reinforce")


def profile_step(config: Any, method: str, label: str, images: torch.Tensor, repeats: int):
    """Median seconds of each part of one training step over ``repeats`` steps."""
    import dataclasses

    name, _, draws = label.partition(":")
    if draws:
        config = dataclasses.replace(config, n_draws=int(draws))
    experiment = get_experiment("vae")
    choice = resolve_estimator(name, experiment.structure(config, method))
    torch.manual_seed(0)
    model = experiment.build_model(config, method, choice)
    estimator = model.estimator.estimator
    network, structure = model.network, model.structure
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(0)
    keys = ("data", "encoder", "pickgrad", "decoder", "backward", "optimizer", "pickgrad backward")
    parts: dict[str, list[float]] = {k: [] for k in keys}
    for repeat in range(repeats + 2):
        start = _now()
        index = torch.randint(images.shape[0], (config.batch_size,), generator=generator)
        x = images[index].float()
        if choice.needs_loss and config.equal_decoder_evaluations:
            x = x[: config.batch_size // config.n_samples]
        t_data = _now()
        logits = network.encode(x)
        kl = kl_to_uniform(logits).mean()
        t_encoder = _now()
        decoder_time = [0.0]
        if choice.needs_loss:

            def loss_fn(samples, x=x, decoder_time=decoder_time):
                begin = _now()
                out = -bernoulli_log_likelihood(network.decode(samples), x)
                decoder_time[0] += _now() - begin
                return out

            reconstruction = pickgrad.estimate(
                loss_fn, logits, structure, estimator, n_samples=config.n_samples,
                tau=config.tau, generator=generator,
            )  # fmt: skip
            t_pick = _now() - decoder_time[0]
            t_decoder = _now()
        else:
            z = pickgrad.select(logits, structure, estimator, tau=config.tau, generator=generator)
            t_pick = _now()
            reconstruction = -bernoulli_log_likelihood(network.decode(z), x).mean()
            t_decoder = _now()
        loss = reconstruction + kl
        optimizer.zero_grad()
        loss.backward()
        t_backward = _now()
        optimizer.step()
        t_optimizer = _now()
        # pickgrad's backward alone: the same call on detached logits, a random upstream gradient.
        leaf = logits.detach().requires_grad_()
        if choice.needs_loss:
            weights = torch.randn(leaf.shape)
            surrogate = pickgrad.estimate(
                lambda s, w=weights: (s * w).sum((-1, -2)), leaf, structure, estimator,
                n_samples=config.n_samples, generator=generator,
            )  # fmt: skip
            begin = _now()
            surrogate.backward()
        else:
            out = pickgrad.select(leaf, structure, estimator, tau=config.tau, generator=generator)
            upstream = torch.randn_like(out)
            begin = _now()
            torch.autograd.grad(out, leaf, upstream)
        t_pick_back = _now() - begin
        if repeat < 2:
            continue  # warm-up
        parts["data"].append(t_data - start)
        parts["encoder"].append(t_encoder - t_data)
        parts["pickgrad"].append(t_pick - t_encoder)
        parts["decoder"].append(decoder_time[0] if choice.needs_loss else t_decoder - t_pick)
        parts["backward"].append(t_backward - t_decoder)
        parts["optimizer"].append(t_optimizer - t_backward)
        parts["pickgrad backward"].append(t_pick_back)
    return {k: float(np.median(v)) for k, v in parts.items()}


def run_profile(args: argparse.Namespace) -> None:
    import dataclasses

    experiment = get_experiment("vae")
    config = experiment.default_config(quick=False)
    config = dataclasses.replace(config, batch_size=args.batch_size, tau=args.tau)
    pixels = 784 if args.pixels is None else args.pixels
    if pixels != 784:
        config = dataclasses.replace(config, dataset="digits")
    images = torch.randint(0, 2, (2000, pixels), generator=torch.Generator().manual_seed(0))
    print(
        f"VAE training step, batch {config.batch_size}, {pixels} pixels, MLP "
        f"{pixels}-{'-'.join(map(str, config.hidden))}, tau {config.tau}, "
        f"{torch.get_num_threads()} thread(s), {args.clock} ms (median of {args.repeats})"
    )
    header = ("data", "encoder", "pickgrad", "decoder", "backward", "optimizer", "pickgrad bwd")
    print(
        "| latents | estimator | " + " | ".join(header)
        + f" | step | pickgrad share | share / {TARGET_SHARE:.0%} target |"
    )  # fmt: skip
    print("|---|---|" + "---|" * (len(header) + 3))
    for method in args.methods:
        for label in args.estimators:
            parts = profile_step(config, method, label, images, args.repeats)
            step = sum(v for k, v in parts.items() if k != "pickgrad backward")
            share = (parts["pickgrad"] + parts["pickgrad backward"]) / step
            cells = [f"{parts[k] * 1e3:.2f}" for k in parts]
            print(
                f"| {method} | {label.replace(':', ' n_draws ')} | " + " | ".join(cells)
                + f" | {step * 1e3:.2f} | {share:.0%} | {share / TARGET_SHARE:.2f}x |"
            )  # fmt: skip


def run_side_by_side(args: argparse.Namespace) -> None:
    """CPU seconds per training step of the hand-written script and of ``pickgrad experiment``."""
    script = Path(args.baseline_dir) / "vae_train.py"
    if not script.exists():
        raise SystemExit(f"--baseline-dir: no vae_train.py in {args.baseline_dir}")
    scratch = Path(tempfile.mkdtemp(prefix="pickgrad-vae-baseline-"))
    short, long = 50, args.baseline_steps
    try:
        shutil.copy(script, scratch / script.name)

        def baseline(steps: int) -> list[str]:
            return [sys.executable, script.name, "--est", "st-gumbel", "--tau", "0.5",
                    "--steps", str(steps)]  # fmt: skip

        def ours(steps: int, extra: list[str], out: str) -> list[str]:
            return [
                sys.executable, "-m", "pickgrad", "experiment", "vae", "--methods", "categorical",
                "--estimators", "st-gumbel", "--seeds", "0", "--steps", str(steps),
                "--batch-size", "64", "--tau", "0.5", "--eval-every", "100000",
                "--threads", "1", "--no-progress", "--cache-dir", str(scratch / "cache"),
                "--out", str(scratch / out), *extra,
            ]  # fmt: skip

        variants = {
            f"defaults (gradient monitor at step 1 and every {DEFAULT_EVERY} steps)": [],
            "monitor off (--set monitor_every=0)": ["--set", "monitor_every=0"],
        }
        child_cpu_seconds(ours(1, [], "warm"), scratch)  # binarises and caches the data once
        theirs: list[float] = []
        mine: dict[str, list[float]] = {k: [] for k in variants}
        for repeat in range(args.baseline_repeats):
            theirs.append(cpu_seconds_per_step(baseline, short, long, scratch))
            for index, (label, extra) in enumerate(variants.items()):

                def command(steps, extra=extra, out=f"ours-{repeat}-{index}"):
                    return ours(steps, extra, f"{out}-{steps}")

                mine[label].append(cpu_seconds_per_step(command, short, long, scratch))
        print(
            f"\nside by side: CPU ms per training step (from {short}- and {long}-step runs), "
            "categorical 20 x 10, st-gumbel, tau 0.5, batch 64, MLP 784-128-128, one thread"
        )
        print(f"  hand-written vae_train.py: {', '.join(f'{t * 1e3:.2f}' for t in theirs)}")
        for label, times in mine.items():
            ratio = np.median(theirs) / np.median(times)
            print(
                f"  pickgrad experiment vae, {label}: {', '.join(f'{t * 1e3:.2f}' for t in times)}"
                f"; steps/s ratio ours / script {ratio:.2f} (medians)"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long run")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--pixels", type=int, help="784 (default) or 64 (digits' size)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=["categorical", "binary"])
    parser.add_argument(
        "--estimators", nargs="+", default=list(ESTIMATORS),
        help="names; gumbel-rao:K sets n_draws K",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(_CLOCK), default="cpu", help="time the parts by")
    parser.add_argument("--baseline-dir", help="folder with the hand-written vae_train.py")
    parser.add_argument("--baseline-steps", type=int, default=400)
    parser.add_argument("--baseline-repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global _now
    _now = _CLOCK[args.clock]
    if args.quick:
        args.batch_size, args.repeats, args.pixels = 16, 2, 64
        args.estimators = ["st-gumbel", "gumbel-rao:3", "reinforce"]
    run_profile(args)
    if args.baseline_dir and not args.quick:
        run_side_by_side(args)


if __name__ == "__main__":
    main()
