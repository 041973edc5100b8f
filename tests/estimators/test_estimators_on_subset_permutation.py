"""Estimators on Subset and Permutation: unbiased REINFORCE, Gumbel-Sinkhorn, clear refusals."""

from __future__ import annotations

import itertools

import pytest
import torch

import pickgrad
from pickgrad import Permutation, Subset
from pickgrad.structures.permutation import log_sinkhorn


def top_k_probabilities(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact law of the top-k of ``scores + Gumbel``: the first k of a Plackett-Luce order.

    Returns the k-hot subsets ``(C(n, k), n)`` and their probabilities ``(C(n, k),)``,
    differentiable in ``scores``.
    """
    n = scores.shape[-1]
    subsets = Subset(k).enumerate((n,), dtype=scores.dtype)
    index = {tuple(row.nonzero().flatten().tolist()): i for i, row in enumerate(subsets)}
    probabilities = [torch.zeros((), dtype=scores.dtype) for _ in range(len(subsets))]
    for order in itertools.permutations(range(n), k):
        remaining = list(range(n))
        log_p = torch.zeros((), dtype=scores.dtype)
        for item in order:
            log_p = log_p + scores[item] - torch.logsumexp(scores[remaining], 0)
            remaining.remove(item)
        key = index[tuple(sorted(order))]
        probabilities[key] = probabilities[key] + log_p.exp()
    return subsets, torch.stack(probabilities)


def two_by_two_probabilities(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact law of the 2x2 assignment of ``scores + Gumbel``, differentiable in ``scores``.

    The diagonal wins iff ``L1 + L2 > -d`` with ``d = s00 + s11 - s01 - s10`` and L1, L2
    independent standard logistic (differences of Gumbels): ``p = E[sigmoid(d + L1)]``, computed
    by the trapezoid rule on a fine grid (the integrand is smooth and decays like exp(-|u|)).
    """
    d = scores[0, 0] + scores[1, 1] - scores[0, 1] - scores[1, 0]
    u = torch.linspace(-60, 60, 60001, dtype=scores.dtype)
    density = torch.sigmoid(u) * torch.sigmoid(-u)
    p_diagonal = torch.trapezoid(density * torch.sigmoid(d + u), u)
    matchings = Permutation().enumerate((2, 2), dtype=scores.dtype)  # [diagonal, anti-diagonal]
    return matchings, torch.stack([p_diagonal, 1 - p_diagonal])


def reinforce_replicas(loss_fn, scores: torch.Tensor, structure, replicas: int) -> torch.Tensor:
    """``replicas`` independent one-sample REINFORCE gradients, shape ``(replicas, *scores.shape)``."""
    copies = scores.detach().expand(replicas, *scores.shape).clone().requires_grad_()
    surrogate = pickgrad.estimate(
        loss_fn, copies, structure, "reinforce", generator=torch.Generator().manual_seed(5)
    )
    surrogate.backward()
    return copies.grad * replicas  # estimate() averages over the replicas


def assert_mean_matches(estimates: torch.Tensor, exact: torch.Tensor) -> None:
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / estimates.shape[0] ** 0.5
    assert bool((standard_error > 0).all())
    assert bool(((mean - exact).abs() < 5 * standard_error).all()), (mean, exact, standard_error)


def test_reinforce_is_unbiased_on_subset():
    scores = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * weights).sum(-1) ** 2

    subsets, probabilities = top_k_probabilities(scores, 2)
    assert float(probabilities.detach().sum()) == pytest.approx(1.0)
    (exact,) = torch.autograd.grad((probabilities * loss(subsets)).sum(), scores)
    estimates = reinforce_replicas(lambda x: loss(x), scores, Subset(2), 20000)
    assert_mean_matches(estimates, exact)


