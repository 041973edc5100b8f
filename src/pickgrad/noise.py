"""Random perturbations: Gumbel noise and its conditional form.

All randomness in pickgrad comes from here, drawn from the ``generator`` argument or torch's
global generator, so the same seed gives the same samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_gumbel", "sampling_dtype"]


def sampling_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype noise is drawn in: float32 for half types (whose tails overflow), else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def sample_gumbel(
    shape: torch.Size | tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel noise ``G = -log(E)``, ``E ~ Exponential(1)``, of the given shape.

    Drawn in float32 for half dtypes and returned in ``dtype``. ``E`` is clamped away from zero
    so that ``G`` is always finite.
    """
    work = sampling_dtype(dtype)
    exponential = torch.empty(shape, dtype=work, device=device).exponential_(generator=generator)
    gumbel = exponential.clamp_min_(torch.finfo(work).tiny).log_().neg_()
    return gumbel if work == dtype else gumbel.to(dtype)
