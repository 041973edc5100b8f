"""The ``Estimator`` base class, the name registry, and helpers shared by estimators.

An estimator decides what the forward pass returns (a hard solution, or a relaxed point) and
what gradient flows back to the scores. It is written against the ``Structure`` protocol only:
it declares the capabilities it ``needs`` and never looks at the structure's class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from pickgrad.structures.base import Structure

__all__ = [
    "Estimator",
    "LossFn",
    "available_estimators",
    "evaluate_loss",
    "get_estimator",
    "register_estimator",
    "replace_gradient",
]

#: ``loss_fn`` maps samples ``(n_samples, *scores.shape)`` to ``(n_samples,)`` or ``(n_samples, *batch)``.
LossFn = Callable[[Tensor], Tensor]

_REGISTRY: dict[str, type[Estimator]] = {}

E = TypeVar("E", bound="type[Estimator]")


def register_estimator(cls: E) -> E:
    """Class decorator: make ``cls`` available by its ``name`` in ``select`` and ``estimate``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"an estimator named {name!r} is already registered: {_REGISTRY[name]}")
    _REGISTRY[name] = cls
    return cls


def available_estimators(
    structure: Structure | None = None, *, pathwise_only: bool = False
) -> list[str]:
    """Names of the registered estimators, in registration order.

    Args:
        structure: if given, only the estimators whose needs this structure meets.
        pathwise_only: if True, leave out estimators that need the loss value (usable through
            ``estimate`` only), so that every name returned works with ``select``.
    """
    names = []
    for name, cls in _REGISTRY.items():
        if pathwise_only and cls.needs_loss:
            continue
        if structure is not None and cls.missing_capabilities(structure):
            continue
        names.append(name)
    return names


def get_estimator(estimator: str | Estimator, **options: Any) -> Estimator:
    """Resolve an estimator name (with its options) or pass an ``Estimator`` object through.

    Example:
        >>> get_estimator("gumbel-rao", n_draws=4)
        GumbelRao(n_draws=4)
    """
    if isinstance(estimator, Estimator):
        if options:
            raise TypeError(
                f"options {sorted(options)} can only be given with an estimator name; "
                f"pass them to the constructor of {type(estimator).__name__} instead"
            )
        return estimator
    if not isinstance(estimator, str):
        raise TypeError(f"estimator must be a name or an Estimator, got {type(estimator).__name__}")
    if estimator not in _REGISTRY:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(_REGISTRY)}")
    cls = _REGISTRY[estimator]
    try:
        return cls(**options)
    except TypeError as error:
        raise TypeError(f"bad options for estimator {estimator!r}: {error}") from None


class _ReplaceGradient(torch.autograd.Function):
    """Forward ``hard``; backward sends the incoming gradient to ``soft`` unchanged."""

    @staticmethod
    def forward(ctx: Any, hard: Tensor, soft: Tensor) -> Tensor:
        return hard.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def replace_gradient(hard: Tensor, soft: Tensor) -> Tensor:
    """Straight-through: the value of ``hard`` with the gradient of ``soft``.

    Unlike ``hard + soft - soft.detach()`` this allocates nothing and keeps ``hard`` bit-exact.
    """
    return _ReplaceGradient.apply(hard, soft)


def evaluate_loss(
    loss_fn: LossFn, samples: Tensor, n_samples: int, batch_shape: tuple[int, ...]
) -> Tensor:
    """Call ``loss_fn`` on ``samples`` and check that its output is ``(n_samples, *batch[:m])``."""
    losses = loss_fn(samples)
    if not isinstance(losses, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(losses).__name__}")
    shape = tuple(losses.shape)
    if len(shape) < 1 or shape[0] != n_samples or shape[1:] != batch_shape[: len(shape) - 1]:
        raise ValueError(
            f"loss_fn must return losses shaped (n_samples,) or (n_samples, *batch) with "
            f"n_samples={n_samples} and batch={batch_shape}; got {shape}"
        )
    return losses


class Estimator:
    """Base class of gradient estimators.

    Subclasses set ``name`` (the registry key), ``needs`` (structure capabilities), ``hard``
    (whether the forward pass is a hard solution) and ``needs_loss`` (True for score-function
    estimators, which work only through :func:`pickgrad.estimate`), and implement ``select``
    and/or ``estimate`` on validated input.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("argmax",)
    hard: ClassVar[bool] = True
    needs_loss: ClassVar[bool] = False

    @classmethod
    def missing_capabilities(cls, structure: Structure) -> list[str]:
        """The capabilities in ``needs`` that ``structure`` lacks."""
        return [capability for capability in cls.needs if not structure.supports(capability)]

    def check_structure(self, structure: Structure) -> None:
        """Raise if ``structure`` is not a Structure or lacks a needed capability."""
        if not isinstance(structure, Structure):
            raise TypeError(
                f"structure must be a pickgrad Structure, got {type(structure).__name__}"
            )
        missing = self.missing_capabilities(structure)
        if missing:
            raise NotImplementedError(
                f"estimator {self.name!r} needs {', '.join(missing)} from the structure, "
                f"which {structure!r} does not provide"
            )

    def select(
        self,
        scores: Tensor,
        structure: Structure,
        *,
        tau: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Return ``x`` with this estimator's forward value and gradient (input already validated)."""
        raise ValueError(
            f"estimator {self.name!r} needs the loss value to form its gradient; "
            "use pickgrad.estimate(loss_fn, scores, structure, ...) instead of pickgrad.select"
        )

    def estimate(
        self,
        loss_fn: LossFn,
        scores: Tensor,
        structure: Structure,
        *,
        n_samples: int,
        tau: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Scalar surrogate: value = mean loss over the samples, gradient = this estimator's.

        The default is pathwise: draw ``n_samples`` outputs of :meth:`select` and average the loss.
        """
        samples = self.select(
            scores.expand(n_samples, *scores.shape), structure, tau=tau, generator=generator
        )
        batch_shape = tuple(scores.shape[: scores.dim() - structure.event_dims])
        return evaluate_loss(loss_fn, samples, n_samples, batch_shape).mean()

    @property
    def uses_tau(self) -> bool:
        """Whether the ``tau`` given to ``select``/``estimate`` changes this estimator."""
        return False

    def _options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self._options().items())
        return f"{type(self).__name__}({options})"


class RelaxingEstimator(Estimator):
    """An estimator that uses ``structure.relax``; ``regularizer`` is passed on to it if given."""

    needs: ClassVar[tuple[str, ...]] = ("argmax", "relax")

    def __init__(self, *, regularizer: str | None = None) -> None:
        self.regularizer = regularizer

    @property
    def uses_tau(self) -> bool:
        return True

    @property
    def relax_options(self) -> dict[str, Any]:
        """Keyword options passed to ``structure.relax`` (the regularizer, when one is chosen)."""
        return {} if self.regularizer is None else {"regularizer": self.regularizer}

    def relax(self, structure: Structure, scores: Tensor, tau: float) -> Tensor:
        return structure._relax(scores, tau, **self.relax_options)

    def _options(self) -> dict[str, Any]:
        return self.relax_options