def test_reinforce_is_unbiased_on_a_square_permutation():
    scores = torch.tensor([[0.4, -0.2], [0.1, 0.7]], dtype=torch.float64, requires_grad=True)
    cost = torch.tensor([[1.0, 4.0], [-1.0, 0.5]], dtype=torch.float64)  # losses 2.25 and 9

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * cost).sum((-2, -1)) ** 2

    matchings, probabilities = two_by_two_probabilities(scores)
    (exact,) = torch.autograd.grad((probabilities * loss(matchings)).sum(), scores)
    assert float(exact.abs().min()) > 0.5
    estimates = reinforce_replicas(loss, scores, Permutation(), 20000)
    assert_mean_matches(estimates, exact)


def test_reinforce_is_unbiased_on_a_rectangular_permutation():
    # One row out of three columns: argmax(scores + G) is an exact sample of softmax(scores).
    scores = torch.tensor([[0.3, -0.5, 0.9]], dtype=torch.float64, requires_grad=True)
    cost = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * cost).sum((-2, -1)) ** 2

    exact_probabilities = torch.softmax(scores, -1)
    (exact,) = torch.autograd.grad((exact_probabilities * cost**2).sum(), scores)
    estimates = reinforce_replicas(loss, scores, Permutation(), 20000)
    assert_mean_matches(estimates, exact)


def test_gumbel_relaxed_on_permutation_is_gumbel_sinkhorn():
    scores = torch.randn(3, 4, 4)
    tau = 0.5
    x = pickgrad.select(
        scores, Permutation(), "gumbel-relaxed", tau=tau, generator=torch.Generator().manual_seed(9)
    )
    noise = pickgrad.noise.sample_gumbel(
        scores.shape,
        dtype=scores.dtype,
        device=scores.device,
        generator=torch.Generator().manual_seed(9),
    )
    torch.testing.assert_close(x, log_sinkhorn((scores + noise) / tau).exp())


@pytest.mark.parametrize(
    ("structure", "shape"),
    [(Subset(2), (3, 5)), (Permutation(), (2, 3, 3)), (Permutation(), (2, 2, 4))],
    ids=["subset", "permutation", "permutation-rectangular"],
)
def test_every_available_estimator_gives_a_finite_gradient(structure, shape):
    names = pickgrad.available_estimators(structure)
    assert "reinforce" in names and "st-gumbel" in names
    assert ("gumbel-rao" in names) == isinstance(structure, Subset)
    target = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for name in names:
        scores = torch.randn(shape, requires_grad=True)
        surrogate = pickgrad.estimate(
            lambda x: ((x - target) ** 2).flatten(1).sum(-1),
            scores,
            structure,
            name,
            n_samples=3,
            tau=0.5,
            generator=torch.Generator().manual_seed(1),
        )
        surrogate.backward()
        assert scores.grad is not None and bool(torch.isfinite(scores.grad).all()), name


def test_gumbel_rao_refuses_permutation_clearly():
    with pytest.raises(NotImplementedError, match=r"'gumbel-rao' needs conditional_gumbel"):
        pickgrad.select(torch.zeros(3, 3), Permutation(), "gumbel-rao")


def test_gumbel_rao_on_subset_has_the_mean_of_st_gumbel():
    # Gumbel-Rao is E[st-gumbel gradient | x], so both estimators have the same mean.
    scores = torch.tensor([0.5, -0.3, 1.0, 0.0, 0.2])
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])
    replicas = 4000

    def gradients(name: str, **options) -> torch.Tensor:
        copies = scores.expand(replicas, 5).clone().requires_grad_()
        x = pickgrad.select(
            copies, Subset(2), name, tau=0.7, generator=torch.Generator().manual_seed(3), **options
        )
        ((x * weights).sum(-1) ** 2).sum().backward()
        return copies.grad

    straight_through = gradients("st-gumbel")
    rao = gradients("gumbel-rao", n_draws=8)
    difference = straight_through.mean(0) - rao.mean(0)
    standard_error = (straight_through.var(0) / replicas + rao.var(0) / replicas).sqrt()
    assert bool((difference.abs() < 5 * standard_error).all()), (difference, standard_error)
    # Rao-Blackwellisation lowers the variance.
    assert float(rao.var(0).sum()) < float(straight_through.var(0).sum())
