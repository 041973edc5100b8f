"""A user's script that touches every public name; ``mypy --strict`` must accept it as it is.

``tests/test_typing.py`` type-checks this file with ``mypy --strict`` (so pickgrad's annotations,
shipped with ``py.typed``, work for its users) and runs :func:`main` (so the script stays true to
the runtime). Every name of the public ``__all__`` lists below appears here; a test checks it.
Nothing runs at import.
"""

from __future__ import annotations

import torch
from torch import Tensor

import pickgrad
from pickgrad import (
    BASELINES,
    IMLE,
    Arborescence,
    Blackbox,
    Constant,
    DiagnosticReport,
    Estimator,
    ExactGradient,
    ExponentialDecay,
    GumbelRao,
    GumbelRelaxed,
    OneHot,
    Permutation,
    Perturbed,
    Reinforce,
    Relaxed,
    Schedule,
    SpanningTree,
    StraightThrough,
    StraightThroughGumbel,
    StraightThroughRelaxed,
    Structure,
    Subset,
    available_estimators,
    diagnose,
    estimate,
    exact_gradient,
    fenchel_young_loss,
    get_estimator,
    register_estimator,
    select,
    set_validation,
    validation,
)
from pickgrad.diagnostics import (
    PROBLEMS,
    EstimatorStats,
    GradientMonitor,
    Problem,
    Recommendation,
    load_problem,
)
from pickgrad.distributions import PerturbAndMAP
from pickgrad.estimators import replace_gradient
from pickgrad.experiments import (
    Experiment,
    ExperimentData,
    ExperimentModel,
    TrainingConfig,
    available_experiments,
    check_request,
    get_experiment,
    register_experiment,
    run_experiment,
)
from pickgrad.nn import SlotSelection, SlotSelector
from pickgrad.schedules import Constant as ScheduleConstant
from pickgrad.structures import (
    CAPABILITIES,
    Solver,
    edge_index,
    edges_to_matrix,
    matrix_to_edges,
    monotone_path_argmax,
)


def linear_loss(weights: Tensor) -> pickgrad.estimators.base.LossFn:
    """A loss_fn for ``estimate``: samples ``(n, *batch, n_items)`` -> ``(n, *batch)``."""

    def loss_fn(x: Tensor) -> Tensor:
        return x @ weights

    return loss_fn


def structures() -> list[Structure]:
    tree_edges: Tensor = SpanningTree(edge_list=True).argmax(torch.randn(2, 6))
    assert tree_edges.shape == (2, 6)
    pairs: Tensor = edge_index(4)
    matrix: Tensor = edges_to_matrix(torch.randn(6))
    assert matrix_to_edges(matrix).shape == (6,) and pairs.shape == (2, 6)
    paths = Solver(monotone_path_argmax, event_dims=2, name="Paths")
    assert "argmax" in CAPABILITIES
    every: list[Structure] = [
        OneHot(),
        Subset(2),
        Permutation(),
        SpanningTree(),
        Arborescence(root=0),
        paths,
    ]
    solutions: Tensor = Subset(2).enumerate((4,))
    log_z: Tensor = OneHot().log_partition(torch.randn(3, 4), tau=0.5)
    soft: Tensor = Subset(2).relax(torch.randn(3, 4), 0.5, mask=torch.ones(4, dtype=torch.bool))
    assert solutions.shape == (6, 4) and log_z.shape == (3,) and soft.shape == (3, 4)
    return every


def estimators(scores: Tensor, weights: Tensor) -> list[Estimator]:
    objects: list[Estimator] = [
        StraightThrough(),
        StraightThroughRelaxed(),
        Relaxed(),
        GumbelRelaxed(),
        StraightThroughGumbel(),
        GumbelRao(n_draws=2),
        Reinforce(baseline=BASELINES[-1]),
        Perturbed(n_perturbations=4),
        IMLE(lambda_=5.0),
        Blackbox(lambda_=5.0),
    ]
    names: list[str] = available_estimators(OneHot(), pathwise_only=True, include_aliases=True)
    for name in names:
        x: Tensor = select(scores, OneHot(), name, tau=0.5)
        assert x.shape == scores.shape
    learned = get_estimator("reinforce", baseline="learned")
    surrogate: Tensor = estimate(
        linear_loss(weights),
        scores,
        OneHot(),
        learned,
        n_samples=2,
        baseline_values=torch.zeros(scores.shape[0]),
    )
    surrogate.backward()
    assert register_estimator(GumbelRao) is GumbelRao  # registering again is allowed
    hard = OneHot().argmax(scores)
    straight: Tensor = replace_gradient(hard, torch.softmax(scores, -1))
    target = OneHot().argmax(torch.randn_like(scores))
    fy: Tensor = fenchel_young_loss(scores, target, OneHot(), n_perturbations=4)
    assert straight.shape == scores.shape and fy.dim() == 0
    return objects


def diagnostics(weights: Tensor) -> DiagnosticReport:
    scores = torch.randn(2, 3)
    exact: ExactGradient = exact_gradient(linear_loss(weights[:3]), scores, OneHot())
    report: DiagnosticReport = diagnose(
        linear_loss(weights[:3]), scores, OneHot(), ["st", "st-gumbel"], n_samples=4
    )
    rows: list[EstimatorStats] = report.rows
    choice: Recommendation | None = report.recommendation
    problem: Problem = load_problem(next(iter(PROBLEMS)))
    monitor_type: type[GradientMonitor] = GradientMonitor
    assert exact.gradient.shape == scores.shape and rows and choice is not None
    assert problem.scores.dim() >= 1 and monitor_type.__name__ == "GradientMonitor"
    return report


def modules() -> SlotSelection:
    schedule: Schedule = ExponentialDecay(tau0=1.0, rate=0.1, tau_min=0.5)
    fixed: Schedule = Constant(0.5)
    assert isinstance(fixed, ScheduleConstant) and schedule.at(10) >= 0.5
    selector = SlotSelector(item_dim=4, n_slots=2, estimator="st-gumbel", tau=schedule)
    out: SlotSelection = selector(torch.randn(3, 5, 4))
    law = PerturbAndMAP(torch.zeros(3, 5), OneHot())
    sample: Tensor = law.rsample((2,), estimator="st-gumbel", tau=0.5)
    assert sample.shape == (2, 3, 5) and out.selection.shape == (3, 2, 5)
    return out


def experiments() -> list[str]:
    names: list[str] = list(available_experiments())
    experiment: Experiment = get_experiment(names[0])
    config: TrainingConfig = experiment.default_config(quick=True)
    check_request(experiment, config)
    kinds: tuple[object, ...] = (ExperimentData, ExperimentModel, run_experiment)
    assert callable(register_experiment) and len(kinds) == 3
    return names


def main() -> None:
    torch.manual_seed(0)
    with validation(True):
        scores = torch.randn(4, 5, requires_grad=True)
        weights = torch.randn(5)
        structures()
        estimators(scores, weights)
        diagnostics(weights)
        modules()
        experiments()
    set_validation(True)
    version: str = pickgrad.__version__
    assert version


if __name__ == "__main__":
    main()
