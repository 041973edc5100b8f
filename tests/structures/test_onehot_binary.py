"""OneHot over two classes: the closed-form (logistic) paths of st-gumbel and gumbel-rao.

At n = 2 the fused paths draw ``L = G_1 - G_0`` (logistic) directly, and given the argmax the
chosen class's lead by one inverse-CDF uniform (a truncated logistic). Another stream than the
generic composition, the same law: checked here against exact probabilities, replays of the
draws, the conditional law of the joint draws, and the generic path's mean gradient. Also
reinforce's draws without noise (``_perturb_argmax_log_prob``: one uniform per row, at any
n) and their log-probabilities.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import pickgrad
from pickgrad import OneHot
from pickgrad.noise import sample_gumbel
from pickgrad.structures.base import Structure

f64 = torch.float64
ONEHOT = OneHot()


class GenericOneHot(OneHot):
    """OneHot without its fused fast paths: the estimators take the generic composition."""

    _perturb_argmax_log_prob = Structure._perturb_argmax_log_prob
    _perturb_argmax_relax = Structure._perturb_argmax_relax
    _conditional_mean_relax = Structure._conditional_mean_relax


def _scores(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, 2, dtype=f64, generator=torch.Generator().manual_seed(seed))


def _draws(base: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """reinforce's fused draws of ``base.expand(shape)``, whose log-probabilities are checked
    against ``_perturb_log_prob`` at the same picks, in value and in gradient."""
    leaf = base.clone().requires_grad_()
    fused = ONEHOT._perturb_argmax_log_prob(leaf.expand(shape), generator)
    assert fused is not None
    x, log_p = fused
    assert x.dtype == base.dtype and x.shape == shape and log_p.shape == shape[:-1]
    reference = ONEHOT._perturb_log_prob(leaf.expand(shape), x)
    torch.testing.assert_close(log_p, reference, rtol=1e-6, atol=1e-6)
    weights = torch.randn(log_p.shape, generator=torch.Generator().manual_seed(0)).to(log_p.dtype)
    ours = torch.autograd.grad((log_p.nan_to_num(neginf=0) * weights).sum(), leaf)[0]
    expected = torch.autograd.grad((reference.nan_to_num(neginf=0) * weights).sum(), leaf)[0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    return x


def _logistic_replay(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, dtype=f64, generator=generator)
    return torch.log(u.clamp_min(torch.finfo(f64).tiny)) - torch.log1p(-u)


def _conditional_leads_replay(
    d: torch.Tensor, one: torch.Tensor, n_draws: int, generator: torch.Generator
) -> torch.Tensor:
    """z_k = d + L_k given the argmax, in the log form (independent of the path's ratio form)."""
    e = torch.where(one, d, -d)
    v = torch.rand((n_draws, *d.shape), dtype=f64, generator=generator)
    lead = torch.nn.functional.softplus(e) - v.log() + torch.log1p(-torch.sigmoid(e) * v)
    return torch.where(one, lead, -lead)


def _relax_jacobian(noise: torch.Tensor, scores: torch.Tensor, tau: float) -> torch.Tensor:
    """d/dscores of mean_k sum(w * relax(scores + noise_k)), for a fixed weight vector w."""
    weights = torch.tensor([0.3, -1.7], dtype=f64)
    leaf = scores.clone().requires_grad_()
    soft = ONEHOT.relax(leaf + noise, tau)
    soft = soft.mean(0) if noise.dim() > scores.dim() else soft
    (grad,) = torch.autograd.grad((soft * weights).sum(), leaf)
    return grad


def _estimator_gradient(
    scores: torch.Tensor, estimator: str, tau: float, seed: int, **options: object
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = torch.tensor([0.3, -1.7], dtype=f64)
    leaf = scores.clone().requires_grad_()
    x = pickgrad.select(
        leaf, ONEHOT, estimator, tau=tau, generator=torch.Generator().manual_seed(seed), **options
    )
    (grad,) = torch.autograd.grad((x * weights).sum(), leaf)
    return x.detach(), grad


@pytest.mark.parametrize("tau", [0.3, 0.5, 1.0])
def test_binary_st_gumbel_is_the_relax_jacobian_at_its_logistic_draw(tau: float) -> None:
    scores = _scores(7, 3)
    x, grad = _estimator_gradient(scores, "st-gumbel", tau, seed=5)
    logistic = _logistic_replay((7, 3), torch.Generator().manual_seed(5))
    noise = torch.stack([torch.zeros_like(logistic), logistic], -1)  # only G_1 - G_0 matters
    assert torch.equal(x, ONEHOT.argmax(scores + noise))
    torch.testing.assert_close(grad, _relax_jacobian(noise, scores, tau), rtol=1e-12, atol=1e-14)


def test_binary_st_gumbel_samples_have_the_softmax_law() -> None:
    scores = torch.tensor([[-2.0, 1.0], [0.3, 0.0], [4.0, 0.5]], dtype=f64)
    draws = 20_000
    x = pickgrad.select(
        scores.expand(draws, 3, 2), ONEHOT, "st-gumbel", generator=torch.Generator().manual_seed(1)
    )
    ones = x[..., 1].sum(0)
    p = torch.softmax(scores, -1)[:, 1]
    z = (ones - draws * p) / torch.sqrt(draws * p * (1 - p))
    assert float(z.abs().max()) < stats.norm.ppf(1 - 1e-3 / 6)


@pytest.mark.parametrize(("tau", "n_draws"), [(0.5, 1), (0.5, 10), (0.7, 4), (1.0, 3)])
def test_binary_gumbel_rao_is_the_mean_relax_jacobian_at_its_conditional_draws(
    tau: float, n_draws: int
) -> None:
    scores = _scores(5, 4, seed=2)
    x, grad = _estimator_gradient(scores, "gumbel-rao", tau, seed=9, n_draws=n_draws)
    # Replay: the forward noise (sample_gumbel), then one uniform per draw and slot.
    generator = torch.Generator().manual_seed(9)
    forward = sample_gumbel(scores.shape, dtype=f64, device=scores.device, generator=generator)
    assert torch.equal(x, ONEHOT.argmax(scores + forward))
    d = scores[..., 1] - scores[..., 0]
    z = _conditional_leads_replay(d, x[..., 1] != 0, n_draws, generator)
    noise = torch.stack([torch.zeros_like(z), z - d], -1)
    assert torch.equal(ONEHOT.argmax(scores + noise), x.expand_as(noise))  # the draws keep x
    torch.testing.assert_close(grad, _relax_jacobian(noise, scores, tau), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("chosen", [0, 1])
def test_binary_conditional_leads_have_the_law_of_joint_draws_given_the_argmax(
    chosen: int,
) -> None:
    d = torch.tensor(0.8, dtype=f64)
    generator = torch.Generator().manual_seed(3 + chosen)
    joint = d + _logistic_replay((60_000,), generator)
    given = joint[(joint > 0) == bool(chosen)][:8000]
    one = torch.tensor(bool(chosen))
    conditional = _conditional_leads_replay(d, one, 8000, generator)
    # The path's own ratio form: r = exp(-|z|) of the same uniforms.
    from pickgrad.structures.onehot import _conditional_ratios

    ratios = torch.cat(list(_conditional_ratios(d, one, 8000, torch.Generator().manual_seed(7))))
    own = -ratios.log() * (1 if chosen else -1)
    replay = _conditional_leads_replay(d, one, 8000, torch.Generator().manual_seed(7))
    torch.testing.assert_close(own, replay, rtol=1e-9, atol=1e-12)
    assert stats.ks_2samp(given.numpy(), conditional.numpy(), method="asymp").pvalue > 1e-3


@pytest.mark.parametrize(
    ("estimator", "options"), [("st-gumbel", {}), ("gumbel-rao", {"n_draws": 3})]
)
def test_binary_paths_have_the_mean_gradient_of_the_generic_composition(
    estimator: str, options: dict[str, int]
) -> None:
    scores = torch.tensor([[-1.0, 0.5], [0.2, 0.0], [2.0, -1.0]], dtype=f64)
    draws = 20_000
    weights = torch.tensor([0.3, -1.7], dtype=f64)
    results = []
    for structure in (ONEHOT, GenericOneHot()):
        leaf = scores.expand(draws, 3, 2).clone().requires_grad_()
        x = pickgrad.select(
            leaf, structure, estimator, tau=0.5, generator=torch.Generator().manual_seed(11),
            **options,
        )  # fmt: skip
        (x * weights).sum().backward()
        assert leaf.grad is not None
        results.append((x.detach()[..., 1], leaf.grad[..., 1]))
    (x_fast, g_fast), (x_generic, g_generic) = results
    for fast, generic in ((x_fast, x_generic), (g_fast, g_generic)):
        error = torch.sqrt((fast.var(0) + generic.var(0)) / draws)
        z = (fast.mean(0) - generic.mean(0)) / error
        assert float(z.abs().max()) < stats.norm.ppf(1 - 1e-3 / 12)


def test_binary_st_gumbel_double_backward_passes_gradgradcheck() -> None:
    scores = _scores(3, seed=4).requires_grad_()
    weights = torch.tensor([0.3, -1.7], dtype=f64)

    def first(s: torch.Tensor) -> torch.Tensor:
        x = pickgrad.select(
            s, ONEHOT, "st-gumbel", tau=0.6, generator=torch.Generator().manual_seed(2)
        )
        (grad,) = torch.autograd.grad((x * weights).sum(), s, create_graph=True)
        return grad

    # The logistic draw does not depend on the scores: the first derivative is smooth in them.
    assert torch.autograd.gradcheck(first, (scores,))
    _, plain = _estimator_gradient(scores.detach(), "st-gumbel", 0.6, seed=2)
    torch.testing.assert_close(first(scores).detach(), plain, rtol=1e-12, atol=1e-15)


def test_binary_gumbel_rao_double_backward_holds_the_draws_fixed() -> None:
    scores = _scores(4, seed=6)
    tau, n_draws = 0.5, 5
    leaf = scores.clone().requires_grad_()
    weights = torch.tensor([0.3, -1.7], dtype=f64)
    x = pickgrad.select(
        leaf, ONEHOT, "gumbel-rao", tau=tau, n_draws=n_draws,
        generator=torch.Generator().manual_seed(8),
    )  # fmt: skip
    (grad,) = torch.autograd.grad((x * weights).sum(), leaf, create_graph=True)
    (second,) = torch.autograd.grad(grad.square().sum(), leaf)
    # The same with the draws replayed and held fixed, by autograd through relax.
    generator = torch.Generator().manual_seed(8)
    sample_gumbel(scores.shape, dtype=f64, device=scores.device, generator=generator)
    d = scores[..., 1] - scores[..., 0]
    z = _conditional_leads_replay(d, x.detach()[..., 1] != 0, n_draws, generator)
    noise = torch.stack([torch.zeros_like(z), z - d], -1)
    replay = scores.clone().requires_grad_()
    soft = ONEHOT.relax(replay + noise, tau).mean(0)
    (want,) = torch.autograd.grad((soft * weights).sum(), replay, create_graph=True)
    (want_second,) = torch.autograd.grad(want.square().sum(), replay)
    torch.testing.assert_close(grad.detach(), want.detach(), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(second, want_second, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    ("estimator", "options"), [("st-gumbel", {}), ("gumbel-rao", {"n_draws": 4})]
)
def test_binary_paths_keep_a_masked_class_out_with_zero_gradient(
    estimator: str, options: dict[str, int]
) -> None:
    scores = torch.tensor([[0.5, -math.inf], [-math.inf, -3.0], [0.1, 0.2]], dtype=f64)
    scores = scores.expand(50, 3, 2).clone().requires_grad_()
    x = pickgrad.select(
        scores, ONEHOT, estimator, tau=0.5, generator=torch.Generator().manual_seed(0), **options
    )
    assert bool((x[:, 0] == torch.tensor([1.0, 0.0], dtype=f64)).all())
    assert bool((x[:, 1] == torch.tensor([0.0, 1.0], dtype=f64)).all())
    (x * torch.tensor([0.3, -1.7], dtype=f64)).sum().backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    assert bool((scores.grad[:, :2] == 0).all())
    assert bool((scores.grad[:, 2] != 0).any())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, f64])
def test_argmax_of_two_classes_is_torchs_argmax_with_ties_infinities_and_nan(dtype) -> None:
    special = [1.0, 2.0, -math.inf, math.inf, math.nan]
    pairs = torch.tensor([[a, b] for a in special for b in special], dtype=dtype)
    random = torch.randn(500, 3, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    for scores in (pairs, random, random.round()):  # rounded: many ties
        index = scores.argmax(dim=-1, keepdim=True)
        expected = torch.zeros_like(scores).scatter_(-1, index, 1.0)
        assert torch.equal(ONEHOT._argmax(scores), expected)
    assert torch.equal(ONEHOT.argmax(random), ONEHOT._argmax(random))  # the public method


@pytest.mark.parametrize("n", [2, 5, 20])  # 20: gathered at the picks (long rows)
def test_log_prob_of_expanded_scores_equals_log_softmax_at_the_sample(n) -> None:
    # reinforce passes scores expanded over its samples (stride 0): computed once per row.
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(6, 4, n, dtype=f64, generator=generator)
    scores[0, 0, 0] = -math.inf  # a masked class
    leaf = scores.clone().requires_grad_()
    expanded = leaf.expand(3, *scores.shape)
    x = ONEHOT._argmax(expanded + sample_gumbel(expanded.shape, dtype=f64, device="cpu"))
    ours = ONEHOT._perturb_log_prob(expanded, x)
    reference = (torch.log_softmax(scores, -1).nan_to_num(neginf=0.0) * x).sum(-1)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(ours.sum(), leaf)
    other = scores.clone().requires_grad_()
    (expected,) = torch.autograd.grad(
        torch.where(x != 0, torch.log_softmax(other, -1), 0.0).sum(), other
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, f64])
def test_binary_fused_draws_have_the_softmax_law_on_expanded_scores(dtype) -> None:
    # One uniform per slot against sigmoid(d): reinforce's draws at two classes.
    scores = torch.tensor([[-2.0, 1.0], [0.3, 0.0], [4.0, 0.5], [0.0, -math.inf]], dtype=dtype)
    draws = 20_000
    x = _draws(scores, (draws, 4, 2), torch.Generator().manual_seed(2))
    assert x is not None and x.dtype == dtype and x.shape == (draws, 4, 2)
    assert bool((x.sum(-1) == 1).all())
    assert bool((x[:, 3, 0] == 1).all())  # the masked class never wins
    ones = x[:, :3, 1].double().sum(0)
    p = torch.softmax(scores[:3].double(), -1)[:, 1]
    z = (ones - draws * p) / torch.sqrt(draws * p * (1 - p))
    assert float(z.abs().max()) < stats.norm.ppf(1 - 1e-3 / 6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, f64])
def test_fused_draws_of_more_classes_have_the_softmax_law(dtype) -> None:
    # Inverse CDF: one uniform per row against the softmax's cumulative sum.
    scores = torch.tensor(
        [
            [-2.0, 1.0, 0.0],
            [0.3, -math.inf, 0.0],
            [4.0, 0.5, -math.inf],
            [-math.inf, -math.inf, 2.0],
        ],
        dtype=dtype,
    )
    draws = 20_000
    x = _draws(scores, (draws, 4, 3), torch.Generator().manual_seed(4))
    assert x is not None and x.dtype == dtype and x.shape == (draws, 4, 3)
    assert bool(((x == 0) | (x == 1)).all()) and bool((x.sum(-1) == 1).all())
    assert bool((x[:, scores == -math.inf] == 0).all())  # masked items never win
    p = torch.softmax(scores.double(), -1)
    counts = x.double().sum(0)
    inside = (p > 0) & (p < 1)
    z = (counts - draws * p)[inside] / torch.sqrt(draws * p * (1 - p))[inside]
    assert float(z.abs().max()) < stats.norm.ppf(1 - 1e-3 / int(inside.sum()))
    # Scores that are not expanded: one draw per row, the same kind of one-hot.
    once = _draws(scores.repeat(5, 1, 1), (5, 4, 3), torch.Generator().manual_seed(0))
    assert once is not None and bool((once.sum(-1) == 1).all())


@pytest.mark.parametrize("expanded_dim", [0, 1])
def test_fused_draws_search_long_rows_with_the_draws_of_the_comparison(
    monkeypatch: pytest.MonkeyPatch, expanded_dim: int
) -> None:
    # Rows of more than _COMPARED_ROWS items are binary-searched: the same uniforms, the same
    # picks as comparing every item, also where the samples' dimension is not the first.
    from pickgrad.structures import onehot

    scores = torch.randn(6, 20, dtype=f64, generator=torch.Generator().manual_seed(8))
    scores[:, [0, 7, 19]] = -math.inf  # masked first, middle and last items
    scores[2, 8:] = -math.inf
    base = scores.unsqueeze(expanded_dim)
    shape = (50, 6, 20) if expanded_dim == 0 else (6, 50, 20)
    searched = _draws(base, shape, torch.Generator().manual_seed(3))
    monkeypatch.setattr(onehot, "_COMPARED_ROWS", 64)
    compared = _draws(base, shape, torch.Generator().manual_seed(3))
    assert torch.equal(searched, compared)
    assert bool((searched.sum(-1) == 1).all())
    assert bool((searched[..., [0, 7, 19]] == 0).all())


def test_fused_draws_are_left_to_the_generic_path_where_it_does_not_apply() -> None:
    generator = torch.Generator().manual_seed(0)
    assert GenericOneHot()._perturb_argmax_log_prob(torch.zeros(4, 2), generator) is None
    drawn = torch.func.vmap(
        lambda s: torch.tensor(ONEHOT._perturb_argmax_log_prob(s, None) is None), randomness="same"
    )(torch.zeros(3, 4, 2))
    assert bool(drawn.all())  # under a transform: the generic composition


@pytest.mark.parametrize("n", [2, 4])
def test_reinforce_is_unbiased_with_the_fused_draws(n) -> None:
    # Exact gradient of E[loss(x)] by enumeration of the n classes of each of 3 slots.
    scores = torch.randn(3, n, dtype=f64, generator=torch.Generator().manual_seed(6))
    weights = torch.randn(3, n, dtype=f64, generator=torch.Generator().manual_seed(7))
    leaf = scores.clone().requires_grad_()
    # (sum_s w_s . x_s)^2 is not linear in x: E over the product law by its n^3 joint picks.
    picks = ONEHOT.enumerate((3, n), dtype=f64)
    log_p = (torch.log_softmax(leaf, -1) * picks).sum((-1, -2))
    exact = (log_p.exp() * (picks * weights).sum((-1, -2)).square()).sum()
    (expected,) = torch.autograd.grad(exact, leaf)
    estimates = []
    for structure in (ONEHOT, GenericOneHot()):
        leaf = scores.expand(4000, 3, n).clone().requires_grad_()
        surrogate = pickgrad.estimate(
            lambda x: (x * weights).sum(-1).sum(-1).square(), leaf, structure, "reinforce",
            n_samples=4, generator=torch.Generator().manual_seed(5),
        )  # fmt: skip
        surrogate.backward()
        assert leaf.grad is not None
        estimates.append(leaf.grad * 4000)  # per-row gradients of the mean surrogate
    for grads in estimates:
        error = grads.std(0) / math.sqrt(grads.shape[0])
        z = (grads.mean(0) - expected) / error.clamp_min(1e-12)
        assert float(z.abs().max()) < stats.norm.ppf(1 - 1e-3 / 12)
