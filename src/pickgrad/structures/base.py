"""The ``Structure`` protocol: what every discrete structure offers to the estimators.

A structure knows how to solve ``argmax_x <scores, x>`` exactly over its set of hard solutions,
how to relax that argmax into a differentiable point of the convex hull, and (for tiny sizes)
how to enumerate every solution. Estimators ask a structure for capabilities through
:meth:`Structure.supports` and never branch on its class.

Subclasses implement the underscore methods (``_argmax``, ``_relax``, ...) on validated input;
the public methods validate first and then call them. Estimators validate once and call the
underscore methods directly, so hot paths check their input only once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._validation import (
    apply_mask,
    check_generator,
    check_like_scores,
    check_positive_int,
    check_score_types,
    check_tau,
    compute_dtype,
    inspect_scores,
    value_checks_enabled,
)

__all__ = ["CAPABILITIES", "Structure"]

#: Stands for "no temperature given" in :meth:`Structure.mask_scores` (None is a bad tau).
_NO_TAU: Any = object()

#: Capabilities an estimator may ask for, each the name of a public method of ``Structure``.
CAPABILITIES = (
    "argmax",
    "relax",
    "enumerate",
    "log_partition",
    "perturb_log_prob",
    "conditional_gumbel",
)


class Structure:
    """Base class of every structure (``OneHot``, ``Subset``, ``Permutation``, ...).

    Attributes:
        event_dims: how many trailing dimensions of ``scores`` one structure occupies (1 for
            ``OneHot`` and ``Subset``, 2 for matchings and trees). Every leading dimension is a
            batch dimension.
    """

    event_dims: ClassVar[int] = 1

    #: Capabilities this structure declares impossible, each with the reason (e.g. the permanent
    #: for ``log_partition`` of a matching). ``supports`` is False for them and the public method
    #: raises ``NotImplementedError`` with the reason.
    unsupported: ClassVar[dict[str, str]] = {}

    #: The keyword options ``relax`` (and ``_relax``) accept, e.g. ``("regularizer",)``. Any other
    #: keyword is a ``TypeError`` from :meth:`check_relax_options`; each structure checks the
    #: option *values* itself, inside ``_relax``. A subclass that defines ``_relax`` without
    #: declaring this gets the named parameters of its ``_relax`` after ``scores`` and ``tau``.
    relax_option_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "relax_option_names" not in cls.__dict__ and "_relax" in cls.__dict__:
            parameters = list(inspect.signature(cls.__dict__["_relax"]).parameters.values())[3:]
            cls.relax_option_names = tuple(
                p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )

    # --- capabilities -------------------------------------------------------------------------

    def supports(self, capability: str) -> bool:
        """Whether this structure implements ``capability`` (one of :data:`CAPABILITIES`)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
        if capability in self.unsupported:
            return False
        private = "_" + capability if capability != "enumerate" else "enumerate"
        return getattr(type(self), private) is not getattr(Structure, private)

    def _raise_unsupported(self, capability: str) -> None:
        if capability in self.unsupported:
            raise NotImplementedError(
                f"{type(self).__name__} does not support {capability}: {self.unsupported[capability]}"
            )

    # --- validation ---------------------------------------------------------------------------

    def validate(
        self, scores: Any, *, name: str = "scores", tau: float | None = None, tau_name: str = "tau"
    ) -> Tensor:
        """Check ``scores`` for this structure and return it; raises ``TypeError``/``ValueError``.

        Shape and dtype checks always run; the value checks (no NaN or ``+inf``; ``-inf`` marks
        a masked entry and is allowed; sums over an event and, with ``tau`` given,
        ``scores / tau`` within the compute dtype's range) run when
        :func:`pickgrad._validation.value_checks_enabled`. See
        :func:`pickgrad._validation.check_scores` for the exact rules. It does not check that
        ``-inf`` entries leave a solution: :meth:`mask_scores` does.

        Args:
            scores: ``(*batch, *event)`` tensor.
            name: its name in error messages.
            tau: the (already checked, float) temperature ``scores`` will be divided by, if any.
            tau_name: its name in error messages.

        Example:
            >>> from pickgrad import OneHot
            >>> OneHot().validate(torch.tensor([1.0, float("nan")]))
            Traceback (most recent call last):
            ...
            ValueError: scores contains non-finite values (1 NaN of 2 entries, shape (2,)); only -inf (a masked entry) is allowed
        """
        self._inspect(scores, name=name, tau=tau, tau_name=tau_name)
        result: Tensor = scores
        return result

    def _inspect(
        self, scores: Any, *, name: str = "scores", tau: float | None = None, tau_name: str = "tau"
    ) -> bool:
        """:meth:`validate`, returning whether some entry is ``-inf`` (known with value checks)."""
        masked = inspect_scores(
            scores, name=name, event_dims=self.event_dims, tau=tau, tau_name=tau_name
        )
        self._check_event_shape(tuple(scores.shape[scores.dim() - self.event_dims :]), name=name)
        return masked

    def mask_scores(
        self,
        scores: Any,
        mask: Tensor | None = None,
        *,
        tau: Any = _NO_TAU,
        name: str = "scores",
        **solver_options: Any,
    ) -> Tensor:
        """Apply ``mask`` to ``scores`` and validate the result; return the masked scores.

        ``mask`` (bool, broadcastable to ``scores``, True = allowed) means exactly
        ``scores.masked_fill(~mask, -inf)``; ``-inf`` scores (given or made by the mask) mark
        entries no solution may use. Validates as :meth:`validate` (with ``tau``, as
        :meth:`check_scores_and_tau`) and, with the value checks on and some entry ``-inf``,
        checks that every batch entry still has a solution: otherwise a ``ValueError`` names
        the batch entries left without one. ``solver_options`` (``lengths`` for trees) go to
        the argmax that decides it.

        Example:
            >>> from pickgrad import Subset
            >>> Subset(2).mask_scores(torch.zeros(2, 3), torch.tensor([[True, True, False],
            ...                                                        [True, False, False]]))
            Traceback (most recent call last):
            ...
            ValueError: mask leaves no feasible solution of Subset(k=2) at 1 batch entry: (1,) (fewer than k=2 allowed items)
        """
        return self._prepare(scores, mask, tau=tau, name=name, **solver_options)[0]

    def _prepare(
        self,
        scores: Any,
        mask: Tensor | None,
        *,
        tau: Any = _NO_TAU,
        name: str = "scores",
        tau_name: str = "tau",
        **solver_options: Any,
    ) -> tuple[Tensor, float]:
        """:meth:`mask_scores`, also returning ``tau`` checked as a float (1.0 when not given)."""
        if mask is not None:
            check_score_types(scores, name=name, event_dims=self.event_dims)  # before the mask
            scores = apply_mask(scores, mask)
        if tau is _NO_TAU:
            value = 1.0
            masked = self._inspect(scores, name=name)
        else:
            if isinstance(scores, Tensor) and scores.is_floating_point():
                value = check_tau(tau, name=tau_name, dtype=scores.dtype)
            else:
                value = check_tau(tau, name=tau_name)
            masked = self._inspect(scores, name=name, tau=value, tau_name=tau_name)
        if masked:
            self.check_feasible(scores, name="mask" if mask is not None else name, **solver_options)
        return scores, value

    def check_feasible(
        self, scores: Tensor, *, name: str = "scores", **solver_options: Any
    ) -> None:
        """Raise ``ValueError`` naming the batch entries whose ``-inf`` entries leave no solution.

        A solution exists exactly when the best one (:meth:`_argmax`, exact with ``-inf``
        entries) uses no ``-inf`` entry. A value check: callers run it only when
        :func:`pickgrad._validation.value_checks_enabled`.
        """
        with torch.no_grad():
            feasible = self._feasible(scores.detach(), **solver_options)
        if bool(feasible.all()):
            return
        bad = [tuple(index) for index in (~feasible).nonzero().tolist()]
        if feasible.dim() == 0:
            where = ""
        else:
            shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            where = f" at {len(bad)} batch entr{'y' if len(bad) == 1 else 'ies'}: {shown}"
        reason = self._infeasible_reason()
        raise ValueError(
            f"{name} leaves no feasible solution of {self!r}{where}"
            + (f" ({reason})" if reason else "")
        )

    def _infeasible_reason(self) -> str:
        """What an infeasible mask lacks, in words, for :meth:`check_feasible`'s message."""
        return ""

    def _feasible(self, scores: Tensor, **solver_options: Any) -> Tensor:
        """Boolean ``(*batch,)``: whether the best solution avoids every ``-inf`` entry."""
        x = self._argmax(scores, **solver_options)
        used = torch.where(x != 0, scores, torch.zeros((), dtype=scores.dtype))
        active = self.active_mask(self.event_shape(scores), scores.device)
        if active is not None:
            used = torch.where(active, used, torch.zeros((), dtype=scores.dtype))
        dims = tuple(range(scores.dim() - self.event_dims, scores.dim()))
        return (used != -math.inf).all(dim=dims)

    def check_scores_and_tau(
        self, scores: Any, tau: Any, *, name: str = "scores", tau_name: str = "tau"
    ) -> float:
        """Validate ``scores`` and ``tau`` together and return ``tau`` as a float.

        ``tau`` is checked by :func:`pickgrad._validation.check_tau` (a positive finite real
        number or a schedule, at least the smallest normal number of the compute dtype), then
        ``scores`` by :meth:`validate` with that ``tau`` (so ``scores / tau`` cannot overflow).
        Public methods that take a temperature call this first.

        Example:
            >>> from pickgrad import OneHot
            >>> OneHot().check_scores_and_tau(torch.zeros(3), 0.5)
            0.5
            >>> OneHot().check_scores_and_tau(torch.zeros(3), True)
            Traceback (most recent call last):
            ...
            TypeError: tau must be a positive real number or a schedule, got bool True
        """
        if isinstance(scores, Tensor) and scores.is_floating_point():
            value = check_tau(tau, name=tau_name, dtype=scores.dtype)
        else:
            value = check_tau(tau, name=tau_name)
        self.validate(scores, name=name, tau=value, tau_name=tau_name)
        return value

    def check_solution(
        self, scores: Tensor, x: Any, *, name: str = "x", **solver_options: Any
    ) -> Tensor:
        """Check that ``x`` is a hard solution of this structure for ``scores``; return it.

        Always: ``x`` is a tensor of the shape and device of ``scores``. When
        :func:`pickgrad._validation.value_checks_enabled`: every ``x[b]`` is a hard solution
        (:meth:`_is_solution`, given ``solver_options``: ``lengths`` for trees, already
        checked); otherwise a ``ValueError`` names the offending batch entries.

        Example:
            >>> from pickgrad import OneHot
            >>> s = torch.zeros(3, 2)
            >>> OneHot().check_solution(s, torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
            Traceback (most recent call last):
            ...
            ValueError: x is not a hard solution of OneHot() at 2 batch entries: (1,), (2,)
        """
        check_like_scores(x, scores, name=name, real="real (0/1 entries)")
        if value_checks_enabled() and x.numel() > 0:
            values = x.detach()
            if not values.is_floating_point():
                values = values.to(scores.dtype)
            with torch.no_grad():
                valid = self._is_solution(values, **solver_options)
            if not bool(valid.all()):
                bad = [tuple(index) for index in (~valid).nonzero().tolist()]
                if valid.dim() == 0:
                    where = ""
                else:
                    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
                    where = f" at {len(bad)} batch entr{'y' if len(bad) == 1 else 'ies'}: {shown}"
                raise ValueError(f"{name} is not a hard solution of {self!r}{where}")
        result: Tensor = x
        return result

    def check_relax_options(self, options: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` if ``options`` holds a keyword this structure's ``relax`` does not take.

        Only the names are checked (the values are checked by ``_relax``). Estimators call this
        when they are paired with a structure, so a misspelt option fails before any work.

        Example:
            >>> from pickgrad import OneHot
            >>> OneHot().check_relax_options({"regularizer": "sparsemax"})  # fine
            >>> OneHot().check_relax_options({"regulariser": "sparsemax"})
            Traceback (most recent call last):
            ...
            TypeError: unknown relax option 'regulariser' for OneHot(); valid options: regularizer
        """
        if not isinstance(options, Mapping):
            raise TypeError(f"relax options must be a mapping, got {type(options).__name__}")
        unknown = [name for name in options if name not in self.relax_option_names]
        if unknown:
            valid = (
                ", ".join(self.relax_option_names)
                or f"none ({type(self).__name__}.relax takes no options)"
            )
            plural = "s" if len(unknown) > 1 else ""
            raise TypeError(
                f"unknown relax option{plural} {', '.join(map(repr, unknown))} for {self!r}; "
                f"valid options: {valid}"
            )

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        """Raise ``ValueError`` if ``event_shape`` is not valid for this structure."""

    def event_shape(self, scores: Tensor) -> tuple[int, ...]:
        """The trailing ``event_dims`` sizes of ``scores``."""
        return tuple(scores.shape[scores.dim() - self.event_dims :])

    # --- public, validated API ----------------------------------------------------------------

    def argmax(self, scores: Tensor, *, mask: Tensor | None = None) -> Tensor:
        """The exact hard solution ``argmax_x <scores, x>``, batched; carries no gradient.

        Args:
            scores: ``(*batch, *event)`` floating tensor; ``-inf`` entries are not allowed.
            mask: optional bool tensor broadcastable to ``scores``, True = allowed; the same as
                ``scores.masked_fill(~mask, -inf)``. Entries that are masked (or ``-inf``) never
                appear in a solution; a mask that leaves some batch entry no solution is a
                ``ValueError`` naming it (a value check).

        Returns:
            ``(*batch, *event)`` tensor of zeros and ones, in the dtype and device of ``scores``.

        With the value checks on, scores so large that a sum over one event would overflow the
        compute dtype are a ``ValueError`` before anything is computed.
        """
        scores, _ = self._prepare(scores, mask)
        with torch.no_grad():
            return self._argmax(scores.detach())

    def relax(
        self, scores: Tensor, tau: float = 1.0, *, mask: Tensor | None = None, **options: Any
    ) -> Tensor:
        """A differentiable point of the convex hull that tends to ``argmax(scores)`` as tau -> 0.

        Args:
            scores: ``(*batch, *event)`` floating tensor.
            tau: temperature > 0 (a float or a schedule).
            mask: optional bool tensor broadcastable to ``scores``, True = allowed; the same as
                ``scores.masked_fill(~mask, -inf)``. Entries that are masked (or ``-inf``) get exactly
                zero mass and zero gradient; a mask that leaves some batch entry no solution is a
                ``ValueError`` naming it (a value check).
            **options: structure-specific choices (``relax_option_names``), e.g.
                ``regularizer="sparsemax"``; an unknown one is a ``TypeError``.

        Returns:
            ``(*batch, *event)`` tensor, differentiable in ``scores``, in the dtype of ``scores``
            (float16/bfloat16 scores are computed in float32 and the result cast back).
        """
        scores, tau_value = self._prepare(scores, mask, tau=tau)
        if not self.supports("relax"):
            self._raise_unsupported("relax")
            raise NotImplementedError(f"{type(self).__name__} does not implement relax")
        self.check_relax_options(options)
        work = compute_dtype(scores.dtype)
        if work == scores.dtype:
            return self._relax(scores, tau_value, **options)
        return self._relax(scores.to(work), tau_value, **options).to(scores.dtype)

    def log_partition(
        self, scores: Tensor, tau: float = 1.0, *, mask: Tensor | None = None
    ) -> Tensor:
        """``log sum_x exp(<scores, x> / tau)`` over every hard solution x; shape ``(*batch,)``.

        ``mask`` (True = allowed, as for :meth:`argmax`) restricts the sum to the solutions
        that use allowed entries only; masked entries get exactly zero gradient.

        For float16/bfloat16 scores the result is **float32** (computed in float32 and not cast
        back: a log-partition easily exceeds float16's largest value, 65504, and would otherwise
        be a silent inf); for other dtypes it has the scores' dtype.
        """
        scores, tau_value = self._prepare(scores, mask, tau=tau)
        self._raise_unsupported("log_partition")
        return self._log_partition(scores.to(compute_dtype(scores.dtype)), tau_value)

    def perturb_log_prob(self, scores: Tensor, x: Tensor) -> Tensor:
        """``log P(argmax(scores + G) = x)`` for standard Gumbel ``G``; shape ``(*batch,)``.

        Only structures whose perturb-and-MAP distribution has a closed form implement this.
        ``x`` must be a hard solution (checked with the value checks, see
        :meth:`check_solution`). As for :meth:`log_partition`, float16/bfloat16 scores give a
        float32 result.
        """
        self.validate(scores)
        self._raise_unsupported("perturb_log_prob")
        if self.supports("perturb_log_prob"):  # otherwise the call below says it is missing
            self.check_solution(scores, x)
        return self._perturb_log_prob(scores.to(compute_dtype(scores.dtype)), x)

    def conditional_gumbel(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Gumbel noise ``G`` drawn from its law conditional on ``argmax(scores + G) = x``.

        ``x`` must be a hard solution (checked with the value checks, see
        :meth:`check_solution`).

        Returns:
            ``(n_draws, *scores.shape)`` noise without gradient, in the dtype of ``scores`` or,
            for float16/bfloat16 scores, float32 where the structure says so (``OneHot`` does:
            the noise that makes an unlikely ``x`` the argmax can exceed float16's range).
        """
        self.validate(scores)
        self._raise_unsupported("conditional_gumbel")
        if self.supports("conditional_gumbel"):  # otherwise the call below says it is missing
            self.check_solution(scores, x)
        check_positive_int(n_draws, name="n_draws")
        check_generator(generator, scores.device)
        with torch.no_grad():
            return self._conditional_gumbel(scores.detach(), x, n_draws, generator)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every hard solution of the given event shape, stacked: ``(count, *event_shape)``.

        Meant for tiny sizes (tests and exact diagnostics).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement enumerate")

    # --- to implement in subclasses (inputs already validated) --------------------------------

    def _is_solution(self, x: Tensor) -> Tensor:
        """Boolean ``(*batch,)``: whether each ``x`` is a hard solution of this structure.

        The default is :meth:`_is_own_argmax`. Structures may override this with a cheaper
        direct check; one whose ``_argmax`` takes solver options (``lengths`` for trees) adds
        them as optional keywords, which :meth:`check_solution` forwards.
        """
        return self._is_own_argmax(x)

    def _is_own_argmax(self, x: Tensor, **solver_options: Any) -> Tensor:
        """Boolean ``(*batch,)``: whether each ``x`` is 0/1 and its own argmax.

        Every solution of a structure has the same number of ones, so a 0/1 ``x`` is a solution
        exactly when it is its own argmax (``<x, y>`` peaks at ``y = x`` and nowhere else).
        ``solver_options`` go to :meth:`_argmax`.
        """
        dims = tuple(range(x.dim() - self.event_dims, x.dim()))
        binary = ((x == 0) | (x == 1)).all(dim=dims) if dims else (x == 0) | (x == 1)
        with torch.no_grad():
            vertex = (self._argmax(x.detach(), **solver_options) == x).all(dim=dims)
        return binary & vertex

    def _argmax(self, scores: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement argmax")

    def _relax(self, scores: Tensor, tau: float) -> Tensor:
        # Subclasses add their options as keyword parameters (see relax_option_names); a
        # narrower override stays type-compatible because this declares none.
        raise NotImplementedError(f"{type(self).__name__} does not implement relax")

    def _log_partition(self, scores: Tensor, tau: float) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement log_partition")

    def _perturb_log_prob(self, scores: Tensor, x: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__}: the law of argmax(scores + Gumbel) has no closed form"
        )

    def _conditional_gumbel(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        generator: torch.Generator | None,
        *,
        start: Tensor | None = None,
    ) -> Tensor:
        # ``start``: optional noise G with argmax(scores + G) = x, itself a draw of the
        # conditional law (the forward pass's own noise). A Markov-chain sampler may start there
        # and so needs no burn-in; closed-form samplers ignore it.
        raise NotImplementedError(
            f"{type(self).__name__} has no sampler of Gumbel noise conditional on the argmax"
        )

    def active_mask(
        self, event_shape: tuple[int, ...], device: torch.device | None = None
    ) -> Tensor | None:
        """Boolean ``event_shape`` mask of the score entries that can change the solution.

        ``None`` (the default) means every entry counts. Trees ignore part of their score matrix;
        estimators use this mask to keep gradients on ignored entries exactly zero.
        """
        return None

    def linear_objective(self, scores: Tensor) -> Tensor:
        """``scores`` as a linear objective on outputs x, for straight-through backward passes.

        A linear map whose argmax over hard solutions is ``argmax(scores)``; the straight-through
        estimator's backward is its transpose. The default zeroes the entries ``active_mask``
        ignores; ``SpanningTree`` mirrors its upper triangle, so that gradients on both ``x[i, j]``
        and ``x[j, i]`` reach ``scores[i, j]``.
        """
        mask = self.active_mask(self.event_shape(scores), scores.device)
        if mask is None:
            return scores
        return torch.where(mask, scores, torch.zeros((), dtype=scores.dtype))  # no -inf * 0

    def _objective_transpose(self, grad: Tensor) -> Tensor | None:
        """``A^T grad`` for the linear map ``A = linear_objective`` in closed form, or ``None``
        (callers then differentiate ``linear_objective``). The default objective zeroes the
        entries ``active_mask`` ignores: a diagonal 0/1 map, its own transpose."""
        if type(self).linear_objective is not Structure.linear_objective:
            return None
        return self.linear_objective(grad)

    # --- optional fused capabilities (None: callers use the generic composition) --------------
    # Named for what they compute, so that no structure names an estimator.

    def _keeps_solvers_of(self, owner: type[Structure]) -> bool:
        """Whether ``_argmax``, ``_relax`` and ``_conditional_gumbel`` are still ``owner``'s own.

        A fused path hard-codes them, so a subclass that redefines one gets the generic
        composition instead.
        """
        cls = type(self)
        return all(
            getattr(cls, name) is getattr(owner, name)
            for name in ("_argmax", "_relax", "_conditional_gumbel")
        )

    def _perturb_argmax_log_prob(
        self, scores: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor] | None:
        """A draw ``x`` of ``argmax(scores + G)`` (standard Gumbel ``G``) and its log-probability
        ``log P(x; scores)`` ``(*batch,)``, differentiable in ``scores``, in one pass; ``None``
        (the default) when not provided.

        The law and the log-probability of ``argmax`` and ``_perturb_log_prob``, possibly from
        another random stream, and without the noise itself.
        """
        return None

    def _perturb_argmax_relax(
        self,
        scores: Tensor,
        tau: float,
        generator: torch.Generator | None,
        **options: Any,
    ) -> Tensor | None:
        """One pass of perturb, argmax and relax; ``None`` (the default) when not provided.

        Returns ``argmax(scores + G)`` with the gradient of ``relax(scores + G, tau, **options)``,
        ``G`` drawn from ``generator`` exactly as ``sample_gumbel(scores.shape, ...)`` would.
        """
        return None

    def _conditional_mean_relax(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        tau: float,
        generator: torch.Generator | None,
        **options: Any,
    ) -> Tensor | None:
        """``x`` with the mean relaxed gradient over conditional draws, in one pass; ``None`` (the
        default) when not provided.

        Returns ``x``'s value with the gradient ``(1/K) sum_k d relax(scores + G_k, tau) / d scores``,
        the ``G_k`` being the draws ``_conditional_gumbel(scores, x, K, generator)`` would make from
        the same generator state, held fixed.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
