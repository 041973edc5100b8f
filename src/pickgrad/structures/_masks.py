"""Masked (``-inf``) scores made finite for exact solvers that need finite input."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["fill_masked"]


def fill_masked(
    scores: Tensor, gap: Callable[[Tensor], Tensor | float], dims: tuple[int, ...] = (-2, -1)
) -> tuple[Tensor, Tensor]:
    """``(filled, masked)``: each ``-inf`` entry of ``scores`` ``(..., a, b)`` replaced by a finite
    score ``gap(spread)`` below the lowest allowed score of its matrix, ``masked`` marking them.

    ``spread`` ``(..., 1, 1)`` is the range of the allowed scores of each matrix (the event:
    the dimensions ``dims``). For a structure
    whose solutions all have m ones, ``gap(spread) > m * spread`` makes every solution that
    uses a filled entry score below every solution that avoids them, so an exact solver given
    ``filled`` returns the best allowed solution whenever one exists. The fill carries no
    gradient (``torch.where``), and ``|low| * 2**-40`` more keeps it below ``low`` in rounding.
    A matrix with nothing allowed is filled with ``-gap(0)``.
    """
    masked = scores == -math.inf
    detached = scores.detach()
    low = detached.masked_fill(masked, math.inf).amin(dims, keepdim=True)
    high = detached.amax(dims, keepdim=True)
    empty = low == math.inf
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    low = torch.where(empty, zero, low)
    high = torch.where(empty, zero, high)
    fill = low - gap(high - low) - low.abs() * 2.0**-40
    return torch.where(masked, fill, scores), masked
