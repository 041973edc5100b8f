"""The deterministic estimators: ``st``, ``st-relaxed`` and ``relaxed``.

A straight-through estimator is not the derivative of its own (piecewise constant) forward pass,
so ``gradcheck`` cannot be applied to it directly. Instead its Jacobian, read through autograd, is
compared with a float64 central-difference Jacobian of the surrogate it claims to differentiate.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import pickgrad
from pickgrad import OneHot
from pickgrad.estimators.base import replace_gradient

ONEHOT = OneHot()


def autograd_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor) -> torch.Tensor:
    """``d fn(s) / d s`` through autograd (the estimator's backward): ``(out.numel(), s.numel())``."""
    jacobian = torch.autograd.functional.jacobian(fn, s)
    return jacobian.reshape(-1, s.numel())


def finite_difference_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Central differences of ``fn`` at ``s`` (float64): ``(out.numel(), s.numel())``."""
    columns = []
    flat = s.detach().reshape(-1)
    for index in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[index] = eps
        plus = fn((flat + step).reshape(s.shape)).detach()
        minus = fn((flat - step).reshape(s.shape)).detach()
        columns.append(((plus - minus) / (2 * eps)).reshape(-1))
    return torch.stack(columns, dim=1)


def _scores(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(11))


def test_st_forward_is_argmax_and_backward_is_identity() -> None:
    scores = _scores(2, 3, 4)
    x = pickgrad.select(scores, ONEHOT, "st")
    assert torch.equal(x, ONEHOT.argmax(scores))
    jacobian = autograd_jacobian(lambda s: pickgrad.select(s, ONEHOT, "st"), scores)
    assert torch.equal(jacobian, torch.eye(scores.numel(), dtype=torch.float64))


@pytest.mark.parametrize("regularizer", [None, "sparsemax"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_st_relaxed_backward_is_the_jacobian_of_relax(regularizer: str | None, tau: float) -> None:
    scores = _scores(2, 5)
    options = {} if regularizer is None else {"regularizer": regularizer}

    def estimator(s: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(s, ONEHOT, "st-relaxed", tau=tau, **options)

    x = estimator(scores)
    assert torch.equal(x, ONEHOT.argmax(scores))  # forward is hard
    expected = finite_difference_jacobian(lambda s: ONEHOT.relax(s, tau, **options), scores)
    torch.testing.assert_close(autograd_jacobian(estimator, scores), expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("regularizer", [None, "sparsemax"])
def test_relaxed_forward_is_relax_and_passes_gradcheck(regularizer: str | None) -> None:
    scores = _scores(3, 4).requires_grad_()
    options = {} if regularizer is None else {"regularizer": regularizer}
    x = pickgrad.select(scores, ONEHOT, "relaxed", tau=0.7, **options)
    torch.testing.assert_close(x, ONEHOT.relax(scores, 0.7, **options))
    assert torch.autograd.gradcheck(
        lambda s: pickgrad.select(s, ONEHOT, "relaxed", tau=0.7, **options), (scores,)
    )


def test_replace_gradient_keeps_hard_exact_and_passes_the_soft_gradient() -> None:
    hard = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    soft = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    out = replace_gradient(hard, soft)
    assert torch.equal(out, hard)
    upstream = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    out.backward(upstream)
    assert torch.equal(soft.grad, upstream)


def test_st_relaxed_gradient_is_the_softmax_jacobian_in_closed_form() -> None:
    # d softmax(s / tau) / d s = (diag(p) - p p^T) / tau.
    scores = _scores(5).requires_grad_()
    upstream = _scores(5) + 1
    tau = 0.6
    pickgrad.select(scores, ONEHOT, "st-relaxed", tau=tau).backward(upstream)
    p = torch.softmax(scores.detach() / tau, -1)
    expected = ((torch.diag(p) - torch.outer(p, p)) / tau) @ upstream
    assert scores.grad is not None
    torch.testing.assert_close(scores.grad, expected)
