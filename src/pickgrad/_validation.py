"""Input checks shared by every public entry point.

Each check raises a ``ValueError`` or ``TypeError`` that names the argument, what it got and what
was expected, so that bad input never turns into a silent NaN further down.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "apply_mask",
    "check_generator",
    "check_like_scores",
    "check_mask",
    "check_positive_int",
    "check_score_types",
    "check_scores",
    "check_tau",
    "compute_dtype",
    "graph_capture_active",
    "inspect_scores",
    "set_validation",
    "validation",
    "value_checks_enabled",
]

_validate_values = True


def set_validation(enabled: bool) -> None:
    """Switch the value checks (NaN, inf, ranges) on or off for the whole process.

    Shape, dtype and option checks always run. With value checks off, no entry point reads a
    tensor value back to Python, so hot paths make no device-to-host sync (like
    ``torch.distributions.Distribution.set_default_validate_args``). On by default; exported as
    ``pickgrad.set_validation``.

    Example:
        >>> set_validation(False)
        >>> value_checks_enabled()
        False
        >>> set_validation(True)
    """
    global _validate_values
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    _validate_values = enabled


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_validation`; restores the previous setting on exit.

    Exported as ``pickgrad.validation``; use it to switch the checks off for one call.

    Example:
        >>> import pickgrad
        >>> with pickgrad.validation(False):  # NaN passes unchecked: no host sync
        ...     x = pickgrad.OneHot().argmax(torch.tensor([0.0, float("nan")]))
        >>> pickgrad.OneHot().argmax(torch.tensor([0.0, float("nan")]))
        Traceback (most recent call last):
        ...
        ValueError: scores contains non-finite values (1 NaN of 2 entries, shape (2,)); only -inf (a masked entry) is allowed
    """
    global _validate_values
    previous = _validate_values
    set_validation(enabled)
    try:
        yield
    finally:
        _validate_values = previous


def _functorch_transforms_active() -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) is running around this call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None:
        return bool(active())
    return torch._C._functorch.peek_interpreter_stack() is not None


