"""Gumbel-perturbed estimators: Gumbel-softmax (soft and straight-through) and Gumbel-Rao.

With standard Gumbel noise ``G``, ``argmax(scores + G)`` is a perturb-and-MAP sample; for
``OneHot`` it is an exact sample of ``softmax(scores)`` (the Gumbel-max trick). These estimators
replace the argmax by ``relax(scores + G, tau)`` in the backward pass (stochastic softmax tricks,
Paulus et al. 2020); for ``OneHot`` that is the Gumbel-softmax / Concrete relaxation
(Jang et al. 2017; Maddison et al. 2017).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad.estimators.base import (
    RelaxingEstimator,
    option_positive_int,
    register_estimator,
    replace_gradient,
)
from pickgrad.noise import sample_gumbel
from pickgrad.structures.base import Structure

__all__ = ["GumbelRao", "GumbelRelaxed", "StraightThroughGumbel"]


def _gumbel_like(scores: Tensor, generator: torch.Generator | None) -> Tensor:
    return sample_gumbel(
        scores.shape, dtype=scores.dtype, device=scores.device, generator=generator
    )


@register_estimator
class GumbelRelaxed(RelaxingEstimator):
    """``gumbel-relaxed``: ``relax(scores + G, tau)``, forward and backward; the output is not hard.

    For ``OneHot`` this is the (soft) Gumbel-softmax / Concrete sample (Jang et al. 2017;
    Maddison et al. 2017), so ``gumbel-softmax`` and ``concrete`` are aliases of this estimator.
    PyTorch's ``F.gumbel_softmax(logits, tau)`` is this estimator on ``OneHot``;
    ``F.gumbel_softmax(logits, tau, hard=True)`` is ``st-gumbel``.

    Args:
        **relax_options: options of ``structure.relax`` (``regularizer``; ``max_iter``, ``tol``
            for ``Permutation``; see the structure's ``relax_option_names``).
    """

    name: ClassVar[str] = "gumbel-relaxed"
    aliases: ClassVar[tuple[str, ...]] = ("gumbel-softmax", "concrete")
    needs: ClassVar[tuple[str, ...]] = ("relax",)
    hard: ClassVar[bool] = False

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        return self.relax(structure, scores + _gumbel_like(scores, generator), tau)


@register_estimator
class StraightThroughGumbel(RelaxingEstimator):
    """``st-gumbel``: forward ``argmax(scores + G)``, backward through ``relax(scores + G, tau)``.

    Straight-through Gumbel-softmax for ``OneHot`` (PyTorch's
    ``F.gumbel_softmax(hard=True)``). Biased for tau > 0; the bias shrinks and the variance grows
    as tau -> 0.

    Args:
        **relax_options: options of ``structure.relax`` (``regularizer``; ``max_iter``, ``tol``
            for ``Permutation``; see the structure's ``relax_option_names``).
    """

    name: ClassVar[str] = "st-gumbel"

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        fused = structure._perturb_argmax_relax(scores, tau, generator, **self.relax_options)
        if fused is not None:
            return fused
        perturbed = scores + _gumbel_like(scores, generator)
        hard = structure._argmax(perturbed.detach())
        return replace_gradient(hard, self.relax(structure, perturbed, tau))


@register_estimator
class GumbelRao(RelaxingEstimator):
    """``gumbel-rao``: straight-through Gumbel, Rao-Blackwellised over the noise given the argmax.

    Forward ``x = argmax(scores + G)``. Backward: the mean over K draws ``G_k`` of the Gumbel noise
    conditional on ``argmax(scores + G_k) = x`` of the straight-through Gumbel gradient::

        dx/dscores  ~  (1/K) sum_k  d relax(scores + G_k, tau) / dscores

    The conditional draws are held fixed (no gradient flows through the sampler), exactly as the
    straight-through Gumbel estimator holds its noise fixed: the estimator is
    ``E[ST-Gumbel gradient | x]``, so it has the same mean and, by Rao-Blackwell, no larger
    variance. With K = 1, ``(x, G_1)`` has the joint law of ``(x, G)``, so the estimator is equal
    in distribution to ``st-gumbel``.

    Needs ``structure.conditional_gumbel``. Masked entries (``-inf`` scores, or ``mask=``) get
    ``-inf`` conditional noise, so ``scores + G_k`` stays ``-inf`` there and the relaxation gives
    them exactly zero gradient.

    Args:
        n_draws: K, the number of conditional draws (time grows linearly in K; so does memory,
            except on the fused OneHot path, which redraws the K points in the backward pass
            from a saved seed, tile by tile, and keeps nothing K x n).
        **relax_options: options of ``structure.relax`` (``regularizer``; ``max_iter``, ``tol``
            for ``Permutation``; see the structure's ``relax_option_names``).

    Reference: Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
    Gradient Estimator", ICLR 2021.
    """

    name: ClassVar[str] = "gumbel-rao"
    needs: ClassVar[tuple[str, ...]] = ("argmax", "relax", "conditional_gumbel")

    def __init__(self, n_draws: int = 10, **relax_options: Any) -> None:
        super().__init__(**relax_options)
        self.n_draws = option_positive_int(n_draws, "n_draws", self.name)

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        detached = scores.detach()
        forward_noise = _gumbel_like(detached, generator)
        hard = structure._argmax(detached + forward_noise)
        fused = structure._conditional_mean_relax(
            scores, hard, self.n_draws, tau, generator, **self.relax_options
        )
        if fused is not None:
            return fused
        # The forward noise is itself a draw of the conditional law given ``hard``: a Markov
        # chain sampler started there needs no burn-in.
        noise = structure._conditional_gumbel(
            detached, hard, self.n_draws, generator, start=forward_noise
        )
        soft = self.relax(structure, scores + noise, tau).mean(0)
        return replace_gradient(hard, soft)

    def _options(self) -> dict[str, Any]:
        return {"n_draws": self.n_draws, **super()._options()}
