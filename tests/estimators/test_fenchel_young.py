"""``fenchel_young_loss``: non-negative, zero at a reproduced target, exact in expectation on OneHot.

For OneHot with Gumbel noise and one-hot t, E[loss] = sigma * cross_entropy(s / sigma, t) and
E[grad] = softmax(s / sigma) - t. Monte Carlo checks use R replicates along a batch dimension and
a tolerance of 5 standard errors measured from them.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pickgrad import OneHot, fenchel_young_loss

ONEHOT = OneHot()
REPLICATES = 2000


def _assert_within_error(estimates: torch.Tensor, exact: torch.Tensor) -> None:
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / math.sqrt(estimates.shape[0])
    assert torch.all(standard_error > 0)
    assert torch.all((mean - exact).abs() < 5 * standard_error), (mean, exact, standard_error)


@given(
    seed=st.integers(0, 10_000),
    sigma=st.sampled_from([0.1, 1.0, 3.0]),
    noise=st.sampled_from(["gumbel", "normal"]),
)
def test_loss_is_nonnegative_for_any_target_in_the_hull(
    seed: int, sigma: float, noise: str
) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = 2 * torch.randn(6, 3, 5, generator=gen, dtype=torch.float64)
    # Targets: hard one-hots and soft points of the simplex.
    hard = ONEHOT.argmax(torch.randn(6, 3, 5, generator=gen, dtype=torch.float64))
    soft = torch.softmax(torch.randn(6, 3, 5, generator=gen, dtype=torch.float64), -1)
    for target in (hard, soft):
        losses = fenchel_young_loss(
            scores,
            target,
            ONEHOT,
            sigma=sigma,
            n_perturbations=3,
            noise=noise,
            reduction="none",
            generator=gen,
        )
        assert losses.shape == (6, 3)
        assert torch.all(losses >= 0)


@pytest.mark.parametrize("noise", ["gumbel", "normal"])
def test_loss_and_gradient_vanish_at_a_reproduced_target(noise: str) -> None:
    scores = torch.tensor(
        [[4.0, 0.0, -1.0], [0.0, -2.0, 3.0]], dtype=torch.float64, requires_grad=True
    )
    target = ONEHOT.argmax(scores)
    loss = fenchel_young_loss(scores, target, ONEHOT, sigma=1e-3, noise=noise, reduction="sum")
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(scores.grad, torch.zeros_like(scores))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gumbel_loss_is_sigma_times_cross_entropy_in_expectation(sigma: float) -> None:
    scores = torch.tensor([0.3, -1.0, 1.2, 0.0], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    leaf = scores.expand(REPLICATES, 4).clone().requires_grad_()
    gen = torch.Generator().manual_seed(0)
    losses = fenchel_young_loss(
        leaf,
        target.expand(REPLICATES, 4),
        ONEHOT,
        sigma=sigma,
        n_perturbations=10,
        reduction="none",
        generator=gen,
    )
    losses.sum().backward()
    cross_entropy = torch.logsumexp(scores / sigma, -1) - (scores / sigma) @ target
    _assert_within_error(losses.detach()[:, None], (sigma * cross_entropy)[None])
    _assert_within_error(leaf.grad, torch.softmax(scores / sigma, -1) - target)


def test_normal_loss_matches_the_two_item_closed_form() -> None:
    # E[max(X_0, X_1)], X_i ~ N(s_i, sigma^2): with d = s_0 - s_1 and theta = sigma sqrt(2),
    # s_0 Phi(d / theta) + s_1 Phi(-d / theta) + theta phi(d / theta).
    sigma = 0.7
    scores = torch.tensor([0.5, -0.3], dtype=torch.float64)
    target = torch.tensor([0.0, 1.0], dtype=torch.float64)
    theta = sigma * math.sqrt(2)
    normal = torch.distributions.Normal(0.0, 1.0)
    d = torch.tensor(0.8 / theta, dtype=torch.float64)
    expected_max = 0.5 * normal.cdf(d) - 0.3 * normal.cdf(-d) + theta * normal.log_prob(d).exp()
    gen = torch.Generator().manual_seed(2)
    losses = fenchel_young_loss(
        scores.expand(REPLICATES, 2),
        target.expand(REPLICATES, 2),
        ONEHOT,
        sigma=sigma,
        n_perturbations=10,
        noise="normal",
        reduction="none",
        generator=gen,
    )
    _assert_within_error(losses[:, None], (expected_max - scores @ target)[None])


def test_reductions_agree() -> None:
    scores = torch.randn(4, 3, 6)
    target = ONEHOT.argmax(torch.randn(4, 3, 6))
    losses = {
        reduction: fenchel_young_loss(
            scores, target, ONEHOT, reduction=reduction, generator=torch.Generator().manual_seed(0)
        )
        for reduction in ("none", "mean", "sum")
    }
    assert losses["none"].shape == (4, 3)
    assert losses["mean"].shape == losses["sum"].shape == ()
    assert torch.allclose(losses["mean"], losses["none"].mean())
    assert torch.allclose(losses["sum"], losses["none"].sum())


def test_no_gradient_flows_to_the_target_and_dtype_is_kept() -> None:
    scores = torch.randn(3, 5, dtype=torch.bfloat16, requires_grad=True)
    target = torch.softmax(torch.randn(3, 5), -1).requires_grad_()
    loss = fenchel_young_loss(scores, target, ONEHOT, n_perturbations=4)
    loss.backward()
    assert loss.dtype == torch.bfloat16 and scores.grad.dtype == torch.bfloat16
    assert target.grad is None


def test_gradient_descent_learns_the_target() -> None:
    scores = torch.zeros(2, 5, requires_grad=True)
    target = torch.eye(5)[[3, 1]]
    optimizer = torch.optim.SGD([scores], lr=1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        fenchel_young_loss(
            scores, target, ONEHOT, sigma=0.5, n_perturbations=20, generator=gen
        ).backward()
        optimizer.step()
    assert torch.equal(ONEHOT.argmax(scores.detach()), target)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"target": torch.zeros(2, 4)},
            ValueError,
            r"target must have the shape of scores \(2, 3\)",
        ),
        ({"target": [0.0, 1.0, 0.0]}, TypeError, "target must be a torch.Tensor"),
        ({"target": torch.full((2, 3), float("nan"))}, ValueError, "target contains NaN"),
        ({"sigma": -1.0}, ValueError, "sigma"),
        ({"n_perturbations": 0}, ValueError, "n_perturbations"),
        ({"noise": "laplace"}, ValueError, "noise"),
        ({"reduction": "max"}, ValueError, "reduction"),
        ({"structure": "onehot"}, TypeError, "structure"),
    ],
)
def test_bad_input_is_rejected(kwargs: dict, error: type, match: str) -> None:
    arguments = {"target": torch.eye(3)[:2], "structure": ONEHOT, **kwargs}
    with pytest.raises(error, match=match):
        fenchel_young_loss(
            torch.zeros(2, 3), arguments.pop("target"), arguments.pop("structure"), **arguments
        )


def test_sigma_that_overflows_the_compute_dtype_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="sigma"):
        fenchel_young_loss(torch.randn(3), torch.tensor([0.0, 1.0, 0.0]), OneHot(), sigma=1e-40)
