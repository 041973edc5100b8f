"""``pickgrad experiment graph-layout``: learn the latent tree behind force-directed trajectories.

Paulus et al. 2020, "Gradient estimation with stochastic softmax tricks", Sec. 7.1 (graph
layout), after Kipf et al. 2018 (neural relational inference). An encoder reads the trajectories
of ``n`` vertices and scores every vertex pair; pickgrad draws a latent graph from those scores;
a message-passing decoder predicts each next frame from the drawn graph. The objective is the
negative ELBO: the Gaussian negative log-likelihood of the frames (fixed variance) plus the KL
divergence of the Gumbel utilities ``U = scores + G`` from those of a zero-score prior,
``KL(Gumbel(s, 1) || Gumbel(0, 1)) = s + exp(-s) - 1`` per score (Paulus et al. 2020, App. C.1;
``kl_weight=0`` drops it). All reported numbers use the hard ``argmax`` graph.

Methods (what the latent graph may be), each over the ``m = n(n-1)/2`` pairs in pickgrad's
edge-list order:

* ``tree``: a spanning tree, ``SpanningTree`` (the true graphs are trees);
* ``top-k``: the ``n - 1`` best edges, ``Subset(k=n-1)`` (right edge count, no tree constraint);
* ``independent``: each edge on or off by itself, a ``OneHot`` over {off, on} per pair.

Design choices, measured (reduced runs: tree / top-k / independent, st-gumbel, tau 0.5, 300 steps
of batch 64, 20k training examples, seeds 0-2, test precision with the hard argmax):

* Decoder output: each step ends with the layout's own centring and scaling to [-1, 1]. Without
  it the tree settled on far-apart non-edges (precision 0.00 after 600 and after 1,500 steps):
  the drawn edges served to model the global rescaling, set by the outermost vertices.
* Messages: ``"edge"`` (only drawn edges send one) is the default. With ``"base+edge"`` the
  drawn set acts as a signed correction to the all-pairs message, so drawing the complement of
  the true edges is a stable solution too: top-k collapsed to 0.003 and 0.000 on two of three
  seeds (0.812 on the third); tree 0.835 / 0.847 / 0.848; independent 0.64 / 0.70 / 0.63. With
  ``"edge"``: tree 0.837 / 0.846 / 0.847, top-k 0.821 / 0.798 / 0.816, independent
  0.599 / 0.640 / 0.379, no seed below chance; the mean squared error is higher (tree 0.0055
  against 0.0041), since repulsion between non-adjacent vertices is not modelled. A soft
  relaxation in the forward pass (``gumbel-relaxed``) gives every pair some weight, so it
  brings the signed-correction solution back: the soft tree at tau 0.5 fell to 0.001 on seed 0.
* Roll-out: one-step prediction from each true frame (``rollout=1``). A nine-step roll-out from
  frame 0 (the hand-written script's) collapsed to 0.001 with either message kind, and costs
  nine sequential decoder passes.

Default budget (``GraphLayoutConfig()``): 400 steps of batch 128, 20k training examples,
validation every 100 steps on a 1k validation split, a 1k test split, 5 seeds, every method x
{gumbel-relaxed, st-gumbel, reinforce, nvil}: 60 runs, chosen so that the full grid runs in
about half an hour on the shared 2-core machine (two processes on disjoint estimator subsets,
or ``torchrun --nproc_per_node=2``); pathwise steps about 40 CPU ms, score-function steps
with 4 samples about 110 CPU ms at batch 128.

Speed (issue 12.8): encoder width 32, and the decoder's per-pair weight MLP of the distance
16 wide (``decoder_weight_hidden``), the frames of an example side by side under one graph;
in reduced runs (st-gumbel, 300 steps of batch 64, 3 seeds) edge precision was tree 0.845,
top-k 0.813, independent 0.53 against 0.841 / 0.812 / 0.47 at widths 48 / 32. A fixed radial
basis instead of the weight MLP (``decoder_weights="radial"``) is faster still but learned
worse (top-k 0.78, independent 0.15 to 0.29 with seeds below chance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

import pickgrad
from pickgrad.diagnostics.monitor import GradientProbe
from pickgrad.experiments.base import (
    Batch,
    Experiment,
    ExperimentData,
    ExperimentModel,
    register_experiment,
)
from pickgrad.experiments.config import TrainingConfig
from pickgrad.experiments.estimators import EstimatorChoice
from pickgrad.experiments.graph_layout_data import load_or_generate
from pickgrad.experiments.nri import (
    DECODER_MESSAGES,
    DECODER_WEIGHTS,
    ForceDecoder,
    TrajectoryEncoder,
)
from pickgrad.structures import OneHot, SpanningTree, Subset
from pickgrad.structures.base import Structure

__all__ = ["GraphLayout", "GraphLayoutConfig", "GraphLayoutModel", "gumbel_kl"]

METHODS = {
    "tree": "spanning tree (SpanningTree): the true structure class",
    "top-k": "the n-1 highest-scoring edges (Subset(k=n-1) over the pairs)",
    "independent": "each edge on or off independently (OneHot over {off, on} per pair)",
}


@dataclass(frozen=True)
class GraphLayoutConfig(TrainingConfig):
    """The graph-layout experiment's settings (defaults: the documented full budget).

    Attributes (beyond :class:`TrainingConfig`):
        vertices, frames: ``n`` and ``T`` of the data.
        train_size, valid_size, test_size: examples per split.
        data_seed: seed of the data generator.
        encoder_hidden: width of the encoder's MLPs.
        decoder_hidden, decoder_channels: width of the decoder's MLPs; message channels.
        decoder_messages: ``"base+edge"`` (every pair sends a base message, drawn edges an extra
            one) or ``"edge"`` (only drawn edges send one).
        rollout: decoder steps from each true frame (``frames - 1``: one roll-out of the whole
            trajectory from frame 0; 1: every frame predicted from the true previous one).
        variance: the Gaussian likelihood's fixed variance.
        kl_weight: weight of the Gumbel KL term (1: the ELBO; 0: reconstruction only).
        decoder_warmup: training steps, at the start, in which the decoder learns on the
            uniform soft graph (every pair weighted ``(n - 1) / m``) and no graph is drawn, so
            the encoder gets only the KL term's gradient; 0 for none. Default 50 (5 in
            ``--quick``). Measured (BENCHMARKS.md, 12.5 and 12.7): with it tree /
            gumbel-relaxed trains on 10 of 10 seeds, where one seed's initialisation of the
            edge-weight MLP otherwise collapses it; the score-function estimators learn somewhat
            worse with it (reinforce on the tree: one seed of five at 0.46).
    """

    steps: int = 400
    batch_size: int = 128
    methods: tuple[str, ...] = tuple(METHODS)
    estimators: tuple[str, ...] = ("gumbel-relaxed", "st-gumbel", "reinforce", "nvil")
    tau: float = 0.5
    lr: float = 3e-3
    eval_every: int = 100
    checkpoint_every: int = 100
    vertices: int = 10
    frames: int = 10
    train_size: int = 20_000
    valid_size: int = 1_000
    test_size: int = 1_000
    data_seed: int = 0
    encoder_hidden: int = 32
    decoder_hidden: int = 32
    decoder_channels: int = 8
    decoder_messages: str = "edge"
    decoder_weights: str = "mlp"
    decoder_weight_hidden: int = 16
    decoder_rescale: bool = True
    rollout: int = 1
    variance: float = 5e-5
    kl_weight: float = 1.0
    decoder_warmup: int = 50

    def __post_init__(self) -> None:
        if self.decoder_warmup < 0:
            raise ValueError(f"decoder_warmup must be >= 0, got {self.decoder_warmup}")
        if self.decoder_messages not in DECODER_MESSAGES:
            raise ValueError(
                f"decoder_messages must be one of {DECODER_MESSAGES}, got {self.decoder_messages!r}"
            )
        if self.decoder_weights not in DECODER_WEIGHTS:
            raise ValueError(
                f"decoder_weights must be one of {DECODER_WEIGHTS}, got {self.decoder_weights!r}"
            )
        if not 1 <= self.rollout <= self.frames - 1:
            raise ValueError(
                f"rollout must be in [1, frames - 1 = {self.frames - 1}], got {self.rollout}"
            )


def gumbel_kl(scores: Tensor) -> Tensor:
    """``KL(Gumbel(s, 1) || Gumbel(0, 1)) = s + exp(-s) - 1``, elementwise.

    Example:
        >>> gumbel_kl(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 0.3679])
    """
    return scores + torch.exp(-scores) - 1.0


class GraphLayoutModel(ExperimentModel):
    """Encoder -> pickgrad structure -> decoder; ``forward`` is the training objective per node.

    Shapes: a batch is ``(trajectories (B, n, T, 2), true edges (B, m))``; the encoder gives
    scores ``(B, m)`` (``(B, m, 2)`` for ``independent``); the drawn graph is ``(B, m)``.
    """

    def __init__(self, config: GraphLayoutConfig, method: str, estimator: EstimatorChoice) -> None:
        super().__init__()
        n, frames = config.vertices, config.frames
        self.config, self.method, self.estimator = config, method, estimator
        self.structure = _structure_for(method, n)
        self.pairs = n * (n - 1) // 2
        outputs = 2 if method == "independent" else 1
        self.encoder = TrajectoryEncoder(n, frames, config.encoder_hidden, outputs)
        self.decoder = ForceDecoder(
            n,
            config.decoder_hidden,
            config.decoder_channels,
            config.decoder_messages,
            rescale=config.decoder_rescale,
            weights=config.decoder_weights,
            weight_hidden=config.decoder_weight_hidden,
        )
        self.step = 0  # training steps taken (see start_step): decides the decoder warm-up
        # NVIL's input-dependent baseline: a network of the input only, never of the sample.
        self.baseline: nn.Module | None = None
        if estimator.learned_baseline:
            hidden = config.encoder_hidden
            self.baseline = nn.Sequential(
                nn.Linear(n * frames * 2, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )

    def scores(self, trajectories: Tensor) -> Tensor:
        """Encoder scores: ``(B, m)``, or ``(B, m, 2)`` (off, on) for ``independent``."""
        scores: Tensor = self.encoder(trajectories)
        return scores if self.method == "independent" else scores[..., 0]

    def edges(self, drawn: Tensor) -> Tensor:
        """The drawn structure as edge weights ``(..., m)`` in [0, 1]."""
        return drawn[..., 1] if self.method == "independent" else drawn

    def argmax_edges(self, trajectories: Tensor) -> Tensor:
        """The hard ``argmax`` graph ``(B, m)`` of the encoder's scores, no noise."""
        return self.edges(self.structure.argmax(self.scores(trajectories)))

    def reconstruction(self, trajectories: Tensor, edges: Tensor) -> Tensor:
        """``sum (x_hat - x)^2 / (2 var)`` over vertices, frames 1..T-1 and coordinates: ``(B,)``."""
        predicted: Tensor = self.decoder(trajectories, edges, rollout=self.config.rollout)
        error = (predicted - trajectories[:, :, 1:]).square().sum((1, 2, 3))
        return error / (2.0 * self.config.variance)

    def sample_loss(self, trajectories: Tensor) -> Callable[[Tensor], Tensor]:
        """The reconstruction term of each drawn graph: samples ``(S, B, m)`` (``(S, B, m, 2)``
        for ``independent``) -> losses ``(S, B)``."""
        n = self.config.vertices

        def loss_fn(samples: Tensor) -> Tensor:
            count = samples.shape[0]
            edges = self.edges(samples).reshape(-1, self.pairs)
            repeated = trajectories.repeat(count, 1, 1, 1)
            return (self.reconstruction(repeated, edges) / n).reshape(count, -1)

        return loss_fn

    def monitor_probe(self, batch: Batch) -> GradientProbe:
        """The scores of ``batch`` and the reconstruction term of a drawn graph (the KL term
        does not depend on the sample), for :class:`~pickgrad.diagnostics.GradientMonitor`."""
        trajectories = batch[0]
        with torch.no_grad():
            scores = self.scores(trajectories)
            baseline = (
                None if self.baseline is None else self.baseline(trajectories.flatten(1))[:, 0]
            )
        return GradientProbe(
            scores, self.sample_loss(trajectories), self.structure, self.estimator.estimator,
            tau=self.config.tau,
            n_samples=self.config.n_samples if self.estimator.needs_loss else 1,
            baseline_values=baseline,
        )  # fmt: skip

    def start_step(self, step: int) -> None:
        self.step = step

    def leaves_parameters_unused(self) -> bool:
        # NVIL's baseline network gets no gradient during the decoder warm-up.
        return self.baseline is not None and self.config.decoder_warmup > 0

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        trajectories = batch[0]
        n, config = self.config.vertices, self.config
        scores = self.scores(trajectories)
        kl = gumbel_kl(scores).flatten(1).sum(1) / n
        if self.training and self.step < config.decoder_warmup:
            # Decoder warm-up: the uniform soft graph, no draw (and no estimator noise).
            uniform = trajectories.new_full(
                (trajectories.shape[0], self.pairs), (n - 1) / self.pairs
            )
            reconstruction = (self.reconstruction(trajectories, uniform) / n).mean()
        elif self.estimator.needs_loss:
            loss_fn = self.sample_loss(trajectories)
            options = {}
            if self.baseline is not None:
                options["baseline_values"] = self.baseline(trajectories.flatten(1))[:, 0]
            reconstruction = pickgrad.estimate(
                loss_fn, scores, self.structure, self.estimator.estimator,
                n_samples=config.n_samples, tau=config.tau, generator=generator, **options,
            )  # fmt: skip
        else:
            drawn = pickgrad.select(
                scores, self.structure, self.estimator.estimator, tau=config.tau,
                generator=generator,
            )  # fmt: skip
            reconstruction = (self.reconstruction(trajectories, self.edges(drawn)) / n).mean()
        kl_mean = kl.mean()
        loss = reconstruction + config.kl_weight * kl_mean
        logs = {"objective": loss.detach(), "nll": reconstruction.detach(), "kl": kl_mean.detach()}
        return loss, logs

    def evaluation_sums(self, batch: Batch) -> dict[str, Tensor]:
        trajectories, truth = batch[0], batch[1].to(batch[0].dtype)
        n, config = self.config.vertices, self.config
        scores = self.scores(trajectories)
        edges = self.edges(self.structure.argmax(scores))
        squared = self.reconstruction(trajectories, edges)
        dims = n * (config.frames - 1) * 2
        nll = squared + 0.5 * dims * math.log(2 * math.pi * config.variance)
        kl = gumbel_kl(scores).flatten(1).sum(1)
        hits = (edges * truth).sum(1)
        return {
            "count": torch.tensor(float(trajectories.shape[0])),
            "neg_elbo": (nll + kl).sum(),
            "nll": nll.sum(),
            "kl": kl.sum(),
            "objective": ((squared + config.kl_weight * kl) / n).sum(),
            "mse": (squared * (2 * config.variance) / dims).sum(),
            "precision": (hits / edges.sum(1).clamp_min(1)).sum(),
            "recall": (hits / truth.sum(1)).sum(),
            "edges": edges.sum(),
        }


