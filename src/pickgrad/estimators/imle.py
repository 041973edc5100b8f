"""Implicit maximum likelihood estimation (I-MLE): perturb-and-MAP with a target distribution.

Forward: a perturb-and-MAP sample ``x = argmax(s + eps)``. Backward: the loss gradient ``g``
defines a target ``s' = s - lambda g`` (scores moved towards lower loss), and the gradient is
the difference of the two perturb-and-MAP solutions under the *same* noise::

    dL/ds  ~  (argmax(s + eps) - argmax(s - lambda g + eps)) / lambda

This module also holds the Sum-of-Gamma noise of Niepert et al. and the autograd function shared
with ``blackbox`` (which is the same difference with ``eps = 0``).

Reference: Niepert, Minervini & Franceschi, "Implicit MLE: Backpropagating Through Discrete
Exponential Family Distributions", NeurIPS 2021.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from pickgrad._autograd import apply as apply_function
from pickgrad._validation import check_positive_int
from pickgrad.estimators.base import (
    Estimator,
    LossFn,
    evaluate_loss,
    option_choice,
    option_positive_int,
    option_positive_real,
    register_estimator,
)
from pickgrad.noise import sample_exponential, sample_gumbel, sampling_dtype
from pickgrad.structures.base import Structure

__all__ = [
    "IMLE",
    "IMLE_NOISES",
    "PerSampleEstimator",
    "objective_transpose",
    "sample_standard_gamma",
    "sample_sum_of_gamma",
]

#: Noise laws of ``imle``.
IMLE_NOISES = ("gumbel", "sum-of-gamma")


def sample_standard_gamma(
    shape: tuple[int, ...],
    concentration: float,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gamma(concentration, scale 1) draws from ``generator`` (Marsaglia & Tsang, 2000).

    ``torch.distributions.Gamma`` cannot take a generator, so this is the squeeze-rejection
    sampler, vectorised: every round redraws only the rejected entries (acceptance > 95%).
    Concentrations below 1 use ``Gamma(a) = Gamma(a + 1) * U ** (1 / a)``.

    Args:
        shape: output shape.
        concentration: shape parameter a > 0.

    Returns:
        ``shape`` tensor of non-negative draws in ``dtype`` (drawn in float32 for half types).

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> draws = sample_standard_gamma((20000,), 2.5, dtype=torch.float64, generator=gen)
        >>> round(float(draws.mean()), 1)
        2.5
    """
    if not (
        isinstance(concentration, (int, float))
        and math.isfinite(concentration)
        and concentration > 0
    ):
        raise ValueError(f"concentration must be a finite number > 0, got {concentration!r}")
    work = sampling_dtype(dtype)
    numel = math.prod(shape)
    if concentration == 1:
        out = sample_exponential((numel,), dtype=work, device=device, generator=generator)
        return out.reshape(shape).to(dtype)
    boosted = concentration < 1
    a = concentration + 1.0 if boosted else float(concentration)
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(numel, dtype=work, device=device)
    pending = torch.arange(numel, device=device)
    while pending.numel() > 0:
        x = torch.randn(pending.numel(), dtype=work, device=device, generator=generator)
        u = torch.rand(pending.numel(), dtype=work, device=device, generator=generator)
        v = (1.0 + c * x) ** 3
        log_v = v.clamp_min(torch.finfo(work).tiny).log()
        accept = (v > 0) & (u.log() < 0.5 * x * x + d - d * v + d * log_v)
        out[pending[accept]] = d * v[accept]
        pending = pending[~accept]
    if boosted:
        u = torch.rand(numel, dtype=work, device=device, generator=generator)
        out = out * u.pow(1.0 / concentration)
    return out.reshape(shape).to(dtype)


