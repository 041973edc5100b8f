"""``pickgrad experiment l2x``: learning to explain by choosing k features with pickgrad.

Instance-wise feature selection (Chen et al. 2018, "Learning to Explain", Sec. 3 - 4; Paulus et
al. 2020, "Gradient estimation with stochastic softmax tricks", Sec. 7.3, which puts the
k-subset SST in place of L2X's relaxation). A selector network gives one score per feature;
a k-subset of the features is drawn from the scores; a predictor sees only the chosen features,
``x * mask``, and is trained with the selector to predict the label (cross-entropy against
``P(Y = 1 | X)`` on the synthetic sets, as the released L2X code fits the probabilities). The
data are documented in :mod:`~pickgrad.experiments.l2x_data`.

Networks (after the released L2X code, without its batch normalisation and l2 penalty): the
selector ``d -> 100 -> 100 -> d`` and the predictor ``d -> 200 -> 200 -> 2``, ReLU MLPs.

Methods (what draws the mask during training):

* ``subset``: ``Subset(k)``; with a relaxing estimator its ``entropy`` regulariser (the exact
  k-subset marginals: with ``gumbel-relaxed`` this is the k-subset SST of Paulus et al.);
* ``subset-binary-entropy``, ``subset-euclidean``: ``Subset(k)`` with that regulariser (only
  relaxing estimators read it; the others compute exactly what ``subset`` does);
* ``l2x``: L2X's own relaxation, :func:`l2x_relaxation` (k Gumbel-softmax draws over the
  features merged by an elementwise max, Chen et al. 2018, Sec. 3.2). It draws its own noise
  and takes no pickgrad estimator, so it is run only under the name ``gumbel-relaxed`` (the
  soft forward pass it shares with the SST); any other estimator name is refused before
  training. It is written here, not as a pickgrad estimator: it depends on k, which a
  structure-independent estimator cannot ask for.

Every estimator name of pickgrad's registry works with the ``subset`` methods (``reinforce`` is
the leave-one-out score function, ``nvil`` the learned baseline; see
:mod:`~pickgrad.experiments.estimators`). Evaluation always uses the hard top-k of the
selector's scores (``Subset(k).argmax``).

Metrics (test split, at the best validation cross-entropy): ``precision``, the share of the k
chosen features that are true features (per example, for feature switching its own true set);
``median_rank``, L2X's median rank of the true features among all features ranked by score
(1 = highest; the ideal is (|true| + 1) / 2: 1.5 for XOR, 2.5 for orange skin and the
additive model, 3 for switching); ``accuracy`` against the drawn label; ``cross_entropy``. Digits
have no true features: precision and median rank are 0 there by definition.

Default budget (``L2XConfig()``): 1000 steps of batch 128 (128k examples of a 20k training
set; the released code takes one epoch of 1e6 examples in batches of 1000), tau 0.5, Adam 1e-3,
validation every 250 steps on 2,000 examples, test on 10,000, 3 seeds. A step costs 3 to 6 ms
of CPU (12 ms for ``perturbed``), so a run takes about 10 s on a quiet core and the whole table
(5 data sets x 24 runs) about 25 CPU-minutes. The whole table is two commands per data set::

    for d in xor orange-skin nonlinear-additive switch digits; do
      pickgrad experiment l2x --set dataset=$d --out results/l2x/$d-relax
      pickgrad experiment l2x --set dataset=$d --methods subset \\
          --estimators st-gumbel imle perturbed reinforce --out results/l2x/$d-estimators
    done
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pickgrad
from pickgrad._softmax import softmax
from pickgrad._validation import check_generator, check_tau
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
from pickgrad.experiments.l2x_data import DATASETS, default_k, load_or_generate
from pickgrad.structures import Subset
from pickgrad.structures.base import Structure

__all__ = [
    "L2X",
    "METHODS",
    "L2XConfig",
    "L2XModel",
    "l2x_relaxation",
    "median_ranks",
    "selection_sums",
]

METHODS: dict[str, str] = {
    "subset": "Subset(k), entropy regulariser (exact k-subset marginals; the k-subset SST)",
    "subset-binary-entropy": "Subset(k), binary-entropy regulariser",
    "subset-euclidean": "Subset(k), euclidean regulariser (capped-simplex projection)",
    "l2x": "L2X's relaxation: k Gumbel-softmax draws merged by max (gumbel-relaxed only)",
}
_REGULARIZER = {"subset": None, "subset-binary-entropy": "binary-entropy",
                "subset-euclidean": "euclidean", "l2x": None}  # fmt: skip
#: The only estimator name the ``l2x`` method runs under (it draws its own relaxation).
L2X_ESTIMATOR = "gumbel-relaxed"


def l2x_relaxation(
    scores: Tensor, k: int, tau: float = 1.0, *, generator: torch.Generator | None = None
) -> Tensor:
    """L2X's relaxed k-subset: the elementwise max of k independent Gumbel-softmax draws.

    ``c_j = softmax((scores + G_j) / tau)`` for ``j = 1..k`` with ``G_j`` i.i.d. standard
    Gumbel over the ``n`` features, and ``x = max_j c_j`` (Chen et al. 2018, Sec. 3.2). Each
    entry lies in [0, 1]; as ``tau -> 0`` each ``c_j`` tends to the one-hot of
    ``argmax(scores + G_j)``, a draw from ``softmax(scores)``, so ``x`` tends to the 0/1 union
    of k draws with replacement: between 1 and k ones, feature i included with probability
    ``1 - (1 - softmax(scores)_i)^k``. Differentiable in ``scores``.

    Args:
        scores: ``(..., n)`` floating scores.
        k: number of draws, an int with ``1 <= k <= n``.
        tau: temperature > 0.
        generator: source of the Gumbel noise.

    Returns:
        ``(..., n)``, the dtype and device of ``scores``.

    Example:
        >>> s = torch.tensor([[4.0, 0.0, 3.0, -2.0]])
        >>> x = l2x_relaxation(s, 2, tau=0.5, generator=torch.Generator().manual_seed(0))
        >>> x.shape, bool(((x >= 0) & (x <= 1)).all())
        (torch.Size([1, 4]), True)
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.dim() < 1:
        raise TypeError(
            "scores must be a floating tensor of shape (..., n), got "
            f"{type(scores).__name__} {getattr(scores, 'dtype', '')} "
            f"{tuple(getattr(scores, 'shape', ()))}"
        )
    n = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int with 1 <= k <= n={n} (scores' last dim), got {k!r}")
    tau = check_tau(tau)
    check_generator(generator, scores.device)
    shape = (*scores.shape[:-1], k, n)
    tiny = torch.finfo(scores.dtype).tiny
    uniform = torch.rand(shape, generator=generator, dtype=scores.dtype, device=scores.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(tiny)))
    draws = softmax((scores.unsqueeze(-2) + gumbel) / tau)
    return draws.amax(dim=-2)


