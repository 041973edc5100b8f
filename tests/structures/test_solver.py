"""Solver: a structure from an argmax function alone, against brute force and every estimator
that needs only argmax."""

from __future__ import annotations

import itertools

import pytest
import torch

import pickgrad
from pickgrad.structures.solver import Solver, monotone_path_argmax


def all_monotone_paths(h: int, w: int) -> torch.Tensor:
    """Every right/down path from (0, 0) to (h-1, w-1), as (count, h, w) indicators."""
    paths = []
    for downs in itertools.combinations(range(h + w - 2), h - 1):
        x = torch.zeros(h, w)
        i = j = 0
        x[0, 0] = 1
        for step in range(h + w - 2):
            if step in downs:
                i += 1
            else:
                j += 1
            x[i, j] = 1
        paths.append(x)
    return torch.stack(paths)


def knapsack_argmax(scores: torch.Tensor) -> torch.Tensor:
    """One instance: the best subset of items with weights 1, 2, 3, ... and capacity 4."""
    n = scores.shape[-1]
    weights = list(range(1, n + 1))
    best, best_x = float("-inf"), None
    for bits in itertools.product((0, 1), repeat=n):
        if sum(b * w for b, w in zip(bits, weights, strict=True)) <= 4:
            value = float((scores * torch.tensor(bits, dtype=scores.dtype)).sum())
            if value > best:
                best, best_x = value, bits
    return torch.tensor(best_x, dtype=scores.dtype)


PATHS = Solver(monotone_path_argmax, event_dims=2, solutions=all_monotone_paths(3, 4), name="Path")


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 4), (3, 1), (2, 2), (3, 4), (4, 3)])
def test_monotone_path_equals_brute_force(h: int, w: int) -> None:
    scores = torch.randn(20, h, w, dtype=torch.float64)
    x = monotone_path_argmax(scores)
    paths = all_monotone_paths(h, w).double()
    best = (scores.unsqueeze(1) * paths).sum((-1, -2)).amax(1)
    torch.testing.assert_close((scores * x).sum((-1, -2)), best)
    assert bool(((x == 0) | (x == 1)).all())
    assert bool((x.sum((-1, -2)) == h + w - 1).all())


@pytest.mark.parametrize("estimator", ["st", "perturbed", "imle", "blackbox"])
def test_pathwise_solver_estimators_run_and_give_finite_gradients(estimator: str) -> None:
    scores = torch.randn(5, 3, 4, requires_grad=True)
    x = pickgrad.select(scores, PATHS, estimator, tau=1.0)
    assert x.shape == scores.shape
    if estimator != "perturbed":  # perturbed's default forward is the mean of its argmaxes
        assert bool(PATHS._is_solution(x.detach()).all())
    (x * torch.randn(3, 4)).sum().backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())


def test_reinforce_runs_on_a_solver_through_estimate() -> None:
    scores = torch.tensor([[0.5, -0.3, 0.2, 0.0], [0.1, 0.4, -0.2, 0.3], [0.0, 0.2, 0.1, -0.1]])
    target = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum((-1, -2))

    leaf = scores.clone().requires_grad_(True)
    pickgrad.estimate(
        loss_fn,
        leaf,
        PATHS,
        "reinforce",
        n_samples=64,
        baseline="rloo",
        generator=torch.Generator().manual_seed(1),
    ).backward()
    # reinforce needs only argmax (it uses the density of the Gumbel utilities): it must run.
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert float(leaf.grad.abs().sum()) > 0


def test_estimators_that_need_relax_are_refused_naming_the_capability() -> None:
    with pytest.raises(NotImplementedError, match="relax"):
        pickgrad.select(torch.randn(3, 4), PATHS, "st-gumbel")
    assert "st-gumbel" not in pickgrad.available_estimators(PATHS)
    assert {"st", "perturbed", "imle", "blackbox", "reinforce"} <= set(
        pickgrad.available_estimators(PATHS)
    )


def test_unbatched_solver_loops_and_matches_brute_force() -> None:
    knapsack = Solver(knapsack_argmax, batched=False, name="Knapsack")
    scores = torch.randn(2, 3, 4)
    x = knapsack.argmax(scores)
    assert x.shape == scores.shape
    weights = torch.arange(1.0, 5.0)
    assert bool(((x * weights).sum(-1) <= 4).all())
    for index in itertools.product(range(2), range(3)):
        torch.testing.assert_close(x[index], knapsack_argmax(scores[index]))
    grad_scores = scores.clone().requires_grad_(True)
    pickgrad.select(grad_scores, knapsack, "imle").sum().backward()
    assert grad_scores.grad is not None


def test_enumerate_and_membership_from_given_solutions() -> None:
    solutions = PATHS.enumerate((3, 4), dtype=torch.float64)
    assert solutions.shape == (10, 3, 4) and solutions.dtype == torch.float64
    assert bool(PATHS._is_solution(solutions).all())
    not_a_path = torch.zeros(3, 4)
    not_a_path[0, 0] = not_a_path[2, 3] = 1
    assert not bool(PATHS._is_solution(not_a_path))
    assert PATHS.supports("enumerate")
    assert not Solver(monotone_path_argmax, event_dims=2).supports("enumerate")
    with pytest.raises(NotImplementedError, match="solutions="):
        Solver(monotone_path_argmax, event_dims=2).enumerate((3, 4))


def test_bad_solvers_and_shapes_raise_clearly() -> None:
    with pytest.raises(TypeError, match="argmax_fn"):
        Solver("not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_dims"):
        Solver(monotone_path_argmax, event_dims=0)
    broken = Solver(lambda s: s[..., :1], name="Broken")
    with pytest.raises(ValueError, match=r"Broken.*shaped like its scores"):
        broken.argmax(torch.randn(2, 3))
    with pytest.raises(ValueError, match="event shape"):
        PATHS.argmax(torch.randn(2, 2, 2))
