"""Score-function (REINFORCE) estimators with baselines, including NVIL's learned baseline."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._validation import value_checks_enabled
from pickgrad.estimators.base import (
    Estimator,
    LossFn,
    evaluate_loss,
    option_bool,
    option_choice,
    option_fraction,
    register_estimator,
)
from pickgrad.noise import sample_gumbel
from pickgrad.structures.base import Structure

__all__ = ["BASELINES", "BASELINE_CHOICES", "Reinforce"]

#: The baselines computed from the losses alone (every one works with no extra input).
BASELINES = ("none", "ema", "batch", "rloo")

#: Every ``baseline`` option: :data:`BASELINES` and ``"learned"`` (needs ``baseline_values``).
BASELINE_CHOICES = (*BASELINES, "learned")

_STATE_KEYS = ("ema", "ema_started", "signal_mean", "signal_var", "signal_started")


def _sum_to(tensor: Tensor, ndim: int) -> Tensor:
    """Sum the trailing dimensions of ``tensor`` until it has ``ndim`` dimensions."""
    return tensor.sum(dim=tuple(range(ndim, tensor.dim()))) if tensor.dim() > ndim else tensor


def _state_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _leave_one_out_mean(losses: Tensor, finite: Tensor, dim: int | None) -> Tensor:
    """Mean of the *other* finite losses, over ``dim`` (every entry when None); 0 if none."""
    kept = torch.where(finite, losses, torch.zeros_like(losses))
    weight = finite.to(losses.dtype)
    if dim is None:
        total, count = kept.sum(), weight.sum()
    else:
        total, count = kept.sum(dim, keepdim=True), weight.sum(dim, keepdim=True)
    others = count - weight
    mean = (total - kept) / others.clamp_min(1)
    return torch.where(others > 0, mean, torch.zeros_like(mean))


def _moving_average(
    average: Tensor, started: Tensor, new: Tensor, valid: Tensor, decay: float
) -> tuple[Tensor, Tensor]:
    """One step of ``a <- decay a + (1 - decay) new`` (``a <- new`` on the first valid step).

    Nothing changes where ``valid`` is False, so non-finite batches never enter the average.
    """
    updated = torch.where(started, decay * average + (1 - decay) * new, new)
    return torch.where(valid, updated, average), started | valid


@register_estimator
class Reinforce(Estimator):
    r"""``reinforce``: the score-function estimator of ``d E[loss(x)] / d scores``.

    Samples ``x = argmax(scores + G)`` and forms::

        grad  ~  mean_i A_i * d log p(x_i; scores) / d scores,   A_i = loss(x_i) - b_i

    where ``log p`` is the exact ``structure.perturb_log_prob`` when the structure has one (for
    ``OneHot``, ``log softmax(scores)[x]``) and otherwise the log-density of the Gumbel utilities
    ``u = scores + G`` (``log q(u) = sum -(u - scores) - exp(-(u - scores))``), which is
    unbiased for every structure but noisier.

    Baselines ``b_i``, each independent of draw i so the estimator stays unbiased
    (``E[b d log p] = b E[d log p] = 0``):

    * ``"none"``: ``b = 0``;
    * ``"ema"``: an exponential moving average (decay ``ema_decay``) of the mean loss of earlier
      calls on this object (``b = 0`` on the first call). Keep the estimator object between
      steps, e.g. ``est = Reinforce(baseline="ema")``; a name string makes a fresh object every
      call (and warns once);
    * ``"batch"``: the mean loss of every other draw in the call, over samples and batch entries
      (needs at least two losses);
    * ``"rloo"``: leave-one-out over ``n_samples`` for each batch entry (needs ``n_samples >= 2``;
      Kool et al. 2019);
    * ``"learned"``: NVIL's input-dependent baseline (Mnih & Gregor 2014): ``b`` is the
      ``baseline_values`` tensor given to ``estimate``, produced by the user's network from the
      input (never from the sample x, which would bias the estimate), broadcastable to the
      losses' batch shape ``(*batch)``. The surrogate also trains it: its gradient with respect
      to ``baseline_values`` is that of ``mean((b - loss.detach()) ** 2)`` (the squared error
      of the baseline, averaged over every loss), so one ``backward()`` trains the scores and
      the baseline network together. Its value stays the mean loss.

    ``normalize=True`` adds NVIL's variance normalisation: running averages (decay
    ``ema_decay``) ``c`` and ``v`` of the mean and variance of the centred signal ``loss - b``
    over earlier calls, and the learning signal becomes::

        A_i = (loss(x_i) - b_i - c) / max(1, sqrt(v))

    ``c`` and ``v`` come from earlier calls only (this call's losses update them afterwards), so
    the estimate is unbiased for the exact gradient divided by the current ``max(1, sqrt(v))``:
    a step-size change, the same for every entry (``c = 0``, ``v = 1`` on the first call).

    Non-finite losses are a ``ValueError`` naming ``loss_fn`` (a value check). With value
    checks off (:func:`pickgrad.set_validation`), a NaN or inf loss gets a zero learning signal,
    is left out of every other entry's baseline, and never enters the running averages; only
    the surrogate's value shows it. No running state is ever read back to Python while
    estimating (the state is kept in tensors), so there is no device-to-host sync.

    Only usable through :func:`pickgrad.estimate` (or :meth:`estimate`), which supplies the
    loss.

    Args:
        baseline: one of :data:`BASELINE_CHOICES`.
        ema_decay: decay in [0, 1) of the ``ema`` baseline and of the normalisation averages.
        normalize: divide the learning signal by the running standard deviation (NVIL).

    Shapes: scores ``(*batch, *event)``; ``loss_fn`` returns ``(n_samples, *batch[:m])``;
    ``baseline_values`` broadcastable to ``(*batch[:m])``.

    References: Williams, "Simple statistical gradient-following algorithms", 1992; Mnih &
    Gregor, "Neural Variational Inference and Learning in Belief Networks", ICML 2014 (NVIL).

    Example:
        >>> import pickgrad
        >>> nvil = pickgrad.Reinforce(baseline="learned", normalize=True)  # keep the object
        >>> scores = torch.zeros(8, 3, requires_grad=True)
        >>> b = torch.full((8,), 0.5, requires_grad=True)  # a network's output in practice
        >>> surrogate = nvil.estimate(lambda x: x[..., 0], scores, pickgrad.OneHot(),
        ...     n_samples=4, tau=1.0, generator=torch.Generator().manual_seed(0),
        ...     baseline_values=b)
        >>> surrogate.backward()
        >>> scores.grad.shape, b.grad.shape, nvil.running_mean is not None
        (torch.Size([8, 3]), torch.Size([8]), True)
    """

    name: ClassVar[str] = "reinforce"
    needs: ClassVar[tuple[str, ...]] = ("argmax",)
    needs_loss: ClassVar[bool] = True

    def __init__(
        self, baseline: str = "none", *, ema_decay: float = 0.9, normalize: bool = False
    ) -> None:
        self.baseline = option_choice(baseline, "baseline", self.name, BASELINE_CHOICES)
        self.ema_decay = option_fraction(ema_decay, "ema_decay", self.name)
        self.normalize = option_bool(normalize, "normalize", self.name)
        self._state: dict[str, Tensor] = {}

    # --- state ------------------------------------------------------------------------------

    @property
    def stateful(self) -> bool:
        return self.baseline == "ema" or self.normalize

    @property
    def takes_baseline_values(self) -> bool:
        return self.baseline == "learned"

    def _read(self, key: str, started: str) -> float | None:
        if key not in self._state or not bool(self._state[started]):
            return None
        return float(self._state[key])

    @property
    def ema(self) -> float | None:
        """The ``ema`` baseline (None before any finite loss was seen); reads the device."""
        return self._read("ema", "ema_started")

    @property
    def running_mean(self) -> float | None:
        """NVIL's running mean ``c`` of the centred signal, or None before the first update."""
        return self._read("signal_mean", "signal_started")

    @property
    def running_std(self) -> float | None:
        """NVIL's running standard deviation ``sqrt(v)``, or None before the first update."""
        var = self._read("signal_var", "signal_started")
        return None if var is None else var**0.5

    def state_dict(self) -> dict[str, Tensor]:
        """The running state (0-dim tensors; empty before the first call), for checkpoints.

        Distributed training can average these tensors across processes.
        """
        return {key: value.clone() for key, value in self._state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        unknown = [key for key in state if key not in _STATE_KEYS]
        if unknown:
            raise ValueError(
                f"unknown keys {unknown} in the state of {self!r}; expected some of {_STATE_KEYS}"
            )
        for key, value in state.items():
            if not isinstance(value, Tensor) or value.dim() != 0:
                raise TypeError(f"state[{key!r}] must be a 0-dim tensor, got {value!r}")
        self._state = {key: value.clone() for key, value in state.items()}

    def _get_state(self, key: str, started: str, device: torch.device) -> tuple[Tensor, Tensor]:
        if key not in self._state:
            self._state[key] = torch.zeros((), dtype=_state_dtype(device), device=device)
            self._state[started] = torch.zeros((), dtype=torch.bool, device=device)
        return self._state[key], self._state[started]

    # --- estimator --------------------------------------------------------------------------

    def log_density(self, scores: Tensor, structure: Structure, x: Tensor, noise: Tensor) -> Tensor:
        """Differentiable ``log p(x; scores)`` per sample, shape ``(n_samples, *batch)``."""
        if structure.supports("perturb_log_prob"):
            return structure._perturb_log_prob(scores, x)
        gap = noise.detach()  # u - scores at the sampled utilities u, held fixed
        z = gap + scores.detach() - scores  # equals the noise, differentiable in scores
        # A masked (-inf) score's utility is -inf whatever its noise: no density term there,
        # and no NaN from -inf - -inf (in value or gradient).
        z = torch.where(scores == -math.inf, torch.zeros((), dtype=z.dtype), z)
        log_q = -z - torch.exp(-z)
        mask = structure.active_mask(structure.event_shape(scores), scores.device)
        if mask is not None:
            log_q = log_q * mask
        return log_q.sum(dim=tuple(range(-structure.event_dims, 0)))

    def compute_baselines(
        self, losses: Tensor, baseline_values: Tensor | None = None
    ) -> Tensor | float:
        """Baselines for ``losses`` of shape ``(n_samples, *batch)``, without gradient.

        Non-finite losses are left out of the other entries' baselines.
        """
        losses = losses.detach()
        if self.baseline == "none":
            return 0.0
        if self.baseline == "learned":
            if baseline_values is None:
                raise TypeError("baseline='learned' needs baseline_values")
            return baseline_values.detach().to(losses.dtype)
        if self.baseline == "ema":
            if "ema" not in self._state:
                return 0.0
            ema, started = self._state["ema"], self._state["ema_started"]
            return torch.where(started, ema, torch.zeros_like(ema)).to(losses.dtype)
        finite = torch.isfinite(losses)
        if self.baseline == "batch":
            if losses.numel() < 2:
                raise ValueError(
                    f"baseline='batch' needs at least two losses (n_samples x batch), "
                    f"got losses shaped {tuple(losses.shape)}"
                )
            return _leave_one_out_mean(losses, finite, None)
        n_samples = losses.shape[0]
        if n_samples < 2:
            raise ValueError(f"baseline='rloo' needs n_samples >= 2, got n_samples={n_samples}")
        return _leave_one_out_mean(losses, finite, 0)

    def _check_baseline_values(self, baseline_values: Any, losses: Tensor) -> Tensor:
        if not isinstance(baseline_values, Tensor) or not baseline_values.is_floating_point():
            raise TypeError(
                f"baseline_values must be a floating tensor, got {type(baseline_values).__name__}"
                + (
                    f" of dtype {baseline_values.dtype}"
                    if isinstance(baseline_values, Tensor)
                    else ""
                )
            )
        batch = tuple(losses.shape[1:])
        shape = tuple(baseline_values.shape)
        try:
            fits = torch.broadcast_shapes(shape, batch) == batch
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"baseline_values must broadcast to the losses' batch shape {batch} (losses "
                f"{tuple(losses.shape)} = (n_samples, *batch)), got shape {shape}"
            )
        if baseline_values.device != losses.device:
            raise ValueError(
                f"baseline_values is on {baseline_values.device} but the losses are on "
                f"{losses.device}"
            )
        if value_checks_enabled() and not bool(torch.isfinite(baseline_values.detach()).all()):
            raise ValueError("baseline_values contains NaN or inf; every baseline must be finite")
        return baseline_values

    def _estimate(
        self,
        loss_fn: LossFn,
        scores: Tensor,
        structure: Structure,
        *,
        n_samples: int,
        tau: float,
        generator: torch.Generator | None,
        baseline_values: Tensor | None = None,
    ) -> Tensor:
        expanded = scores.expand(n_samples, *scores.shape)
        # A fused draw gives the sample and its log-probability in one pass, without noise.
        fused = structure._perturb_argmax_log_prob(expanded, generator)
        if fused is None:
            noise = sample_gumbel(
                expanded.shape, dtype=scores.dtype, device=scores.device, generator=generator
            )
            with torch.no_grad():
                x = structure._argmax(expanded.detach() + noise)
            density = self.log_density(expanded, structure, x, noise)
        else:
            x, density = fused
        batch_shape = tuple(scores.shape[: scores.dim() - structure.event_dims])
        losses = evaluate_loss(loss_fn, x, n_samples, batch_shape)
        if baseline_values is not None:
            baseline_values = self._check_baseline_values(baseline_values, losses)
        log_p = _sum_to(density, losses.dim())
        detached = losses.detach()
        finite = torch.isfinite(detached)
        signal = detached - self.compute_baselines(detached, baseline_values)
        advantage = self._normalized(signal, finite) if self.normalize else signal
        if self.baseline == "ema":
            self._update_ema(detached, finite)
        # A non-finite loss gets no learning signal (reached only with value checks off).
        advantage = torch.where(finite, advantage, torch.zeros_like(advantage))
        # Value: the mean loss (the score term is zero in value); gradient: the score function.
        surrogate = losses.mean() + (advantage * (log_p - log_p.detach())).mean()
        if baseline_values is not None:
            residual = baseline_values - detached.to(baseline_values.dtype)
            residual = torch.where(finite, residual, torch.zeros_like(residual))
            fit = residual.square().sum() / residual.numel()
            surrogate = surrogate + (fit - fit.detach()).to(surrogate.dtype)
        return surrogate.to(losses.dtype)  # the dtype of the user's losses

    def _update_ema(self, losses: Tensor, finite: Tensor) -> None:
        ema, started = self._get_state("ema", "ema_started", losses.device)
        count = finite.sum()
        kept = torch.where(finite, losses, torch.zeros_like(losses))
        mean = kept.to(ema.dtype).sum() / count.clamp_min(1)
        self._state["ema"], self._state["ema_started"] = _moving_average(
            ema, started, mean, count > 0, self.ema_decay
        )

    def _normalized(self, signal: Tensor, finite: Tensor) -> Tensor:
        """``(signal - c) / max(1, sqrt(v))`` with the state of earlier calls; then update it."""
        mean, started = self._get_state("signal_mean", "signal_started", signal.device)
        var = self._state.setdefault(
            "signal_var", torch.ones((), dtype=mean.dtype, device=mean.device)
        )
        centre = torch.where(started, mean, torch.zeros_like(mean)).to(signal.dtype)
        scale = torch.where(started, var, torch.ones_like(var)).sqrt().clamp_min(1)
        normalized = (signal - centre) / scale.to(signal.dtype)
        weight = finite.to(mean.dtype)
        count = weight.sum()
        kept = torch.where(finite, signal, torch.zeros_like(signal)).to(mean.dtype)
        batch_mean = kept.sum() / count.clamp_min(1)
        batch_var = ((kept - batch_mean).square() * weight).sum() / count.clamp_min(1)
        valid = count > 0
        new_mean, _ = _moving_average(mean, started, batch_mean, valid, self.ema_decay)
        new_var, new_started = _moving_average(var, started, batch_var, valid, self.ema_decay)
        self._state.update(signal_mean=new_mean, signal_var=new_var, signal_started=new_started)
        return normalized

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"baseline": self.baseline}
        if self.ema_decay != 0.9:
            options["ema_decay"] = self.ema_decay
        if self.normalize:
            options["normalize"] = True
        return options
