"""``pickgrad.select`` and ``pickgrad.estimate``: the two entry points of the library."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import torch
from torch import Tensor

from pickgrad._validation import (
    check_generator,
    check_positive_int,
    check_score_types,
    check_tau,
)
from pickgrad.estimators.base import Estimator, LossFn, RelaxingEstimator, get_estimator
from pickgrad.estimators.perturbed import Perturbed
from pickgrad.structures._bound import LengthBound, TemperatureBound, node_pairs, takes_lengths
from pickgrad.structures.base import Structure

__all__ = ["estimate", "select"]


def _check_lengths(structure: Structure, scores: Any, lengths: Any) -> Tensor:
    """``lengths`` checked by ``structure`` (which must take it) against ``scores``."""
    if not takes_lengths(structure):
        raise TypeError(
            f"lengths= is for structures over graphs of varying size (SpanningTree, "
            f"Arborescence); {structure!r} does not take it: pad its scores and exclude the "
            "padding with mask= instead"
        )
    check_score_types(scores, event_dims=structure.event_dims)
    checked: Tensor = structure._check_lengths(lengths, scores)  # type: ignore[attr-defined]
    return checked


def _prepare(
    scores: Any,
    structure: Any,
    estimator: str | Estimator,
    tau: Any,
    generator: Any,
    options: dict[str, Any],
    mask: Tensor | None = None,
    lengths: Any = None,
) -> tuple[Estimator, float, Tensor, Structure]:
    """Resolve the estimator and run every check before any work; return it, ``tau``, the
    scores with ``mask`` applied (``-inf`` where it is False) and the structure the estimator
    is to use (with ``lengths``, the user's structure with them bound in)."""
    if not isinstance(structure, Structure):
        raise TypeError(
            "structure must be a pickgrad Structure such as pickgrad.OneHot(), "
            f"got {type(structure).__name__}"
        )
    resolved = get_estimator(estimator, **options)
    # A learnable temperature keeps its gradient through every estimator whose gradient goes
    # through relax; its value is checked (and read) as any tau is.
    learnable = isinstance(tau, Tensor) and tau.requires_grad
    learned_tau = tau if learnable and _relaxes(resolved) else None
    # perturbed with sigma=None scales its noise by tau: argmax(s + tau Z) = argmax(s / tau + Z),
    # and its Jacobian estimate at (s, tau) is 1 / tau times the one at (s / tau, 1).
    noise_tau = tau if learnable and _scales_noise_by_tau(resolved) else None
    if learned_tau is not None or noise_tau is not None:
        tau = tau.detach()
    solver_options: dict[str, Any] = {}
    if lengths is not None:
        solver_options["lengths"] = _check_lengths(structure, scores, lengths)
    if resolved.uses_tau:
        # scores / tau is computed: tau must keep it within the compute dtype's range.
        scores, tau_value = structure._prepare(scores, mask, tau=tau, **solver_options)
    else:
        scores, _ = structure._prepare(scores, mask, **solver_options)
        tau_value = check_tau(tau)
    check_generator(generator, scores.device)
    resolved.check_structure(structure)
    relax_options = getattr(resolved, "relax_options", None)
    if isinstance(relax_options, Mapping) and relax_options:
        structure.check_relax_options(relax_options)
    if lengths is not None:
        checked = solver_options["lengths"]
        # Padded entries (a padded node at either end) get exactly zero gradient from every
        # estimator: their values reach it only as constants.
        scores = torch.where(node_pairs(structure, checked, scores), scores, scores.detach())
        structure = LengthBound(structure, checked)
    if learned_tau is not None:
        structure = TemperatureBound(structure, learned_tau)
    if noise_tau is not None:
        scores, tau_value = scores / noise_tau.to(scores.dtype), 1.0
    return resolved, tau_value, scores, structure


def _relaxes(estimator: Estimator) -> bool:
    """Whether ``estimator``'s gradient goes through ``structure.relax`` at ``tau``."""
    return isinstance(estimator, RelaxingEstimator)


def _scales_noise_by_tau(estimator: Estimator) -> bool:
    """Whether ``estimator`` is ``perturbed`` with its noise scale taken from ``tau``."""
    return isinstance(estimator, Perturbed) and estimator.sigma is None


def select(
    scores: Tensor,
    structure: Structure,
    estimator: str | Estimator = "st-gumbel",
    *,
    tau: SupportsFloat = 1.0,
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """Choose a discrete structure from ``scores`` and let gradients flow back by ``estimator``.

    Args:
        scores: ``(*batch, *event)`` floating tensor; higher means more preferred.
        structure: what is chosen, e.g. ``OneHot()`` or ``Subset(k)``.
        estimator: a registered name (see :func:`pickgrad.available_estimators`) or an
            ``Estimator`` object.
        tau: temperature > 0 of the relaxation: a number, a 0-dim tensor or a schedule (see
            :mod:`pickgrad.schedules`). A tensor that requires grad is a learnable temperature:
            its gradient flows through every estimator whose gradient goes through ``relax``
            (``relaxed``, ``st-relaxed``, ``gumbel-relaxed``, ``st-gumbel``, ``gumbel-rao``),
            as ``relax(scores / tau, 1)``, and through ``perturbed`` as its noise scale (as
            ``scores / tau`` with scale 1); the others read its value only (with a warning).
            For estimators that use it, ``scores / tau`` must fit the compute dtype (a
            ``ValueError`` says the smallest ``tau`` allowed; value checks, see
            :func:`pickgrad.set_validation`).
        generator: source of the noise; the same seed gives the same sample.
        mask: optional bool tensor broadcastable to ``scores``, True = allowed; exactly
            ``scores.masked_fill(~mask, -inf)`` (``-inf`` scores are masked too). Masked
            entries never appear in ``x`` and get exactly zero gradient; a mask that leaves a
            batch entry no solution is a ``ValueError`` naming it (a value check).
        lengths: optional ``(*batch)`` integer tensor, for the trees (``SpanningTree``,
            ``Arborescence``) only: graph b uses its first ``lengths[b]`` nodes
            (1 <= lengths[b] <= n), exactly as the unbatched computation on
            ``scores[b, :lengths[b], :lengths[b]]`` would (every estimator, same law); entries
            with a padded node at either end are exactly 0 in ``x`` and get exactly zero
            gradient, so graphs of different sizes share a batch without padding scores. Other
            structures refuse it (``TypeError``). Works together with ``mask``.
        **options: options of the named estimator, e.g. ``n_draws=10`` for ``gumbel-rao``.

    Returns:
        ``x`` of the shape, dtype and device of ``scores``: hard (exactly 0/1) for every estimator
        whose ``hard`` attribute is True, i.e. all but ``relaxed``, ``gumbel-relaxed`` and
        ``perturbed`` (whose default forward is the mean of its perturbed argmaxes; pass
        ``hard=True`` for one hard sample); ``d x / d scores`` is the estimator's.

    Example:
        >>> import pickgrad
        >>> scores = torch.tensor([[1.0, 3.0, 0.0]], requires_grad=True)
        >>> x = pickgrad.select(scores, pickgrad.OneHot(), "st-relaxed", tau=1.0)
        >>> x
        tensor([[0., 1., 0.]], grad_fn=<_ReplaceGradientBackward>)
        >>> (x * torch.tensor([0.0, 1.0, 0.0])).sum().backward()
        >>> scores.grad.round(decimals=3)
        tensor([[-0.0960,  0.1320, -0.0350]])
    """
    resolved, tau_value, scores, structure = _prepare(
        scores, structure, estimator, tau, generator, options, mask, lengths
    )
    return resolved.select(scores, structure, tau=tau_value, generator=generator)


def estimate(
    loss_fn: LossFn,
    scores: Tensor,
    structure: Structure,
    estimator: str | Estimator,
    *,
    n_samples: int = 1,
    tau: SupportsFloat = 1.0,
    generator: torch.Generator | None = None,
    baseline_values: Tensor | None = None,
    mask: Tensor | None = None,
    lengths: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """A scalar surrogate whose value is the mean loss and whose gradient is the estimator's.

    Works for every estimator, including score-function ones (``reinforce``) that need the
    value of the loss.

    Args:
        loss_fn: maps samples ``(n_samples, *scores.shape)`` to losses ``(n_samples,)`` or
            ``(n_samples, *batch)``.
        scores: ``(*batch, *event)`` floating tensor.
        structure: what is chosen.
        estimator: a registered name or an ``Estimator`` object.
        n_samples: number of samples drawn (and averaged over).
        tau: temperature > 0, or a schedule (as for :func:`select`).
        generator: source of the noise.
        baseline_values: per-example baselines from the user's own network, a tensor
            broadcastable to the losses' ``(*batch)`` shape, for ``Reinforce(baseline="learned")``
            (NVIL); the surrogate's gradient with respect to it is that of
            ``mean((baseline_values - loss)**2)``, so one backward trains the baseline too. Other
            estimators refuse it (``TypeError``).
        mask: optional bool tensor broadcastable to ``scores``, True = allowed; exactly
            ``scores.masked_fill(~mask, -inf)`` (``-inf`` scores are masked too). Masked
            entries never appear in ``x`` and get exactly zero gradient; a mask that leaves a
            batch entry no solution is a ``ValueError`` naming it (a value check).
        lengths: graph sizes for the trees, as for :func:`select`.
        **options: options of the named estimator, e.g. ``baseline="rloo"``.

    Returns:
        0-dim tensor: the mean of the losses; ``backward()`` on it puts the estimated gradient of
        ``E[loss(x)]`` into ``scores.grad``.

    Example:
        >>> import pickgrad
        >>> scores = torch.zeros(4, requires_grad=True)
        >>> target = torch.tensor([0.0, 0.0, 1.0, 0.0])
        >>> gen = torch.Generator().manual_seed(0)
        >>> surrogate = pickgrad.estimate(
        ...     lambda x: ((x - target) ** 2).sum(-1), scores, pickgrad.OneHot(),
        ...     "reinforce", n_samples=1000, baseline="rloo", generator=gen)
        >>> surrogate.backward()
        >>> int(scores.grad.argmin())  # the gradient pushes the score of item 2 up
        2
    """
    resolved, tau_value, scores, structure = _prepare(
        scores, structure, estimator, tau, generator, options, mask, lengths
    )
    check_positive_int(n_samples, name="n_samples")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    extra = {} if baseline_values is None else {"baseline_values": baseline_values}
    return resolved.estimate(
        loss_fn, scores, structure, n_samples=n_samples, tau=tau_value, generator=generator, **extra
    )
