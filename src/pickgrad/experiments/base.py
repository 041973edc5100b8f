"""What an experiment provides to the shared runner, and the registry of experiments by name.

An experiment is one module defining a subclass of :class:`Experiment` (its config, methods,
data, model and pictures) decorated with :func:`register_experiment`; the runner does the rest
(seeding, the training loop, evaluation, checkpoints, torchrun, results).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn

from pickgrad.diagnostics.monitor import GradientProbe
from pickgrad.experiments.config import TrainingConfig
from pickgrad.experiments.estimators import EstimatorChoice
from pickgrad.structures.base import Structure

__all__ = [
    "Experiment",
    "ExperimentData",
    "ExperimentModel",
    "available_experiments",
    "get_experiment",
    "register_experiment",
]

Batch = tuple[Tensor, ...]


@dataclass(frozen=True)
class ExperimentData:
    """The splits ``train``, ``valid``, ``test`` (tuples of tensors with a common first dimension)
    and the checksum and location of the cached data they were read from."""

    train: Batch
    valid: Batch
    test: Batch
    checksum: str
    path: str


class ExperimentModel(nn.Module, ABC):
    """A model the runner trains: ``forward`` is the training objective of one batch.

    Attributes:
        estimator: the estimator object the model samples with (kept for its state, such as an
            ema baseline, which the runner checkpoints and averages over processes).
    """

    estimator: EstimatorChoice

    @abstractmethod
    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar training loss (mean over the batch) and detached scalar logs."""

    def start_step(self, step: int) -> None:
        """Called by the runner before each training step, with the number of steps already
        taken (restored on ``--resume``, the same on every process); the default ignores it.
        A model whose objective changes along training (a warm-up) reads the step here, so
        that a resumed run and a multi-process one behave as one uninterrupted process."""

    def leaves_parameters_unused(self) -> bool:
        """Whether some training steps give some parameters no gradient (a warm-up that skips
        a part of the model); the runner then tells DistributedDataParallel to look for them
        (``find_unused_parameters``, a traversal of the graph per step). The default: False."""
        return False

    @abstractmethod
    def evaluation_sums(self, batch: Batch) -> dict[str, Tensor]:
        """Sums over the batch of per-example evaluation metrics (hard ``argmax`` structures),
        with ``"count"``: the runner adds them over batches and processes and divides."""

    def monitor_probe(self, batch: Batch) -> GradientProbe | None:
        """What :class:`~pickgrad.diagnostics.GradientMonitor` needs to redraw this batch's
        gradient with respect to its scores; None (the default) means "not monitored".

        The runner's loop calls it (only on the main process, only at the monitored steps,
        after the step's own backward and before the optimiser step, with the step's batch cut
        to its first ``config.monitor_examples`` examples) and the monitor takes a few extra
        draws from the probe. An experiment provides it cheaply:

        * ``scores``: the structure's scores of ``batch``, computed under ``torch.no_grad()``
          (the monitor differentiates with respect to them only, never into the encoder);
        * ``loss_fn``: maps samples ``(n, *scores.shape)`` of the structure to the training
          loss of each sample, ``(n,)`` or ``(n, *batch)`` (the loss that ``forward``
          differentiates, its structure-independent terms such as a KL of the scores left
          out: they do not depend on the sample); it may run the downstream network with its
          current parameters, but must not change any state (no running statistics, no
          randomness from torch's global generator);
        * ``structure``, ``estimator`` (the run's object, ``self.estimator.estimator``; the
          monitor copies it), ``tau``, ``n_samples`` (the ``n_samples`` training uses, 1 for an
          estimator trained through ``pickgrad.select``), and ``baseline_values`` for a learned
          baseline (NVIL), computed from the input as in ``forward``.

        A model without a latent structure (a plain LSTM) keeps the default.
        """
        return None


class Experiment(ABC):
    """One experiment: its name, methods, default configs, data, model and pictures.

    Class attributes:
        name: the command's name (``pickgrad experiment NAME``).
        summary: one line for ``pickgrad experiment --list``.
        methods: method name -> one-line description.
        selection_metric: validation metric (lower is better) that picks the best checkpoint.
        headline_metric: the test metric the tables lead with (higher is better).
        table_metrics: the test metrics in the results table.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    methods: ClassVar[dict[str, str]] = {}
    default_estimators: ClassVar[tuple[str, ...]] = ()
    selection_metric: ClassVar[str] = ""
    headline_metric: ClassVar[str] = ""
    table_metrics: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def default_config(self, *, quick: bool) -> TrainingConfig:
        """The documented default budget, or a seconds-long one for smoke tests."""

    @abstractmethod
    def structure(self, config: TrainingConfig, method: str) -> Structure:
        """The pickgrad structure ``method`` draws (to check estimators before training)."""

    @abstractmethod
    def load_data(self, config: TrainingConfig, cache_dir: Path) -> ExperimentData:
        """The data for ``config``, generated once and cached under ``cache_dir``."""

    @abstractmethod
    def build_model(
        self, config: TrainingConfig, method: str, estimator: EstimatorChoice
    ) -> ExperimentModel:
        """A freshly initialised model (the runner seeds torch first)."""

    def chance(self, config: TrainingConfig) -> float | None:
        """The headline metric of a structure drawn at random, or None if it has none."""
        return None

    def draw_examples(
        self, models: dict[str, ExperimentModel], data: ExperimentData, folder: Path
    ) -> None:
        """Save into ``folder`` a picture of a few test examples as each model sees them.

        The default draws nothing: an experiment without such a picture keeps it.
        """
        return None


_EXPERIMENTS: dict[str, type[Experiment]] = {}

E = TypeVar("E", bound=type[Experiment])


def register_experiment(cls: E) -> E:
    """Class decorator: make ``cls`` runnable as ``pickgrad experiment cls.name``."""
    if cls.name in _EXPERIMENTS and _EXPERIMENTS[cls.name] is not cls:
        raise ValueError(f"an experiment named {cls.name!r} is already registered")
    _EXPERIMENTS[cls.name] = cls
    return cls


def available_experiments() -> dict[str, str]:
    """Every experiment's name and one-line summary, in registration order."""
    return {name: cls.summary for name, cls in _EXPERIMENTS.items()}


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in _EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(_EXPERIMENTS)}")
    return _EXPERIMENTS[name]()
