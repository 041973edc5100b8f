"""Gumbel estimators: ``gumbel-relaxed``, ``st-gumbel`` and ``gumbel-rao`` on ``OneHot``.

Backward passes are checked against float64 central differences of the surrogate each estimator
claims to differentiate, with the noise reproduced from a reseeded generator. Sampling claims are
checked with chi-squared and z-tests whose thresholds come from the measured variance.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from scipy import stats

import pickgrad
from pickgrad import GumbelRao, OneHot
from pickgrad.noise import sample_gumbel
from pickgrad.structures.base import Structure

ONEHOT = OneHot()
ALPHA = 1e-3


def autograd_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor) -> torch.Tensor:
    """``d fn(s) / d s`` through autograd (the estimator's backward): ``(out.numel(), s.numel())``."""
    return torch.autograd.functional.jacobian(fn, s).reshape(-1, s.numel())


def finite_difference_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Central differences of ``fn`` at ``s`` (float64): ``(out.numel(), s.numel())``."""
    flat = s.detach().reshape(-1)
    columns = []
    for index in range(flat.numel()):
        step = torch.zeros_like(flat)
        step[index] = eps
        plus = fn((flat + step).reshape(s.shape)).detach()
        minus = fn((flat - step).reshape(s.shape)).detach()
        columns.append(((plus - minus) / (2 * eps)).reshape(-1))
    return torch.stack(columns, dim=1)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _scores(*shape: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=_seeded(seed))


def _chi_squared(counts: torch.Tensor, probabilities: torch.Tensor, total: int) -> float:
    expected = total * probabilities
    return float(((counts - expected) ** 2 / expected).sum())


# --- the Gumbel-max trick ------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
def test_argmax_of_perturbed_scores_is_a_softmax_sample(estimator: str) -> None:
    scores = torch.tensor([[0.5, -1.0, 1.5, 0.0], [2.0, 1.0, 0.0, -3.0]], dtype=torch.float64)
    draws = 20_000
    x = pickgrad.select(
        scores.expand(draws, *scores.shape), ONEHOT, estimator, generator=_seeded(17)
    )
    counts = x.sum(0)
    assert torch.equal(counts.sum(-1), torch.full((2,), float(draws), dtype=torch.float64))
    slots, n = scores.shape
    threshold = stats.chi2.ppf(1 - ALPHA, df=slots * (n - 1))
    assert _chi_squared(counts, torch.softmax(scores, -1), draws) < threshold
    # Power: the same counts are rejected against a nearby wrong law.
    assert _chi_squared(counts, torch.softmax(1.1 * scores, -1), draws) > threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gumbel_max_frequencies_hold_in_low_precision(dtype: torch.dtype) -> None:
    scores = torch.tensor([0.3, -0.7, 1.2, 0.0, -2.0])
    draws = 20_000
    x = pickgrad.select(
        scores.to(dtype).expand(draws, 5), ONEHOT, "st-gumbel", generator=_seeded(3)
    )
    counts = x.double().sum(0)
    # bfloat16 rounds the scores themselves: compare with the law of the rounded scores.
    probabilities = torch.softmax(scores.to(dtype).double(), -1)
    assert _chi_squared(counts, probabilities, draws) < stats.chi2.ppf(1 - ALPHA, df=4)


def test_gumbel_relaxed_tends_to_one_hot_as_tau_goes_to_zero() -> None:
    scores = _scores(200, 6)
    perturbed = scores + sample_gumbel(
        scores.shape, dtype=scores.dtype, device=scores.device, generator=_seeded(8)
    )
    hard = ONEHOT.argmax(perturbed)
    top2 = perturbed.topk(2, dim=-1).values
    gap = top2[..., 0] - top2[..., 1]
    distances = []
    for tau in (1.0, 0.3, 0.1, 0.03, 0.01, 0.001):
        soft = pickgrad.select(scores, ONEHOT, "gumbel-relaxed", tau=tau, generator=_seeded(8))
        distance = (soft - hard).abs().max(-1).values
        # Per row: |softmax - onehot| <= (n - 1) exp(-gap / tau), with the noise the seed gives.
        assert bool((distance <= 5 * torch.exp(-gap / tau) + 1e-12).all())
        distances.append(float(distance.mean()))
    assert distances == sorted(distances, reverse=True)
    assert distances[-1] < 0.01


# --- backward passes against finite differences --------------------------------------------------


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_gumbel_relaxed_passes_gradcheck_with_fixed_noise(tau: float) -> None:
    scores = _scores(2, 4).requires_grad_()

    def fn(s: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(s, ONEHOT, "gumbel-relaxed", tau=tau, generator=_seeded(21))

    assert torch.autograd.gradcheck(fn, (scores,))


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_st_gumbel_backward_is_the_jacobian_of_relax_at_the_same_noise(tau: float) -> None:
    scores = _scores(2, 4)

    def estimator(s: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(s, ONEHOT, "st-gumbel", tau=tau, generator=_seeded(21))

    noise = sample_gumbel(
        scores.shape, dtype=scores.dtype, device=scores.device, generator=_seeded(21)
    )
    assert torch.equal(estimator(scores), ONEHOT.argmax(scores + noise))
    expected = finite_difference_jacobian(lambda s: ONEHOT.relax(s + noise, tau), scores)
    torch.testing.assert_close(autograd_jacobian(estimator, scores), expected, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(
    ("n_draws", "regularizer"), [(1, "entropy"), (3, "entropy"), (3, "sparsemax")]
)
def test_gumbel_rao_backward_is_the_mean_jacobian_over_conditional_draws(
    n_draws: int, regularizer: str
) -> None:
    scores = _scores(2, 4)
    tau = 0.7

    def estimator(s: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(
            s,
            ONEHOT,
            "gumbel-rao",
            tau=tau,
            n_draws=n_draws,
            regularizer=regularizer,
            generator=_seeded(21),
        )

    # Reproduce the estimator's noise: one unconditional draw, then K conditional ones.
    generator = _seeded(21)
    noise = sample_gumbel(
        scores.shape, dtype=scores.dtype, device=scores.device, generator=generator
    )
    x = ONEHOT.argmax(scores + noise)
    conditional = ONEHOT.conditional_gumbel(scores, x, n_draws, generator=generator)
    assert torch.equal(estimator(scores), x)
    # The conditional draws are held fixed: the surrogate is mean_k relax(s + G_k, tau).
    expected = finite_difference_jacobian(
        lambda s: ONEHOT.relax(s + conditional, tau, regularizer=regularizer).mean(0), scores
    )
    torch.testing.assert_close(autograd_jacobian(estimator, scores), expected, atol=1e-7, rtol=1e-6)


# --- fused fast paths against the generic composition --------------------------------------------


class GenericOneHot(OneHot):
    """OneHot without its fused fast paths: the estimators fall back to the generic composition."""

    _perturb_argmax_relax = Structure._perturb_argmax_relax
    _conditional_mean_relax = Structure._conditional_mean_relax


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
@pytest.mark.parametrize("tau", [0.5, 1.0])
@pytest.mark.parametrize(
    ("shape", "upstream"),
    [((2, 3, 5), "weights"), ((3000, 64), "weights"), ((4, 6), "sum")],
    ids=["small", "several-tiles", "expanded-grad"],
)
def test_fused_path_equals_the_generic_composition(
    estimator: str, tau: float, shape: tuple[int, ...], upstream: str
) -> None:
    fused_structure = OneHot()
    assert fused_structure._perturb_argmax_relax(torch.zeros(3), 1.0, None) is not None
    results = []
    for structure in (fused_structure, GenericOneHot()):
        scores = _scores(*shape).requires_grad_()
        x = pickgrad.select(scores, structure, estimator, tau=tau, generator=_seeded(6))
        loss = (x * _scores(*shape, seed=9)).sum() if upstream == "weights" else x.sum()
        loss.backward()
        results.append((x.detach(), scores.grad))
    (x_fused, grad_fused), (x_generic, grad_generic) = results
    assert torch.equal(x_fused, x_generic)
    torch.testing.assert_close(grad_fused, grad_generic, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
def test_fused_path_in_low_precision_is_close_to_the_float32_composition(
    dtype: torch.dtype, estimator: str
) -> None:
    # Half types draw their noise in float32 (sampling_dtype), from the same uniforms as float32
    # scores; float64 scores draw float64 uniforms, another stream, so the reference is float32.
    gradients = []
    for structure, work in ((OneHot(), dtype), (GenericOneHot(), torch.float32)):
        scores = _scores(8, 6).to(work).requires_grad_()
        x = pickgrad.select(scores, structure, estimator, tau=0.5, generator=_seeded(6))
        assert x.dtype == work
        (x * _scores(8, 6, seed=9).to(work)).sum().backward()
        gradients.append(scores.grad)
    # Same noise and (up to rounding of the scores) the same argmax: gradients agree to the
    # precision of the input dtype.
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(gradients[0].float(), gradients[1], atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
def test_fused_path_double_backward_equals_the_generic_composition(estimator: str) -> None:
    # create_graph=True makes the fused backward differentiable, with the noise held fixed.
    results = []
    for structure in (OneHot(), GenericOneHot()):
        scores = _scores(3, 5).requires_grad_()
        x = pickgrad.select(scores, structure, estimator, tau=0.7, generator=_seeded(3))
        (gradient,) = torch.autograd.grad(
            (x * _scores(3, 5, seed=9)).sum(), scores, create_graph=True
        )
        (second,) = torch.autograd.grad((gradient**2).sum(), scores)
        results.append((gradient.detach(), second))
    assert float(results[1][1].abs().max()) > 0.01  # the second-order term is not trivially zero
    for fused, generic in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(fused, generic, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
@pytest.mark.parametrize("seeded", [True, False], ids=["generator", "global-rng"])
def test_fused_backward_twice_through_a_retained_graph(seeded: bool, estimator: str) -> None:
    # st-gumbel's fused backward reuses its saved softmax, gumbel-rao's redraws its conditional
    # points from a seed; a second backward must see the very same noise, even when the global
    # generator has moved on.
    scores = _scores(5, 7).requires_grad_()
    torch.manual_seed(3)
    generator = _seeded(4) if seeded else None
    x = pickgrad.select(scores, ONEHOT, estimator, tau=0.5, generator=generator)
    loss = (x * _scores(5, 7, seed=9)).sum()
    (first,) = torch.autograd.grad(loss, scores, retain_graph=True)
    torch.rand(10)
    (second,) = torch.autograd.grad(loss, scores)
    assert torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
def test_conditional_mean_relax_is_finite_for_extreme_scores_and_temperatures(
    dtype: torch.dtype, tau: float
) -> None:
    # Scores spread over +-100 underflow softmax to exact zeros, and tau = 0.05 raises the
    # conditional weights to the 20th power: the gradient must stay finite and sum to zero per row
    # (the softmax Jacobian annihilates constants).
    scores = (torch.linspace(-100, 100, 6 * 9, dtype=dtype).reshape(6, 9) * torch.randn(6, 1)).to(
        dtype
    )
    scores.requires_grad_()
    x = pickgrad.select(scores, ONEHOT, "gumbel-rao", tau=tau, n_draws=50, generator=_seeded(8))
    (x * _scores(6, 9, seed=2).to(dtype)).sum().backward()
    assert bool(torch.isfinite(scores.grad).all())
    torch.testing.assert_close(
        scores.grad.sum(-1), torch.zeros(6, dtype=dtype), atol=1e-4 / tau, rtol=0
    )


# --- gumbel-rao: same mean as st-gumbel, lower variance ------------------------------------------

_PROBLEM_SCORES = torch.tensor([[0.3, -0.5, 1.0, 0.0], [-0.2, 0.8, 0.1, -1.0]], dtype=torch.float64)
_VALUES = torch.tensor([[1.0, -0.5, 2.0, 0.3], [0.7, 1.5, -1.0, 0.2]], dtype=torch.float64)
_PAIR = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)


def _loss(x: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear loss of the joint pick of two slots, ``(R, 2, 4) -> (R,)``."""
    v = (x * _VALUES).sum(-1)
    return (v.sum(-1) - 1) ** 2 + 2 * v[:, 0] * v[:, 1] + (x[:, 0] * x[:, 1] * _PAIR).sum(-1)


def _gradient_draws(estimator: str, repeats: int, seed: int, tau: float, **options) -> torch.Tensor:
    """``repeats`` independent single-sample gradient estimates, ``(repeats, 8)``.

    Every batch entry draws its own noise, so one batched call gives independent estimates.
    """
    scores = _PROBLEM_SCORES.expand(repeats, 2, 4).clone().requires_grad_()
    x = pickgrad.select(scores, ONEHOT, estimator, tau=tau, generator=_seeded(seed), **options)
    _loss(x).sum().backward()
    assert scores.grad is not None
    return scores.grad.reshape(repeats, -1)


def _mean_and_se(draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5


def _trace_covariance_and_se(draws: torch.Tensor) -> tuple[float, float]:
    """``tr Cov(g)`` estimated as the mean squared deviation, and the standard error of that mean."""
    squared = ((draws - draws.mean(0)) ** 2).sum(-1)
    return float(squared.mean()), float(squared.std() / squared.shape[0] ** 0.5)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_gumbel_rao_matches_st_gumbel_in_mean_with_lower_variance(tau: float) -> None:
    repeats = 20_000
    st_draws = _gradient_draws("st-gumbel", repeats, seed=1, tau=tau)
    rao_draws = _gradient_draws("gumbel-rao", repeats, seed=2, tau=tau, n_draws=10)
    (st_mean, st_se), (rao_mean, rao_se) = _mean_and_se(st_draws), _mean_and_se(rao_draws)
    z = (st_mean - rao_mean).abs() / (st_se**2 + rao_se**2).sqrt()
    z_max = stats.norm.ppf(1 - ALPHA / (2 * z.numel()))
    assert bool((z < z_max).all()), f"mean gradients differ: z = {z.tolist()}"
    # Power: the standard errors are small against the gradient itself.
    assert float(st_se.max()) < 0.05 * float(st_mean.abs().max())
    st_trace, st_trace_se = _trace_covariance_and_se(st_draws)
    rao_trace, rao_trace_se = _trace_covariance_and_se(rao_draws)
    z_one_sided = stats.norm.ppf(1 - ALPHA)
    assert rao_trace + z_one_sided * rao_trace_se < st_trace - z_one_sided * st_trace_se, (
        f"tr Cov: gumbel-rao {rao_trace:.4f} +- {rao_trace_se:.4f}, "
        f"st-gumbel {st_trace:.4f} +- {st_trace_se:.4f}"
    )


def test_gumbel_rao_with_one_draw_matches_st_gumbel_in_mean_and_variance() -> None:
    repeats = 20_000
    st_draws = _gradient_draws("st-gumbel", repeats, seed=3, tau=0.5)
    rao_draws = _gradient_draws("gumbel-rao", repeats, seed=4, tau=0.5, n_draws=1)
    (st_mean, st_se), (rao_mean, rao_se) = _mean_and_se(st_draws), _mean_and_se(rao_draws)
    z = (st_mean - rao_mean).abs() / (st_se**2 + rao_se**2).sqrt()
    assert bool((z < stats.norm.ppf(1 - ALPHA / (2 * z.numel()))).all()), z.tolist()
    st_trace, st_trace_se = _trace_covariance_and_se(st_draws)
    rao_trace, rao_trace_se = _trace_covariance_and_se(rao_draws)
    z_trace = abs(st_trace - rao_trace) / (st_trace_se**2 + rao_trace_se**2) ** 0.5
    assert z_trace < stats.norm.ppf(1 - ALPHA / 2), (st_trace, rao_trace, z_trace)
    # Power: the trace is measured to within a few percent.
    assert st_trace_se < 0.05 * st_trace


# --- options -------------------------------------------------------------------------------------


def test_gumbel_rao_options() -> None:
    assert repr(pickgrad.get_estimator("gumbel-rao", n_draws=4)) == "GumbelRao(n_draws=4)"
    assert GumbelRao().n_draws == 10
    with pytest.raises(
        ValueError, match="option 'n_draws' of estimator 'gumbel-rao' must be an int >= 1, got 0"
    ):
        GumbelRao(n_draws=0)
    with pytest.raises(
        TypeError, match="option 'n_draws' of estimator 'gumbel-rao' must be an int"
    ):
        GumbelRao(n_draws=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bad options for estimator 'gumbel-rao'"):
        pickgrad.select(torch.zeros(3), ONEHOT, "gumbel-rao", draws=3)
