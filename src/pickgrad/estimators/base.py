"""The ``Estimator`` base class, the name registry, and helpers shared by estimators.

An estimator decides what the forward pass returns (a hard solution, or a relaxed point) and
what gradient flows back to the scores. It is written against the ``Structure`` protocol only:
it declares the capabilities it ``needs`` and never looks at the structure's class.

Every estimator works on float16 and bfloat16 scores by computing in float32
(:func:`pickgrad._validation.compute_dtype`) and returning the input dtype; every option is
checked when the estimator is built, and an unknown option is a ``TypeError`` that names the
option, the estimator and the valid options.
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from pickgrad._autograd import apply as apply_function
from pickgrad._validation import compute_dtype, value_checks_enabled
from pickgrad.structures.base import Structure

__all__ = [
    "Estimator",
    "LossFn",
    "RelaxingEstimator",
    "available_estimators",
    "check_loss_values",
    "evaluate_loss",
    "get_estimator",
    "known_relax_option_names",
    "option_bool",
    "option_choice",
    "option_fraction",
    "option_positive_int",
    "option_positive_real",
    "register_estimator",
    "replace_gradient",
    "resolve_estimator_name",
]

#: ``loss_fn`` maps samples ``(n_samples, *scores.shape)`` to ``(n_samples,)`` or ``(n_samples, *batch)``.
LossFn = Callable[[Tensor], Tensor]

_REGISTRY: dict[str, type[Estimator]] = {}
_ALIASES: dict[str, str] = {}
_warned_stateful = False

E = TypeVar("E", bound="type[Estimator]")


def register_estimator(cls: E) -> E:
    """Class decorator: make ``cls`` available by its ``name`` (and its ``aliases``).

    An alias is a second name for the same class, never a second class: ``get_estimator`` builds
    the same object for both names.
    """
    name = cls.name
    taken = {**_REGISTRY, **{alias: _REGISTRY[target] for alias, target in _ALIASES.items()}}
    for key in (name, *cls.aliases):
        if key in taken and taken[key] is not cls:
            raise ValueError(f"an estimator named {key!r} is already registered: {taken[key]}")
    _REGISTRY[name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = name
    return cls


def resolve_estimator_name(name: str) -> str:
    """The registered name that ``name`` stands for (itself, or the target of an alias).

    Example:
        >>> resolve_estimator_name("concrete"), resolve_estimator_name("st-gumbel")
        ('gumbel-relaxed', 'st-gumbel')
    """
    if not isinstance(name, str):
        raise TypeError(f"estimator name must be a str, got {type(name).__name__}")
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = list(_REGISTRY) + list(_ALIASES)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown estimator {name!r}; known: {', '.join(known)}{hint}")


def available_estimators(
    structure: Structure | None = None,
    *,
    pathwise_only: bool = False,
    include_aliases: bool = False,
) -> list[str]:
    """Names of the registered estimators, in registration order.

    Args:
        structure: if given, only the estimators whose needs this structure meets.
        pathwise_only: if True, leave out estimators that need the loss value (usable through
            ``estimate`` only), so that every name returned works with ``select``.
        include_aliases: if True, the aliases (``gumbel-softmax``, ``concrete``) follow the
            registered names. By default each estimator is listed once, under its own name, so
            that a loop over the list runs each estimator once.

    Example:
        >>> "concrete" in available_estimators()
        False
        >>> available_estimators(include_aliases=True)[-2:]
        ['gumbel-softmax', 'concrete']
    """

    def keep(cls: type[Estimator]) -> bool:
        if pathwise_only and cls.needs_loss:
            return False
        return structure is None or not cls.missing_capabilities(structure)

    names = [name for name, cls in _REGISTRY.items() if keep(cls)]
    if include_aliases:
        names += [alias for alias, target in _ALIASES.items() if keep(_REGISTRY[target])]
    return names


def get_estimator(
    estimator: str | Estimator, *, warn_stateful: bool = True, **options: Any
) -> Estimator:
    """Resolve an estimator name (with its options) or pass an ``Estimator`` object through.

    A name builds a fresh object. For an estimator that keeps state between calls (the ``ema``
    baseline, NVIL's running normalisation), a fresh object every call starts from zero every
    call, so the first such request warns (a ``UserWarning``, once per process) and says to keep
    one object; code that does keep the object it gets passes ``warn_stateful=False``.

    Args:
        estimator: a registered name, an alias, or an ``Estimator`` (returned as it is).
        warn_stateful: warn (once per process) when the name builds a stateful estimator.
        **options: the estimator's constructor options (only with a name).

    Example:
        >>> get_estimator("gumbel-rao", n_draws=4)
        GumbelRao(n_draws=4)
        >>> get_estimator("gumbel-softmax")
        GumbelRelaxed()
    """
    global _warned_stateful
    if isinstance(estimator, Estimator):
        if options:
            raise TypeError(
                f"options {sorted(options)} can only be given with an estimator name; "
                f"pass them to the constructor of {type(estimator).__name__} instead"
            )
        return estimator
    if not isinstance(estimator, str):
        raise TypeError(f"estimator must be a name or an Estimator, got {type(estimator).__name__}")
    cls = _REGISTRY[resolve_estimator_name(estimator)]
    resolved = cls(**options)
    if warn_stateful and resolved.stateful and not _warned_stateful:
        _warned_stateful = True
        warnings.warn(
            f"estimator {estimator!r} with {_format_options(options)} keeps state between calls, "
            "but a name builds a fresh object (with empty state) on every call of select/estimate; "
            f"build one object and keep it, e.g. est = pickgrad.{cls.__name__}"
            f"({_format_options(options)}), and pass est instead of the name",
            UserWarning,
            stacklevel=2,
        )
    result: Estimator = resolved
    return result


_CONSTRUCTOR_OPTIONS: dict[type, tuple[tuple[str, ...], bool]] = {}


def _constructor_options(cls: type) -> tuple[tuple[str, ...], bool]:
    """``(names of the keyword options, whether it takes **relax_options)`` of ``cls.__init__``."""
    if cls not in _CONSTRUCTOR_OPTIONS:
        init: Any = vars(object)["__init__"]
        for klass in cls.__mro__:  # the __init__ that cls.__init__ resolves to
            if "__init__" in vars(klass):
                init = vars(klass)["__init__"]
                break
        if init is vars(object)["__init__"]:
            _CONSTRUCTOR_OPTIONS[cls] = ((), False)
        else:
            parameters = list(inspect.signature(init).parameters.values())[1:]
            names = tuple(
                p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
            _CONSTRUCTOR_OPTIONS[cls] = (names, any(p.kind is p.VAR_KEYWORD for p in parameters))
    return _CONSTRUCTOR_OPTIONS[cls]


def _format_options(options: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in options.items())


def known_relax_option_names() -> tuple[str, ...]:
    """Every relax option name declared by a structure class defined so far (sorted).

    Relaxing estimators accept these at construction; the structure they meet checks its own
    names in :meth:`Estimator.check_structure`.
    """
    names: set[str] = set()
    pending = [Structure]
    while pending:
        cls = pending.pop()
        names.update(getattr(cls, "relax_option_names", ()))
        pending.extend(cls.__subclasses__())
    return tuple(sorted(names))


# --- option checks: each error names the option, the estimator, the value and the range -----


def _bad_option(estimator: str, option: str, expected: str, value: Any) -> str:
    return f"option {option!r} of estimator {estimator!r} must be {expected}, got {value!r}"


def option_positive_int(value: Any, option: str, estimator: str) -> int:
    """``value`` if it is an int >= 1 (not a bool); otherwise TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(_bad_option(estimator, option, "an int >= 1", value))
    if value < 1:
        raise ValueError(_bad_option(estimator, option, "an int >= 1", value))
    return value


def option_positive_real(value: Any, option: str, estimator: str) -> float:
    """``value`` as a float if it is a finite real number > 0 (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(_bad_option(estimator, option, "a finite real number > 0", value))
    if not math.isfinite(value) or value <= 0:
        raise ValueError(_bad_option(estimator, option, "a finite real number > 0", value))
    return float(value)


def option_fraction(value: Any, option: str, estimator: str) -> float:
    """``value`` as a float if it is a real number in [0, 1) (a decay rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(_bad_option(estimator, option, "a real number in [0, 1)", value))
    if not 0.0 <= value < 1.0:
        raise ValueError(_bad_option(estimator, option, "a real number in [0, 1)", value))
    return float(value)


def option_bool(value: Any, option: str, estimator: str) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(_bad_option(estimator, option, "a bool", value))
    return value


def option_choice(value: Any, option: str, estimator: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(_bad_option(estimator, option, f"one of {choices}", value))
    if value not in choices:
        raise ValueError(_bad_option(estimator, option, f"one of {choices}", value))
    return value


def check_loss_values(losses: Tensor) -> None:
    """Raise ``ValueError`` if ``losses`` holds NaN or infinite entries (a value check).

    Runs only when :func:`pickgrad._validation.value_checks_enabled`; one reduction when every
    entry is finite.
    """
    if not value_checks_enabled() or losses.numel() == 0:
        return
    detached = losses.detach()
    if bool(
        torch.isfinite(
            detached.sum(dtype=torch.float64 if detached.dtype == torch.float64 else torch.float32)
        )
    ):
        return
    nan = int(torch.isnan(detached).sum())
    plus = int((detached == math.inf).sum())
    minus = int((detached == -math.inf).sum())
    if nan + plus + minus == 0:
        return  # finite entries whose sum overflowed
    raise ValueError(
        f"loss_fn returned non-finite losses: {nan} NaN, {plus} +inf and {minus} -inf of "
        f"{detached.numel()} entries (shape {tuple(detached.shape)}); every loss must be finite"
    )


class _ReplaceGradient(torch.autograd.Function):
    """Forward ``hard``; backward sends the incoming gradient to ``soft`` unchanged."""

    # forward / setup_context / backward are plain torch ops: vmap and torch.func work on it.
    generate_vmap_rule = True

    @staticmethod
    def forward(hard: Tensor, soft: Tensor) -> Tensor:
        return hard.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        pass  # the backward needs nothing

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def replace_gradient(hard: Tensor, soft: Tensor) -> Tensor:
    """Straight-through: the value of ``hard`` with the gradient of ``soft``.

    Unlike ``hard + soft - soft.detach()`` this allocates nothing and keeps ``hard`` bit-exact.
    """
    result: Tensor = apply_function(_ReplaceGradient, hard, soft)
    return result


def evaluate_loss(
    loss_fn: LossFn, samples: Tensor, n_samples: int, batch_shape: tuple[int, ...]
) -> Tensor:
    """Call ``loss_fn`` on ``samples``; check its output is ``(n_samples, *batch[:m])`` and finite.

    The finiteness check (:func:`check_loss_values`) is a value check.
    """
    losses = loss_fn(samples)
    if not isinstance(losses, Tensor):
        raise TypeError(f"loss_fn must return a tensor, got {type(losses).__name__}")
    shape = tuple(losses.shape)
    if len(shape) < 1 or shape[0] != n_samples or shape[1:] != batch_shape[: len(shape) - 1]:
        raise ValueError(
            f"loss_fn must return losses shaped (n_samples,) or (n_samples, *batch) with "
            f"n_samples={n_samples} and batch={batch_shape}; got {shape}"
        )
    check_loss_values(losses)
    return losses


class Estimator:
    """Base class of gradient estimators.

    Subclasses set ``name`` (the registry key), ``aliases`` (other registry names of the same
    class), ``needs`` (structure capabilities), ``hard`` (whether the forward pass is a hard
    solution) and ``needs_loss`` (True for score-function estimators, which work only through
    :func:`pickgrad.estimate`), and implement ``_select`` and/or ``_estimate`` on validated input
    in the compute dtype. The public :meth:`select` and :meth:`estimate` run half-precision
    scores in float32 and return the input dtype.

    Options are keyword arguments of the constructor, each checked there; an unknown option is
    a ``TypeError`` naming it, the estimator and the valid options (see :meth:`option_names`).
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ("argmax",)
    hard: ClassVar[bool] = True
    needs_loss: ClassVar[bool] = False

    def __new__(cls, *args: Any, **options: Any) -> Any:
        cls._check_option_names(options)
        return super().__new__(cls)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keyword options of the constructor (relaxing estimators also take relax options)."""
        return _constructor_options(cls)[0]

    @classmethod
    def _check_option_names(cls, options: dict[str, Any]) -> None:
        own, takes_relax_options = _constructor_options(cls)
        unknown = [key for key in options if key not in own]
        relax = known_relax_option_names() if unknown and takes_relax_options else ()
        unknown = [key for key in unknown if key not in relax]
        if not unknown:
            return
        valid = ", ".join(own) or "none"
        if takes_relax_options:
            valid = f"{', '.join(own)}; " if own else ""
            valid += f"relax options (checked against the structure): {', '.join(relax)}"
        close = difflib.get_close_matches(unknown[0], (*own, *relax), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        label = cls.name or cls.__name__
        raise TypeError(
            f"bad options for estimator {label!r}: unknown option"
            f"{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{hint}; "
            f"valid options: {valid}"
        )

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

    @property
    def stateful(self) -> bool:
        """Whether this object keeps state between calls (so it must be kept, not rebuilt)."""
        return False

    @property
    def takes_baseline_values(self) -> bool:
        """Whether :meth:`estimate` takes ``baseline_values`` (a learned baseline)."""
        return False

    def select(
        self,
        scores: Tensor,
        structure: Structure,
        *,
        tau: float,
        generator: torch.Generator | None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Return ``x`` with this estimator's forward value and gradient (input already validated).

        Half-precision ``scores`` are computed in float32; ``x`` has the dtype of ``scores``.
        ``mask`` (bool, broadcastable, True = allowed) is applied as
        ``scores.masked_fill(~mask, -inf)`` and checked as :meth:`Structure.mask_scores` does
        (``-inf`` scores are masked entries: never in ``x``, exactly zero gradient).
        """
        if mask is not None:
            scores = structure.mask_scores(scores, mask)
        self.check_values(scores, tau)
        work = compute_dtype(scores.dtype)
        if work == scores.dtype:
            return self._select(scores, structure, tau=tau, generator=generator)
        x = self._select(scores.to(work), structure, tau=tau, generator=generator)
        return x.to(scores.dtype)

    def estimate(
        self,
        loss_fn: LossFn,
        scores: Tensor,
        structure: Structure,
        *,
        n_samples: int,
        tau: float,
        generator: torch.Generator | None,
        baseline_values: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Scalar surrogate: value = mean loss over the samples, gradient = this estimator's.

        ``mask`` as for :meth:`select`.

        ``loss_fn`` sees samples ``(n_samples, *scores.shape)`` in the dtype of ``scores``
        (computed in float32 for half types). It must return finite losses: NaN or inf is a
        ``ValueError`` naming ``loss_fn`` (a value check, see
        :func:`pickgrad.set_validation`). ``baseline_values`` is only for estimators whose
        :attr:`takes_baseline_values` is True (``Reinforce(baseline="learned")``); for others it
        is a ``TypeError``.
        """
        if baseline_values is not None and not self.takes_baseline_values:
            raise TypeError(
                f"estimator {self!r} does not take baseline_values (only "
                "Reinforce(baseline='learned') does); leave baseline_values out"
            )
        if self.takes_baseline_values and baseline_values is None:
            raise TypeError(
                f"estimator {self!r} needs baseline_values: a tensor of per-example baselines "
                "from your network, broadcastable to the losses' batch shape"
            )
        if mask is not None:
            scores = structure.mask_scores(scores, mask)
        self.check_values(scores, tau)
        work = compute_dtype(scores.dtype)
        if work != scores.dtype:
            dtype = scores.dtype

            def user_loss(x: Tensor, loss_fn: LossFn = loss_fn) -> Tensor:
                return loss_fn(x.to(dtype))

            loss_fn, scores = user_loss, scores.to(work)
        extra = {} if baseline_values is None else {"baseline_values": baseline_values}
        return self._estimate(
            loss_fn, scores, structure, n_samples=n_samples, tau=tau, generator=generator, **extra
        )

    def check_values(self, scores: Tensor, tau: float) -> None:
        """Value checks of the options against ``scores`` in their own dtype (none by default).

        Called by :meth:`select` and :meth:`estimate` before any work; implementations check
        :func:`pickgrad._validation.value_checks_enabled` first.
        """

    def _select(
        self,
        scores: Tensor,
        structure: Structure,
        *,
        tau: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        raise ValueError(
            f"estimator {self.name!r} needs the loss value to form its gradient; "
            "use pickgrad.estimate(loss_fn, scores, structure, ...) instead of pickgrad.select"
        )

    def _estimate(
        self,
        loss_fn: LossFn,
        scores: Tensor,
        structure: Structure,
        *,
        n_samples: int,
        tau: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The default is pathwise: draw ``n_samples`` outputs of ``_select``, average the loss."""
        samples = self._select(
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
    """An estimator that uses ``structure.relax``; every relax option is passed on to it.

    Relax options are the keywords of the structure's ``relax`` (``regularizer`` for every
    structure; ``max_iter``, ``tol`` for Sinkhorn, ...: see each structure's
    ``relax_option_names``). The constructor accepts any name some structure declares;
    :meth:`check_structure` checks them against the structure the estimator meets, before any
    work, and the structure checks their values in its ``relax``.

    Args:
        **relax_options: keyword options of ``structure.relax``, e.g. ``regularizer="sparsemax"``;
            an option given as None is left out (the structure's default).
    """

    needs: ClassVar[tuple[str, ...]] = ("argmax", "relax")

    def __init__(self, **relax_options: Any) -> None:
        # None stands for the structure's default (``regularizer=None`` is the entropy).
        self._relax_options = {k: v for k, v in relax_options.items() if v is not None}

    @property
    def regularizer(self) -> str | None:
        """The chosen regularizer of the relaxation, or None for the structure's default."""
        return self._relax_options.get("regularizer")

    @property
    def uses_tau(self) -> bool:
        return True

    @property
    def relax_options(self) -> dict[str, Any]:
        """Keyword options passed to ``structure.relax`` (a copy)."""
        return dict(self._relax_options)

    def check_structure(self, structure: Structure) -> None:
        """Also check the relax option names against ``structure.relax_option_names``."""
        super().check_structure(structure)
        try:
            structure.check_relax_options(self._relax_options)
        except TypeError as error:
            raise TypeError(
                f"estimator {self.name!r} with {structure!r}: {error} (the estimator's own "
                f"options: {', '.join(self.option_names()) or 'none'})"
            ) from None

    def relax(self, structure: Structure, scores: Tensor, tau: float) -> Tensor:
        return structure._relax(scores, tau, **self._relax_options)

    def _options(self) -> dict[str, Any]:
        return self.relax_options
