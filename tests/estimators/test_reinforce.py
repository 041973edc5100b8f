"""REINFORCE: unbiased with every baseline, against the exact gradient of E[loss] by enumeration."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import pickgrad
from pickgrad import Estimator, OneHot, Reinforce
from pickgrad.structures.base import Structure

ONEHOT = OneHot()
ALPHA = 1e-3

_SCORES = torch.tensor([[0.4, -0.6, 0.9], [0.0, 0.7, -0.3]], dtype=torch.float64)
_VALUES = torch.tensor([[1.0, -0.5, 2.0], [0.7, 1.5, -1.0]], dtype=torch.float64)
_PAIR = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def _loss(x: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear loss of the joint pick of S=2 slots over N=3 items: ``(m, 2, 3) -> (m,)``.

    Its mean is far from zero, so that a baseline matters.
    """
    v = (x * _VALUES).sum(-1)
    return 3 + (v.sum(-1) - 1) ** 2 + 2 * v[:, 0] * v[:, 1] + (x[:, 0] * x[:, 1] * _PAIR).sum(-1)


class OneHotWithoutLogProb(OneHot):
    """OneHot hiding its closed-form ``perturb_log_prob``, as a structure without one would."""

    _perturb_log_prob = Structure._perturb_log_prob


def _exact_gradient(scores: torch.Tensor) -> torch.Tensor:
    """``d/ds sum_x p(x; s) loss(x)`` over all N^S joint picks, p the product of slot softmaxes."""
    s = scores.detach().clone().requires_grad_()
    picks = ONEHOT.enumerate(tuple(s.shape), dtype=s.dtype)  # (N^S, S, N)
    log_p = (torch.log_softmax(s, -1) * picks).sum((-2, -1))
    expected = (log_p.exp() * _loss(picks)).sum()
    (gradient,) = torch.autograd.grad(expected, s)
    return gradient


def _estimates(
    estimator: Estimator, structure: Structure, calls: int, batch: int, n_samples: int
) -> torch.Tensor:
    """``calls * batch`` gradient estimates, ``(calls * batch, S * N)``.

    Each call of the one estimator object scores a batch of ``batch`` copies of the problem; the
    surrogate averages over the batch, so each copy's gradient times ``batch`` is one estimate.
    Successive calls let the ``ema`` baseline move.
    """
    generator = torch.Generator().manual_seed(99)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:  # (n_samples, batch, S, N) -> (n_samples, batch)
        return _loss(x.reshape(-1, *x.shape[-2:])).reshape(x.shape[:2])

    draws = []
    for _ in range(calls):
        scores = _SCORES.expand(batch, *_SCORES.shape).clone().requires_grad_()
        surrogate = pickgrad.estimate(
            loss_fn, scores, structure, estimator, n_samples=n_samples, generator=generator
        )
        surrogate.backward()
        assert scores.grad is not None
        draws.append(batch * scores.grad.reshape(batch, -1))
    return torch.cat(draws)


@pytest.mark.parametrize(
    ("structure", "baseline", "calls"),
    [
        (ONEHOT, "none", 20),
        (ONEHOT, "ema", 20),
        (ONEHOT, "batch", 20),
        (ONEHOT, "rloo", 20),
        # The generic path, on the density of the Gumbel utilities, is noisier.
        (OneHotWithoutLogProb(), "none", 40),
        (OneHotWithoutLogProb(), "rloo", 40),
    ],
    ids=["none", "ema", "batch", "rloo", "utilities-none", "utilities-rloo"],
)
def test_reinforce_is_unbiased(structure: Structure, baseline: str, calls: int) -> None:
    assert structure.supports("perturb_log_prob") == (type(structure) is OneHot)
    estimator = Reinforce(baseline=baseline)
    draws = _estimates(estimator, structure, calls, batch=500, n_samples=4)
    repeats = draws.shape[0]
    if baseline == "ema":
        assert estimator.ema is not None and estimator.ema > 1  # the baseline was really in use
    exact = _exact_gradient(_SCORES).reshape(-1)
    mean = draws.mean(0)
    standard_error = draws.std(0) / repeats**0.5
    z_max = stats.norm.ppf(1 - ALPHA / (2 * exact.numel()))
    z = (mean - exact).abs() / standard_error
    assert bool((z < z_max).all()), (
        f"mean {mean.tolist()} vs exact {exact.tolist()}: z {z.tolist()}"
    )
    # Power: a bias of a fifth of the largest gradient entry would be seen.
    assert z_max * float(standard_error.max()) < 0.2 * float(exact.abs().max())


