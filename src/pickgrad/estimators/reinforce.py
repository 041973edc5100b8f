"""Score-function (REINFORCE) estimators with baselines."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad.estimators.base import Estimator, LossFn, evaluate_loss, register_estimator
from pickgrad.noise import sample_gumbel
from pickgrad.structures.base import Structure

__all__ = ["BASELINES", "Reinforce"]

BASELINES = ("none", "ema", "batch", "rloo")


def _sum_to(tensor: Tensor, ndim: int) -> Tensor:
    """Sum the trailing dimensions of ``tensor`` until it has ``ndim`` dimensions."""
    return tensor.sum(dim=tuple(range(ndim, tensor.dim()))) if tensor.dim() > ndim else tensor


@register_estimator
class Reinforce(Estimator):
    """``reinforce``: the score-function estimator of ``d E[loss(x)] / d scores``.

    Samples ``x = argmax(scores + G)`` and forms::

        grad  ~  mean_i (loss(x_i) - b_i) * d log p(x_i; scores) / d scores

    where ``log p`` is the exact ``structure.perturb_log_prob`` when the structure has one (for
    ``OneHot``, ``log softmax(scores)[x]``) and otherwise the log-density of the Gumbel utilities
    ``u = scores + G`` (``log q(u) = sum -(u - scores) - exp(-(u - scores))``), which is
    unbiased for every structure but noisier.

    Baselines ``b_i``, each independent of draw i so the estimator stays unbiased:

    * ``"none"``: ``b = 0``;
    * ``"ema"``: an exponential moving average of the mean loss of earlier calls on this
      object (``b = 0`` on the first call). Keep the estimator object between steps, e.g.
      ``est = Reinforce(baseline="ema")``; a name string makes a fresh object every call;
    * ``"batch"``: the mean loss of every other draw in the call, over samples and batch entries
      (needs at least two losses);
    * ``"rloo"``: leave-one-out over ``n_samples`` for each batch entry (needs ``n_samples >= 2``;
      Kool et al. 2019).

    Only usable through :func:`pickgrad.estimate`, which supplies the loss.

    Reference: Williams, "Simple statistical gradient-following algorithms", 1992.
    """

    name: ClassVar[str] = "reinforce"
    needs: ClassVar[tuple[str, ...]] = ("argmax",)
    needs_loss: ClassVar[bool] = True

    def __init__(self, baseline: str = "none", *, ema_decay: float = 0.9) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.baseline = baseline
        self.ema_decay = ema_decay
        self.ema: float | None = None

    def log_density(self, scores: Tensor, structure: Structure, x: Tensor, noise: Tensor) -> Tensor:
        """Differentiable ``log p(x; scores)`` per sample, shape ``(n_samples, *batch)``."""
        if structure.supports("perturb_log_prob"):
            return structure._perturb_log_prob(scores, x)
        gap = noise.detach()  # u - scores at the sampled utilities u, held fixed
        z = gap + scores.detach() - scores  # equals the noise, differentiable in scores
        log_q = -z - torch.exp(-z)
        mask = structure.active_mask(structure.event_shape(scores), scores.device)
        if mask is not None:
            log_q = log_q * mask
        return log_q.sum(dim=tuple(range(-structure.event_dims, 0)))

    def baseline_values(self, losses: Tensor) -> Tensor | float:
        """Baselines for ``losses`` of shape ``(n_samples, *batch)``, without gradient."""
        losses = losses.detach()
        if self.baseline == "none":
            return 0.0
        if self.baseline == "ema":
            return 0.0 if self.ema is None else self.ema
        if self.baseline == "batch":
            count = losses.numel()
            if count < 2:
                raise ValueError("baseline='batch' needs at least two losses (n_samples x batch)")
            return (losses.sum() - losses) / (count - 1)
        n_samples = losses.shape[0]
        if n_samples < 2:
            raise ValueError(f"baseline='rloo' needs n_samples >= 2, got n_samples={n_samples}")
        return (losses.sum(0, keepdim=True) - losses) / (n_samples - 1)

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
        expanded = scores.expand(n_samples, *scores.shape)
        noise = sample_gumbel(
            expanded.shape, dtype=scores.dtype, device=scores.device, generator=generator
        )
        with torch.no_grad():
            x = structure._argmax(expanded.detach() + noise)
        batch_shape = tuple(scores.shape[: scores.dim() - structure.event_dims])
        losses = evaluate_loss(loss_fn, x, n_samples, batch_shape)
        log_p = _sum_to(self.log_density(expanded, structure, x, noise), losses.dim())
        advantage = losses.detach() - self.baseline_values(losses)
        if self.baseline == "ema":
            mean = float(losses.detach().float().mean())
            self.ema = (
                mean
                if self.ema is None
                else self.ema_decay * self.ema + (1 - self.ema_decay) * mean
            )
        # Value: the mean loss (the score term is zero in value); gradient: the score function.
        score_term = advantage * (log_p - log_p.detach())
        return losses.mean() + score_term.mean()

    def _options(self) -> dict[str, Any]:
        return {"baseline": self.baseline}