def _structure_for(method: str, n: int) -> Structure:
    """The structure over the ``m`` edge scores (edge-list form for trees, contract #5)."""
    if method == "tree":
        return SpanningTree(edge_list=True)
    if method == "top-k":
        return Subset(n - 1)
    if method == "independent":
        return OneHot()
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


@register_experiment
class GraphLayout(Experiment):
    """The graph-layout experiment (Paulus et al. 2020, Sec. 7.1)."""

    name: ClassVar[str] = "graph-layout"
    summary: ClassVar[str] = (
        "latent spanning trees from force-directed trajectories (Paulus et al. 2020, Sec. 7.1)"
    )
    methods: ClassVar[dict[str, str]] = METHODS
    selection_metric: ClassVar[str] = "objective"
    headline_metric: ClassVar[str] = "precision"
    table_metrics: ClassVar[tuple[str, ...]] = ("precision", "recall", "neg_elbo", "nll", "mse")

    def default_config(self, *, quick: bool) -> GraphLayoutConfig:
        if not quick:
            return GraphLayoutConfig()
        return GraphLayoutConfig(
            steps=20, batch_size=32, seeds=(0,), eval_every=10, checkpoint_every=10,
            train_size=512, valid_size=128, test_size=128, encoder_hidden=16,
            decoder_hidden=16, decoder_channels=4, monitor_every=10, decoder_warmup=5,
        )  # fmt: skip

    def structure(self, config: TrainingConfig, method: str) -> Structure:
        assert isinstance(config, GraphLayoutConfig)
        return _structure_for(method, config.vertices)

    def load_data(self, config: TrainingConfig, cache_dir: Path) -> ExperimentData:
        assert isinstance(config, GraphLayoutConfig)
        data = load_or_generate(
            cache_dir, n=config.vertices, frames=config.frames, seed=config.data_seed,
            sizes=(config.train_size, config.valid_size, config.test_size),
        )  # fmt: skip
        return ExperimentData(data.train, data.valid, data.test, data.checksum, str(data.path))

    def build_model(
        self, config: TrainingConfig, method: str, estimator: EstimatorChoice
    ) -> GraphLayoutModel:
        assert isinstance(config, GraphLayoutConfig)
        return GraphLayoutModel(config, method, estimator)

    def chance(self, config: TrainingConfig) -> float:
        """Precision of ``n - 1`` edges drawn at random among ``m``: ``(n - 1) / m = 2 / n``."""
        assert isinstance(config, GraphLayoutConfig)
        return 2.0 / config.vertices

    def draw_examples(
        self, models: dict[str, ExperimentModel], data: ExperimentData, folder: Path
    ) -> None:
        from pickgrad.experiments.graph_layout_plot import draw_recovered_graphs

        draw_recovered_graphs(models, data.test, folder / "recovered_graphs.png")
