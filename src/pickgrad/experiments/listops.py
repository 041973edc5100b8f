"""``pickgrad experiment listops``: learn latent parse trees of ListOps expressions from their values.

Paulus et al. 2020, "Gradient estimation with stochastic softmax tricks", Sec. 7.2 (unsupervised
parsing on ListOps, after Nangia & Bowman 2018 and Choi et al. 2018). The data, the parse
convention (an operator heads its arguments and its closing bracket; the root is token 0) and the
model are documented in :mod:`~pickgrad.experiments.listops_data` and
:mod:`~pickgrad.experiments.listops_model`. The loss is the cross-entropy of the expression's
value; every reported number uses the hard ``argmax`` graph.

Methods: ``arborescence`` (``Arborescence(root=0)``), ``tree`` (``SpanningTree``, undirected,
messages both ways), ``independent`` (a ``OneHot`` over the heads of each non-root token, no tree
constraint) and ``lstm`` (no latent graph: the BiLSTM's root state; it ignores the estimator,
so the runner trains it once per estimator name).

Metrics (test split, best validation cross-entropy): ``accuracy``; ``arc_precision`` and
``arc_recall`` of the directed arcs against the true parse (the spanning tree is oriented away
from token 0 first); ``undirected_precision`` and ``undirected_recall`` of the edges with the
direction dropped. Trees and one-parent-per-token graphs draw as many arcs as the true parse
(``L - 1``), so their directed precision equals their recall; the undirected ones differ for
``independent``, which may draw both ``i -> j`` and ``j -> i``. ``lstm`` draws nothing: its arc
metrics are 0 by definition.

Default budget (``ListOpsConfig()``): 5000 steps of batch 100, validation every 500 steps on the
10k validation split, 3 seeds, every method x {gumbel-relaxed, st-gumbel, reinforce}. Full run::

    pickgrad experiment listops --out results/listops

(not run on the shared machine: see the benchmark ``benchmarks/bench_listops.py`` for the cost
of a step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
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
from pickgrad.experiments.listops_data import VOCABULARY, heads_to_arcs, load_or_generate
from pickgrad.experiments.listops_model import (
    METHODS,
    ListOpsNetwork,
    orient_from_root,
    structure_for,
)
from pickgrad.structures.base import Structure

__all__ = ["NODE_INPUTS", "ListOps", "ListOpsConfig", "ListOpsModel", "arc_sums"]

#: What the message passing may start from (see ``ListOpsConfig.node_input``).
NODE_INPUTS = ("lstm", "embedding")


@dataclass(frozen=True)
class ListOpsConfig(TrainingConfig):
    """The ListOps experiment's settings (defaults: the documented full budget).

    Attributes (beyond :class:`TrainingConfig`):
        train_size, valid_size, test_size: examples per split.
        data_seed: seed of the data generator.
        hidden: width of the token states (the BiLSTM's two directions together).
        arc_hidden: width of the biaffine scorer's head and dependent projections.
        rounds: message-passing rounds over the drawn graph (the deepest parse has 5 levels).
        node_input: what message passing starts from: ``"lstm"``, the BiLSTM's states (the
            default), or ``"embedding"``, the tokens' embeddings alone, so that the rest of the
            expression reaches the root only along the drawn arcs (the arc scores still come
            from the BiLSTM). ``lstm``, the method, has no graph and ignores it.
    """

    steps: int = 5000
    batch_size: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    estimators: tuple[str, ...] = ("gumbel-relaxed", "st-gumbel", "reinforce")
    tau: float = 1.0
    lr: float = 1e-3
    eval_every: int = 500
    checkpoint_every: int = 500
    train_size: int = 80_000
    valid_size: int = 10_000
    test_size: int = 10_000
    data_seed: int = 0
    hidden: int = 64
    arc_hidden: int = 32
    rounds: int = 5
    node_input: str = "lstm"

    def __post_init__(self) -> None:
        if self.node_input not in NODE_INPUTS:
            raise ValueError(
                f"node_input must be one of {', '.join(NODE_INPUTS)}, got {self.node_input!r}"
            )
        if self.rounds < 1 or self.hidden < 2 or self.hidden % 2 or self.arc_hidden < 1:
            raise ValueError(
                f"rounds >= 1, an even hidden >= 2 and arc_hidden >= 1 are needed, got "
                f"rounds={self.rounds}, hidden={self.hidden}, arc_hidden={self.arc_hidden}"
            )


def arc_sums(predicted: Tensor, truth: Tensor) -> dict[str, Tensor]:
    """Per-example precision and recall of arcs, directed and undirected, summed over the batch.

    Args:
        predicted, truth: ``(B, n, n)`` 0/1 arcs (``x[i, j] = 1``: i -> j), padding all 0.

    Example:
        >>> p = torch.tensor([[[0.0, 1, 0], [0, 0, 1], [0, 0, 0]]])  # 0 -> 1 -> 2
        >>> t = torch.tensor([[[0.0, 1, 1], [0, 0, 0], [0, 0, 0]]])  # 0 -> 1, 0 -> 2
        >>> {k: float(v) for k, v in arc_sums(p, t).items()}["arc_precision"]
        0.5
    """

    def pr(pred: Tensor, true: Tensor) -> tuple[Tensor, Tensor]:
        hits = (pred * true).sum((-1, -2))
        precision = hits / pred.sum((-1, -2)).clamp_min(1)
        recall = hits / true.sum((-1, -2)).clamp_min(1)
        return precision.sum(), recall.sum()

    def undirected(arcs: Tensor) -> Tensor:
        return torch.triu((arcs + arcs.transpose(-1, -2)).clamp(max=1), 1)

    precision, recall = pr(predicted, truth)
    u_precision, u_recall = pr(undirected(predicted), undirected(truth))
    return {
        "arc_precision": precision,
        "arc_recall": recall,
        "undirected_precision": u_precision,
        "undirected_recall": u_recall,
    }


class ListOpsModel(ExperimentModel):
    """Encoder -> arc scores -> pickgrad structure -> message passing -> value.

    A batch is ``(tokens (B, 50) uint8, lengths (B,), values (B,), heads (B, 50))``; it is cut to
    the longest expression of the batch, ``n``. Scores are ``(B, n, n)`` (``(B, n - 1, n)``, one
    row of head scores per non-root token, for ``independent``); graphs ``(B, n, n)``.
    """

    def __init__(self, config: ListOpsConfig, method: str, estimator: EstimatorChoice) -> None:
        super().__init__()
        self.config, self.method, self.estimator = config, method, estimator
        self.structure = structure_for(method)
        self.network = ListOpsNetwork(
            vocabulary=len(VOCABULARY), hidden=config.hidden, arc_hidden=config.arc_hidden,
            rounds=config.rounds,
        )  # fmt: skip
        # NVIL's input-dependent baseline: a function of the encoder's root state only.
        self.baseline: nn.Module | None = None
        if estimator.learned_baseline and method != "lstm":
            self.baseline = nn.Linear(config.hidden, 1)

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        tokens, lengths, values, heads = batch
        n = int(lengths.max())
        return tokens[:, :n].long(), lengths, values, heads[:, :n]

    def scores(self, states: Tensor, lengths: Tensor) -> Tensor:
        """The scores the structure reads (see the class docstring)."""
        arcs = self.network.arc_scores(states, lengths, pad=not self.uses_lengths)
        if self.method == "independent":
            return arcs.transpose(-1, -2)[..., 1:, :]  # child j >= 1 chooses a head i
        return arcs

    @property
    def uses_lengths(self) -> bool:
        """Whether the structure is a tree, drawn with ``lengths=`` (otherwise padded scores)."""
        return self.method in ("arborescence", "tree")

    def lengths_option(self, lengths: Tensor) -> dict[str, Tensor]:
        """``{"lengths": lengths}`` for the trees' ``select`` / ``estimate``, else nothing."""
        return {"lengths": lengths} if self.uses_lengths else {}

    def graph(self, drawn: Tensor) -> Tensor:
        """The drawn structure as arc weights ``(..., B, n, n)``."""
        if self.method != "independent":
            return drawn
        n = drawn.shape[-1]
        graph = drawn.new_zeros(*drawn.shape[:-2], n, n)
        graph[..., :, 1:] = drawn.transpose(-1, -2)
        return graph

    def message_inputs(self, tokens: Tensor, states: Tensor) -> Tensor:
        """The node states ``(B, n, hidden)`` message passing starts from (see
        ``ListOpsConfig.node_input``): the BiLSTM's ``states``, or the tokens' embeddings."""
        if self.config.node_input == "lstm":
            return states
        embedded: Tensor = self.network.embedding(tokens)
        return embedded

    def sample_loss(
        self, nodes: Tensor, lengths: Tensor, values: Tensor
    ) -> Callable[[Tensor], Tensor]:
        """The cross-entropy of the value for each drawn graph, message passing from ``nodes``
        (:meth:`message_inputs`): samples ``(S, *scores.shape)`` -> losses ``(S, B)``."""

        def loss_fn(samples: Tensor) -> Tensor:
            logits = self.network.logits(nodes, lengths, self.graph(samples))
            count = samples.shape[0]
            return F.cross_entropy(
                logits.flatten(0, 1), values.repeat(count), reduction="none"
            ).reshape(count, -1)

        return loss_fn

    def monitor_probe(self, batch: Batch) -> GradientProbe | None:
        """The arc scores of ``batch`` and the cross-entropy of a drawn graph, for
        :class:`~pickgrad.diagnostics.GradientMonitor` (None for ``lstm``: nothing is drawn)."""
        if self.method == "lstm":
            return None
        tokens, lengths, values, _ = self._inputs(batch)
        with torch.no_grad():
            states = self.network.encode(tokens, lengths)
            scores = self.scores(states, lengths)
            baseline = None if self.baseline is None else self.baseline(states[:, 0])[:, 0]
        return GradientProbe(
            scores, self.sample_loss(self.message_inputs(tokens, states), lengths, values),
            self.structure,
            self.estimator.estimator, tau=self.config.tau,
            n_samples=self.config.n_samples if self.estimator.needs_loss else 1,
            baseline_values=baseline, options=self.lengths_option(lengths),
        )  # fmt: skip

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        tokens, lengths, values, _ = self._inputs(batch)
        states = self.network.encode(tokens, lengths)
        config = self.config
        if self.method == "lstm":
            logits = self.network.logits(states, lengths, None)
            loss = F.cross_entropy(logits, values)
        else:
            scores = self.scores(states, lengths)
            nodes = self.message_inputs(tokens, states)
            if self.estimator.needs_loss:
                loss_fn = self.sample_loss(nodes, lengths, values)
                options: dict[str, Tensor] = self.lengths_option(lengths)
                if self.baseline is not None:
                    options["baseline_values"] = self.baseline(states[:, 0].detach())[:, 0]
                loss = pickgrad.estimate(
                    loss_fn, scores, self.structure, self.estimator.estimator,
                    n_samples=config.n_samples, tau=config.tau, generator=generator, **options,
                )  # fmt: skip
                logits = None
            else:
                drawn = pickgrad.select(
                    scores, self.structure, self.estimator.estimator, tau=config.tau,
                    generator=generator, **self.lengths_option(lengths),
                )  # fmt: skip
                logits = self.network.logits(nodes, lengths, self.graph(drawn))
                loss = F.cross_entropy(logits, values)
        logs = {"objective": loss.detach()}
        if logits is not None:
            logs["accuracy"] = (logits.argmax(-1) == values).double().mean()
        return loss, logs

    def argmax_graph(self, states: Tensor, lengths: Tensor) -> Tensor | None:
        """The hard ``argmax`` graph ``(B, n, n)`` as the network reads it in training (None for
        ``lstm``): the spanning tree symmetric, as ``SpanningTree`` draws it."""
        if self.method == "lstm":
            return None
        scores = self.scores(states, lengths)
        if self.method == "independent":
            return self.graph(self.structure.argmax(scores))
        return self.structure.argmax(scores, lengths=lengths)  # type: ignore[call-arg]

    def arcs_of(self, graph: Tensor, lengths: Tensor) -> Tensor:
        """Directed arcs ``(B, n, n)`` of an :meth:`argmax_graph`, to compare with the parse:
        the spanning tree oriented away from token 0, padding cleared."""
        if self.method == "tree":
            return orient_from_root(graph)
        n = graph.shape[-1]
        real = (torch.arange(n, device=graph.device) < lengths[:, None]).to(graph.dtype)
        return graph * real[:, :, None] * real[:, None, :]

    def argmax_arcs(self, states: Tensor, lengths: Tensor) -> Tensor | None:
        """The hard ``argmax`` graph as directed arcs ``(B, n, n)`` (None for ``lstm``)."""
        graph = self.argmax_graph(states, lengths)
        return None if graph is None else self.arcs_of(graph, lengths)

    def evaluation_sums(self, batch: Batch) -> dict[str, Tensor]:
        tokens, lengths, values, heads = self._inputs(batch)
        states = self.network.encode(tokens, lengths)
        graph = self.argmax_graph(states, lengths)
        # The value is read from the graph as training draws it (a spanning tree symmetric, as
        # SpanningTree gives it; oriented arcs would feed each message channel only one side).
        nodes = states if graph is None else self.message_inputs(tokens, states)
        logits = self.network.logits(nodes, lengths, graph)
        arcs = None if graph is None else self.arcs_of(graph, lengths)
        truth = heads_to_arcs(heads, tokens.shape[1]).to(states.dtype)
        if arcs is None:
            metrics = {k: v * 0 for k, v in arc_sums(truth, truth).items()}
        else:
            metrics = arc_sums(arcs, truth)
        cross_entropy = F.cross_entropy(logits, values, reduction="sum")
        correct = (logits.argmax(-1) == values).double().sum()
        return {
            "count": torch.tensor(float(tokens.shape[0])),
            "cross_entropy": cross_entropy,
            "accuracy": correct,
            **metrics,
        }