def _vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` level is running around this call (alone or nested)."""
    if not _functorch_transforms_active():
        return False
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    vmap = torch._C._functorch.TransformType.Vmap
    return any(level.key() == vmap for level in retrieve_all_functorch_interpreters())


def _tracing() -> bool:
    """Whether a tracer (torch.compile / export, torch.jit.trace, torch.fx) is recording this call."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]
        return True
    symbolic = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    return bool(symbolic()) if symbolic is not None else False


def value_checks_enabled() -> bool:
    """Whether value checks (NaN, inf, ranges, is-solution) should run now.

    True when they are switched on (:func:`set_validation`, :func:`validation`; on by default)
    and the call is plain eager code: False inside ``torch.compile`` / ``torch.export`` tracing,
    ``torch.jit.trace``, ``torch.fx`` symbolic tracing and ``torch.func`` transforms (``vmap``,
    ``grad``, ``jacrev``, ...), where reading a tensor value back to Python would break the graph
    or fail. Shape, dtype and option checks never depend on it.

    Example:
        >>> value_checks_enabled()
        True
        >>> with validation(False):
        ...     value_checks_enabled()
        False
        >>> seen = []
        >>> _ = torch.func.vmap(lambda t: seen.append(value_checks_enabled()) or t)(torch.zeros(2))
        >>> seen
        [False]
    """
    return _validate_values and not graph_capture_active()


def graph_capture_active() -> bool:
    """Whether this call is being traced or transformed rather than run eagerly.

    True inside ``torch.compile`` / ``torch.export`` tracing, ``torch.jit.trace``, ``torch.fx``
    symbolic tracing and ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ...). Value
    checks are skipped there, and fast paths that need eager-only features (generator state,
    in-place work on internal buffers) give way to their plain torch composition.

    Example:
        >>> graph_capture_active()
        False
    """
    return _tracing() or _functorch_transforms_active()


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


def check_scores(
    scores: Any,
    *,
    name: str = "scores",
    event_dims: int = 1,
    tau: float | None = None,
    tau_name: str = "tau",
) -> Tensor:
    """Check ``scores``: a floating tensor with non-empty event dims, no NaN or +inf, in range.

    Always (no tensor value is read): ``scores`` is a floating ``torch.Tensor`` with at least
    ``event_dims`` dimensions, none of the event dimensions empty.

    When :func:`value_checks_enabled` (one reduction, ``aminmax``, read back once; a second one
    only when some entry is ``-inf``):

    * no entry is NaN or ``+inf``; ``-inf`` entries are allowed and mean "not allowed" (masked);
    * sums over one event fit the compute dtype (see :func:`compute_dtype`):
      ``max |scores| * m <= finfo.max`` with m the number of entries of an event, the maximum
      taken over the entries that are not ``-inf``;
    * with ``tau`` given, so do the scaled scores: ``max |scores| * m / tau <= finfo.max``.

    Args:
        scores: ``(*batch, *event)`` tensor, ``event`` being its last ``event_dims`` dims.
        name: the argument's name in error messages.
        event_dims: how many trailing dimensions one structure occupies.
        tau: the temperature ``scores`` will be divided by, if any (already a checked float).
        tau_name: its name in error messages (``"sigma"`` for a noise scale).

    Returns:
        ``scores`` itself.

    Example:
        >>> check_scores(torch.tensor([0.0, -float("inf")])).shape
        torch.Size([2])
        >>> check_scores(torch.full((3,), 1e37), tau=0.01)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: tau=0.01 is too small for scores of magnitude up to 1e+37: ...
    """
    inspect_scores(scores, name=name, event_dims=event_dims, tau=tau, tau_name=tau_name)
    checked: Tensor = scores  # inspect_scores raised unless it is a floating tensor
    return checked


def inspect_scores(
    scores: Any,
    *,
    name: str = "scores",
    event_dims: int = 1,
    tau: float | None = None,
    tau_name: str = "tau",
) -> bool:
    """:func:`check_scores`, returning whether some entry is ``-inf`` (masked).

    The answer is only known when the value checks run (:func:`value_checks_enabled`); with them
    off it is False, whatever the scores hold, and no tensor value is read.

    Example:
        >>> inspect_scores(torch.tensor([1.0, -float("inf")]))
        True
    """
    check_score_types(scores, name=name, event_dims=event_dims)
    if value_checks_enabled() and scores.numel() > 0:
        event_shape = scores.shape[scores.dim() - event_dims :]
        return _check_score_values(scores, name, math.prod(event_shape), tau, tau_name)
    return False


def check_score_types(scores: Any, *, name: str = "scores", event_dims: int = 1) -> Tensor:
    """The part of :func:`check_scores` that reads no value: type, dtype, dims; returns it."""
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
    event_shape = scores.shape[scores.dim() - event_dims :]
    if any(size == 0 for size in event_shape):
        raise ValueError(
            f"{name} has an empty event dimension: shape {tuple(scores.shape)}; "
            "there must be at least one item to choose from"
        )
    return scores


#: The range read by the last value check: ``(tensor, version, min, max)``, the tensor held
#: weakly. See :func:`checked_range`.
_last_range: tuple[weakref.ref[Tensor], int, float, float] | None = None


def checked_range(scores: Tensor) -> tuple[float, float] | None:
    """``(min, max)`` over every entry of ``scores`` (``-inf`` for a masked one) if the last
    value check read exactly this tensor object and it has not changed in place since (its
    version counter), else ``None``: a later consumer of the range need not read it again."""
    last = _last_range
    if last is None or last[0]() is not scores or scores.is_inference():
        return None  # inference tensors keep no version counter
    if scores._version != last[1]:
        return None
    return last[2], last[3]


def _check_score_values(
    scores: Tensor, name: str, terms: int, tau: float | None, tau_name: str
) -> bool:
    """The value part of :func:`check_scores`: one reduction when every entry is finite.

    Returns whether some entry is ``-inf``."""
    detached = scores.detach()
    # One pass and no temporary; NaN if any entry is NaN.
    low, high = (float(v) for v in torch.stack(torch.aminmax(detached)).tolist())
    global _last_range
    _last_range = (
        None if scores.is_inference() else (weakref.ref(scores), scores._version, low, high)
    )
    masked = low == -math.inf
    if math.isnan(low) or math.isnan(high) or high == math.inf:
        counts = {
            "NaN": int(torch.isnan(detached).sum()),
            "+inf": int((detached == math.inf).sum()),
        }
        found = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
        raise ValueError(
            f"{name} contains non-finite values ({found} of {detached.numel()} entries, "
            f"shape {tuple(scores.shape)}); only -inf (a masked entry) is allowed"
        )
    if masked:  # the range of the allowed entries only
        allowed = detached.masked_fill(detached == -math.inf, 0.0)
        low, high = (float(v) for v in torch.stack(torch.aminmax(allowed)).tolist())
    magnitude = max(high, -low)
    work = compute_dtype(scores.dtype)
    limit = torch.finfo(work).max
    if magnitude * terms > limit:
        raise ValueError(
            f"{name} of magnitude up to {magnitude:.3g} overflow {work} when summed over an "
            f"event of {terms} entries ({magnitude:.3g} * {terms} > {limit:.3g}, the largest "
            f"{work}); rescale {name}"
        )
    if tau is not None and magnitude * terms / tau > limit:
        raise ValueError(
            f"{tau_name}={tau:.3g} is too small for {name} of magnitude up to {magnitude:.3g}: "
            f"{name} / {tau_name} summed over an event of {terms} entries would reach "
            f"{magnitude * terms / tau:.3g}, above {limit:.3g} (the largest {work}, the dtype "
            f"{scores.dtype} {name} are computed in); use {tau_name} >= "
            f"{magnitude * terms / limit:.3g} or rescale {name}"
        )
    return masked


def check_mask(mask: Any, scores: Tensor, *, name: str = "mask") -> Tensor:
    """Check ``mask``: a bool tensor on the device of ``scores``, broadcastable to its shape.

    ``True`` marks an allowed entry. Only shapes, dtype and device are checked (no value is
    read), so this always runs.

    Returns:
        ``mask`` itself.

    Example:
        >>> check_mask(torch.tensor([True, False]), torch.zeros(3, 2)).shape
        torch.Size([2])
        >>> check_mask(torch.tensor([1, 0]), torch.zeros(2))
        Traceback (most recent call last):
        ...
        TypeError: mask must be a bool tensor (True = allowed), got dtype torch.int64; use mask.bool() or a comparison
    """
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a bool torch.Tensor (True = allowed) or None, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor (True = allowed), got dtype {mask.dtype}; "
            f"use {name}.bool() or a comparison"
        )
    try:
        shape = torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        shape = None
    if shape != scores.shape:
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to the shape of scores "
            f"{tuple(scores.shape)}"
        )
    if mask.device != scores.device:
        raise ValueError(f"{name} is on {mask.device} but scores are on {scores.device}")
    return mask


def apply_mask(scores: Tensor, mask: Tensor | None, *, name: str = "mask") -> Tensor:
    """``scores`` with ``-inf`` where ``mask`` is False (``mask`` checked by :func:`check_mask`).

    ``mask=None`` returns ``scores`` itself. Differentiable: masked entries get zero gradient.

    Example:
        >>> apply_mask(torch.tensor([1.0, 2.0]), torch.tensor([True, False]))
        tensor([1., -inf])
    """
    if mask is None:
        return scores
    check_mask(mask, scores, name=name)
    return scores.masked_fill(~mask, -math.inf)


def check_tau(tau: Any, *, name: str = "tau", dtype: torch.dtype | None = None) -> float:
    """Return ``tau`` as a float after checking that it is a positive finite real number.

    Accepted: a Python ``int``/``float`` (or a NumPy scalar), a 0-dim real tensor, or a
    schedule (any other object with ``__float__``, e.g. :class:`pickgrad.Schedule`), read at
    this call. Strings, bytes and bools are ``TypeError`` even though they convert to numbers.
    A tensor is read back to Python (a host sync on an accelerator) and its gradient is **not**
    kept here: a tensor that requires grad gets a ``UserWarning`` (``pickgrad.select`` and
    ``estimate`` keep a learnable temperature's gradient through the relaxing estimators, and
    call this on its detached value). These checks read no tensor of scores, so they always
    run.

    With ``dtype`` (the scores' dtype) given, ``tau`` must also be at least the smallest normal
    number of its compute dtype (:func:`compute_dtype`), so that ``1 / tau`` is finite there.

    Example:
        >>> check_tau(0.5), check_tau(torch.tensor(2.0))
        (0.5, 2.0)
        >>> check_tau("0.5")
        Traceback (most recent call last):
        ...
        TypeError: tau must be a positive real number or a schedule, got str '0.5'
    """
    if isinstance(tau, (str, bytes, bool)) or not hasattr(type(tau), "__float__"):
        raise TypeError(
            f"{name} must be a positive real number or a schedule, got {type(tau).__name__} "
            f"{tau!r}"[:200]
        )
    if isinstance(tau, Tensor):
        if tau.dim() != 0:
            raise ValueError(
                f"{name} must be a number or a 0-dim tensor, got a tensor of shape "
                f"{tuple(tau.shape)}"
            )
        if tau.dtype == torch.bool or tau.is_complex():
            raise TypeError(f"{name} must be a real number, got a {tau.dtype} tensor")
        if tau.requires_grad:
            warnings.warn(
                f"{name} is a tensor that requires grad; pickgrad reads its value as a float "
                "and no gradient reaches it here (a learnable temperature keeps its gradient "
                "through select / estimate with an estimator that relaxes: relaxed, "
                "st-relaxed, gumbel-relaxed, st-gumbel, gumbel-rao)",
                UserWarning,
                stacklevel=3,
            )
    try:
        value = float(tau.detach() if isinstance(tau, Tensor) else tau)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a positive real number or a schedule, got {type(tau).__name__}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    if dtype is not None:
        work = compute_dtype(dtype)
        tiny = torch.finfo(work).tiny
        if value < tiny:
            raise ValueError(
                f"{name}={value:.3g} is below {tiny:.3g}, the smallest normal {work} (the dtype "
                f"{dtype} scores are computed in), so 1 / {name} overflows; use a larger {name}"
            )
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


def check_like_scores(value: Any, scores: Tensor, *, name: str, real: str = "real") -> Tensor:
    """Check that ``value`` is a real tensor of the shape and device of ``scores``; return it.

    ``real`` says what a real value is in the message of the complex-dtype error (e.g.
    ``"real (0/1 entries)"`` for a hard solution).
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != scores.shape:
        raise ValueError(
            f"{name} must have the shape of scores {tuple(scores.shape)}, got {tuple(value.shape)}"
        )
    if value.device != scores.device:
        raise ValueError(f"{name} is on {value.device} but scores are on {scores.device}")
    if value.is_complex():
        raise TypeError(f"{name} must be {real}, got {value.dtype}")
    return value
