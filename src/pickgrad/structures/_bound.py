"""A structure with its ``lengths=`` bound in, so that every estimator passes it unawares.

``pickgrad.select`` and ``pickgrad.estimate`` take ``lengths=`` (graph b uses its first
``lengths[b]`` nodes) for the trees. Estimators call a structure's underscore methods without
it; :class:`LengthBound` wraps the user's structure and adds the checked ``lengths`` to every
call that takes it (``_argmax``, ``_relax``, ``_log_partition``, ``_conditional_gumbel``,
``_is_solution``, ...), forwarding every other keyword (``start=``, relax options) and every
other attribute (capabilities, ``active_mask``, ``linear_objective``, ``event_dims``, repr)
unchanged. So no estimator has code for ``lengths``, and a new estimator gets it for free.

The bound ``lengths`` has the batch shape of the scores it was checked against; estimators add
leading sample dimensions (``(n_samples, *batch)``, ``(K, *batch)``), to which it is broadcast.

:class:`TemperatureBound` does the same for a learnable temperature: a ``tau`` tensor that
requires grad, given to a relaxing estimator, is bound into ``_relax`` as
``relax(scores / tau, 1)`` (equal to ``relax(scores, tau)`` for every regularised relaxation,
``argmax <x, s> - tau * Omega(x)``), so its gradient flows with no estimator code for it.
Both wrappers refuse the fused one-pass capabilities, whose generic composition they rebuild.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pickgrad.structures.base import Structure
from pickgrad.structures.edges import matrix_to_edges, nodes_from_edges

__all__ = ["BoundStructure", "LengthBound", "TemperatureBound", "node_pairs", "takes_lengths"]


def takes_lengths(structure: Structure) -> bool:
    """Whether ``structure`` accepts ``lengths=`` (graphs of varying size: the trees)."""
    return callable(getattr(structure, "_check_lengths", None))


def _accepts_lengths(method: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins only
        return False
    return "lengths" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def node_pairs(structure: Structure, lengths: Tensor, scores: Tensor) -> Tensor:
    """Boolean, shaped like ``scores``: the entries between two real nodes (``i, j < lengths[b]``).

    For ``SpanningTree(edge_list=True)`` the edge-list form of that matrix.
    """
    edge_list = bool(getattr(structure, "edge_list", False))
    batch = tuple(scores.shape[: scores.dim() - structure.event_dims])
    n = nodes_from_edges(scores.shape[-1]) if edge_list else scores.shape[-1]
    nodes = torch.arange(n, device=scores.device) < lengths.expand(batch)[..., None]
    pairs = nodes[..., :, None] & nodes[..., None, :]
    if edge_list:
        pairs = matrix_to_edges(pairs.to(scores.dtype)) > 0
    result: Tensor = pairs
    return result


class BoundStructure(Structure):
    """A structure that delegates every call to ``structure`` through :meth:`_call`.

    Private base of the wrappers ``pickgrad.select`` / ``pickgrad.estimate`` build; a subclass
    changes :meth:`_call` (or one solver call) to bind what the estimators do not pass.
    """

    def __init__(self, structure: Structure) -> None:
        self._inner = structure
        self.event_dims = structure.event_dims  # type: ignore[misc]
        self.unsupported = structure.unsupported  # type: ignore[misc]
        self.relax_option_names = structure.relax_option_names  # type: ignore[misc]

    @property
    def inner(self) -> Structure:
        """The wrapped structure."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found normally: the user's structure's own ones.
        if name.startswith("__") or name in ("_inner", "_lengths", "_tau"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _call(self, method_name: str, tensor: Tensor, *args: Any, **options: Any) -> Any:
        return getattr(self._inner, method_name)(tensor, *args, **options)

    # --- capabilities and plain forwards -------------------------------------------------------

    def supports(self, capability: str) -> bool:
        return self._inner.supports(capability)

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        self._inner._check_event_shape(event_shape, name=name)

    def _infeasible_reason(self) -> str:
        return self._inner._infeasible_reason()

    def check_relax_options(self, options: Any) -> None:
        self._inner.check_relax_options(options)

    def active_mask(
        self, event_shape: tuple[int, ...], device: torch.device | None = None
    ) -> Tensor | None:
        return self._inner.active_mask(event_shape, device)

    def linear_objective(self, scores: Tensor) -> Tensor:
        return self._inner.linear_objective(scores)

    def _objective_transpose(self, grad: Tensor) -> Tensor | None:
        return self._inner._objective_transpose(grad)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        return self._inner.enumerate(event_shape, dtype=dtype, device=device)

    # --- the calls that take lengths -------------------------------------------------------------

    def _argmax(self, scores: Tensor, **options: Any) -> Tensor:
        result: Tensor = self._call("_argmax", scores, **options)
        return result

    def _relax(self, scores: Tensor, tau: float, **options: Any) -> Tensor:
        result: Tensor = self._call("_relax", scores, tau, **options)
        return result

    def _log_partition(self, scores: Tensor, tau: float, **options: Any) -> Tensor:
        result: Tensor = self._call("_log_partition", scores, tau, **options)
        return result

    def _perturb_log_prob(self, scores: Tensor, x: Tensor, **options: Any) -> Tensor:
        result: Tensor = self._call("_perturb_log_prob", scores, x, **options)
        return result

    def _conditional_gumbel(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        generator: torch.Generator | None,
        *,
        start: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        result: Tensor = self._call(
            "_conditional_gumbel", scores, x, n_draws, generator, start=start, **options
        )
        return result

    def _is_solution(self, x: Tensor, **solver_options: Any) -> Tensor:
        result: Tensor = self._call("_is_solution", x, **solver_options)
        return result

    # Fused one-pass capabilities are refused: the estimators' generic composition of the
    # calls above (each with what the wrapper binds) is what they would compute.
    def _perturb_argmax_relax(
        self, scores: Tensor, tau: float, generator: torch.Generator | None, **options: Any
    ) -> Tensor | None:
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
        return None

    def __repr__(self) -> str:
        return repr(self._inner)


class LengthBound(BoundStructure):
    """``structure`` with ``lengths`` (already checked, ``(*batch)`` long) added to its calls.

    Private: built by ``pickgrad.select`` / ``pickgrad.estimate``; users pass ``lengths=``.
    """

    def __init__(self, structure: Structure, lengths: Tensor) -> None:
        super().__init__(structure)
        self._lengths = lengths

    @property
    def lengths(self) -> Tensor:
        """The bound node counts, ``(*batch)`` long."""
        return self._lengths

    def _lengths_for(self, tensor: Tensor) -> Tensor:
        """The lengths broadcast to the batch shape of ``tensor`` (leading sample dims added)."""
        batch = tuple(tensor.shape[: tensor.dim() - self.event_dims])
        bound = tuple(self._lengths.shape)
        if batch[len(batch) - len(bound) :] != bound:
            raise ValueError(
                f"lengths of shape {bound} cannot follow scores of batch shape {batch} "
                f"(shape {tuple(tensor.shape)}) through {self._inner!r}: the batch must end "
                "with the shape lengths was given for"
            )
        return self._lengths.expand(batch)

    def _call(self, method_name: str, tensor: Tensor, *args: Any, **options: Any) -> Any:
        method = getattr(self._inner, method_name)
        options.pop("lengths", None)
        if not _accepts_lengths(method):
            raise NotImplementedError(
                f"{self._inner!r}.{method_name.lstrip('_')} does not take lengths="
            )
        return method(tensor, *args, lengths=self._lengths_for(tensor), **options)

    def _is_solution(self, x: Tensor, **solver_options: Any) -> Tensor:
        if _accepts_lengths(self._inner._is_solution):
            result: Tensor = self._call("_is_solution", x, **solver_options)
            return result
        # The generic check (a 0/1 x is a solution iff it is its own argmax), with lengths.
        return Structure._is_solution(self, x)


class TemperatureBound(BoundStructure):
    """``structure`` whose relaxation divides by a learnable ``tau`` tensor: ``_relax(s, t)`` is
    ``structure._relax(s / tau, 1)`` (``t``, the float value of ``tau``, is not used again).

    Private: built by ``pickgrad.select`` / ``pickgrad.estimate`` for a ``tau`` that requires
    grad and an estimator whose gradient goes through ``relax``.
    """

    def __init__(self, structure: Structure, tau: Tensor) -> None:
        super().__init__(structure)
        self._tau = tau

    def _relax(self, scores: Tensor, tau: float, **options: Any) -> Tensor:
        scaled = scores / self._tau.to(scores.dtype)
        result: Tensor = self._call("_relax", scaled, 1.0, **options)
        return result
