"""``imle``: values by hand, the exact mean under Gumbel noise, and the Sum-of-Gamma sampler's law.

With Gumbel noise on OneHot, argmax(s + eps) and argmax(s - lambda c + eps) are exact samples
of softmax(s) and softmax(s - lambda c), so for a linear loss <c, x> the mean gradient is
exactly (softmax(s) - softmax(s - lambda c)) / lambda.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import pickgrad
from pickgrad import IMLE, OneHot
from pickgrad.estimators.imle import sample_standard_gamma, sample_sum_of_gamma

ONEHOT = OneHot()
REPLICATES = 4000


def _assert_within_error(estimates: torch.Tensor, exact: torch.Tensor) -> None:
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / math.sqrt(estimates.shape[0])
    assert torch.all(standard_error > 0)
    assert torch.all((mean - exact).abs() < 5 * standard_error), (mean, exact, standard_error)


def _gradient(
    scores: torch.Tensor, cost: torch.Tensor, estimator: IMLE, seed: int = 0
) -> torch.Tensor:
    leaf = scores.clone().requires_grad_()
    x = pickgrad.select(leaf, ONEHOT, estimator, generator=torch.Generator().manual_seed(seed))
    assert torch.all((x == 0) | (x == 1)) and torch.all(x.sum(-1) == 1)
    (x * cost).sum().backward()
    return leaf.grad


def test_gradient_by_hand_without_noise() -> None:
    # s = (0, 1, 0.5) picks item 1, which costs 2. Target s - lambda c:
    # lambda = 1: (0, -1, 0.5) picks item 2, so the gradient is (e_1 - e_2) / 1;
    # lambda = 0.2: (0, 0.6, 0.5) still picks item 1, so the gradient is zero.
    scores = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    cost = torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)
    quiet = {"noise_temperature": 1e-9}
    assert torch.equal(
        _gradient(scores, cost, IMLE(1.0, **quiet)), torch.tensor([0.0, 1.0, -1.0]).double()
    )
    assert torch.equal(_gradient(scores, cost, IMLE(0.2, **quiet)), torch.zeros(3).double())
    # lambda = 4: (0, -7, 0.5) picks item 2 again; the step is divided by lambda.
    assert torch.equal(
        _gradient(scores, cost, IMLE(4.0, **quiet)), torch.tensor([0.0, 0.25, -0.25]).double()
    )


@pytest.mark.parametrize(("lambda_", "n_perturbations"), [(1.0, 1), (0.5, 1), (1.0, 3)])
def test_gumbel_mean_is_the_softmax_difference(lambda_: float, n_perturbations: int) -> None:
    scores = torch.tensor([0.3, -0.5, 1.0, 0.1], dtype=torch.float64)
    cost = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
    estimator = IMLE(lambda_, n_perturbations=n_perturbations)
    grads = _gradient(scores.expand(REPLICATES, 4), cost, estimator)
    exact = (torch.softmax(scores, -1) - torch.softmax(scores - lambda_ * cost, -1)) / lambda_
    _assert_within_error(grads, exact)


def test_small_lambda_mean_tends_to_the_perturbed_jacobian() -> None:
    # (softmax(s) - softmax(s - lambda c)) / lambda -> J c: check the exact mean is close to it,
    # so that I-MLE and the perturbed optimizer estimate the same thing for small lambda.
    scores = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    cost = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    p = torch.softmax(scores, -1)
    jacobian = torch.diag(p) - torch.outer(p, p)
    lambda_ = 1e-4
    mean = (p - torch.softmax(scores - lambda_ * cost, -1)) / lambda_
    assert torch.allclose(mean, jacobian @ cost, atol=1e-3)


def test_averaging_more_perturbations_reduces_the_variance() -> None:
    scores = torch.tensor([0.3, -0.5, 1.0, 0.1], dtype=torch.float64).expand(REPLICATES, 4)
    cost = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
    single = _gradient(scores, cost, IMLE(1.0, n_perturbations=1)).var(0).sum()
    averaged = _gradient(scores, cost, IMLE(1.0, n_perturbations=8)).var(0).sum()
    assert averaged < single / 4


def test_sum_of_gamma_noise_is_used_and_deterministic() -> None:
    scores = torch.randn(5, 6, dtype=torch.float64)
    cost = torch.randn(5, 6, dtype=torch.float64)
    estimator = IMLE(2.0, noise="sum-of-gamma", noise_k=2, n_terms=5, n_perturbations=3)
    first = _gradient(scores, cost, estimator, seed=4)
    assert torch.equal(first, _gradient(scores, cost, estimator, seed=4))
    assert torch.isfinite(first).all()
    # Each slot's gradient is a mean of differences of one-hots: entries sum to zero.
    assert torch.allclose(first.sum(-1), torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("concentration", [0.3, 1.0, 2.5])
def test_standard_gamma_sampler_law(concentration: float) -> None:
    gen = torch.Generator().manual_seed(0)
    draws = sample_standard_gamma((4000,), concentration, dtype=torch.float64, generator=gen)
    assert draws.dtype == torch.float64 and torch.all(draws >= 0)
    assert stats.kstest(draws.numpy(), stats.gamma(concentration).cdf).pvalue > 1e-3


@pytest.mark.parametrize(("k", "n_terms"), [(1, 10), (3, 10), (4, 3)])
def test_sum_of_k_sum_of_gamma_draws_is_a_shifted_max_of_exponentials(k: int, n_terms: int) -> None:
    # sum_j eps_j = sum_i Exp(1) / i - log s = max of s standard exponentials - log s,
    # whose CDF is (1 - exp(-t) / s) ** s for t >= -log s.
    gen = torch.Generator().manual_seed(1)
    draws = sample_sum_of_gamma((4000, k), k=k, n_terms=n_terms, dtype=torch.float64, generator=gen)
    total = draws.sum(-1).numpy()

    def cdf(t: np.ndarray) -> np.ndarray:
        return (1 - np.exp(-np.clip(t, -math.log(n_terms), None)) / n_terms) ** n_terms

    assert stats.kstest(total, cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"lambda_": 0.0}, ValueError, "lambda_"),
        ({"noise": "uniform"}, ValueError, "noise"),
        ({"noise_temperature": -1.0}, ValueError, "noise_temperature"),
        ({"noise_k": 0}, ValueError, "noise_k"),
        ({"n_terms": 0}, ValueError, "n_terms"),
        ({"n_perturbations": 0}, ValueError, "n_perturbations"),
    ],
)
def test_bad_options_are_rejected(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        pickgrad.select(torch.zeros(3), ONEHOT, "imle", **options)


def test_bad_gamma_concentration_is_rejected() -> None:
    with pytest.raises(ValueError, match="concentration"):
        sample_standard_gamma((3,), 0.0)


def test_estimate_gives_each_sample_the_gradient_of_its_own_loss() -> None:
    # The loss sums over the batch, so each replicate row sees g = c; estimate's mean over
    # n_samples must average the per-sample I-MLE gradients, not shrink lambda by n_samples.
    scores = torch.tensor([0.3, -0.5, 1.0, 0.1], dtype=torch.float64)
    cost = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
    leaf = scores.expand(REPLICATES, 4).clone().requires_grad_()
    surrogate = pickgrad.estimate(
        lambda x: (x * cost).sum((-2, -1)),
        leaf,
        ONEHOT,
        "imle",
        n_samples=2,
        lambda_=1.0,
        generator=torch.Generator().manual_seed(3),
    )
    surrogate.backward()
    exact = torch.softmax(scores, -1) - torch.softmax(scores - cost, -1)
    _assert_within_error(leaf.grad, exact)


@pytest.mark.parametrize(
    ("structure", "event"),
    [
        (OneHot(), (3, 4)),
        (pickgrad.Subset(2), (5,)),
        (pickgrad.Permutation(), (4, 4)),
        (pickgrad.SpanningTree(), (5, 5)),
        (pickgrad.SpanningTree(edge_list=True), (10,)),
        (pickgrad.Arborescence(), (4, 4)),
        (pickgrad.Arborescence(root=2), (4, 4)),
    ],
    ids=repr,
)
def test_closed_form_objective_transpose_equals_the_vjp(structure, event) -> None:
    # imle and blackbox move the solver's objective along A^T g; the closed forms (a mask, the
    # tree's mirrored triangle) must be the transpose that torch.func.vjp derives.
    from pickgrad.estimators.imle import objective_transpose

    grad = torch.randn(2, *event, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    closed = structure._objective_transpose(grad)
    assert closed is not None
    derived = torch.func.vjp(structure.linear_objective, torch.zeros_like(grad))[1](grad)[0]
    assert torch.equal(closed, derived)
    assert torch.equal(objective_transpose(structure, grad), derived)


def test_a_structure_with_its_own_objective_gets_the_vjp() -> None:
    from pickgrad.estimators.imle import objective_transpose

    class Doubled(OneHot):
        def linear_objective(self, scores: torch.Tensor) -> torch.Tensor:
            return 2 * scores

    grad = torch.randn(3, 4)
    assert Doubled()._objective_transpose(grad) is None
    torch.testing.assert_close(objective_transpose(Doubled(), grad), 2 * grad)
