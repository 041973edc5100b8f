"""Softmax and log-softmax over the last dimension, fast on the CPU for short rows.

PyTorch's CPU softmax kernels vectorise along the reduced dimension; rows shorter than a
vector register take a scalar path that costs several times the plain composition
``exp(x - max) / sum``. Measured side by side (``python benchmarks/bench_softmax.py``, one
thread, AVX512, forward + backward, its first run): at 2000 rows of 10, float32, 0.54 ms against
0.20 ms; at 20000 rows of 2, 1.27 ms against 0.55 ms; at 2000 rows of 16 and more torch's kernel
is the faster one in float32. In float64 the composition stayed ahead up to rows of 32 at 2000 rows and more,
but fell to 0.70x-0.89x at 256 rows of 32, so it stops at 16. Where that happens depends on the
vector width, so :func:`uses_composition` scales the measured bounds by it.

The composition is an ``autograd.Function`` with the usual closed-form backward
(``y * (g - <g, y>)`` and ``g - exp(y) * sum(g)``), written in differentiable operations so that
double backward works. Everything else (CUDA, half types, long rows, few rows, graph capture by
``torch.compile`` or ``torch.func``) goes to ``torch.softmax`` / ``torch.log_softmax``. Values
agree with torch's to rounding; masked ``-inf`` entries get exactly 0 (log: ``-inf``) and a row
of only ``-inf`` gives NaN, as torch's does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pickgrad._validation import graph_capture_active

__all__ = ["log_softmax", "softmax", "uses_composition"]

#: Fewest entries for which the composition is used: below, its extra launches cost about as
#: much as the scalar kernel (measured at 256 rows: 0.58x-1.36x across row lengths and runs).
_FEWEST_ENTRIES = 4096


#: float32 lanes of the widest vector unit PyTorch's CPU kernels use on this machine.
_FLOAT32_LANES = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8


def uses_composition(x: Tensor, *, log: bool = False) -> bool:
    """Whether :func:`softmax` (``log``: :func:`log_softmax`) of ``x`` takes the composition
    (see the module docstring): eager CPU float32 / float64 with at least ``_FEWEST_ENTRIES``
    entries and rows shorter than the measured bound (float32: below one vector of lanes;
    float64: up to one). Rows of 2 or 3 only in float32's softmax: torch's log-softmax, and its float64
    softmax, were as fast or faster there (0.68x-1.0x)."""
    # Graph capture first: a traced call must not branch on the shape or read the CPU's kind.
    if graph_capture_active() or x.device.type != "cpu" or x.dim() == 0:
        return False
    if x.numel() < _FEWEST_ENTRIES:
        return False
    if x.dtype == torch.float32:
        longest = _FLOAT32_LANES - 1
    elif x.dtype == torch.float64:
        longest = _FLOAT32_LANES
    else:
        return False
    shortest = 2 if x.dtype == torch.float32 and not log else 4
    return shortest <= x.shape[-1] <= longest


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        y: Tensor = ctx.saved_tensors[0]
        return y * (grad - (grad * y).sum(-1, keepdim=True))


class _LogSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        shifted = x - x.amax(-1, keepdim=True)
        y = shifted - shifted.exp().sum(-1, keepdim=True).log_()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        y: Tensor = ctx.saved_tensors[0]
        return grad - y.exp() * grad.sum(-1, keepdim=True)


def softmax(x: Tensor) -> Tensor:
    """``torch.softmax(x, dim=-1)``, by the composition where it is faster.

    Example:
        >>> x = torch.randn(300, 10)
        >>> torch.allclose(softmax(x), torch.softmax(x, -1), atol=1e-6)
        True
    """
    if uses_composition(x):
        result: Tensor = _Softmax.apply(x)
        return result
    return torch.softmax(x, dim=-1)


def log_softmax(x: Tensor) -> Tensor:
    """``torch.log_softmax(x, dim=-1)``, by the composition where it is faster.

    Example:
        >>> x = torch.randn(300, 10)
        >>> torch.allclose(log_softmax(x), torch.log_softmax(x, -1), atol=1e-5)
        True
    """
    if uses_composition(x, log=True):
        result: Tensor = _LogSoftmax.apply(x)
        return result
    return torch.log_softmax(x, dim=-1)
