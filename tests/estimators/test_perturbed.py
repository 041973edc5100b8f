"""``perturbed`` against exact formulas: Gumbel-perturbed argmax on OneHot is softmax(s / sigma).

Monte Carlo checks batch R independent replicates of the estimator along a leading dimension and
compare the replicate mean with the exact value, within 5 standard errors measured from the
replicates.
"""

from __future__ import annotations

import math

import pytest
import torch

import pickgrad
from pickgrad import OneHot, Perturbed

ONEHOT = OneHot()
REPLICATES = 2000


def _assert_within_error(estimates: torch.Tensor, exact: torch.Tensor) -> None:
    """Replicates along dim 0: |mean - exact| < 5 standard errors, entrywise."""
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / math.sqrt(estimates.shape[0])
    assert torch.all(standard_error > 0), "every entry must vary for the test to mean something"
    assert torch.all((mean - exact).abs() < 5 * standard_error), (mean, exact, standard_error)


def _softmax_jacobian(scores: torch.Tensor, sigma: float) -> torch.Tensor:
    p = torch.softmax(scores / sigma, -1)
    return (torch.diag(p) - torch.outer(p, p)) / sigma


def _jacobian_replicates(estimator: Perturbed, scores: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(R, n, n)``: replicate r, row j is the estimated ``J^T e_j`` (one backward pass)."""
    n = scores.shape[-1]
    leaf = scores.expand(n, REPLICATES, n).clone().requires_grad_()
    gen = torch.Generator().manual_seed(7)
    y = pickgrad.select(leaf, ONEHOT, estimator, tau=sigma, generator=gen)
    cotangent = torch.eye(n, dtype=scores.dtype)[:, None, :].expand(n, REPLICATES, n)
    y.backward(cotangent)
    return leaf.grad.transpose(0, 1)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gumbel_expectation_is_softmax_over_sigma(sigma: float) -> None:
    scores = torch.tensor([0.3, -1.0, 1.2, 0.0, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    y = pickgrad.select(
        scores.expand(REPLICATES, 5),
        ONEHOT,
        "perturbed",
        n_perturbations=10,
        sigma=sigma,
        generator=gen,
    )
    # Each replicate is a point of the simplex.
    assert torch.allclose(y.sum(-1), torch.ones(REPLICATES, dtype=torch.float64))
    _assert_within_error(y, torch.softmax(scores / sigma, -1))


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_gumbel_jacobian_is_softmax_jacobian(sigma: float) -> None:
    scores = torch.tensor([0.3, -1.0, 1.2, 0.5], dtype=torch.float64)
    estimates = _jacobian_replicates(Perturbed(10, sigma=sigma), scores, sigma)
    # The softmax Jacobian is symmetric, so row j of J^T is row j of J.
    _assert_within_error(estimates, _softmax_jacobian(scores, sigma))


def test_normal_noise_matches_the_two_item_closed_form() -> None:
    # argmax(s + sigma Z) picks item 0 iff Z_1 - Z_0 < (s_0 - s_1) / sigma, Z_1 - Z_0 ~ N(0, 2).
    sigma = 0.8
    scores = torch.tensor([0.4, -0.2], dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    d = torch.tensor((0.4 + 0.2) / (sigma * math.sqrt(2)), dtype=torch.float64)
    p0 = normal.cdf(d)
    exact_mean = torch.stack([p0, 1 - p0])
    slope = normal.log_prob(d).exp() / (sigma * math.sqrt(2))
    exact_jacobian = torch.stack([torch.stack([slope, -slope]), torch.stack([-slope, slope])])

    estimator = Perturbed(10, sigma=sigma, noise="normal")
    gen = torch.Generator().manual_seed(1)
    y = pickgrad.select(scores.expand(REPLICATES, 2), ONEHOT, estimator, generator=gen)
    _assert_within_error(y, exact_mean)
    _assert_within_error(_jacobian_replicates(estimator, scores, sigma), exact_jacobian)


def test_hard_forward_is_one_sample_with_the_same_backward() -> None:
    scores = torch.randn(3, 4, 6, dtype=torch.float64)
    cotangent = torch.randn(3, 4, 6, dtype=torch.float64)
    grads, outputs = [], []
    for hard in (False, True):
        leaf = scores.clone().requires_grad_()
        gen = torch.Generator().manual_seed(3)
        y = pickgrad.select(leaf, ONEHOT, "perturbed", n_perturbations=8, hard=hard, generator=gen)
        y.backward(cotangent)
        grads.append(leaf.grad)
        outputs.append(y.detach())
    soft, hard = outputs
    assert torch.equal(grads[0], grads[1])
    assert torch.all((hard == 0) | (hard == 1)) and torch.all(hard.sum(-1) == 1)
    # The hard sample is one of the M samples averaged by the soft forward.
    assert torch.all(soft[hard.bool()] >= 1 / 8 - 1e-12)
    assert Perturbed(hard=True).hard and not Perturbed().hard


def test_sigma_defaults_to_tau() -> None:
    scores = torch.randn(5, 7)
    by_tau = pickgrad.select(
        scores, ONEHOT, "perturbed", tau=0.3, generator=torch.Generator().manual_seed(0)
    )
    by_sigma = pickgrad.select(
        scores, ONEHOT, "perturbed", sigma=0.3, tau=9.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(by_tau, by_sigma)


def test_uses_tau_only_without_sigma() -> None:
    assert Perturbed().uses_tau
    assert not Perturbed(sigma=0.5).uses_tau
    assert not pickgrad.IMLE().uses_tau and not pickgrad.Blackbox().uses_tau


def test_estimate_uses_the_perturbed_jacobian() -> None:
    # A loss linear in x: d E[<c, y_sigma(s)>] / ds = J^T c, with J the softmax Jacobian.
    scores = torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64)
    cost = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    leaf = scores.expand(REPLICATES, 3).clone().requires_grad_()
    gen = torch.Generator().manual_seed(5)
    surrogate = pickgrad.estimate(
        lambda x: (x * cost).sum(-1), leaf, ONEHOT, "perturbed", n_perturbations=5, generator=gen
    )
    assert surrogate.dim() == 0
    (surrogate * REPLICATES).backward()  # estimate averages over the batch; undo it
    _assert_within_error(leaf.grad, _softmax_jacobian(scores, 1.0) @ cost)


def test_half_precision_keeps_the_dtype() -> None:
    scores = torch.randn(4, 5).to(torch.bfloat16).requires_grad_()
    y = pickgrad.select(scores, ONEHOT, "perturbed", n_perturbations=4)
    y.backward(torch.ones_like(y))
    assert y.dtype == torch.bfloat16 and scores.grad.dtype == torch.bfloat16
    assert torch.isfinite(scores.grad.float()).all()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"sigma": 0.0}, ValueError, "sigma"),
        ({"sigma": float("nan")}, ValueError, "sigma"),
        ({"noise": "uniform"}, ValueError, "noise"),
        ({"n_perturbations": 0}, ValueError, "n_perturbations"),
        ({"n_perturbations": 2.5}, TypeError, "n_perturbations"),
        ({"hard": "yes"}, TypeError, "hard"),
    ],
)
def test_bad_options_are_rejected(options: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        pickgrad.select(torch.zeros(3), ONEHOT, "perturbed", **options)


def test_repr_names_the_options() -> None:
    assert repr(Perturbed(5, sigma=0.5, noise="normal", hard=True)) == (
        "Perturbed(n_perturbations=5, sigma=0.5, noise='normal', hard=True)"
    )
