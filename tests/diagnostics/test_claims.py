"""The library's claims about its estimators, proved with its own diagnostics.

Tolerances come from the measured noise: ``noise_floor = sqrt(trace Cov / R)`` is the size of
``||mean - exact||`` expected from Monte Carlo noise alone for an unbiased estimator.
"""

from __future__ import annotations

import pytest
import torch

from pickgrad import BASELINES, GumbelRao, StraightThroughGumbel, diagnose
from pickgrad.diagnostics.problems import PROBLEMS, bernoulli


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_reinforce_is_unbiased_with_every_baseline_on_every_builtin_problem(name: str) -> None:
    problem = PROBLEMS[name](0)
    report = diagnose(
        problem.loss_fn,
        problem.scores,
        problem.structure,
        [f"reinforce/{baseline}" for baseline in BASELINES],
        n_samples=60,
        reference=problem.exact_gradient(),
    )
    # Exact, or (Arborescence, Permutation) conditional Monte Carlo, whose standard error the
    # noise floor includes.
    assert report.reference.exact or "conditional Monte Carlo" in report.reference.method
    for row in report.rows:
        assert row.error is None, row.error
        # ||mean - exact||^2 has expectation noise_floor^2 when unbiased; 5 floors is far out.
        assert row.bias < 5 * row.noise_floor, (row.label, row.bias, row.noise_floor)
        assert row.acceptable_bias


def test_st_gumbel_is_biased_on_the_bernoulli_toy() -> None:
    # At logit theta = s1 - s0 = -1 (on the way to the optimum b = 0) the exact gradient on s1 is
    # +sigmoid'(-1) * (1 - 2 * 0.499) ~ +4e-4, while st-gumbel's mean is ~ -0.05: the wrong sign,
    # pushing back towards theta = 0. (At theta = 0 itself its bias, ~2e-4, is too small to
    # resolve with a test-sized budget: 400k draws give 2.5e-4 +- 2.9e-4 against 5e-4.)
    problem = bernoulli(thetas=(-1.0,))
    report = diagnose(
        problem.loss_fn,
        problem.scores,
        problem.structure,
        ["st-gumbel", "reinforce/rloo"],
        n_samples=400,
        tau=1.0,
    )
    exact = report.reference.gradient[0, 1]
    st_gumbel = report.row("st-gumbel")
    assert exact > 0
    assert st_gumbel.bias > 5 * st_gumbel.noise_floor
    assert st_gumbel.cosine_mean < -0.99  # the mean gradient points the wrong way
    assert not st_gumbel.acceptable_bias
    assert report.recommendation is not None and report.recommendation.label == "reinforce/rloo"
    rloo = report.row("reinforce/rloo")
    assert rloo.bias < 5 * rloo.noise_floor


@pytest.mark.parametrize("name", ["polynomial-1.5", "polynomial-2", "polynomial-3"])
@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_gumbel_rao_has_lower_mse_than_st_gumbel_on_the_polynomial_toys(
    name: str, tau: float
) -> None:
    problem = PROBLEMS[name](0)
    report = diagnose(
        problem.loss_fn,
        problem.scores,
        problem.structure,
        [("st-gumbel", StraightThroughGumbel()), ("gumbel-rao", GumbelRao(n_draws=10))],
        n_samples=100,
        tau=tau,
    )
    st_gumbel, gumbel_rao = report.row("st-gumbel"), report.row("gumbel-rao")
    # Measured ratios are 0.63 (tau 0.5) and 0.85 (tau 1); the MSE of 128 independent
    # coordinates over 100 draws is resolved to a few percent.
    assert gumbel_rao.mse < 0.95 * st_gumbel.mse
    # Same mean (Rao-Blackwell): the biases agree within their noise.
    gap = abs(gumbel_rao.bias - st_gumbel.bias)
    assert gap < 5 * (gumbel_rao.noise_floor + st_gumbel.noise_floor)
    assert gumbel_rao.variance < st_gumbel.variance


def test_exact_gradient_of_the_bernoulli_toy_is_the_closed_form() -> None:
    problem = bernoulli()
    theta = problem.scores[:, 1]
    slope = torch.sigmoid(theta) * torch.sigmoid(-theta) * ((1 - 0.499) ** 2 - 0.499**2)
    gradient = problem.exact_gradient().gradient
    torch.testing.assert_close(gradient[:, 1], slope / len(theta))
    torch.testing.assert_close(gradient[:, 0], -slope / len(theta))
