"""Checks shared by the solver-based estimators (perturbed, imle, blackbox, fenchel_young_loss).

* They never differentiate the solver: every structure of ``tests/cases.py`` is wrapped so that
  its argmax has a backward that raises, and the estimators still backpropagate.
* Their non-default options (hard perturbed forward, Normal noise, Sum-of-Gamma noise, several
  perturbations) work on every structure case: shapes, dtypes, validity, determinism, masks.
  (Defaults are covered by ``test_shared_table.py``.)
* The Fenchel-Young loss is non-negative on every structure and zero at a reproduced target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import pickgrad
from cases import STRUCTURE_CASES, StructureCase
from pickgrad import IMLE, Blackbox, Perturbed, fenchel_young_loss
from pickgrad.estimators.base import Estimator
from pickgrad.structures.base import Structure

N_PERTURBATIONS = 4

CONFIGS: dict[str, Callable[[], Estimator]] = {
    "perturbed": lambda: Perturbed(N_PERTURBATIONS),
    "perturbed-hard": lambda: Perturbed(N_PERTURBATIONS, hard=True),
    "perturbed-normal": lambda: Perturbed(N_PERTURBATIONS, noise="normal", sigma=0.7),
    "imle": lambda: IMLE(3.0),
    "imle-sum-of-gamma": lambda: IMLE(
        3.0, noise="sum-of-gamma", noise_k=2, n_terms=4, n_perturbations=3
    ),
    "blackbox": lambda: Blackbox(3.0),
}


class SolverDifferentiated(RuntimeError):
    pass


class _Exploding(torch.autograd.Function):
    """Identity on the solution, whose backward raises: the trap for a differentiated solver."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
        return solution.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        raise SolverDifferentiated("the solver was differentiated")


