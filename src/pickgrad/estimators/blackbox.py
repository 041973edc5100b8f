"""Blackbox differentiation of combinatorial solvers (Vlastelica et al., 2020)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad.estimators.base import option_positive_real, register_estimator
from pickgrad.estimators.imle import PerSampleEstimator, perturb_and_map_difference
from pickgrad.structures.base import Structure

__all__ = ["Blackbox"]


@register_estimator
class Blackbox(PerSampleEstimator):
    """``blackbox``: forward ``argmax(scores)``, backward by interpolating the solver.

    ::

        x          = argmax(scores)
        s'         = scores - lambda * dL/dx
        dL/dscores = (argmax(scores) - argmax(s')) / lambda

    This is the gradient of a piecewise-linear interpolation of ``L(argmax(.))`` (Vlastelica
    et al. 2020), written for maximisation. Their solver minimises a cost ``w``,
    ``y(w) = argmin_y <w, y>``, with ``w' = w + lambda dL/dy`` and ``dL/dw = -(y(w) - y(w')) /
    lambda``. Our scores are ``s = -w``, so ``s' = s - lambda dL/dx`` and
    ``dL/ds = -dL/dw = (y(s) - y(s')) / lambda``. Sign check: for a loss linear in x, the
    target ``argmax(s')`` is a solution of lower loss, and a gradient-descent step on the scores
    raises its scores and lowers those of the current solution. ``dL/dx`` reaches the scores
    through the transpose of ``structure.linear_objective`` (see
    :func:`~pickgrad.estimators.imle.objective_transpose`), so that ``s'`` moves the solver's
    objective by exactly ``-lambda <dL/dx, x>``.

    Deterministic (``tau`` and ``generator`` are not used). The gradient is zero unless
    ``lambda * |g|`` is large enough to change the argmax; the solver is never differentiated.
    Score entries the structure ignores (``structure.active_mask``) get zero gradient. Through
    ``pickgrad.estimate``, each sample gets the gradient of its own loss (see
    :class:`~pickgrad.estimators.imle.PerSampleEstimator`).

    Args:
        lambda_: lambda > 0, the interpolation strength.

    Shapes: scores ``(*batch, *event)`` -> x ``(*batch, *event)``.

    Reference: Vlastelica, Paulus, Musil, Martius & Rolínek, "Differentiation of Blackbox
    Combinatorial Solvers", ICLR 2020.

    Example:
        >>> import pickgrad
        >>> scores = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
        >>> x = pickgrad.select(scores, pickgrad.OneHot(), "blackbox", lambda_=1.0)
        >>> (x * torch.tensor([0.0, 2.0, 0.0])).sum().backward()  # item 1 costs 2
        >>> scores.grad  # s' = (0, -1, 0.5) picks item 2: descent moves towards it
        tensor([ 0.,  1., -1.])
    """

    name: ClassVar[str] = "blackbox"
    needs: ClassVar[tuple[str, ...]] = ("argmax",)

    def __init__(self, lambda_: float = 10.0) -> None:
        self.lambda_ = option_positive_real(lambda_, "lambda_", self.name)

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        return perturb_and_map_difference(scores, structure, None, self.lambda_)

    def _options(self) -> dict[str, Any]:
        return {"lambda_": self.lambda_}