def median_ranks(scores: Tensor, relevant: Tensor) -> Tensor:
    """L2X's median rank of the true features of each example (Chen et al. 2018, Sec. 4.1).

    Features are ranked by score, 1 for the highest (ties in index order); the median of the
    ranks of the true features is the mean of the two middle ones for an even count. An
    example without true features gets 0.

    Args:
        scores: ``(B, n)``.
        relevant: ``(B, n)`` bool, True for a true feature.

    Returns:
        ``(B,)`` float.

    Example:
        >>> s = torch.tensor([[0.9, 0.1, 0.8, 0.5]])  # ranks 1, 4, 2, 3
        >>> median_ranks(s, torch.tensor([[True, True, False, False]]))
        tensor([2.5000])
    """
    if scores.shape != relevant.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and relevant must both be (B, n), got {tuple(scores.shape)} and "
            f"{tuple(relevant.shape)}"
        )
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[-1] + 1, device=scores.device).expand_as(order)
    ranks.scatter_(-1, order, positions)
    # The true features' ranks first, in increasing order; the others pushed past them.
    big = scores.shape[-1] + 1
    true_ranks = torch.sort(torch.where(relevant, ranks, big), dim=-1).values
    count = relevant.sum(-1)
    low = ((count - 1).clamp_min(0) // 2).unsqueeze(-1)
    high = (count // 2).clamp_max(scores.shape[-1] - 1).unsqueeze(-1)
    # For an odd count low == high; for an even one they are the two middle ranks.
    middle = (true_ranks.gather(-1, low) + true_ranks.gather(-1, high)).squeeze(-1) / 2
    return torch.where(count > 0, middle, 0.0).to(scores.dtype)


def selection_sums(scores: Tensor, relevant: Tensor, k: int) -> dict[str, Tensor]:
    """Precision of the top-k of ``scores`` against the true features, and the median rank,
    each summed over the batch.

    Precision of an example: ``|top-k ∩ true| / k``.

    Args:
        scores: ``(B, n)`` selector scores.
        relevant: ``(B, n)`` bool true features.
        k: features chosen.

    Example:
        >>> s = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
        >>> true = torch.tensor([[True, False, True, False]] * 2)
        >>> {key: float(v) for key, v in selection_sums(s, true, 2).items()}
        {'precision': 1.0, 'median_rank': 5.0}
    """
    chosen = Subset(k).argmax(scores)
    hits = (chosen * relevant.to(chosen.dtype)).sum(-1)
    return {"precision": (hits / k).sum(), "median_rank": median_ranks(scores, relevant).sum()}


@dataclass(frozen=True)
class L2XConfig(TrainingConfig):
    """The l2x experiment's settings (defaults: the documented full budget, XOR).

    Attributes (beyond :class:`TrainingConfig`):
        dataset: ``xor``, ``orange-skin``, ``nonlinear-additive``, ``switch`` or ``digits``.
        k: features chosen (0: the data set's own, see :func:`~pickgrad.experiments.l2x_data.default_k`).
        train_size, valid_size, test_size: examples per synthetic split.
        data_seed: seed of the data generator (and of the digits split).
        selector_hidden, predictor_hidden: widths of the two MLPs.
    """

    steps: int = 1000
    batch_size: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    estimators: tuple[str, ...] = (L2X_ESTIMATOR,)
    tau: float = 0.5
    lr: float = 1e-3
    eval_every: int = 250
    checkpoint_every: int = 500
    dataset: str = "xor"
    k: int = 0
    train_size: int = 20_000
    valid_size: int = 2_000
    test_size: int = 10_000
    data_seed: int = 0
    selector_hidden: int = 100
    predictor_hidden: int = 200
    # Off by default: one GradientMonitor measurement of Subset(4) of 10 features took about
    # 200 s on the shared machine (against about 5 ms for a training step).
    monitor_every: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        features = DATASETS[self.dataset][0]
        if not 0 <= self.k <= features:
            raise ValueError(
                f"k must be 0 (the data set's own) or 1..{features} for {self.dataset}, "
                f"got k={self.k}"
            )
        if self.selector_hidden < 1 or self.predictor_hidden < 1:
            raise ValueError(
                f"selector_hidden and predictor_hidden must be >= 1, got "
                f"{self.selector_hidden} and {self.predictor_hidden}"
            )

    @property
    def chosen(self) -> int:
        """The number of features chosen (``k``, or the data set's own when 0)."""
        return self.k or default_k(self.dataset)

    @property
    def features(self) -> int:
        """The number of input features of the data set."""
        return DATASETS[self.dataset][0]


def _mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of two-class ``logits (..., 2)`` against ``P(Y = 1) = target (...)``."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(target * log_p[..., 1] + (1 - target) * log_p[..., 0])


class L2XModel(ExperimentModel):
    """Selector -> k-subset mask -> predictor on ``x * mask``.

    A batch is ``(x (B, d), target (B,), label (B,), relevant (B, d))``; scores and masks are
    ``(B, d)``; the predictor gives two-class logits ``(B, 2)``.
    """

    def __init__(self, config: L2XConfig, method: str, estimator: EstimatorChoice) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
        self.config, self.method = config, method
        self.k = config.chosen
        self.structure = Subset(self.k)
        regularizer = _REGULARIZER[method]
        if regularizer is not None and hasattr(estimator.estimator, "relax_options"):
            # Same estimator, its relaxation set to this method's regulariser.
            relaxing = get_estimator(estimator.name, warn_stateful=False, regularizer=regularizer)
            estimator = dataclasses.replace(estimator, estimator=relaxing)
        self.estimator = estimator
        d = config.features
        self.selector = _mlp((d, config.selector_hidden, config.selector_hidden, d))
        self.predictor = _mlp((d, config.predictor_hidden, config.predictor_hidden, 2))
        self.baseline: nn.Module | None = None
        if estimator.learned_baseline and method != "l2x":
            self.baseline = nn.Linear(d, 1)

    def sample_loss(self, x: Tensor, target: Tensor) -> pickgrad.estimators.base.LossFn:
        """Masks ``(S, B, d)`` -> the cross-entropy of each ``(S, B)``."""

        def loss_fn(masks: Tensor) -> Tensor:
            return _soft_cross_entropy(self.predictor(x * masks), target)

        return loss_fn

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x, target = batch[0], batch[1]
        scores = self.selector(x)
        config = self.config
        logits: Tensor | None = None
        if self.method == "l2x":
            mask = l2x_relaxation(scores, self.k, config.tau, generator=generator)
            logits = self.predictor(x * mask)
            loss = _soft_cross_entropy(logits, target).mean()
        elif self.estimator.needs_loss:
            options = {}
            if self.baseline is not None:
                options["baseline_values"] = self.baseline(x)[:, 0]
            loss = pickgrad.estimate(
                self.sample_loss(x, target), scores, self.structure, self.estimator.estimator,
                n_samples=config.n_samples, tau=config.tau, generator=generator, **options,
            )  # fmt: skip
        else:
            mask = pickgrad.select(
                scores, self.structure, self.estimator.estimator, tau=config.tau,
                generator=generator,
            )  # fmt: skip
            logits = self.predictor(x * mask)
            loss = _soft_cross_entropy(logits, target).mean()
        logs = {"objective": loss.detach()}
        if logits is not None:
            logs["accuracy"] = (logits.argmax(-1) == batch[2]).double().mean()
        return loss, logs

    def hard_mask(self, x: Tensor) -> Tensor:
        """The top-k of the selector's scores, ``(B, d)`` 0/1 (what evaluation uses)."""
        return self.structure.argmax(self.selector(x))

    def evaluation_sums(self, batch: Batch) -> dict[str, Tensor]:
        x, target, label, relevant = batch
        scores = self.selector(x)
        logits = self.predictor(x * self.structure.argmax(scores))
        return {
            "count": torch.tensor(float(x.shape[0])),
            "cross_entropy": _soft_cross_entropy(logits, target).sum(),
            "accuracy": (logits.argmax(-1) == label).double().sum(),
            **selection_sums(scores, relevant, self.k),
        }

    def monitor_probe(self, batch: Batch) -> GradientProbe | None:
        """The batch's scores and the cross-entropy of a drawn mask (None for ``l2x``, which
        is not a pickgrad estimator)."""
        if self.method == "l2x":
            return None
        x, target = batch[0], batch[1]
        with torch.no_grad():
            scores = self.selector(x)
            baseline = None if self.baseline is None else self.baseline(x)[:, 0]
        return GradientProbe(
            scores, self.sample_loss(x, target), self.structure, self.estimator.estimator,
            tau=self.config.tau,
            n_samples=self.config.n_samples if self.estimator.needs_loss else 1,
            baseline_values=baseline,
        )  # fmt: skip


@register_experiment
class L2X(Experiment):
    """Instance-wise feature selection: L2X's synthetic sets and digits (Chen et al. 2018)."""

    name: ClassVar[str] = "l2x"
    summary: ClassVar[str] = (
        "learning to explain: choose k features (Chen et al. 2018; Paulus et al. 2020, Sec. 7.3)"
    )
    methods: ClassVar[dict[str, str]] = METHODS
    default_estimators: ClassVar[tuple[str, ...]] = (L2X_ESTIMATOR,)
    selection_metric: ClassVar[str] = "cross_entropy"
    headline_metric: ClassVar[str] = "precision"
    table_metrics: ClassVar[tuple[str, ...]] = (
        "precision", "median_rank", "accuracy", "cross_entropy",
    )  # fmt: skip

    def default_config(self, *, quick: bool) -> L2XConfig:
        if not quick:
            return L2XConfig()
        return L2XConfig(
            steps=40, batch_size=32, seeds=(0,), methods=("subset", "l2x"), eval_every=20,
            checkpoint_every=20, train_size=256, valid_size=64, test_size=64,
            selector_hidden=16, predictor_hidden=16, n_samples=2,
        )  # fmt: skip

    def structure(self, config: TrainingConfig, method: str) -> Structure:
        assert isinstance(config, L2XConfig)
        if method == "l2x":
            others = [name for name in config.estimators if name != L2X_ESTIMATOR]
            if others:
                raise ValueError(
                    f"method 'l2x' is L2X's own relaxation (it draws its own Gumbel noise), so "
                    f"it runs only under the estimator name {L2X_ESTIMATOR!r}; got "
                    f"{', '.join(others)}: run those with --methods subset"
                )
        return Subset(config.chosen)

    def chance(self, config: TrainingConfig) -> float | None:
        """Expected precision of k features drawn uniformly: |true| / d (None for digits)."""
        assert isinstance(config, L2XConfig)
        true = {"xor": 2, "orange-skin": 4, "nonlinear-additive": 4, "switch": 5}
        if config.dataset not in true:
            return None
        return true[config.dataset] / config.features

    def load_data(self, config: TrainingConfig, cache_dir: Path) -> ExperimentData:
        assert isinstance(config, L2XConfig)
        data = load_or_generate(
            cache_dir, config.dataset,
            sizes=(config.train_size, config.valid_size, config.test_size),
            seed=config.data_seed,
        )  # fmt: skip
        return ExperimentData(data.train, data.valid, data.test, data.checksum, str(data.path))

    def build_model(
        self, config: TrainingConfig, method: str, estimator: EstimatorChoice
    ) -> L2XModel:
        assert isinstance(config, L2XConfig)
        return L2XModel(config, method, estimator)

    def draw_examples(
        self, models: dict[str, ExperimentModel], data: ExperimentData, folder: Path
    ) -> None:
        from pickgrad.experiments.l2x_plot import draw_selections

        draw_selections(models, data.test, folder / "selections.png")
