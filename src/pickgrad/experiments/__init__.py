"""The seed literature's experiments, one module each, over one shared runner.

``pickgrad experiment NAME`` (or :func:`run_experiment`) runs one. The runner's parts:
:mod:`~pickgrad.experiments.config` (the frozen config and its digest),
:mod:`~pickgrad.experiments.seeding`, :mod:`~pickgrad.experiments.loop` (training, resume),
:mod:`~pickgrad.experiments.eval`, :mod:`~pickgrad.experiments.checkpoints`,
:mod:`~pickgrad.experiments.torchrun`, :mod:`~pickgrad.experiments.results` and
:mod:`~pickgrad.experiments.data_cache` (generated data cached with a checksum). An experiment
subclasses :class:`Experiment` and registers itself with :func:`register_experiment`; today:
``graph-layout`` (latent spanning trees, :mod:`~pickgrad.experiments.graph_layout`) and
``listops`` (latent parse arborescences, :mod:`~pickgrad.experiments.listops`), ``l2x``
(choosing k features to explain a label, :mod:`~pickgrad.experiments.l2x`) and ``vae``
(discrete VAEs on binarised images, :mod:`~pickgrad.experiments.vae`).

Example:
    >>> from pickgrad.experiments import available_experiments
    >>> sorted(available_experiments())
    ['graph-layout', 'l2x', 'listops', 'vae']
"""

from pickgrad.experiments import graph_layout as _graph_layout  # noqa: F401  (registers it)
from pickgrad.experiments import l2x as _l2x  # noqa: F401  (registers it)
from pickgrad.experiments import listops as _listops  # noqa: F401  (registers it)
from pickgrad.experiments import vae as _vae  # noqa: F401  (registers it)
from pickgrad.experiments.base import (
    Experiment,
    ExperimentData,
    ExperimentModel,
    available_experiments,
    get_experiment,
    register_experiment,
)
from pickgrad.experiments.config import TrainingConfig
from pickgrad.experiments.runner import check_request, run_experiment

__all__ = [
    "Experiment",
    "ExperimentData",
    "ExperimentModel",
    "TrainingConfig",
    "available_experiments",
    "check_request",
    "get_experiment",
    "register_experiment",
    "run_experiment",
]
