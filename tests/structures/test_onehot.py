"""OneHot against brute-force enumeration, plus the law of its conditional Gumbel sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from pickgrad import OneHot
from pickgrad.noise import sample_gumbel
from pickgrad.structures.onehot import sparsemax

ONEHOT = OneHot()

batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


def _random_scores(shape: tuple[int, ...], seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


def _joint_values(scores: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """<scores, x> for every enumerated joint pick x: ``(*batch, count)``."""
    return torch.einsum("...sn,ksn->...k", scores, picks.to(scores.dtype))


# --- enumerate -----------------------------------------------------------------------------------


@given(slots=st.integers(1, 3), n=st.integers(1, 4))
def test_enumerate_gives_every_joint_pick_once(slots: int, n: int) -> None:
    picks = ONEHOT.enumerate((slots, n), dtype=torch.float64)
    assert picks.shape == (n**slots, slots, n)
    assert picks.dtype == torch.float64
    # Every slot is exactly one-hot.
    assert torch.all((picks == 0) | (picks == 1))
    assert torch.all(picks.sum(-1) == 1)
    # All joint picks are distinct, hence all n ** S of them are there.
    assert torch.unique(picks.reshape(n**slots, -1), dim=0).shape[0] == n**slots


def test_enumerate_single_slot_is_identity_and_respects_dtype() -> None:
    assert torch.equal(ONEHOT.enumerate((4,)), torch.eye(4))
    assert ONEHOT.enumerate((3,), dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("event_shape", [(), (0,), (2, 0)])
def test_enumerate_rejects_bad_event_shape(event_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="event_shape"):
        ONEHOT.enumerate(event_shape)


# --- argmax --------------------------------------------------------------------------------------


@given(batch=batch_shapes, slots=st.integers(1, 3), n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_argmax_is_the_best_enumerated_pick(
    batch: tuple[int, ...], slots: int, n: int, seed: int
) -> None:
    scores = _random_scores((*batch, slots, n), seed)
    x = ONEHOT.argmax(scores)
    assert x.shape == scores.shape and x.dtype == scores.dtype
    picks = ONEHOT.enumerate((slots, n), dtype=torch.float64)
    best = _joint_values(scores, picks).max(-1).values
    # The argmax attains the best enumerated value, and is itself one of the enumerated picks.
    torch.testing.assert_close((scores * x).sum((-2, -1)), best, rtol=0, atol=1e-12)
    flat = x.reshape(-1, slots * n)
    is_pick = (flat[:, None, :] == picks.reshape(1, -1, slots * n)).all(-1).any(-1)
    assert bool(is_pick.all())


@given(batch=batch_shapes, n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_argmax_ties_go_to_the_lowest_index(batch: tuple[int, ...], n: int, seed: int) -> None:
    # Scores drawn from {0, 1, 2}: ties are frequent.
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (*batch, n), generator=generator).double()
    x = ONEHOT.argmax(scores)
    first_max = (scores == scores.max(-1, keepdim=True).values).double().argmax(-1)
    assert torch.equal(x.argmax(-1), first_max)
    assert torch.all(x.sum(-1) == 1)


def test_argmax_of_equal_scores_is_item_zero() -> None:
    assert torch.equal(ONEHOT.argmax(torch.zeros(2, 3)), torch.tensor([[1.0, 0, 0], [1, 0, 0]]))


def test_argmax_carries_no_gradient() -> None:
    scores = torch.randn(3, 4, requires_grad=True)
    assert not ONEHOT.argmax(scores).requires_grad


# --- relax ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("regularizer", ["entropy", "sparsemax"])
@given(batch=batch_shapes, n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_relax_lies_in_the_simplex(
    regularizer: str, batch: tuple[int, ...], n: int, seed: int
) -> None:
    scores = _random_scores((*batch, n), seed)
    for tau in (0.1, 1.0, 10.0):
        p = ONEHOT.relax(scores, tau, regularizer=regularizer)
        assert p.shape == scores.shape and p.dtype == scores.dtype
        assert bool((p >= 0).all())
        torch.testing.assert_close(p.sum(-1), torch.ones(batch, dtype=torch.float64))


@given(batch=batch_shapes, slots=st.integers(1, 3), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_softmax_relax_is_the_gibbs_marginal_over_enumerated_picks(
    batch: tuple[int, ...], slots: int, n: int, seed: int
) -> None:
    scores = _random_scores((*batch, slots, n), seed)
    picks = ONEHOT.enumerate((slots, n), dtype=torch.float64)
    for tau in (0.3, 1.0, 3.0):
        weights = torch.softmax(_joint_values(scores, picks) / tau, dim=-1)
        marginals = torch.einsum("...k,ksn->...sn", weights, picks)
        torch.testing.assert_close(ONEHOT.relax(scores, tau), marginals)


def test_relax_tends_to_argmax_as_tau_goes_to_zero() -> None:
    scores = _random_scores((5, 3, 6), seed=3)
    hard = ONEHOT.argmax(scores)
    gaps = scores.topk(2, dim=-1).values
    min_gap = float((gaps[..., 0] - gaps[..., 1]).min())
    for regularizer in ("entropy", "sparsemax"):
        distances = []
        for tau in (3.0, 1.0, 0.3, 0.1, 0.03, 0.01):
            relaxed = ONEHOT.relax(scores, tau, regularizer=regularizer)
            distances.append(float((relaxed - hard).abs().max()))
        assert distances == sorted(distances, reverse=True), (regularizer, distances)
        # Softmax: 1 - p_max <= (n - 1) exp(-gap / tau). Sparsemax is exactly hard once gap > tau.
        tau = min_gap / 40
        relaxed = ONEHOT.relax(scores, tau, regularizer=regularizer)
        bound = 2 * 5 * math.exp(-40) if regularizer == "entropy" else 0.0
        assert float((relaxed - hard).abs().max()) <= bound


@given(batch=batch_shapes, n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_sparsemax_is_the_euclidean_projection_onto_the_simplex(
    batch: tuple[int, ...], n: int, seed: int
) -> None:
    # KKT conditions of argmin_{p in simplex} ||p - z||^2: p = max(z - t, 0) for one threshold t.
    z = _random_scores((*batch, n), seed)
    p = sparsemax(z)
    support = p > 0
    assert bool(support.any(-1).all())
    threshold = ((z - p) * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
    torch.testing.assert_close(
        torch.where(support, z - p, threshold.expand_as(z)), threshold.expand_as(z)
    )
    assert bool((z[~support] <= threshold.expand_as(z)[~support] + 1e-12).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(batch, dtype=torch.float64))


def test_sparsemax_backward_passes_gradcheck() -> None:
    z = _random_scores((3, 2, 5), seed=7).requires_grad_()
    # The point must exercise non-trivial supports, where the Jacobian is not zero.
    assert bool(((sparsemax(z) > 0).sum(-1) >= 2).any())
    assert torch.autograd.gradcheck(sparsemax, (z,))
    # Through relax, with a temperature.
    assert torch.autograd.gradcheck(lambda s: ONEHOT.relax(s, 0.7, regularizer="sparsemax"), (z,))


def test_sparsemax_relax_handles_half_precision() -> None:
    scores = _random_scores((4, 5), seed=2)
    for dtype in (torch.float16, torch.bfloat16):
        p = ONEHOT.relax(scores.to(dtype), 0.5, regularizer="sparsemax")
        assert p.dtype == dtype
        torch.testing.assert_close(
            p.double(), ONEHOT.relax(scores, 0.5, regularizer="sparsemax"), atol=2e-2, rtol=0
        )


def test_relax_rejects_unknown_regularizer() -> None:
    with pytest.raises(ValueError, match=r"regularizer.*'l2'"):
        ONEHOT.relax(torch.zeros(3), regularizer="l2")


# --- log_partition and perturb_log_prob ----------------------------------------------------------


@given(batch=batch_shapes, slots=st.integers(1, 3), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_log_partition_is_logsumexp_over_enumerated_picks(
    batch: tuple[int, ...], slots: int, n: int, seed: int
) -> None:
    scores = _random_scores((*batch, slots, n), seed)
    picks = ONEHOT.enumerate((slots, n), dtype=torch.float64)
    for tau in (0.5, 1.0, 2.0):
        log_z = ONEHOT.log_partition(scores, tau)
        assert log_z.shape == (*batch, slots)
        # Slots are independent: the joint log-partition is the sum over slots.
        expected = torch.logsumexp(_joint_values(scores, picks) / tau, dim=-1)
        torch.testing.assert_close(log_z.sum(-1), expected)


@given(batch=batch_shapes, n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_perturb_log_prob_is_log_softmax_and_normalised(
    batch: tuple[int, ...], n: int, seed: int
) -> None:
    scores = _random_scores((*batch, n), seed)
    picks = ONEHOT.enumerate((n,), dtype=torch.float64)  # (n, n)
    expanded = scores.unsqueeze(-2).expand(*batch, n, n)
    log_p = ONEHOT.perturb_log_prob(expanded, picks.expand_as(expanded))  # (*batch, n)
    torch.testing.assert_close(log_p, torch.log_softmax(scores, -1))
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(batch, dtype=torch.float64))


def test_perturb_log_prob_rejects_mismatched_x() -> None:
    with pytest.raises(ValueError, match="x must have the shape of scores"):
        ONEHOT.perturb_log_prob(torch.zeros(2, 3), torch.zeros(3))


# --- conditional Gumbel --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(
    batch=batch_shapes,
    n=st.integers(1, 6),
    n_draws=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_conditional_gumbel_keeps_the_argmax(
    dtype: torch.dtype, batch: tuple[int, ...], n: int, n_draws: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = (4 * torch.randn((*batch, n), generator=generator, dtype=torch.float64)).to(dtype)
    # Condition on arbitrary picks, including very unlikely ones.
    index = torch.randint(0, n, (*batch, 1), generator=generator)
    x = torch.zeros_like(scores).scatter_(-1, index, 1.0)
    noise = ONEHOT.conditional_gumbel(scores, x, n_draws, generator=generator)
    assert noise.shape == (n_draws, *scores.shape) and noise.dtype == dtype
    assert bool(torch.isfinite(noise).all())
    assert torch.equal(ONEHOT.argmax(scores + noise), x.expand_as(noise))


def test_conditional_gumbel_has_the_conditional_law() -> None:
    """E[f(G) | argmax(s + G) = i] from joint draws equals the conditional sampler's mean.

    f ranges over G_j and exp(-G_j) for every coordinate j; each comparison is a two-sample z-test
    with standard errors measured from the draws, Bonferroni-corrected over all comparisons.
    """
    scores = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64)
    n = scores.shape[0]
    generator = torch.Generator().manual_seed(2024)
    joint = sample_gumbel(
        (200_000, n), dtype=torch.float64, device=scores.device, generator=generator
    )
    picked = (scores + joint).argmax(-1)

    def features(g: torch.Tensor) -> torch.Tensor:
        return torch.cat([g, torch.exp(-g)], dim=-1)

    n_tests = n * 2 * n
    z_max = stats.norm.ppf(1 - 1e-3 / (2 * n_tests))
    worst = 0.0
    for i in range(n):
        from_joint = features(joint[picked == i])
        x = torch.zeros(n, dtype=torch.float64)
        x[i] = 1
        conditional = features(ONEHOT.conditional_gumbel(scores, x, 50_000, generator=generator))
        difference = from_joint.mean(0) - conditional.mean(0)
        standard_error = (
            from_joint.var(0) / from_joint.shape[0] + conditional.var(0) / conditional.shape[0]
        ).sqrt()
        z = (difference / standard_error).abs()
        worst = max(worst, float(z.max()))
        assert bool((z < z_max).all()), f"pick {i}: z-scores {z.tolist()} exceed {z_max:.2f}"
        # Power check: the standard errors are small against the effect of conditioning.
        assert float(standard_error[:n].max()) < 0.02
    assert worst > 0  # the comparison ran


def test_conditional_gumbel_is_reproducible_and_validates() -> None:
    scores = torch.randn(3, 4)
    x = ONEHOT.argmax(scores)
    first = ONEHOT.conditional_gumbel(scores, x, 2, generator=torch.Generator().manual_seed(5))
    second = ONEHOT.conditional_gumbel(scores, x, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    with pytest.raises(ValueError, match="n_draws"):
        ONEHOT.conditional_gumbel(scores, x, 0)
    with pytest.raises(ValueError, match="x must have the shape of scores"):
        ONEHOT.conditional_gumbel(scores, x[0], 1)
