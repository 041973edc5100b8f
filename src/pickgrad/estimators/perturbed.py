"""Perturbed optimizers: the argmax smoothed by additive noise, differentiated by Monte Carlo.

For a structure with exact solver ``y(s) = argmax_x <s, x>`` and noise ``Z`` of density
``mu(z) ∝ exp(-nu(z))``, the perturbed maximiser and the perturbed max are::

    y_sigma(s) = E[ y(s + sigma Z) ]              (a point of the convex hull)
    F_sigma(s) = E[ max_x <s + sigma Z, x> ]      (convex, with gradient y_sigma(s))

and the Jacobian of ``y_sigma`` needs nothing but the solver (integration by parts)::

    J y_sigma(s) = E[ y(s + sigma Z) grad nu(Z)^T ] / sigma

    Gumbel:  nu(z) = z + exp(-z),  grad nu(z) = 1 - exp(-z)
    Normal:  nu(z) = |z|^2 / 2,    grad nu(z) = z

For ``OneHot`` with Gumbel noise, ``y_sigma(s) = softmax(s / sigma)`` exactly.

Reference: Berthet, Blondel, Teboul, Cuturi, Vert & Bach, "Learning with Differentiable
Perturbed Optimizers", NeurIPS 2020.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from pickgrad._autograd import apply as apply_function
from pickgrad._validation import compute_dtype, value_checks_enabled
from pickgrad.estimators.base import (
    Estimator,
    option_bool,
    option_choice,
    option_positive_int,
    option_positive_real,
    register_estimator,
)
from pickgrad.noise import sampling_dtype
from pickgrad.structures.base import Structure

__all__ = ["PERTURBED_NOISES", "Perturbed", "check_noise_scale", "perturbed_samples"]

#: Noise laws of the perturbed optimizer and the Fenchel-Young loss.
PERTURBED_NOISES = ("gumbel", "normal")


def check_noise(noise: Any) -> str:
    """Return ``noise`` after checking it is one of :data:`PERTURBED_NOISES`."""
    if noise not in PERTURBED_NOISES:
        raise ValueError(f"noise must be one of {PERTURBED_NOISES}, got {noise!r}")
    result: str = noise
    return result


def check_noise_scale(scores: Tensor, sigma: float, option: str, estimator: str) -> None:
    """Raise ``ValueError`` if the noise scale ``sigma`` is too small for ``scores``.

    Two limits: ``max |scores| / sigma`` must fit the compute dtype (a value check: it reads the
    scores), and ``1 / sigma``, the factor of the backward pass, must fit the dtype of
    ``scores``, in which the gradient is returned (always checked: it reads no tensor).
    """
    out_limit = torch.finfo(scores.dtype).max
    if 1.0 / sigma >= out_limit:
        raise ValueError(
            f"{option}={sigma!r} of estimator {estimator!r} is too small for {scores.dtype} "
            f"scores: the gradient is divided by {option} and 1 / {option} overflows "
            f"{scores.dtype} (largest finite value {out_limit:.3g}); use a larger {option}"
        )
    if not value_checks_enabled() or scores.numel() == 0:
        return
    work = compute_dtype(scores.dtype)
    limit = torch.finfo(work).max
    detached = scores.detach()
    largest = float(detached.masked_fill(detached == -math.inf, 0.0).abs().max())  # -inf: masked
    if largest / sigma >= limit:
        raise ValueError(
            f"{option}={sigma!r} of estimator {estimator!r} is too small for these scores: "
            f"max |scores| / {option} = {largest:.3g} / {sigma!r} overflows {work} "
            f"(largest finite value {limit:.3g}); use a larger {option}"
        )


def sample_noise(
    noise: str,
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """Standard ``"gumbel"`` or ``"normal"`` noise of the given shape.

    Gumbel noise is drawn as ``-log(-log U)`` from uniforms: the law of :func:`sample_gumbel`
    (another stream), about 4x cheaper on the CPU, where torch's ``exponential_`` behind it is
    about 7x slower than ``rand``; the M perturbations of ``perturbed`` make this draw the
    largest part of its forward pass at small sizes (2.2 of 7 ms at 100 x 128 x 10).
    """
    if noise == "gumbel":
        tiny = torch.finfo(dtype).tiny
        uniform = torch.rand(shape, dtype=dtype, device=device, generator=generator)
        # U < 1, and U = 0 is clamped to tiny: E = -log U is positive and finite, and so is G.
        return uniform.clamp_min_(tiny).log_().neg_().clamp_min_(tiny).log_().neg_()
    return torch.randn(shape, dtype=dtype, device=device, generator=generator)


def noise_log_density_gradient(noise: str, z: Tensor) -> Tensor:
    """``grad nu(z) = -grad log mu(z)`` for the noise density ``mu``, entrywise."""
    if noise == "gumbel":
        return 1.0 - torch.exp(-z)
    return z


def perturbed_samples(
    scores: Tensor,
    structure: Structure,
    *,
    sigma: float,
    n_perturbations: int,
    noise: str,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Draw ``Z_m`` and solve ``y_m = argmax(scores + sigma Z_m)`` for m = 1..M (no gradient).

    Args:
        scores: ``(*batch, *event)``, already validated.
        structure: the solver.
        sigma: noise scale > 0.
        n_perturbations: M.
        noise: ``"gumbel"`` or ``"normal"``.
        generator: source of the noise.

    Returns:
        ``(y, z)``, both ``(M, *batch, *event)`` in the sampling dtype (float32 for half types).
    """
    work = sampling_dtype(scores.dtype)
    detached = scores.detach().to(work)
    z = sample_noise(
        noise,
        (n_perturbations, *detached.shape),
        dtype=work,
        device=detached.device,
        generator=generator,
    )
    with torch.no_grad():
        y = structure._argmax(detached + sigma * z)
    return y, z


