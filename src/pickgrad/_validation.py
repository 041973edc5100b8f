"""Input checks shared by every public entry point.

Each check raises a ``ValueError`` or ``TypeError`` that names the argument, what it got and what
was expected, so that bad input never turns into a silent NaN further down.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_generator",
    "check_positive_int",
    "check_scores",
    "check_tau",
    "compute_dtype",
    "set_validation",
    "validation",
    "value_checks_enabled",
]

_validate_values = True


def set_validation(enabled: bool) -> None:
    """Switch the value checks (NaN, inf, ranges) on or off for the whole process.

    Shape, dtype and option checks always run. With value checks off, no entry point reads a
    tensor value back to Python, so hot paths make no device-to-host sync.
    """
    global _validate_values
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _validate_values = enabled


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_validation`; restores the previous setting on exit."""
    global _validate_values
    previous = _validate_values
    set_validation(enabled)
    try:
        yield
    finally:
        _validate_values = previous


def value_checks_enabled() -> bool:
    """Whether value checks should run now: switched on, and not inside a compiled graph."""
    return _validate_values and not torch.compiler.is_compiling()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores of ``dtype`` are computed in: float32 for float16/bfloat16, else ``dtype``.

    Half types have too little range for ``scores / tau``, exponentials and sums over an event
    (float16 overflows above 65504), so every structure and estimator upcasts them to float32,
    computes, and returns its result in the input dtype.

    Example:
        >>> compute_dtype(torch.float16), compute_dtype(torch.bfloat16)
        (torch.float32, torch.float32)
        >>> compute_dtype(torch.float64)
        torch.float64
    """
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_scores(scores: Any, *, name: str = "scores", event_dims: int = 1) -> Tensor:
    """Check that ``scores`` is a finite floating tensor with at least ``event_dims`` dimensions."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16, bfloat16, float32 or float64), "
            f"got {scores.dtype}; convert with {name}.float()"
        )
    if scores.dim() < event_dims:
        raise ValueError(
            f"{name} must have at least {event_dims} dimension(s) for this structure, "
            f"got shape {tuple(scores.shape)}"
        )
    if any(size == 0 for size in scores.shape[scores.dim() - event_dims :]):
        raise ValueError(
            f"{name} has an empty event dimension: shape {tuple(scores.shape)}; "
            "there must be at least one item to choose from"
        )
    if value_checks_enabled() and scores.numel() > 0 and not _all_finite(scores):
        bad = "NaN" if bool(torch.isnan(scores).any()) else "inf"
        raise ValueError(
            f"{name} contains {bad} values (shape {tuple(scores.shape)}); all must be finite"
        )
    return scores


def _all_finite(scores: Tensor) -> bool:
    """Whether every entry is finite; one reduction instead of an entrywise check when it is.

    A finite sum proves every entry finite (NaN and inf propagate through a sum); only a
    non-finite sum, which finite entries can also give by overflow, needs the entrywise check.
    """
    total = scores.detach().sum(
        dtype=torch.float64 if scores.dtype == torch.float64 else torch.float32
    )
    return bool(torch.isfinite(total)) or bool(torch.isfinite(scores).all())


def check_tau(tau: Any, *, name: str = "tau") -> float:
    """Return ``tau`` as a float after checking that it is finite and positive.

    Anything with ``__float__`` is accepted, so a temperature schedule can be passed where a
    temperature is expected.
    """
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a positive number or a schedule, got {type(tau).__name__}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return value


def check_positive_int(value: Any, *, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an int no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_generator(generator: Any, device: torch.device) -> torch.Generator | None:
    """Check that ``generator`` is None or a torch.Generator on ``device``'s type."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device.type} but scores are on {device.type}; "
            f"create it with torch.Generator(device={device.type!r})"
        )
    return generator
