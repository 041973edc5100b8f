"""``OneHot``: choose one of n items; ``(..., S, n)`` scores mean S independent slots."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pickgrad.noise import sample_gumbel, sampling_dtype
from pickgrad.structures.base import Structure

__all__ = ["OneHot", "sparsemax"]

_REGULARIZERS = ("entropy", "sparsemax")


class _Sparsemax(torch.autograd.Function):
    """Euclidean projection onto the simplex along the last dim (Martins & Astudillo, 2016)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        sorted_z, _ = torch.sort(z, dim=-1, descending=True)
        ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
        cumulative = sorted_z.cumsum(-1)
        in_support = 1 + ranks * sorted_z > cumulative
        support_size = in_support.sum(-1, keepdim=True)
        threshold = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
        p = (z - threshold).clamp_min(0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean_on_support = (grad * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return support * (grad - mean_on_support)


def sparsemax(z: Tensor) -> Tensor:
    """Sparsemax of ``z`` along the last dim: ``argmin_{p in simplex} ||p - z||^2``.

    Args:
        z: ``(..., n)`` floating tensor.

    Returns:
        ``(..., n)`` point of the simplex, often with exact zeros.

    Reference: Martins & Astudillo, "From Softmax to Sparsemax", 2016.

    Example:
        >>> sparsemax(torch.tensor([2.0, 1.0, -1.0]))
        tensor([1., 0., 0.])
    """
    return _Sparsemax.apply(z)


class OneHot(Structure):
    """One item out of n: ``x`` is one-hot over the last dimension.

    Scores ``(..., n)``; every leading dimension is a batch dimension, so ``(B, S, n)`` scores are
    B examples of S independent slots (an item may fill several slots).

    * ``argmax``: one-hot of the first maximal entry (ties go to the lowest index).
    * ``relax(scores, tau)``: ``softmax(scores / tau)`` (``regularizer="entropy"``, default) or
      ``sparsemax(scores / tau)`` (``regularizer="sparsemax"``).
    * ``log_partition``: ``logsumexp(scores / tau)``.
    * ``perturb_log_prob``: ``log softmax(scores)[x]``, since ``argmax(scores + G)`` with
      standard Gumbel ``G`` is an exact sample of ``softmax(scores)``.
    * ``conditional_gumbel``: exact sampler of G given the argmax (top-down, Maddison et al. 2014).

    Example:
        >>> s = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
        >>> OneHot().argmax(s)
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
        >>> OneHot().relax(s, tau=1e-3).round()
        tensor([[0., 1., 0.],
                [1., 0., 0.]])
    """

    event_dims = 1

    def _argmax(self, scores: Tensor) -> Tensor:
        index = scores.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(scores).scatter_(-1, index, 1.0)

    def _relax(self, scores: Tensor, tau: float, regularizer: str = "entropy") -> Tensor:
        z = scores if tau == 1.0 else scores / tau
        # Half types are computed in float32 and cast back.
        work = sampling_dtype(z.dtype)
        if regularizer == "entropy":
            return torch.softmax(z, dim=-1, dtype=work).to(z.dtype)
        if regularizer == "sparsemax":
            return sparsemax(z.to(work)).to(z.dtype)
        raise ValueError(f"regularizer must be one of {_REGULARIZERS}, got {regularizer!r}")

    def _log_partition(self, scores: Tensor, tau: float) -> Tensor:
        return torch.logsumexp(scores / tau, dim=-1)

    def _perturb_log_prob(self, scores: Tensor, x: Tensor) -> Tensor:
        return (torch.log_softmax(scores, dim=-1) * x).sum(-1)

    def _conditional_gumbel(
        self, scores: Tensor, x: Tensor, n_draws: int, generator: torch.Generator | None
    ) -> Tensor:
        # Given argmax = i: the max z_i = s_i + G_i is Gumbel(logsumexp(s)) and independent of i;
        # every other z_j is Gumbel(s_j) truncated to (-inf, z_i].
        work = sampling_dtype(scores.dtype)
        s = scores.to(work)
        chosen = x.to(torch.bool)
        gumbel = sample_gumbel(
            (n_draws, *s.shape), dtype=work, device=s.device, generator=generator
        )
        top = torch.logsumexp(s, dim=-1, keepdim=True) + (gumbel * chosen).sum(-1, keepdim=True)
        others = -torch.logaddexp(-top, -(s + gumbel))
        noise = torch.where(chosen, top, others) - s
        return noise.to(scores.dtype)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every one-hot of shape ``(n,)``, or every joint pick of ``(S, n)`` independent slots.

        Returns ``(n ** S, *event_shape)``; slot 0 varies slowest.

        Example:
            >>> OneHot().enumerate((2, 2))
            tensor([[[1., 0.],
                     [1., 0.]],
            <BLANKLINE>
                    [[1., 0.],
                     [0., 1.]],
            <BLANKLINE>
                    [[0., 1.],
                     [1., 0.]],
            <BLANKLINE>
                    [[0., 1.],
                     [0., 1.]]])
        """
        event_shape = tuple(event_shape)
        if len(event_shape) < 1 or any(size < 1 for size in event_shape):
            raise ValueError(f"event_shape must be (..., n) with positive sizes, got {event_shape}")
        n = event_shape[-1]
        slots = math.prod(event_shape[:-1])
        count = n**slots
        picks = torch.arange(count, device=device)
        # Base-n digits of 0..count-1, most significant first: one digit per slot.
        powers = n ** torch.arange(slots - 1, -1, -1, device=device)
        digits = (picks[:, None] // powers) % n
        onehots = torch.nn.functional.one_hot(digits, n).to(dtype)
        return onehots.reshape(count, *event_shape)
