"""Applying custom autograd Functions without the per-call cost of their transform-ready form.

pickgrad's Functions are written with ``forward`` and ``setup_context`` apart (and
``generate_vmap_rule``), so that ``torch.func`` transforms and ``vmap`` run through them. Eagerly,
``apply`` of such a Function binds ``forward``'s signature on every call (``inspect.signature``):
about 25 us a call against 5 us for the classic form (``forward(ctx, ...)``) on this CPU, several
percent of a small training step's pickgrad work. :func:`apply` takes the classic twin of the
Function for eager calls and the Function itself under graph capture.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from pickgrad._validation import graph_capture_active

__all__ = ["apply"]


def apply(function: type[torch.autograd.Function], *args: Any) -> Any:
    """``function.apply(*args)``; eagerly through its classic-form twin (the same forward,
    context and backward), under ``torch.compile`` / ``torch.func`` through ``function``."""
    if graph_capture_active():
        return function.apply(*args)
    return _classic_twin(function).apply(*args)


@functools.cache
def _classic_twin(function: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """``function`` (``forward`` without ``ctx``, plus ``setup_context``) in the classic form."""

    def forward(ctx: Any, *args: Any) -> Any:
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    def backward(ctx: Any, *grads: Any) -> Any:
        return function.backward(ctx, *grads)

    # The same name, so that ``grad_fn`` reads as the Function's own (``<NameBackward>``).
    name = function.__name__
    namespace: dict[str, Any] = {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
        "__doc__": f"{function.__name__} in the classic form, for eager calls.",
    }
    return type(name, (torch.autograd.Function,), namespace)