class _PerturbedJacobian(torch.autograd.Function):
    """Forward: the mean of the samples (or the first one); backward: the Monte Carlo JVP.

    Plain torch ops in the forward / setup_context / backward form, so vmap and torch.func
    work on it (``generate_vmap_rule``); the backward is once differentiable (the Monte Carlo
    estimate has no meaningful second derivative).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        scores: Tensor,
        samples: Tensor,
        weights: Tensor,
        sigma: float,
        mask: Tensor | None,
        event_dims: int,
        hard: bool,
    ) -> Tensor:
        value = samples[0].clone() if hard else samples.mean(0)
        return value.to(scores.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        scores, samples, weights, sigma, mask, event_dims, _ = inputs
        ctx.save_for_backward(samples, weights, scores)
        ctx.sigma, ctx.mask, ctx.event_dims, ctx.dtype = sigma, mask, event_dims, scores.dtype

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        samples, weights, scores = ctx.saved_tensors
        event = tuple(range(-ctx.event_dims, 0))
        # <y_m, g> per sample, times grad nu(Z_m), averaged: J^T g = E[<y, g> grad nu(Z)] / sigma.
        inner = (samples * grad.to(samples.dtype)).sum(event, keepdim=True)
        result = (inner * weights).mean(0) / ctx.sigma
        if ctx.mask is not None:
            result = result * ctx.mask
        # Masked (-inf) scores: never in a sample, so no gradient (the noise term would give one).
        zero = torch.zeros((), dtype=result.dtype, device=result.device)
        result = torch.where(scores == -math.inf, zero, result)
        return result.to(ctx.dtype), None, None, None, None, None, None


@register_estimator
class Perturbed(Estimator):
    """``perturbed``: the perturbed maximiser ``y_sigma(s)`` with its Monte Carlo Jacobian.

    Forward (default, ``hard=False``): the Monte Carlo estimate of the perturbed maximiser, a
    point of the convex hull, **not** a hard solution::

        x = (1/M) sum_m argmax(scores + sigma Z_m)

    With ``hard=True`` the forward is the single hard sample ``argmax(scores + sigma Z_1)``
    instead; the backward is the same. Backward (Berthet et al. 2020, Prop. 3.1), with the same
    ``Z_m`` as the forward::

        dL/dscores = (1 / (M sigma)) sum_m <argmax(scores + sigma Z_m), dL/dx> grad nu(Z_m)

    where ``grad nu(z) = 1 - exp(-z)`` for Gumbel and ``z`` for Normal noise. It is an
    unbiased estimate of ``J y_sigma(s)^T dL/dx``; the solver is never differentiated. Score
    entries the structure ignores (``structure.active_mask``) get zero gradient.

    For ``OneHot`` with Gumbel noise ``y_sigma(s) = softmax(s / sigma)``, so this estimator is a
    Monte Carlo version of ``relaxed`` at ``tau = sigma``; with ``hard=True`` and a loss linear
    in x, it is unbiased for ``d E[loss(x)] / d scores`` under the law of ``argmax(s + sigma Z)``
    (for other losses it is biased like ``st-gumbel``: ``dL/dx`` is taken at one sample).
    The default soft forward makes the loss see ``y_sigma(s)``, not a hard x: it is the
    gradient of ``loss(y_sigma(s))``, a different objective from ``E[loss(x)]``.

    Args:
        n_perturbations: M, the number of noise draws (independent of ``estimate``'s
            ``n_samples``; time and memory grow linearly in M).
        sigma: noise scale > 0; ``None`` (default) uses the ``tau`` given to ``select`` or
            ``estimate``, so that temperature schedules apply.
        noise: ``"gumbel"`` (default) or ``"normal"``.
        hard: return one hard sample in the forward pass instead of the mean.

    Shapes: scores ``(*batch, *event)`` -> x ``(*batch, *event)``.

    Reference: Berthet, Blondel, Teboul, Cuturi, Vert & Bach, "Learning with Differentiable
    Perturbed Optimizers", NeurIPS 2020.

    Example:
        >>> import pickgrad
        >>> scores = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
        >>> gen = torch.Generator().manual_seed(0)
        >>> y = pickgrad.select(scores, pickgrad.OneHot(), "perturbed", n_perturbations=10000,
        ...                     generator=gen)
        >>> bool(torch.allclose(y, torch.softmax(scores, -1), atol=0.02))
        True
    """

    name: ClassVar[str] = "perturbed"
    needs: ClassVar[tuple[str, ...]] = ("argmax",)
    hard: ClassVar[bool] = False

    def __init__(
        self,
        n_perturbations: int = 100,
        *,
        sigma: float | None = None,
        noise: str = "gumbel",
        hard: bool = False,
    ) -> None:
        self.n_perturbations = option_positive_int(n_perturbations, "n_perturbations", self.name)
        self.sigma = None if sigma is None else option_positive_real(sigma, "sigma", self.name)
        self.noise = option_choice(noise, "noise", self.name, PERTURBED_NOISES)
        self.hard = option_bool(hard, "hard", self.name)  # type: ignore[misc]  # overrides the class default

    @property
    def uses_tau(self) -> bool:
        """True when ``sigma`` is None: the noise scale is then the ``tau`` of the call."""
        return self.sigma is None

    def check_values(self, scores: Tensor, tau: float) -> None:
        """``scores / sigma`` (and ``1 / sigma``, the backward's factor) must fit the dtype."""
        if self.sigma is None:
            check_noise_scale(scores, tau, "tau", self.name)
        else:
            check_noise_scale(scores, self.sigma, "sigma", self.name)

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        sigma = tau if self.sigma is None else self.sigma
        samples, z = perturbed_samples(
            scores,
            structure,
            sigma=sigma,
            n_perturbations=self.n_perturbations,
            noise=self.noise,
            generator=generator,
        )
        weights = noise_log_density_gradient(self.noise, z)
        mask = structure.active_mask(structure.event_shape(scores), scores.device)
        result: Tensor = apply_function(
            _PerturbedJacobian,
            scores,
            samples,
            weights,
            sigma,
            mask,
            structure.event_dims,
            self.hard,
        )
        return result

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"n_perturbations": self.n_perturbations}
        if self.sigma is not None:
            options["sigma"] = self.sigma
        if self.noise != "gumbel":
            options["noise"] = self.noise
        if self.hard:
            options["hard"] = True
        return options
