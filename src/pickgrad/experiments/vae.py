"""``pickgrad experiment vae``: discrete VAEs on binarised images, one estimator per run.

Jang, Gu & Poole 2017 ("Categorical reparameterization with Gumbel-softmax", Sec. 4.2: a VAE
with 20 categoricals of 10 classes, and Bernoulli latents, on binarised images) and Paulus,
Maddison & Krause 2021 ("Rao-Blackwellizing the straight-through Gumbel-softmax gradient
estimator", Sec. 6, the same VAE with Gumbel-Rao). Data, binarisation and splits:
:mod:`~pickgrad.experiments.vae_data` (``--set dataset=fashion-mnist`` (default) or
``digits``); networks and bounds: :mod:`~pickgrad.experiments.vae_model`.

Methods: ``categorical`` (20 x 10, ``OneHot`` on ``(B, 20, 10)``) and ``binary`` (200
binary latents, ``OneHot`` on ``(B, 200, 2)``). The training objective is the negative ELBO,
``-log p(x | z) + KL(q || uniform)`` with the KL exact (so only the reconstruction term goes
through the estimator): ``z = pickgrad.select(logits, OneHot(), estimator, tau=tau)`` for the
pathwise estimators (``gumbel-relaxed`` feeds the decoder the relaxed sample, so it trains the
relaxed objective; ``st-gumbel`` and ``gumbel-rao`` feed it the exact one-hot sample), and
``pickgrad.estimate`` of the reconstruction for ``reinforce`` (``Reinforce(baseline="rloo")``
over ``n_samples`` draws). ``gumbel-rao`` takes ``n_draws`` from the config (``--set
n_draws=100``).

Equal decoder evaluations (``equal_decoder_evaluations``, on by default): an estimator that
needs the loss evaluates the decoder ``n_samples`` times per example, every other estimator
once (Gumbel-Rao's conditional draws only re-run the relaxation, never the decoder), so a
score-function run trains on the first ``batch_size // n_samples`` examples of each batch:
every run makes ``batch_size`` decoder evaluations per step.

Metrics (test split, at the best validation ``nelbo_hard``; nats per image, lower is better):
``nelbo_hard`` (exact one-hot samples), ``nelbo_relaxed`` (the decoder fed
``softmax((logits + G) / tau)``), ``nll_iw`` (minus the ``eval_samples``-sample
importance-weighted bound, an upper bound of ``-log p(x)``), all from one fixed set of
``eval_samples`` Gumbel draws per image (seeded by ``eval_seed``; the relaxed one from its first
``relaxed_samples``). The draws restart from ``eval_seed`` in every evaluation batch, so under
torchrun (each process evaluating its share of a split) these figures differ from a one-process
evaluation by Monte Carlo noise (0.02-0.04 nats on ``--quick``); training is identical.
Pictures: reconstructions and prior samples of the first seed's models.

Default budget (``VaeConfig()``): Fashion-MNIST, threshold binarisation, encoder 784-128-128
and the decoder mirrored (the hand-written baseline's sizes), 800 steps of batch 100 (Adam
1e-3), validation every 400 steps on the last 500 training images, the test metrics on the first
2000 test images with 100 samples each, 3 seeds. Chosen so that the fidelity grid (2 latent
spaces x {gumbel-relaxed, st-gumbel, gumbel-rao} x 3 taus x 3 seeds, gumbel-rao with
``n_draws=100`` and ``reinforce`` once, as it has no temperature) fits a shared 2-core machine:
a run is 15-25 CPU s (about 1 min of wall time with the machine shared 7 ways), except
gumbel-rao with 100 draws (about 50 ms a step for ``categorical``, 160 ms for ``binary``: its
backward dominates; see ``benchmarks/bench_vae.py``). The grid's commands are in BENCHMARKS.md.
Quick::

    pickgrad experiment vae --quick          # digits, seconds
    pickgrad experiment vae --tau 0.5 --out results/vae_tau0.5
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

import pickgrad
from pickgrad.diagnostics.monitor import GradientProbe
from pickgrad.estimators import get_estimator
from pickgrad.experiments.base import (
    Batch,
    Experiment,
    ExperimentData,
    ExperimentModel,
    register_experiment,
)
from pickgrad.experiments.config import TrainingConfig
from pickgrad.experiments.estimators import EstimatorChoice
from pickgrad.experiments.vae_data import (
    BINARIZATIONS,
    DATASETS,
    FASHION_MNIST_DIR,
    check_dataset,
)
from pickgrad.experiments.vae_data import load_or_binarize as load_binarized
from pickgrad.experiments.vae_model import (
    METHODS,
    VaeNetwork,
    bernoulli_log_likelihood,
    kl_to_uniform,
    latent_shape,
    sample_bounds,
)
from pickgrad.structures import OneHot
from pickgrad.structures.base import Structure

__all__ = ["Vae", "VaeConfig", "VaeModel"]


@dataclass(frozen=True)
class VaeConfig(TrainingConfig):
    """The VAE experiment's settings (defaults: the documented budget).

    Attributes (beyond :class:`TrainingConfig`):
        dataset: ``"fashion-mnist"`` or ``"digits"``.
        data_dir: the folder of Fashion-MNIST's gzipped IDX files.
        binarization: ``"threshold"`` (intensity > max / 2) or ``"bernoulli"`` (one fixed draw).
        binarization_seed: seed of the Bernoulli binarisation (and of the digits' order).
        valid_size, test_size: images in the validation and test splits.
        hidden: the encoder's hidden widths (the decoder mirrors them).
        categoricals, classes: the ``categorical`` method's latent shape.
        binaries: the ``binary`` method's number of binary latents.
        n_draws: Gumbel-Rao's conditional draws K.
        equal_decoder_evaluations: score-function runs train on ``batch_size // n_samples``
            examples a step, so every estimator evaluates the decoder ``batch_size`` times.
        eval_samples: Gumbel draws per image for the evaluation bounds (the IW bound's S).
        relaxed_samples: how many of them the relaxed bound uses.
        eval_seed: seed of the evaluation draws (the same for every model).

    Example:
        >>> VaeConfig().hidden, VaeConfig(dataset="digits", hidden=(32,)).dataset
        ((128, 128), 'digits')
    """

    steps: int = 800
    batch_size: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    estimators: tuple[str, ...] = ("gumbel-relaxed", "st-gumbel", "gumbel-rao", "reinforce")
    tau: float = 0.5
    lr: float = 1e-3
    n_samples: int = 4
    eval_every: int = 400
    checkpoint_every: int = 400
    dataset: str = "fashion-mnist"
    data_dir: str = FASHION_MNIST_DIR
    binarization: str = "threshold"
    binarization_seed: int = 0
    valid_size: int = 500
    test_size: int = 2000
    hidden: tuple[int, ...] = (128, 128)
    categoricals: int = 20
    classes: int = 10
    binaries: int = 200
    n_draws: int = 10
    equal_decoder_evaluations: bool = True
    eval_samples: int = 100
    relaxed_samples: int = 10
    eval_seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(
                f"dataset={self.dataset!r} is not known; expected one of {', '.join(DATASETS)}"
            )
        checks = {
            "categoricals": self.categoricals >= 1,
            "classes": self.classes >= 2,
            "binaries": self.binaries >= 1,
            "binarization": self.binarization in BINARIZATIONS,
            "n_draws": self.n_draws >= 1,
            "eval_samples": self.eval_samples >= 1,
            "relaxed_samples": 1 <= self.relaxed_samples <= self.eval_samples,
            "hidden": bool(self.hidden) and all(h >= 1 for h in self.hidden),
            "valid_size": self.valid_size >= 1,
            "test_size": self.test_size >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(
                f"invalid VAE setting(s) {values}: need categoricals >= 1, classes >= 2, "
                "binaries >= 1, binarization in threshold / bernoulli, n_draws >= 1, eval_samples >= 1, 1 <= relaxed_samples <= "
                "eval_samples, positive hidden widths and positive split sizes"
            )


class VaeModel(ExperimentModel):
    """Encoder -> posterior logits ``(B, L, K)`` -> pickgrad ``OneHot`` -> decoder.

    A batch is ``(images (B, P) uint8 0/1,)``.
    """

    def __init__(self, config: VaeConfig, method: str, estimator: EstimatorChoice) -> None:
        super().__init__()
        self.config, self.method = config, method
        if estimator.name == "gumbel-rao":
            rao = get_estimator("gumbel-rao", n_draws=config.n_draws, warn_stateful=False)
            estimator = replace(estimator, estimator=rao)
        self.estimator = estimator
        self.structure = OneHot()
        latents, classes = latent_shape(
            method, config.categoricals, config.classes, config.binaries
        )
        pixels = DATASETS[config.dataset] ** 2
        self.network = VaeNetwork(pixels, latents, classes, config.hidden)

    def _examples(self, batch: Batch) -> Tensor:
        x = batch[0].to(torch.get_default_dtype())
        config = self.config
        if self.estimator.needs_loss and config.equal_decoder_evaluations:
            x = x[: max(1, x.shape[0] // config.n_samples)]
        return x

    def reconstruction_loss(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """``-log p(x | z)`` of each drawn ``z``: samples ``(S, B, L, K)`` -> losses ``(S, B)``."""

        def loss_fn(samples: Tensor) -> Tensor:
            return -bernoulli_log_likelihood(self.network.decode(samples), x)

        return loss_fn

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x = self._examples(batch)
        config = self.config
        logits = self.network.encode(x)
        kl = kl_to_uniform(logits).mean()
        loss_fn = self.reconstruction_loss(x)
        if self.estimator.needs_loss:
            reconstruction = pickgrad.estimate(
                loss_fn, logits, self.structure, self.estimator.estimator,
                n_samples=config.n_samples, tau=config.tau, generator=generator,
            )  # fmt: skip
        else:
            z = pickgrad.select(
                logits, self.structure, self.estimator.estimator, tau=config.tau,
                generator=generator,
            )  # fmt: skip
            reconstruction = loss_fn(z[None]).mean()
        loss = reconstruction + kl
        return loss, {"objective": loss.detach(), "kl": kl.detach()}

    def monitor_probe(self, batch: Batch) -> GradientProbe | None:
        """The posterior logits of ``batch`` and the reconstruction loss of a drawn ``z`` (the
        KL is exact and leaves it out), for :class:`~pickgrad.diagnostics.GradientMonitor`."""
        x = batch[0].to(torch.get_default_dtype())
        with torch.no_grad():
            logits = self.network.encode(x)
        return GradientProbe(
            logits, self.reconstruction_loss(x), self.structure, self.estimator.estimator,
            tau=self.config.tau,
            n_samples=self.config.n_samples if self.estimator.needs_loss else 1,
        )  # fmt: skip

    @torch.no_grad()
    def evaluation_sums(self, batch: Batch) -> dict[str, Tensor]:
        x = batch[0].to(torch.get_default_dtype())
        device = x.device
        generator = torch.Generator(device=device).manual_seed(self.config.eval_seed)
        bounds = sample_bounds(
            self.network, x, samples=self.config.eval_samples,
            relaxed_samples=self.config.relaxed_samples, tau=self.config.tau, generator=generator,
        )  # fmt: skip
        sums = {name: value.sum() for name, value in bounds.items()}
        return {"count": torch.tensor(float(x.shape[0])), **sums}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Pixel probabilities ``(B, P)`` decoded from the posterior mode ``argmax(logits)``."""
        logits = self.network.encode(x.to(torch.get_default_dtype()))
        return torch.sigmoid(self.network.decode(self.structure.argmax(logits)))

    @torch.no_grad()
    def sample_prior(self, count: int, generator: torch.Generator) -> Tensor:
        """Pixel probabilities ``(count, P)`` decoded from ``z`` drawn from the uniform prior."""
        network = self.network
        weight = next(network.parameters())
        shape = (count, network.latents, network.classes)
        noise = torch.rand(shape, generator=generator, device=weight.device, dtype=weight.dtype)
        return torch.sigmoid(network.decode(self.structure.argmax(noise)))


@register_experiment
class Vae(Experiment):
    """The discrete VAE experiment (Jang et al. 2017, Sec. 4.2; Paulus et al. 2021, Sec. 6)."""

    name: ClassVar[str] = "vae"
    summary: ClassVar[str] = (
        "discrete VAEs (20 x 10 categorical or 200 binary latents) on binarised Fashion-MNIST "
        "or digits (Jang et al. 2017, Sec. 4.2)"
    )
    methods: ClassVar[dict[str, str]] = METHODS
    default_estimators: ClassVar[tuple[str, ...]] = (
        "gumbel-relaxed", "st-gumbel", "gumbel-rao", "reinforce",
    )  # fmt: skip
    selection_metric: ClassVar[str] = "nelbo_hard"
    headline_metric: ClassVar[str] = "nll_iw"
    table_metrics: ClassVar[tuple[str, ...]] = ("nelbo_hard", "nelbo_relaxed", "nll_iw")

    def default_config(self, *, quick: bool) -> VaeConfig:
        if not quick:
            return VaeConfig()
        return VaeConfig(
            dataset="digits", steps=20, batch_size=32, seeds=(0,), eval_every=10,
            checkpoint_every=10, valid_size=64, test_size=64, hidden=(32,), categoricals=4,
            classes=5, binaries=8, eval_samples=8, relaxed_samples=2, n_samples=2,
        )  # fmt: skip

    def structure(self, config: TrainingConfig, method: str) -> Structure:
        # The runner asks for the structure before any work: the place to refuse a missing
        # data set (and to say how to install it).
        assert isinstance(config, VaeConfig)
        check_dataset(config.dataset, config.data_dir)
        return OneHot()

    def load_data(self, config: TrainingConfig, cache_dir: Path) -> ExperimentData:
        assert isinstance(config, VaeConfig)
        data = load_binarized(
            config.dataset, cache_dir, data_dir=config.data_dir, binarization=config.binarization,
            seed=config.binarization_seed,
            valid_size=config.valid_size, test_size=config.test_size,
        )  # fmt: skip
        return ExperimentData(
            (data.train,), (data.valid,), (data.test,), data.checksum, str(data.path)
        )

    def build_model(
        self, config: TrainingConfig, method: str, estimator: EstimatorChoice
    ) -> VaeModel:
        assert isinstance(config, VaeConfig)
        return VaeModel(config, method, estimator)

    def draw_examples(
        self, models: dict[str, ExperimentModel], data: ExperimentData, folder: Path
    ) -> None:
        from pickgrad.experiments.vae_plot import draw_reconstructions, draw_samples

        vaes = {label: model for label, model in models.items() if isinstance(model, VaeModel)}
        draw_reconstructions(vaes, data.test[0], folder / "reconstructions.png")
        draw_samples(vaes, folder / "samples.png")