@register_experiment
class ListOps(Experiment):
    """The ListOps parsing experiment (Paulus et al. 2020, Sec. 7.2)."""

    name: ClassVar[str] = "listops"
    summary: ClassVar[str] = (
        "latent parse trees (arborescences) of ListOps expressions (Paulus et al. 2020, Sec. 7.2)"
    )
    methods: ClassVar[dict[str, str]] = METHODS
    default_estimators: ClassVar[tuple[str, ...]] = ("gumbel-relaxed", "st-gumbel", "reinforce")
    selection_metric: ClassVar[str] = "cross_entropy"
    headline_metric: ClassVar[str] = "accuracy"
    table_metrics: ClassVar[tuple[str, ...]] = (
        "accuracy", "arc_precision", "arc_recall", "undirected_precision", "undirected_recall",
        "cross_entropy",
    )  # fmt: skip

    def default_config(self, *, quick: bool) -> ListOpsConfig:
        if not quick:
            return ListOpsConfig()
        return ListOpsConfig(
            steps=6, batch_size=16, seeds=(0,), eval_every=3, checkpoint_every=3,
            train_size=128, valid_size=32, test_size=32, hidden=16, arc_hidden=8, rounds=2,
            n_samples=2, monitor_every=3,
        )  # fmt: skip

    def structure(self, config: TrainingConfig, method: str) -> Structure:
        return structure_for(method)

    def load_data(self, config: TrainingConfig, cache_dir: Path) -> ExperimentData:
        assert isinstance(config, ListOpsConfig)
        data = load_or_generate(
            cache_dir, sizes=(config.train_size, config.valid_size, config.test_size),
            seed=config.data_seed,
        )  # fmt: skip
        return ExperimentData(data.train, data.valid, data.test, data.checksum, str(data.path))

    def build_model(
        self, config: TrainingConfig, method: str, estimator: EstimatorChoice
    ) -> ListOpsModel:
        assert isinstance(config, ListOpsConfig)
        return ListOpsModel(config, method, estimator)

    def draw_examples(
        self, models: dict[str, ExperimentModel], data: ExperimentData, folder: Path
    ) -> None:
        from pickgrad.experiments.listops_plot import draw_parses

        draw_parses(models, data.test, folder / "parses.png")
