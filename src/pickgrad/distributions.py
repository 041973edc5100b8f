"""``torch.distributions`` objects over the Gumbel-perturbed laws of pickgrad's structures.

:class:`PerturbAndMAP` is the law of ``X = argmax_x <scores + G, x>`` with ``G`` standard Gumbel
noise on every score, for any :class:`~pickgrad.structures.Structure`. It behaves as any torch
distribution (``sample``, ``batch_shape``, ``event_shape``, ``support``, ``expand``,
``validate_args``) and adds what pickgrad brings: ``rsample`` through any of pickgrad's pathwise
estimators, and ``mode`` (the exact argmax).

What is exact:

* ``sample``, ``rsample``'s forward value and ``mode`` are exact for every structure.
* ``log_prob``, ``entropy`` and ``mean`` need the law in closed form, i.e. a structure with
  ``perturb_log_prob`` (``OneHot``: ``log softmax(scores)[x]``; there ``entropy`` and ``mean``
  sum over the n outcomes, exactly, and equal ``torch.distributions.OneHotCategorical``'s). For
  ``Subset``, ``Permutation`` and the trees the perturb-and-MAP law has no closed form (it is not
  the Gibbs law ``exp(<scores, x>) / Z`` either), and these raise ``NotImplementedError``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from pickgrad.estimators.base import Estimator
from pickgrad.noise import sample_gumbel
from pickgrad.select import select
from pickgrad.structures.base import Structure

__all__ = ["PerturbAndMAP"]

#: Largest number of solutions ``entropy`` and ``mean`` sum over.
ENUMERATION_LIMIT = 100_000


class _StructureSupport(constraints.Constraint):
    """The hard solutions of a structure: 0/1 tensors ``x`` with ``structure._is_solution(x)``."""

    is_discrete = True

    def __init__(self, structure: Structure) -> None:
        self.structure = structure
        self.event_dim = structure.event_dims
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return self.structure._is_solution(value)

    def __repr__(self) -> str:
        return f"solutions of {self.structure!r}"


class PerturbAndMAP(Distribution):
    """The law of ``argmax_x <scores + G, x>`` over a structure's hard solutions, ``G ~ Gumbel(0, 1)``.

    For ``OneHot`` this is ``Categorical(logits=scores)`` in one-hot form (the Gumbel-max trick).

    Args:
        scores: ``(*batch, *event)`` floating tensor, as the structure reads it.
        structure: what is chosen, e.g. ``pickgrad.Subset(3)``.
        mask: optional bool tensor broadcastable to ``scores``, True = allowed: the law of the
            structure restricted to the solutions avoiding masked entries (``scores`` then holds
            ``-inf`` there, as it may hold itself); masked entries have probability 0, are
            never sampled and get exactly zero gradient.
        validate_args: as in ``torch.distributions``: check arguments and, in ``log_prob``, that
            the value is a solution of the structure.

    Shapes: ``batch_shape = scores.shape[:-event_dims]``, ``event_shape`` the rest; ``sample``
    and ``rsample`` return ``(*sample_shape, *batch_shape, *event_shape)``.

    Reference: Papandreou & Yuille, "Perturb-and-MAP random fields", ICCV 2011.

    Example:
        >>> import torch, pickgrad
        >>> from pickgrad.distributions import PerturbAndMAP
        >>> law = PerturbAndMAP(torch.tensor([2.0, 0.0, 1.0]), pickgrad.OneHot())
        >>> law.mode
        tensor([1., 0., 0.])
        >>> law.log_prob(torch.tensor([1.0, 0.0, 0.0])).exp().round(decimals=4)
        tensor(0.6652)
        >>> scores = torch.zeros(5, requires_grad=True)
        >>> x = PerturbAndMAP(scores, pickgrad.Subset(2)).rsample((4,), estimator="st-gumbel")
        >>> x.shape, x.sum(-1)
        (torch.Size([4, 5]), tensor([2., 2., 2., 2.], grad_fn=<SumBackward1>))
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 (torch's convention)
    has_rsample = True

    def __init__(
        self,
        scores: Tensor,
        structure: Structure,
        *,
        mask: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(structure, Structure):
            raise TypeError(
                f"structure must be a pickgrad Structure such as pickgrad.OneHot(), got "
                f"{type(structure).__name__}"
            )
        scores = structure.mask_scores(scores, mask)
        self.scores = scores
        self.structure = structure
        cut = scores.dim() - structure.event_dims
        super().__init__(
            batch_shape=scores.shape[:cut],
            event_shape=scores.shape[cut:],
            validate_args=validate_args,
        )

    @property
    def support(self) -> constraints.Constraint:
        return _StructureSupport(self.structure)

    def expand(self, batch_shape: Any, _instance: PerturbAndMAP | None = None) -> PerturbAndMAP:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(PerturbAndMAP, _instance)
        new.scores = self.scores.expand(*batch_shape, *self.event_shape)
        new.structure = self.structure
        super(PerturbAndMAP, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        result: PerturbAndMAP = new
        return result

    def _extended(self, sample_shape: Any) -> Tensor:
        shape = torch.Size(sample_shape)
        return self.scores.expand(*shape, *self.scores.shape)

    def sample(self, sample_shape: Any = (), *, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``argmax(scores + G)``, without gradient."""
        with torch.no_grad():
            scores = self._extended(sample_shape).detach()
            noise = sample_gumbel(
                scores.shape, dtype=scores.dtype, device=scores.device, generator=generator
            )
            return self.structure._argmax(scores + noise)

    def rsample(
        self,
        sample_shape: Any = (),
        *,
        estimator: str | Estimator = "st-gumbel",
        tau: float = 1.0,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> Tensor:
        """Samples whose gradient with respect to ``scores`` is ``estimator``'s.

        Any pathwise estimator of :func:`pickgrad.select` works (``st-gumbel``, ``gumbel-rao``,
        ``gumbel-relaxed``, ``imle``, ...); ``tau`` and ``options`` are passed to it. The
        forward value is hard for every estimator whose ``hard`` attribute is True.
        """
        return select(
            self._extended(sample_shape),
            self.structure,
            estimator,
            tau=tau,
            generator=generator,
            **options,
        )

    @property
    def mode(self) -> Tensor:
        """The most probable solution, ``argmax(scores)`` (Gumbel noise has its mode at 0)."""
        return self.structure.argmax(self.scores)

    def _require_closed_form(self, what: str) -> None:
        if not self.structure.supports("perturb_log_prob"):
            raise NotImplementedError(
                f"{what} of the perturb-and-MAP law needs it in closed form, which "
                f"{self.structure!r} does not have (structure.supports('perturb_log_prob') is "
                "False); sample() and rsample() are exact"
            )

    def log_prob(self, value: Tensor) -> Tensor:
        """``log P(argmax(scores + G) = value)``, shape ``(*sample, *batch)``; exact where defined."""
        self._require_closed_form("log_prob")
        if self._validate_args:
            self._validate_sample(value)
        scores = self.scores.expand(value.shape)
        return self.structure._perturb_log_prob(scores, value.to(scores.dtype))

    def _enumerated_log_probs(self) -> tuple[Tensor, Tensor]:
        """Every solution ``(count, *event)`` and its log-probability ``(count, *batch)``."""
        solutions = self.structure.enumerate(
            tuple(self.event_shape), dtype=self.scores.dtype, device=self.scores.device
        )
        if solutions.shape[0] > ENUMERATION_LIMIT:
            raise NotImplementedError(
                f"{self.structure!r} has {solutions.shape[0]} solutions of event shape "
                f"{tuple(self.event_shape)}, more than the {ENUMERATION_LIMIT} summed over"
            )
        view = (solutions.shape[0], *(1,) * len(self.batch_shape), *self.event_shape)
        shaped = solutions.reshape(view).expand(solutions.shape[0], *self.scores.shape)
        scores = self.scores.expand(shaped.shape)
        return solutions, self.structure._perturb_log_prob(scores, shaped)

    def entropy(self) -> Tensor:
        """``-sum_x P(x) log P(x)``, shape ``batch_shape``, summed exactly over every solution."""
        self._require_closed_form("entropy")
        _, log_probs = self._enumerated_log_probs()
        # Impossible solutions (masked entries) add 0, with no NaN from 0 * -inf.
        possible = log_probs > -math.inf
        zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
        safe = torch.where(possible, log_probs, zero)
        return -torch.where(possible, safe.exp() * safe, zero).sum(0)

    @property
    def mean(self) -> Tensor:
        """``E[X] = sum_x P(x) x``, shape ``(*batch, *event)`` (for OneHot: ``softmax(scores)``)."""
        self._require_closed_form("mean")
        solutions, log_probs = self._enumerated_log_probs()
        probs = log_probs.exp().reshape(solutions.shape[0], -1)
        flat = solutions.reshape(solutions.shape[0], -1)
        return (probs.T @ flat).reshape(self.scores.shape)

    def __repr__(self) -> str:
        return (
            f"PerturbAndMAP(structure={self.structure!r}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )
