"""REINFORCE: unbiased with every baseline, against the exact gradient of E[loss] by enumeration."""

from __future__ import annotations

import re

import pytest
import torch
from scipy import stats

import pickgrad
from pickgrad import Estimator, OneHot, Reinforce
from pickgrad.estimators.reinforce import BASELINES
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
    Successive calls let the ``ema`` baseline and the normalisation move. A learned baseline gets
    per-entry values drawn independently of the samples (as a network's output on the input
    would be); a normalised estimate is multiplied back by the scale it was divided by.
    """
    generator = torch.Generator().manual_seed(99)
    baseline_generator = torch.Generator().manual_seed(5)
    learned = isinstance(estimator, Reinforce) and estimator.baseline == "learned"
    normalized = isinstance(estimator, Reinforce) and estimator.normalize

    def loss_fn(x: torch.Tensor) -> torch.Tensor:  # (n_samples, batch, S, N) -> (n_samples, batch)
        return _loss(x.reshape(-1, *x.shape[-2:])).reshape(x.shape[:2])

    draws = []
    for _ in range(calls):
        scores = _SCORES.expand(batch, *_SCORES.shape).clone().requires_grad_()
        scale = 1.0
        if normalized:
            scale = max(1.0, estimator.running_std or 1.0)  # type: ignore[attr-defined]
        if learned:
            values = 6 + 4 * torch.rand(batch, generator=baseline_generator, dtype=torch.float64)
            estimator.check_structure(structure)
            surrogate = estimator.estimate(
                loss_fn,
                scores,
                structure,
                n_samples=n_samples,
                tau=1.0,
                generator=generator,
                baseline_values=values.requires_grad_(),
            )
        else:
            surrogate = pickgrad.estimate(
                loss_fn, scores, structure, estimator, n_samples=n_samples, generator=generator
            )
        surrogate.backward()
        assert scores.grad is not None
        draws.append(scale * batch * scores.grad.reshape(batch, -1))
    return torch.cat(draws)


@pytest.mark.parametrize(
    ("structure", "baseline", "normalize", "calls"),
    [
        (ONEHOT, "none", False, 20),
        (ONEHOT, "ema", False, 20),
        (ONEHOT, "batch", False, 20),
        (ONEHOT, "rloo", False, 20),
        (ONEHOT, "learned", False, 20),
        (ONEHOT, "learned", True, 20),
        (ONEHOT, "ema", True, 20),
        # The generic path, on the density of the Gumbel utilities, is noisier.
        (OneHotWithoutLogProb(), "none", False, 40),
        (OneHotWithoutLogProb(), "rloo", False, 40),
        (OneHotWithoutLogProb(), "learned", True, 40),
    ],
    ids=[
        "none",
        "ema",
        "batch",
        "rloo",
        "learned",
        "nvil",
        "ema-normalized",
        "utilities-none",
        "utilities-rloo",
        "utilities-nvil",
    ],
)
def test_reinforce_is_unbiased(
    structure: Structure, baseline: str, normalize: bool, calls: int
) -> None:
    assert structure.supports("perturb_log_prob") == (type(structure) is OneHot)
    estimator = Reinforce(baseline=baseline, normalize=normalize)
    draws = _estimates(estimator, structure, calls, batch=500, n_samples=4)
    repeats = draws.shape[0]
    if baseline == "ema":
        assert estimator.ema is not None and estimator.ema > 1  # the baseline was really in use
    if normalize:
        # The normalisation was really in use: the signal's running std is well above 1.
        assert estimator.running_std is not None and estimator.running_std > 2
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
    assert estimator.ema is None and estimator.state_dict() == {}
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
    with pytest.raises(
        ValueError, match=r"option 'baseline' of estimator 'reinforce' must be one of .* got 'mean'"
    ):
        Reinforce(baseline="mean")
    with pytest.raises(
        ValueError,
        match=r"option 'ema_decay' of estimator 'reinforce' must be a real number in \[0, 1\)",
    ):
        Reinforce(baseline="ema", ema_decay=1.0)
    scores = _SCORES.clone().requires_grad_()
    with pytest.raises(ValueError, match=r"rloo.*n_samples >= 2"):
        pickgrad.estimate(_loss, scores, ONEHOT, "reinforce", baseline="rloo", n_samples=1)
    with pytest.raises(ValueError, match=r"batch.*at least two losses"):
        pickgrad.estimate(_loss, scores, ONEHOT, "reinforce", baseline="batch", n_samples=1)


def test_reinforce_cannot_be_used_through_select() -> None:
    with pytest.raises(ValueError, match=r"needs the loss value.*pickgrad\.estimate"):
        pickgrad.select(_SCORES, ONEHOT, "reinforce")


# --- NVIL: learned baseline and normalisation --------------------------------------------------

_W = torch.tensor([[1.0, -2.0, 0.5], [0.3, 2.0, -1.0], [3.0, 0.0, 1.0], [-1.0, 1.0, 2.0]])


def _nvil_call(
    estimator: Reinforce, baseline_values: torch.Tensor, seed: int = 3, n_samples: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One NVIL call on OneHot scores ``(4, 3)`` with a linear loss ``(n_samples, 4)``.

    Returns ``(surrogate, x, losses, scores)`` after ``backward()``.
    """
    scores = (0.5 * _W).double().requires_grad_()
    seen: list[torch.Tensor] = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return 4 + (x * _W.double()).sum(-1) ** 2

    surrogate = estimator.estimate(
        loss_fn,
        scores,
        ONEHOT,
        n_samples=n_samples,
        tau=1.0,
        generator=torch.Generator().manual_seed(seed),
        baseline_values=baseline_values,
    )
    surrogate.backward()
    (x,) = seen
    return surrogate, x, loss_fn(x).detach(), scores


def test_learned_baseline_gradients() -> None:
    b = torch.tensor([1.0, 5.0, -2.0, 7.0], dtype=torch.float64, requires_grad=True)
    surrogate, x, losses, scores = _nvil_call(Reinforce(baseline="learned"), b)
    torch.testing.assert_close(surrogate.detach(), losses.mean())  # value: the mean loss
    # Gradient w.r.t. the baseline: that of the mean squared error to the (detached) losses.
    reference = b.detach().clone().requires_grad_()
    ((reference - losses) ** 2).mean().backward()
    assert b.grad is not None and reference.grad is not None
    torch.testing.assert_close(b.grad, reference.grad)
    # Gradient w.r.t. the scores: mean over (sample, entry) of (loss - b)(x - softmax(s)).
    advantage = (losses - b.detach())[..., None]
    softmax = torch.softmax(scores.detach(), -1)
    expected = (advantage * (x - softmax)).sum(0) / losses.numel()
    assert scores.grad is not None
    torch.testing.assert_close(scores.grad, expected)


def test_learned_baseline_broadcasts_a_scalar() -> None:
    b = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    _, _, losses, _ = _nvil_call(Reinforce(baseline="learned"), b)
    assert b.grad is not None
    torch.testing.assert_close(b.grad, 2 * (b.detach() - losses).mean())


def test_normalisation_uses_the_earlier_state_and_then_updates_it() -> None:
    estimator = Reinforce(baseline="learned", normalize=True, ema_decay=0.8)
    c, v = 1.5, 9.0  # running std 3
    estimator.load_state_dict(
        {
            "signal_mean": torch.tensor(c, dtype=torch.float64),
            "signal_var": torch.tensor(v, dtype=torch.float64),
            "signal_started": torch.tensor(True),
        }
    )
    b = torch.tensor([1.0, 5.0, -2.0, 7.0], dtype=torch.float64, requires_grad=True)
    _, x, losses, scores = _nvil_call(estimator, b)
    signal = losses - b.detach()
    advantage = ((signal - c) / 3.0)[..., None]
    expected = (advantage * (x - torch.softmax(scores.detach(), -1))).sum(0) / losses.numel()
    assert scores.grad is not None
    torch.testing.assert_close(scores.grad, expected)
    # Then the state moves towards this call's mean and (population) variance of the signal.
    mean = 0.8 * c + 0.2 * float(signal.mean())
    var = 0.8 * v + 0.2 * float(signal.var(unbiased=False))
    assert estimator.running_mean == pytest.approx(mean)
    assert estimator.running_std == pytest.approx(var**0.5)


def test_normalisation_state_over_calls_and_its_round_trip() -> None:
    estimator = Reinforce(baseline="learned", normalize=True, ema_decay=0.5)
    assert estimator.stateful and estimator.running_mean is None and estimator.running_std is None
    b = torch.zeros(4, dtype=torch.float64)
    means, variances = [], []
    for seed in range(3):
        _, _, losses, _ = _nvil_call(estimator, b.clone().requires_grad_(), seed=seed)
        means.append(float(losses.mean()))
        variances.append(float(losses.var(unbiased=False)))
    mean, var = means[0], variances[0]  # the first call sets the state
    for m, s2 in zip(means[1:], variances[1:], strict=True):
        mean, var = 0.5 * mean + 0.5 * m, 0.5 * var + 0.5 * s2
    assert estimator.running_mean == pytest.approx(mean)
    assert estimator.running_std == pytest.approx(var**0.5)
    copy = Reinforce(baseline="learned", normalize=True, ema_decay=0.5)
    copy.load_state_dict(estimator.state_dict())
    one = _nvil_call(estimator, b.clone().requires_grad_(), seed=7)[3].grad
    two = _nvil_call(copy, b.clone().requires_grad_(), seed=7)[3].grad
    assert one is not None and two is not None and torch.equal(one, two)
    with pytest.raises(ValueError, match="unknown keys"):
        copy.load_state_dict({"mean": torch.tensor(0.0)})


def test_baseline_values_errors() -> None:
    scores = _SCORES.clone().requires_grad_()
    b = torch.zeros(())
    for estimator in (Reinforce(baseline="rloo"), pickgrad.StraightThroughGumbel()):
        with pytest.raises(TypeError, match="does not take baseline_values"):
            estimator.estimate(
                _loss, scores, ONEHOT, n_samples=2, tau=1.0, generator=None, baseline_values=b
            )
    learned = Reinforce(baseline="learned")
    with pytest.raises(TypeError, match="needs baseline_values"):
        learned.estimate(_loss, scores, ONEHOT, n_samples=2, tau=1.0, generator=None)
    with pytest.raises(TypeError, match="baseline_values must be a floating tensor"):
        learned.estimate(
            _loss, scores, ONEHOT, n_samples=2, tau=1.0, generator=None, baseline_values=1.0
        )
    wide = torch.zeros(3, dtype=torch.float64)  # the losses are (n_samples,): batch shape ()
    with pytest.raises(ValueError, match=r"broadcast to the losses' batch shape \(\)"):
        learned.estimate(
            _loss, scores, ONEHOT, n_samples=2, tau=1.0, generator=None, baseline_values=wide
        )
    with pytest.raises(ValueError, match="baseline_values contains NaN"):
        learned.estimate(
            _loss,
            scores,
            ONEHOT,
            n_samples=2,
            tau=1.0,
            generator=None,
            baseline_values=torch.tensor(float("nan")),
        )


# --- non-finite losses -----------------------------------------------------------------------


def _poisoned(bad: float, index: int = 1) -> object:
    def loss_fn(x: torch.Tensor) -> torch.Tensor:  # (n_samples, 4, 3) -> (n_samples, 4)
        losses = (x * _W.double()).sum(-1) + 5
        poison = torch.zeros_like(losses)
        poison[0, index] = bad
        return losses + poison

    return loss_fn


@pytest.mark.parametrize(
    ("bad", "counts"), [(float("nan"), "1 NaN, 0 +inf and 0 -inf"), (float("inf"), "0 NaN, 1 +inf")]
)
def test_non_finite_losses_are_an_error_naming_loss_fn(bad: float, counts: str) -> None:
    scores = (0.5 * _W).double().requires_grad_()
    for baseline in BASELINES:
        estimator = Reinforce(baseline=baseline, normalize=True)
        pickgrad.estimate(_poisoned(0.0), scores, ONEHOT, estimator, n_samples=3)
        before = estimator.state_dict()
        with pytest.raises(
            ValueError, match=f"loss_fn returned non-finite losses: {re.escape(counts)}"
        ):
            pickgrad.estimate(_poisoned(bad), scores, ONEHOT, estimator, n_samples=3)
        after = estimator.state_dict()  # the failed call left the running state as it was
        assert before.keys() == after.keys() and len(before) >= 3
        assert all(torch.equal(before[key], after[key]) for key in before)
    with pytest.raises(
        ValueError,
        match="loss_fn returned non-finite losses: 0 NaN, 0 \\+inf and 1 -inf of 12 entries",
    ):
        pickgrad.estimate(_poisoned(-float("inf")), scores, ONEHOT, "st-gumbel", n_samples=3)


@pytest.mark.parametrize("baseline", ["batch", "rloo"])
def test_without_validation_one_inf_loss_stays_contained(baseline: str) -> None:
    """Validation off: the inf entry gets no signal, and other entries' baselines ignore it."""
    estimator = Reinforce(baseline=baseline)
    scores = (0.5 * _W).double().requires_grad_()
    seen: list[torch.Tensor] = []

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return _poisoned(float("inf"))(x)  # type: ignore[operator]

    with pickgrad._validation.validation(False):
        surrogate = pickgrad.estimate(
            loss_fn,
            scores,
            ONEHOT,
            estimator,
            n_samples=3,
            generator=torch.Generator().manual_seed(2),
        )
    assert surrogate.item() == float("inf")  # the value says it
    surrogate.backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    # Every other entry gets the estimate of a baseline over the finite losses only.
    (x,) = seen
    losses = (x * _W.double()).sum(-1) + 5
    finite = torch.ones_like(losses, dtype=torch.bool)
    finite[0, 1] = False
    kept = torch.where(finite, losses, 0.0)
    if baseline == "batch":
        others = (kept.sum() - kept) / (finite.sum() - finite.double())
    else:
        others = (kept.sum(0) - kept) / (finite.sum(0) - finite.double())
    advantage = torch.where(finite, losses - others, 0.0)[..., None]
    expected = (advantage * (x - torch.softmax(scores.detach(), -1))).sum(0) / losses.numel()
    torch.testing.assert_close(scores.grad, expected)


def test_without_validation_the_ema_and_the_normalisation_skip_non_finite_losses() -> None:
    ema = Reinforce(baseline="ema", normalize=True)
    scores = (0.5 * _W).double().requires_grad_()
    clean = pickgrad.estimate(_poisoned(0.0), scores, ONEHOT, ema, n_samples=3)
    before = ema.state_dict()
    with pickgrad._validation.validation(False):
        for bad in (float("nan"), float("inf")):

            def all_bad(x: torch.Tensor, bad: float = bad) -> torch.Tensor:
                return torch.full(x.shape[:2], bad, dtype=x.dtype)

            pickgrad.estimate(all_bad, scores, ONEHOT, ema, n_samples=3)
    after = ema.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert ema.ema == pytest.approx(float(clean.detach()))
    # One bad entry among good ones: the average moves with the finite ones only.
    with pickgrad._validation.validation(False):
        pickgrad.estimate(_poisoned(float("nan")), scores, ONEHOT, ema, n_samples=3)
    assert ema.ema is not None and torch.isfinite(torch.tensor(ema.ema))
    assert ema.running_std is not None and torch.isfinite(torch.tensor(ema.running_std))


def test_public_estimate_passes_baseline_values_through() -> None:
    scores = torch.randn(3, 4)
    baseline = torch.randn(3)
    grads = []
    for call in ("public", "object"):
        leaf, b = scores.clone().requires_grad_(True), baseline.clone().requires_grad_(True)
        estimator = pickgrad.Reinforce(baseline="learned")
        loss_fn = lambda x: (x * torch.arange(4.0)).sum(-1)  # noqa: E731
        gen = torch.Generator().manual_seed(7)
        if call == "public":
            out = pickgrad.estimate(
                loss_fn,
                leaf,
                pickgrad.OneHot(),
                estimator,
                n_samples=3,
                generator=gen,
                baseline_values=b,
            )
        else:
            out = estimator.estimate(
                loss_fn,
                leaf,
                pickgrad.OneHot(),
                n_samples=3,
                tau=1.0,
                generator=gen,
                baseline_values=b,
            )
        out.backward()
        grads.append((leaf.grad, b.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    with pytest.raises(TypeError, match="baseline_values"):
        pickgrad.estimate(
            lambda x: x.sum(-1), scores, pickgrad.OneHot(), "st-gumbel", baseline_values=baseline
        )
