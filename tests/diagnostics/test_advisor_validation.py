"""The problems added to validate the advisor on unseen tasks, and diagnose in parameter space."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import pickgrad
from pickgrad import diagnose
from pickgrad.diagnostics.problems import (
    PROBLEMS,
    Problem,
    slot_coverage,
    subset_kmedian,
    subset_top_k_log_prob,
)

f64 = torch.float64


def brute_force_top_k_law(scores: torch.Tensor, k: int) -> dict[tuple[int, ...], float]:
    """P(top-k set) from the Plackett-Luce law of the full order, by enumerating all n! orders."""
    weights = scores.exp()
    law: dict[tuple[int, ...], float] = {}
    for order in itertools.permutations(range(scores.numel())):
        probability, left = 1.0, float(weights.sum())
        for index in order:
            probability *= float(weights[index]) / left
            left -= float(weights[index])
        key = tuple(sorted(order[:k]))
        law[key] = law.get(key, 0.0) + probability
    return law


@pytest.mark.parametrize("k", [1, 2, 3])
def test_subset_top_k_law_matches_the_full_plackett_luce_enumeration(k: int) -> None:
    scores = torch.randn(5, generator=torch.Generator().manual_seed(k), dtype=f64)
    subsets = pickgrad.Subset(k).enumerate((5,), dtype=f64)
    law = subset_top_k_log_prob(scores, subsets).exp()
    expected = brute_force_top_k_law(scores, k)
    for row, probability in zip(subsets, law, strict=True):
        key = tuple(int(i) for i in row.nonzero().flatten())
        assert float(probability) == pytest.approx(expected[key], abs=1e-12)
    if k == 1:  # the top-1 law of Gumbel-perturbed scores is the softmax
        torch.testing.assert_close(law, torch.softmax(scores, -1))


def test_subset_top_k_law_matches_sampling_within_its_standard_error() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(6, generator=generator, dtype=f64)
    subsets = pickgrad.Subset(3).enumerate((6,), dtype=f64)
    law = subset_top_k_log_prob(scores, subsets).exp()
    n = 40_000
    samples = pickgrad.Subset(3).argmax(
        scores
        + pickgrad.noise.sample_gumbel((n, 6), generator=generator, dtype=f64, device=scores.device)
    )
    frequency = (samples[:, None, :] == subsets[None]).all(-1).double().mean(0)
    standard_error = (law * (1 - law) / n).sqrt()
    # 20 cells: 5 standard errors is a per-cell false-alarm rate below 1e-6.
    assert ((frequency - law).abs() <= 5 * standard_error + 1e-9).all()


def test_subset_kmedian_exact_gradient_matches_autograd_of_the_enumerated_law() -> None:
    problem = subset_kmedian()
    reference = problem.exact_gradient()
    assert reference.exact and repr(problem.structure) == "Subset(k=3)"
    leaf = problem.scores.clone().requires_grad_(True)
    subsets = pickgrad.Subset(3).enumerate((8,), dtype=f64)
    probability = subset_top_k_log_prob(leaf, subsets).exp()  # (P, C)
    losses = problem.loss_fn(subsets[:, None].expand(-1, 2, -1))  # (C, P)
    (probability * losses.T).sum(-1).mean().backward()
    torch.testing.assert_close(reference.gradient, leaf.grad)
    # The loss is a minimum over open sites: not linear in x.
    x = subsets[:2][:, None].expand(-1, 2, -1)
    middle = problem.loss_fn(x.mean(0, keepdim=True))
    assert not torch.allclose(middle, problem.loss_fn(x).mean(0, keepdim=True))


def test_slot_coverage_is_exact_by_enumeration_and_nonlinear() -> None:
    problem = slot_coverage()
    reference = problem.exact_gradient()
    assert reference.exact and problem.scores.shape == (2, 4, 6)
    hard = pickgrad.OneHot().argmax(problem.scores)[None]
    assert problem.loss_fn(hard).shape == (1, 2)
    assert (problem.loss_fn(hard) <= 0).all()
    other = pickgrad.OneHot().argmax(-problem.scores)[None]
    mixed = problem.loss_fn((hard + other) / 2)
    linear = (problem.loss_fn(hard) + problem.loss_fn(other)) / 2
    assert not torch.allclose(mixed, linear)


def test_new_problems_are_built_in() -> None:
    assert {"subset-kmedian", "slot-coverage", "spanning-tree"} <= set(PROBLEMS)


def test_diagnose_in_parameter_space_pulls_back_draws_and_exact_gradient() -> None:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(5, 3, 4, generator=generator, dtype=f64)
    weight = torch.randn(4, generator=generator, dtype=f64, requires_grad=True)
    scores = features @ weight  # (5, 3): a linear "network"
    cost = torch.randn(5, 3, generator=generator, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * cost).sum(-1) ** 2

    report = diagnose(
        loss, scores, pickgrad.OneHot(), ["st-gumbel", "reinforce/rloo"], n_samples=30,
        parameters=[weight],
    )  # fmt: skip
    exact = pickgrad.exact_gradient(loss, scores.detach(), pickgrad.OneHot())
    # J^T g for scores = features @ weight is sum_{b,i} g[b, i] features[b, i].
    torch.testing.assert_close(
        report.reference.gradient, torch.einsum("bi,bid->d", exact.gradient, features)
    )
    assert report.settings["space"] == "parameters"
    plain = diagnose(
        loss, scores.detach(), pickgrad.OneHot(), ["st-gumbel", "reinforce/rloo"], n_samples=30
    )
    assert plain.settings["space"] == "scores"
    # The same seeded draws, pulled back: the parameter-space mean is J^T (score-space mean).
    for row, base in zip(report.rows, plain.rows, strict=True):
        assert row.error is None and base.error is None
        assert math.isfinite(row.training_error) and row.variance <= base.variance * 1e3


def test_diagnose_parameters_needs_tracked_scores_and_an_exact_reference() -> None:
    weight = torch.ones(3, dtype=f64, requires_grad=True)
    with pytest.raises(ValueError, match="requires_grad"):
        diagnose(lambda x: x.sum(-1), torch.zeros(3, dtype=f64), pickgrad.OneHot(),
                 ["st"], n_samples=2, parameters=[weight])  # fmt: skip
    with pytest.raises(TypeError, match="parameters"):
        diagnose(lambda x: x.sum(-1), weight * 1, pickgrad.OneHot(), ["st"], n_samples=2,
                 parameters=[])  # fmt: skip
    with pytest.raises(ValueError, match="exact reference"):
        diagnose(
            lambda x: x.sum(-1), weight * 1, pickgrad.OneHot(), ["st"], n_samples=2,
            parameters=[weight],
            reference=pickgrad.diagnostics.ExactGradient(
                torch.zeros(3, dtype=f64), torch.tensor(0.0), False, torch.ones(3, dtype=f64),
                "monte carlo",
            ),
        )  # fmt: skip


def test_demo_problem_is_measured_in_the_selectors_parameters() -> None:
    problem = PROBLEMS["pick-the-five"](0)
    assert problem.parameters is not None and problem.tracked_scores is not None
    assert problem.scores.shape == (32, 1, 8)
    report = problem.diagnose(["reinforce/rloo"], n_samples=4)
    count = sum(p.numel() for p in problem.parameters)
    assert report.reference.gradient.numel() == count
    assert isinstance(problem, Problem)
