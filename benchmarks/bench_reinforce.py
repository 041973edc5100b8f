"""``reinforce`` on OneHot against REINFORCE written with ``torch.distributions``, side by side.

Compared in one run, interleaved, one thread by default, on float32 scores ``(B, S, n)`` with
``n_samples = 4`` and the leave-one-out baseline:

* ``pickgrad``: ``pickgrad.estimate(loss_fn, scores, OneHot(), "reinforce", n_samples=4)`` and
  its backward.
* ``torch.distributions``: what a user writes without pickgrad: ``Categorical(logits=scores)``,
  ``sample((4,))``, ``one_hot``, ``log_prob``, the leave-one-out baseline by hand, the same
  surrogate, and its backward.

and the draws alone (no gradient): pickgrad's ``OneHot._perturb_argmax_log_prob`` (one uniform
per row against the softmax's cumulative sum, ``sigmoid(s_1 - s_0)`` at two classes, and the
draws' log-probabilities, which the others leave out), the generic perturb-and-argmax (Gumbel
noise, then the argmax; what reinforce drew before), and ``Categorical.sample``. Then pickgrad's
own paths, forward+backward: the fused draw (default), the same draws with the log-probability
computed apart (``perturb_log_prob``), and the generic path (Gumbel noise and the argmax). The loss is linear, ``(x * w).sum``, so the estimator's own work
dominates. Times are the best of ``--repeats`` interleaved rounds; ratios are the other's time
over pickgrad's (above 1: pickgrad is faster).

Run:
    python benchmarks/bench_reinforce.py            # the VAE's shapes and two larger ones
    python benchmarks/bench_reinforce.py --quick    # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

import pickgrad
from _timing import interleaved_best
from pickgrad import OneHot
from pickgrad.noise import sample_gumbel

#: (B, S, n): the VAE's 20 categoricals of 10 and 200 binary latents at batch 100, then wider rows.
SIZES = ((100, 20, 10), (100, 200, 2), (256, 16, 64), (64, 4, 1000))
N_SAMPLES = 4
ONEHOT = OneHot()


def by_distributions(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a leave-one-out baseline, written with torch.distributions."""

    def path(structure: OneHot) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda s, w: pickgrad.estimate(
            lambda x: (x * w).sum((-1, -2)), s, structure, "reinforce", n_samples=N_SAMPLES
        )

    law = torch.distributions.Categorical(logits=scores)
    index = law.sample((N_SAMPLES,))
    x = F.one_hot(index, scores.shape[-1]).to(scores.dtype)
    losses = (x * weights).sum((-1, -2))  # (n_samples, B)
    log_p = law.log_prob(index).sum(-1)
    baseline = (losses.sum(0, keepdim=True) - losses) / (N_SAMPLES - 1)
    return losses.mean() + ((losses - baseline).detach() * log_p).mean()


def by_pickgrad(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return pickgrad.estimate(
        lambda x: (x * weights).sum((-1, -2)), scores, ONEHOT, "reinforce", n_samples=N_SAMPLES
    )


def gumbel_argmax(scores: torch.Tensor) -> torch.Tensor:
    expanded = scores.expand(N_SAMPLES, *scores.shape)
    noise = sample_gumbel(expanded.shape, dtype=scores.dtype, device=scores.device)
    return ONEHOT._argmax(expanded + noise)


class _SplitOneHot(OneHot):
    """The fused draws, with the log-probability computed apart by ``_perturb_log_prob``."""

    def _perturb_argmax_log_prob(
        self, scores: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fused = OneHot._perturb_argmax_log_prob(self, scores.detach(), generator)
        assert fused is not None
        return fused[0], self._perturb_log_prob(scores, fused[0])


class _GenericOneHot(OneHot):
    """No fused draws: reinforce's generic path (Gumbel noise, argmax, ``_perturb_log_prob``)."""

    def _perturb_argmax_log_prob(
        self, scores: torch.Tensor, generator: torch.Generator | None
    ) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = ((16, 4, 10), (16, 8, 2)) if args.quick else SIZES
    repeats = 5 if args.quick else args.repeats
    print(f"torch threads {args.threads}; float32; n_samples {N_SAMPLES}; best of {repeats}")
    for size in sizes:
        report(size, repeats)


def report(size: tuple[int, int, int], repeats: int) -> None:
    """Time and print one size."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(size, generator=generator)
    weights = torch.randn(size, generator=generator)

    def step(estimate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            leaf = scores.detach().requires_grad_()
            estimate(leaf, weights).backward()

        return run

    def path(structure: OneHot) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda s, w: pickgrad.estimate(
            lambda x: (x * w).sum((-1, -2)), s, structure, "reinforce", n_samples=N_SAMPLES
        )

    law = torch.distributions.Categorical(logits=scores)
    expanded = scores.expand(N_SAMPLES, *scores.shape)
    best = interleaved_best(
        {
            "pickgrad": step(by_pickgrad),
            "distributions": step(by_distributions),
            "draws pickgrad": lambda: ONEHOT._perturb_argmax_log_prob(expanded, None),
            "draws gumbel+argmax": lambda: gumbel_argmax(scores),
            "draws Categorical": lambda: law.sample((N_SAMPLES,)),
            "split": step(path(_SplitOneHot())),
            "generic": step(path(_GenericOneHot())),
        },
        repeats,
    )
    ms = {name: seconds * 1e3 for name, seconds in best.items()}
    print(
        f"  {size}: estimate fwd+bwd pickgrad {ms['pickgrad']:.3f} ms | torch.distributions "
        f"{ms['distributions']:.3f} ms = {ms['distributions'] / ms['pickgrad']:.2f}x | draws "
        f"pickgrad {ms['draws pickgrad']:.3f} ms | gumbel+argmax "
        f"{ms['draws gumbel+argmax']:.3f} ms = "
        f"{ms['draws gumbel+argmax'] / ms['draws pickgrad']:.2f}x | Categorical.sample "
        f"{ms['draws Categorical']:.3f} ms = "
        f"{ms['draws Categorical'] / ms['draws pickgrad']:.2f}x"
    )
    print(
        f"  {size}: pickgrad's paths, fwd+bwd: fused {ms['pickgrad']:.3f} ms | log-probability "
        f"apart {ms['split']:.3f} ms = {ms['split'] / ms['pickgrad']:.2f}x | generic (Gumbel "
        f"noise) {ms['generic']:.3f} ms = {ms['generic'] / ms['pickgrad']:.2f}x"
    )


if __name__ == "__main__":
    main()
