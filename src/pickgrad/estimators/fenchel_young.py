"""The perturbed Fenchel-Young loss: supervised learning of scores from target structures."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pickgrad._validation import (
    check_generator,
    check_like_scores,
    check_positive_int,
    value_checks_enabled,
)
from pickgrad.estimators.perturbed import check_noise, perturbed_samples
from pickgrad.noise import sampling_dtype
from pickgrad.structures.base import Structure

__all__ = ["REDUCTIONS", "fenchel_young_loss"]

REDUCTIONS = ("mean", "sum", "none")


def fenchel_young_loss(
    scores: Tensor,
    target: Tensor,
    structure: Structure,
    *,
    sigma: float = 1.0,
    n_perturbations: int = 100,
    noise: str = "gumbel",
    reduction: str = "mean",
    generator: torch.Generator | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Perturbed Fenchel-Young loss between ``scores`` and a target structure.

    With the perturbed max ``F_sigma(s) = E[max_x <s + sigma Z, x>]`` and the same noise in
    both terms, the loss and its gradient are::

        loss(s; t) = E[ max_x <s + sigma Z, x> - <s + sigma Z, t> ]
                   = F_sigma(s) - <s, t> - sigma <E[Z], t>
        d loss / ds = y_sigma(s) - t,      y_sigma(s) = E[argmax(s + sigma Z)]

    estimated with M noise draws ``Z_m`` shared by both terms. Each term is non-negative (the
    argmax beats t), so the estimate is >= 0 for any t in the structure's hull, and it is exactly
    0 when every ``argmax(s + sigma Z_m)`` equals t. The constant ``sigma <E[Z], t>`` (zero for
    Normal noise, ``sigma * 0.5772 * sum(t)`` for Gumbel) does not change the gradient; it is
    what makes the loss vanish at a reproduced target. Berthet et al.'s loss adds the conjugate
    ``Omega(t)`` instead, which has no closed form in general.

    For ``OneHot`` with Gumbel noise and a one-hot target, the expected loss is
    ``sigma * cross_entropy(scores / sigma, t)``. Entries the structure ignores
    (``structure.active_mask``) neither count in the loss nor get a gradient. The solver is never
    differentiated, and no gradient flows to ``target``.

    Args:
        scores: ``(*batch, *event)`` floating tensor.
        target: ``(*batch, *event)`` target structures (hard solutions, or points of the hull),
            same shape as ``scores``.
        structure: what is chosen; only its ``argmax`` is used.
        sigma: noise scale > 0.
        n_perturbations: M, the number of noise draws.
        noise: ``"gumbel"`` or ``"normal"``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the batch entries, or ``"none"`` for
            per-example losses shaped ``(*batch,)``.
        generator: source of the noise.
        mask: optional bool tensor broadcastable to ``scores``, True = allowed (or ``-inf``
            scores): the max runs over the solutions avoiding masked entries, which get exactly
            zero gradient; a ``target`` with mass on a masked entry is a ``ValueError`` (its
            loss would be infinite; a value check), as is a mask leaving no solution.

    Returns:
        0-dim tensor (``"mean"``, ``"sum"``) or ``(*batch,)`` (``"none"``), in the dtype of
        ``scores``.

    Reference: Berthet, Blondel, Teboul, Cuturi, Vert & Bach, "Learning with Differentiable
    Perturbed Optimizers", NeurIPS 2020, Sec. 4; Blondel, Martins & Niculae, "Learning with
    Fenchel-Young Losses", JMLR 2020.

    Example:
        >>> import pickgrad
        >>> scores = torch.tensor([[3.0, 0.0, 0.0]], requires_grad=True)
        >>> target = torch.tensor([[0.0, 1.0, 0.0]])
        >>> gen = torch.Generator().manual_seed(0)
        >>> loss = pickgrad.fenchel_young_loss(scores, target, pickgrad.OneHot(), sigma=0.01,
        ...                                    generator=gen)
        >>> round(loss.item(), 2)  # <s + sigma Z, argmax - t>: s_0 - s_1 = 3, noise is small
        3.0
        >>> loss.backward()
        >>> scores.grad.round(decimals=4)  # y_sigma(s) - t
        tensor([[ 1., -1.,  0.]])
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a pickgrad Structure, got {type(structure).__name__}")
    if not structure.supports("argmax"):
        raise NotImplementedError(f"fenchel_young_loss needs argmax, which {structure!r} lacks")
    scores, sigma = structure._prepare(scores, mask, tau=sigma, tau_name="sigma")
    target = _check_target(target, scores, structure)
    check_positive_int(n_perturbations, name="n_perturbations")
    check_noise(noise)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_generator(generator, scores.device)

    samples, z = perturbed_samples(
        scores,
        structure,
        sigma=sigma,
        n_perturbations=n_perturbations,
        noise=noise,
        generator=generator,
    )
    work = samples.dtype
    perturbed = scores.to(work) + sigma * z  # differentiable in scores; samples and z are not
    gap = samples - target.detach().to(work)
    active = structure.active_mask(structure.event_shape(scores), scores.device)
    if active is not None:
        gap = gap * active
    event = tuple(range(-structure.event_dims, 0))
    # where, not a product alone: masked entries have perturbed = -inf and gap = 0.
    terms = torch.where(gap == 0, torch.zeros((), dtype=work), perturbed * gap)
    losses = terms.sum(event).mean(0).to(scores.dtype)
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _check_target(target: Any, scores: Tensor, structure: Structure) -> Tensor:
    check_like_scores(target, scores, name="target")
    if target.numel() > 0 and not bool(
        torch.isfinite(target.to(sampling_dtype(scores.dtype))).all()
    ):
        raise ValueError(f"target contains NaN or inf values (shape {tuple(target.shape)})")
    if value_checks_enabled() and target.numel() > 0:
        on_masked = (target != 0) & (scores.detach() == -math.inf)
        active = structure.active_mask(structure.event_shape(scores), scores.device)
        if active is not None:  # entries the structure ignores do not count
            on_masked = on_masked & active
        if bool(on_masked.any()):
            raise ValueError(
                f"target has mass on {int(on_masked.sum())} masked entries (-inf scores or "
                "mask False); its Fenchel-Young loss would be infinite"
            )
    checked: Tensor = target
    return checked
