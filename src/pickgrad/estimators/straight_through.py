"""Deterministic estimators: straight-through, straight-through with a relaxed backward, relaxed."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._autograd import apply as apply_function
from pickgrad.estimators.base import (
    Estimator,
    RelaxingEstimator,
    register_estimator,
    replace_gradient,
)
from pickgrad.structures.base import Structure

__all__ = ["Relaxed", "StraightThrough", "StraightThroughRelaxed"]


@register_estimator
class StraightThrough(Estimator):
    """``st``: forward ``argmax(scores)``, backward identity (Bengio et al., 2013).

    ``dx/dscores = I``: biased, zero variance. More exactly, the backward is the transpose of
    ``structure.linear_objective``: entries the structure ignores (``structure.active_mask``)
    get zero gradient, and a symmetric output sends both halves' gradients to the one score.
    """

    name: ClassVar[str] = "st"

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        hard = structure._argmax(scores.detach())
        x: Tensor = apply_function(_StraightThroughMasked, hard, structure.linear_objective(scores))
        return x


class _StraightThroughMasked(torch.autograd.Function):
    """Forward ``hard``; backward the incoming gradient, zeroed where ``objective`` is ``-inf``.

    Masked (``-inf``) scores get exactly zero gradient (the identity would give them the
    output's gradient); the comparison runs in the backward pass only.
    """

    # forward / setup_context / backward are plain torch ops: vmap and torch.func work on it.
    generate_vmap_rule = True

    @staticmethod
    def forward(hard: Tensor, objective: Tensor) -> Tensor:
        return hard.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        (objective,) = ctx.saved_tensors
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        return None, torch.where(objective == -math.inf, zero, grad)


@register_estimator
class StraightThroughRelaxed(RelaxingEstimator):
    """``st-relaxed``: forward ``argmax(scores)``, backward through ``relax(scores, tau)``.

    With ``OneHot`` this is straight-through with a softmax backward at temperature tau. It is
    deterministic; without noise the scores can drift until they are equal (see the demo).

    Args:
        **relax_options: options of ``structure.relax`` (``regularizer``; ``max_iter``, ``tol``
            for ``Permutation``; see the structure's ``relax_option_names``).
    """

    name: ClassVar[str] = "st-relaxed"

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        hard = structure._argmax(scores.detach())
        return replace_gradient(hard, self.relax(structure, scores, tau))


@register_estimator
class Relaxed(RelaxingEstimator):
    """``relaxed``: forward and backward through ``relax(scores, tau)``; the output is not hard.

    Args:
        **relax_options: options of ``structure.relax`` (``regularizer``; ``max_iter``, ``tol``
            for ``Permutation``; see the structure's ``relax_option_names``).
    """

    name: ClassVar[str] = "relaxed"
    needs: ClassVar[tuple[str, ...]] = ("relax",)
    hard: ClassVar[bool] = False

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        return self.relax(structure, scores, tau)