class Trapped(Structure):
    """``inner`` whose argmax output is tied to the scores by a backward that raises."""

    def __init__(self, inner: Structure) -> None:
        self.inner = inner
        self.event_dims = inner.event_dims  # type: ignore[misc]
        self.calls = 0

    def _argmax(self, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return _Exploding.apply(scores, self.inner._argmax(scores.detach()))

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        self.inner._check_event_shape(event_shape, name=name)

    def active_mask(self, event_shape: tuple[int, ...], device: torch.device | None = None) -> Any:
        return self.inner.active_mask(event_shape, device)

    def linear_objective(self, scores: torch.Tensor) -> torch.Tensor:
        return self.inner.linear_objective(scores)


CASES = [pytest.param(case, id=case.id) for case in STRUCTURE_CASES]
PAIRS = [
    pytest.param(case, config, id=f"{case.id}-{config}")
    for case in STRUCTURE_CASES
    for config in CONFIGS
]


def _scores(case: StructureCase, seed: int = 3, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(case.scores_shape, generator=generator, dtype=torch.float64).to(dtype)


def _valid(case: StructureCase, outputs: torch.Tensor) -> bool:
    solutions = case.structure.enumerate(case.event_shape, dtype=torch.float64)
    flat_solutions = solutions.reshape(solutions.shape[0], -1)
    flat = outputs.double().reshape(-1, flat_solutions.shape[1])
    return bool((flat[:, None, :] == flat_solutions[None]).all(-1).any(-1).all())


def test_the_trap_fires_when_the_solver_is_differentiated() -> None:
    trapped = Trapped(pickgrad.OneHot())
    scores = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(SolverDifferentiated):
        trapped._argmax(scores).sum().backward()


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_the_solver_is_never_differentiated(case: StructureCase, config: str) -> None:
    trapped = Trapped(case.structure)
    scores = _scores(case).requires_grad_()
    weights = _scores(case, seed=4)
    x = pickgrad.select(
        scores, trapped, CONFIGS[config](), generator=torch.Generator().manual_seed(0)
    )
    (x * weights).sum().backward()
    assert trapped.calls >= 1
    assert torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("case", CASES)
def test_fenchel_young_never_differentiates_the_solver(case: StructureCase) -> None:
    trapped = Trapped(case.structure)
    scores = _scores(case).requires_grad_()
    target = case.structure.argmax(_scores(case, seed=5))
    fenchel_young_loss(scores, target, trapped, n_perturbations=3).backward()
    assert trapped.calls == 1 and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_options_work_on_every_structure(
    case: StructureCase, config: str, dtype: torch.dtype
) -> None:
    weights = _scores(case, seed=4, dtype=dtype)
    runs = []
    for _ in range(2):
        estimator = CONFIGS[config]()
        scores = _scores(case, dtype=dtype).requires_grad_()
        x = pickgrad.select(
            scores, case.structure, estimator, generator=torch.Generator().manual_seed(9)
        )
        (x * weights).sum().backward()
        runs.append((x.detach(), scores.grad))
    (x, grad), (x_again, grad_again) = runs
    assert torch.equal(x, x_again) and torch.equal(grad, grad_again)
    assert x.shape == grad.shape == case.scores_shape
    assert x.dtype == grad.dtype == dtype
    assert torch.isfinite(x).all() and torch.isfinite(grad).all()
    if estimator.hard:
        assert _valid(case, x)
    else:
        # The mean of M hard solutions: M x has integer entries in [0, M].
        counts = x.double() * N_PERTURBATIONS
        assert torch.allclose(counts, counts.round(), atol=1e-2)
        assert torch.all((x >= 0) & (x <= 1))
    mask = case.structure.active_mask(case.event_shape, grad.device)
    if mask is not None:
        assert torch.all(grad.masked_select(~mask.expand_as(grad)) == 0)


@pytest.mark.parametrize("noise", ["gumbel", "normal"])
@pytest.mark.parametrize("case", CASES)
def test_fenchel_young_is_nonnegative_on_every_structure(case: StructureCase, noise: str) -> None:
    scores = _scores(case).requires_grad_()
    target = case.structure.argmax(_scores(case, seed=5))
    losses = fenchel_young_loss(
        scores,
        target,
        case.structure,
        noise=noise,
        n_perturbations=8,
        reduction="none",
        generator=torch.Generator().manual_seed(0),
    )
    batch_shape = case.scores_shape[: len(case.scores_shape) - case.structure.event_dims]
    assert losses.shape == batch_shape
    assert torch.all(losses >= 0)
    losses.sum().backward()
    assert torch.isfinite(scores.grad).all()
    mask = case.structure.active_mask(case.event_shape, scores.device)
    if mask is not None:
        assert torch.all(scores.grad.masked_select(~mask.expand_as(scores.grad)) == 0)


@pytest.mark.parametrize("case", CASES)
def test_fenchel_young_vanishes_at_a_reproduced_target(case: StructureCase) -> None:
    # Large score gaps and tiny noise: every perturbed argmax equals the target.
    scores = (1e4 * _scores(case)).requires_grad_()
    target = case.structure.argmax(scores)
    loss = fenchel_young_loss(scores, target, case.structure, sigma=1e-4, reduction="sum")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(scores.grad == 0)


@pytest.mark.parametrize(("case", "config"), PAIRS)
def test_gradient_depends_on_the_loss_only_through_hard_solutions(
    case: StructureCase, config: str
) -> None:
    # <g, x> and <A^T g, x> (A = structure.linear_objective) agree on every hard x, e.g. a
    # SpanningTree loss may read x[j, i] instead of x[i, j]: the estimators must not tell them
    # apart.
    weights = _scores(case, seed=4)
    probe = torch.zeros_like(weights, requires_grad=True)
    (transposed,) = torch.autograd.grad(case.structure.linear_objective(probe), probe, weights)
    solutions = case.structure.enumerate(case.event_shape, dtype=torch.float64)[:, None]

    def objective(cost: torch.Tensor) -> torch.Tensor:
        return (solutions * cost.reshape(-1, *case.event_shape)).flatten(2).sum(2)

    assert torch.allclose(objective(weights), objective(transposed))
    grads = []
    for cost in (weights, transposed):
        scores = _scores(case).requires_grad_()
        x = pickgrad.select(
            scores, case.structure, CONFIGS[config](), generator=torch.Generator().manual_seed(9)
        )
        (x * cost).sum().backward()
        grads.append(scores.grad)
    torch.testing.assert_close(grads[0], grads[1])