def test_the_unbiasedness_check_detects_a_biased_estimator() -> None:
    # Negative control: straight-through Gumbel at tau = 1 is biased, and the same check sees it.
    draws = _estimates(pickgrad.StraightThroughGumbel(), ONEHOT, 4, batch=500, n_samples=4)
    exact = _exact_gradient(_SCORES).reshape(-1)
    z = (draws.mean(0) - exact).abs() / (draws.std(0) / draws.shape[0] ** 0.5)
    assert float(z.max()) > stats.norm.ppf(1 - ALPHA / (2 * exact.numel()))


def test_baselines_reduce_variance() -> None:
    variances = {}
    for baseline in ("none", "rloo"):
        draws = _estimates(Reinforce(baseline=baseline), ONEHOT, 2, batch=500, n_samples=4)
        variances[baseline] = float(draws.var(0).sum())
    # The loss has a large constant part: without a baseline the variance is several times larger.
    assert variances["rloo"] < 0.5 * variances["none"], variances


def test_reinforce_gradient_matches_the_score_function_formula() -> None:
    # For OneHot, d log softmax(s)[x] / ds = x - softmax(s): the gradient is
    # mean_i (loss_i - b_i) (x_i - softmax(s)), with rloo baselines b_i.
    scores = _SCORES.clone().requires_grad_()
    seen: list[torch.Tensor] = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return _loss(x)

    n_samples = 5
    surrogate = pickgrad.estimate(
        loss_fn,
        scores,
        ONEHOT,
        "reinforce",
        baseline="rloo",
        n_samples=n_samples,
        generator=torch.Generator().manual_seed(4),
    )
    surrogate.backward()
    (x,) = seen
    losses = _loss(x)
    torch.testing.assert_close(surrogate, losses.mean())  # value: the mean loss
    advantage = losses - (losses.sum() - losses) / (n_samples - 1)
    expected = (advantage[:, None, None] * (x - torch.softmax(_SCORES, -1))).mean(0)
    assert scores.grad is not None
    torch.testing.assert_close(scores.grad, expected)


def test_ema_baseline_tracks_the_mean_loss() -> None:
    estimator = Reinforce(baseline="ema", ema_decay=0.5)
    assert estimator.ema is None
    means = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        value = pickgrad.estimate(
            _loss,
            _SCORES.clone().requires_grad_(),
            ONEHOT,
            estimator,
            n_samples=3,
            generator=generator,
        )
        means.append(float(value.detach()))
    expected = means[0]
    for mean in means[1:]:
        expected = 0.5 * expected + 0.5 * mean
    assert estimator.ema == pytest.approx(expected)


def test_reinforce_validates_its_options() -> None:
    with pytest.raises(ValueError, match=r"baseline must be one of .* got 'mean'"):
        Reinforce(baseline="mean")
    with pytest.raises(ValueError, match="ema_decay must be in"):
        Reinforce(baseline="ema", ema_decay=1.0)
    scores = _SCORES.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"rloo.*n_samples >= 2"):
        pickgrad.estimate(_loss, scores, ONEHOT, "reinforce", baseline="rloo", n_samples=1)
    with pytest.raises(ValueError, match=r"batch.*at least two losses"):
        pickgrad.estimate(_loss, scores, ONEHOT, "reinforce", baseline="batch", n_samples=1)


def test_reinforce_cannot_be_used_through_select() -> None:
    with pytest.raises(ValueError, match=r"needs the loss value.*pickgrad\.estimate"):
        pickgrad.select(_SCORES, ONEHOT, "reinforce")