def sample_sum_of_gamma(
    shape: tuple[int, ...],
    *,
    k: int = 1,
    n_terms: int = 10,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sum-of-Gamma noise of Niepert et al. (2021), at temperature 1.

    ::

        eps = (1/k) * (sum_{i=1}^{n_terms} Gamma(1/k, scale k/i) - log n_terms)

    The sum of k independent draws equals ``sum_i Exp(1)/i - log n_terms``, the maximum of
    ``n_terms`` standard exponentials minus ``log n_terms``: a Gumbel variable truncated to a
    finite series (exact as n_terms -> inf). So k-subset perturb-and-MAP with this noise
    perturbs each item's share of the top-k sum like Gumbel-max perturbs one-hot. Use
    ``k = 1`` for one-hot slots, ``k`` for ``Subset(k)``.

    Args:
        shape: output shape.
        k: the number of items chosen (the shape of the Gamma terms is 1/k).
        n_terms: terms of the series (the paper uses 10).

    Returns:
        ``shape`` tensor in ``dtype``.

    Reference: Niepert, Minervini & Franceschi, "Implicit MLE", NeurIPS 2021, Sec. 5.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> sample_sum_of_gamma((2, 3), k=2, generator=gen).shape
        torch.Size([2, 3])
    """
    check_positive_int(k, name="k")
    check_positive_int(n_terms, name="n_terms")
    work = sampling_dtype(dtype)
    gammas = sample_standard_gamma(
        (n_terms, *shape), 1.0 / k, dtype=work, device=device, generator=generator
    )
    # Gamma(1/k, scale k/i) / k = Gamma(1/k, scale 1) / i.
    inverse_i = 1.0 / torch.arange(1, n_terms + 1, dtype=work, device=gammas.device)
    series = (gammas * inverse_i.reshape(n_terms, *([1] * len(shape)))).sum(0)
    return (series - math.log(n_terms) / k).to(dtype)


def objective_transpose(structure: Structure, grad: Tensor) -> Tensor:
    """``A^T grad`` for the linear map ``A = structure.linear_objective``.

    A loss gradient ``g`` on the outputs x is the score-space direction ``A^T g``: for every hard
    x, ``<g, x>`` equals the solver's objective ``<A^T g, x>`` up to the structure's constant
    factor (for ``SpanningTree``, the gradients on ``x[i, j]`` and ``x[j, i]`` both reach
    ``scores[i, j]``; by default, ignored entries are zeroed).
    """
    closed = structure._objective_transpose(grad)
    if closed is not None:  # torch.func.vjp below costs about 0.4 ms a call on the CPU
        return closed
    # torch.func.vjp rather than autograd.grad on a leaf made with requires_grad: a tensor
    # created with requires_grad inside traced code breaks torch.compile's graph, and vjp also
    # works inside vmap and the other torch.func transforms.
    transpose = torch.func.vjp(structure.linear_objective, torch.zeros_like(grad))[1]
    result: Tensor = transpose(grad)[0]
    return result


class _PerturbAndMapDifference(torch.autograd.Function):
    """Forward: the first sample; backward: ``mean_m (x_m - argmax(s - lambda g + eps_m)) / lambda``.

    ``g`` enters the target through :func:`objective_transpose`, so that it moves the solver's
    objective by ``-lambda <g, x>``.

    Inputs besides ``scores`` carry no gradient: ``samples`` are ``argmax(s + eps_m)``,
    ``(M, *scores.shape)`` in the working dtype; ``noise`` is ``eps`` of that shape, or ``None``
    for zero noise (blackbox).
    """

    # Plain torch ops (the structure's argmax included) in the forward / setup_context / backward
    # form: vmap and torch.func work on it.
    generate_vmap_rule = True

    @staticmethod
    def forward(
        scores: Tensor,
        samples: Tensor,
        noise: Tensor | None,
        structure: Structure,
        lambda_: float,
        mask: Tensor | None,
    ) -> Tensor:
        return samples[0].clone().to(scores.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        scores, samples, noise, structure, lambda_, mask = inputs
        ctx.save_for_backward(scores.detach(), samples, noise)
        ctx.structure, ctx.lambda_, ctx.mask = structure, lambda_, mask

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        scores, samples, noise = ctx.saved_tensors
        work = samples.dtype
        direction = objective_transpose(ctx.structure, grad.to(work))
        target = scores.to(work) - ctx.lambda_ * direction
        target = target.unsqueeze(0) if noise is None else target + noise
        with torch.no_grad():
            target_samples = ctx.structure._argmax(target)
        result = (samples - target_samples).mean(0) / ctx.lambda_
        if ctx.mask is not None:
            result = result * ctx.mask
        return result.to(scores.dtype), None, None, None, None, None


def perturb_and_map_difference(
    scores: Tensor,
    structure: Structure,
    noise: Tensor | None,
    lambda_: float,
) -> Tensor:
    """``argmax(scores + noise[0])`` whose backward is the I-MLE / blackbox difference.

    Args:
        scores: ``(*batch, *event)``, already validated.
        structure: the solver, never differentiated.
        noise: ``(M, *batch, *event)`` perturbations in the working dtype, or ``None`` (blackbox).
        lambda_: step size > 0 of the target ``scores - lambda_ * grad``.

    Returns:
        ``(*batch, *event)`` hard solution in the dtype of ``scores``.
    """
    work = sampling_dtype(scores.dtype)
    detached = scores.detach().to(work)
    with torch.no_grad():
        samples = structure._argmax(detached.unsqueeze(0) if noise is None else detached + noise)
    mask = structure.active_mask(structure.event_shape(scores), scores.device)
    result: Tensor = apply_function(
        _PerturbAndMapDifference, scores, samples, noise, structure, lambda_, mask
    )
    return result


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(tensor: Tensor, factor: float) -> Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float], output: Tensor) -> None:
        ctx.factor = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


class PerSampleEstimator(Estimator):
    """An estimator whose backward is not linear in the incoming gradient ``g``.

    ``(argmax(s) - argmax(s - lambda g)) / lambda`` changes with the scale of ``g``, so the
    default ``estimate``, which averages the loss over ``n_samples`` and thereby divides each
    sample's ``g`` by ``n_samples``, would shrink the step lambda with ``n_samples``. This
    ``estimate`` instead gives each sample the gradient of its own loss and averages the
    per-sample estimates: ``estimate(n_samples=n)`` is the mean of n independent one-sample
    estimates, as it is for the linear estimators. A mean over batch entries inside ``loss_fn``
    or in user code still scales ``g``, like any loss scale; lambda is tuned against it.
    """

    def check_values(self, scores: Tensor, tau: float) -> None:
        """``1 / lambda_`` (the backward's factor) must fit the dtype of ``scores``."""
        limit = torch.finfo(scores.dtype).max
        lambda_ = getattr(self, "lambda_", None)
        if lambda_ is not None and 1.0 / lambda_ >= limit:
            raise ValueError(
                f"option 'lambda_'={lambda_!r} of estimator {self.name!r} is too small for "
                f"{scores.dtype} scores: the gradient is divided by lambda_ and 1 / lambda_ "
                f"overflows (largest finite value {limit:.3g}); use a larger lambda_"
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
        expanded = apply_function(_ScaleGradient, scores, 1.0 / n_samples).expand(
            n_samples, *scores.shape
        )
        samples = self._select(expanded, structure, tau=tau, generator=generator)
        samples = apply_function(_ScaleGradient, samples, float(n_samples))
        batch_shape = tuple(scores.shape[: scores.dim() - structure.event_dims])
        return evaluate_loss(loss_fn, samples, n_samples, batch_shape).mean()


@register_estimator
class IMLE(PerSampleEstimator):
    """``imle``: perturb-and-MAP forward, target-distribution difference backward.

    Forward: ``x = argmax(scores + eps_1)``, a hard sample. Backward, with ``g = dL/dx`` and
    the same noise draws ``eps_m`` (``eps_1`` is the forward's)::

        target  s' = scores - lambda * g          (moves scores towards lower loss)
        dL/dscores = (1/M) sum_m (argmax(scores + eps_m) - argmax(s' + eps_m)) / lambda

    Sign: a gradient-descent step on the scores raises the scores of the target solution and
    lowers those of the current one, so it decreases a loss linear in x. Scaling: we divide by
    lambda (optional in the paper) so that the result scales with ``g`` like a gradient and,
    averaged over the noise, tends to ``J mu(s)^T g`` as lambda -> 0, where
    ``mu(s) = E[argmax(s + eps)]`` (the perturbed optimizer's Jacobian). ``g`` reaches the
    scores through the transpose of ``structure.linear_objective`` (:func:`objective_transpose`):
    ``g`` itself on the entries the solver reads, and for ``SpanningTree`` the gradients on
    ``x[i, j]`` and ``x[j, i]`` together. Score entries the
    structure ignores (``structure.active_mask``) get zero gradient. Through
    ``pickgrad.estimate``, each sample gets the gradient of its own loss
    (see :class:`PerSampleEstimator`).

    With ``noise="gumbel"`` (default) and ``noise_temperature=1`` the forward is distributed
    like every other sampling estimator's (for ``OneHot``, ``softmax(scores)``), and the mean
    gradient for a linear loss is exactly ``(softmax(s) - softmax(s - lambda g)) / lambda``.

    Args:
        lambda_: lambda > 0, the step size of the target. Pick it so that ``lambda * |g|`` is
            comparable to the gaps between scores; too small gives zero gradients.
        n_perturbations: M, noise draws averaged in the backward pass. Only the forward
            sample ``x_1`` is seen by the loss, so all M terms use its ``g``: this lowers the
            variance without bias relative to M = 1 only for losses linear in x. For other
            losses use ``pickgrad.estimate(..., n_samples=S)`` instead, which gives each sample
            its own ``g`` as in the paper's S samples (with M = 1 each).
        noise: ``"gumbel"`` (default) or ``"sum-of-gamma"`` (Niepert et al.'s noise for
            k-subsets; see :func:`sample_sum_of_gamma`).
        noise_temperature: scale of the noise (the paper's tau); ``tau`` of ``select`` is
            not used.
        noise_k: k of the Sum-of-Gamma noise (1 for one-hot slots, k for ``Subset(k)``).
        n_terms: terms of the Sum-of-Gamma series.

    Shapes: scores ``(*batch, *event)`` -> x ``(*batch, *event)``.

    Reference: Niepert, Minervini & Franceschi, "Implicit MLE: Backpropagating Through Discrete
    Exponential Family Distributions", NeurIPS 2021.

    Example:
        >>> import pickgrad
        >>> scores = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
        >>> x = pickgrad.select(scores, pickgrad.OneHot(), "imle", lambda_=1.0,
        ...                     noise_temperature=1e-6)
        >>> x
        tensor([0., 1., 0.], grad_fn=<_PerturbAndMapDifferenceBackward>)
        >>> (x * torch.tensor([0.0, 2.0, 0.0])).sum().backward()  # item 1 costs 2
        >>> scores.grad  # argmax(s - 1 * g) = item 2, so descent moves towards it
        tensor([ 0.,  1., -1.])
    """

    name: ClassVar[str] = "imle"
    needs: ClassVar[tuple[str, ...]] = ("argmax",)

    def __init__(
        self,
        lambda_: float = 10.0,
        *,
        n_perturbations: int = 1,
        noise: str = "gumbel",
        noise_temperature: float = 1.0,
        noise_k: int = 1,
        n_terms: int = 10,
    ) -> None:
        self.lambda_ = option_positive_real(lambda_, "lambda_", self.name)
        self.n_perturbations = option_positive_int(n_perturbations, "n_perturbations", self.name)
        self.noise = option_choice(noise, "noise", self.name, IMLE_NOISES)
        self.noise_temperature = option_positive_real(
            noise_temperature, "noise_temperature", self.name
        )
        self.noise_k = option_positive_int(noise_k, "noise_k", self.name)
        self.n_terms = option_positive_int(n_terms, "n_terms", self.name)

    def sample_noise(
        self, shape: tuple[int, ...], scores: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """``noise_temperature`` times standard noise, ``shape``, in the working dtype."""
        work = sampling_dtype(scores.dtype)
        if self.noise == "gumbel":
            eps = sample_gumbel(shape, dtype=work, device=scores.device, generator=generator)
        else:
            eps = sample_sum_of_gamma(
                shape,
                k=self.noise_k,
                n_terms=self.n_terms,
                dtype=work,
                device=scores.device,
                generator=generator,
            )
        return eps if self.noise_temperature == 1.0 else eps * self.noise_temperature

    def _select(
        self, scores: Tensor, structure: Structure, *, tau: float, generator: torch.Generator | None
    ) -> Tensor:
        noise = self.sample_noise((self.n_perturbations, *scores.shape), scores, generator)
        return perturb_and_map_difference(scores, structure, noise, self.lambda_)

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"lambda_": self.lambda_}
        if self.n_perturbations != 1:
            options["n_perturbations"] = self.n_perturbations
        if self.noise != "gumbel":
            options.update(noise=self.noise, noise_k=self.noise_k, n_terms=self.n_terms)
        if self.noise_temperature != 1.0:
            options["noise_temperature"] = self.noise_temperature
        return options
