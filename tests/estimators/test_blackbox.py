"""``blackbox``: values by hand, the descent direction, determinism."""

from __future__ import annotations

import pytest
import torch

import pickgrad
from pickgrad import Blackbox, OneHot

ONEHOT = OneHot()


def _gradient(scores: torch.Tensor, cost: torch.Tensor, lambda_: float) -> torch.Tensor:
    leaf = scores.clone().requires_grad_()
    x = pickgrad.select(leaf, ONEHOT, "blackbox", lambda_=lambda_)
    assert torch.equal(x.detach(), ONEHOT.argmax(scores))
    (x * cost).sum().backward()
    return leaf.grad


def test_gradient_by_hand() -> None:
    scores = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    cost = torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64)
    # lambda = 1: s' = (0, -1, 0.5) picks item 2; gradient (e_1 - e_2) / 1.
    assert torch.equal(_gradient(scores, cost, 1.0), torch.tensor([0.0, 1.0, -1.0]).double())
    # lambda = 5: s' = (0, -9, 0.5) picks item 2; gradient (e_1 - e_2) / 5.
    assert torch.equal(
        _gradient(scores, cost, 5.0), torch.tensor([0.0, 0.2, -0.2], dtype=torch.float64)
    )
    # lambda = 0.2: s' = (0, 0.6, 0.5) still picks item 1; zero gradient.
    assert torch.equal(_gradient(scores, cost, 0.2), torch.zeros(3).double())


def test_a_descent_step_moves_the_argmax_to_a_cheaper_item() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    cost = torch.randn(200, 6, generator=gen, dtype=torch.float64)
    chosen = ONEHOT.argmax(scores)
    # lambda large enough that s - lambda c picks the cheapest item: the gradient points from
    # the current choice to it, and one step of size lambda * (score gap + 1) reaches it.
    lambda_ = 1e3
    grad = _gradient(scores, cost, lambda_)
    cheapest = ONEHOT.argmax(-cost)
    assert torch.equal(grad, (chosen - cheapest) / lambda_)
    step = lambda_ * (scores.max(-1, keepdim=True).values - scores.min(-1, keepdim=True).values + 1)
    moved = ONEHOT.argmax(scores - step * grad)
    assert torch.equal(moved, cheapest)
    assert torch.all((moved * cost).sum(-1) <= (chosen * cost).sum(-1))


@pytest.mark.parametrize(("lambda_", "reached"), [(3.0, 2), (1.0, 3)])
def test_gradient_descent_reaches_the_cheapest_item_within_reach_of_lambda(
    lambda_: float, reached: int
) -> None:
    # From item 1 (cost 1), s - lambda c reaches item 2 (cost -0.5) when lambda = 3. With
    # lambda = 1 it reaches item 3 (cost 0.2) and stops there: s_3 - s_2 = 1.3 exceeds
    # lambda (c_3 - c_2) = 0.7, so the interpolation sees no better item and the gradient is 0.
    scores = torch.tensor([0.5, 1.0, 0.0, 0.8], requires_grad=True)
    cost = torch.tensor([0.3, 1.0, -0.5, 0.2])
    optimizer = torch.optim.SGD([scores], lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        (pickgrad.select(scores, ONEHOT, "blackbox", lambda_=lambda_) * cost).sum().backward()
        optimizer.step()
    assert int(scores.argmax()) == reached
    assert torch.equal(scores.grad, torch.zeros(4))


def test_is_deterministic_and_ignores_tau_and_generator() -> None:
    scores = torch.randn(3, 5)
    cost = torch.randn(3, 5)
    grads = []
    for tau, seed in ((1.0, 0), (0.1, 1)):
        leaf = scores.clone().requires_grad_()
        x = pickgrad.select(
            leaf, ONEHOT, Blackbox(2.0), tau=tau, generator=torch.Generator().manual_seed(seed)
        )
        (x * cost).sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_estimate_gives_each_sample_its_own_loss_gradient() -> None:
    # The mean over n_samples must not divide g (and so lambda) by n_samples.
    scores = torch.tensor([[0.0, 1.0, 0.5]], requires_grad=True)
    cost = torch.tensor([0.0, 2.0, 0.0])
    surrogate = pickgrad.estimate(
        lambda x: (x * cost).sum(-1), scores, ONEHOT, "blackbox", n_samples=3, lambda_=1.0
    )
    surrogate.backward()
    assert surrogate.item() == 2.0
    assert torch.equal(scores.grad, torch.tensor([[0.0, 1.0, -1.0]]))


@pytest.mark.parametrize("lambda_", [0.0, -1.0, float("inf"), "big"])
def test_bad_lambda_is_rejected(lambda_: object) -> None:
    with pytest.raises((ValueError, TypeError), match="lambda_"):
        pickgrad.select(torch.zeros(3), ONEHOT, "blackbox", lambda_=lambda_)
