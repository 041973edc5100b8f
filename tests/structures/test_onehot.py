"""OneHot against brute-force enumeration, plus the law of its conditional Gumbel sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import pickgrad
from pickgrad import OneHot, validation
from pickgrad._validation import compute_dtype
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


# --- numerical extremes: half precision, shifts, ties, large |scores| / tau ----------------------

HALF_TYPES = (torch.float16, torch.bfloat16)
REGULARIZERS = ("entropy", "sparsemax")
#: Largest absolute error of a value in [0, 1] rounded to each dtype, with some slack.
ROUNDING = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}

leading_dims = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_half_relax_upcasts_before_dividing_by_tau(dtype: torch.dtype, regularizer: str) -> None:
    scores = torch.tensor([[700.0, 0.0, -5.0], [0.0, -5.0, 700.0]], dtype=dtype)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    # Public method and the private hook the estimators call.
    for p in (
        ONEHOT.relax(scores, 0.01, regularizer=regularizer),
        ONEHOT._relax(scores, 0.01, regularizer=regularizer),
    ):
        assert p.dtype == dtype
        assert torch.equal(p, expected)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("dtype", [*HALF_TYPES, torch.float32])
@given(
    batch=leading_dims,
    n=st.integers(1, 8),
    log_scale=st.floats(-3, 4),
    log_tau=st.floats(-2, 2),
    offset=st.sampled_from([0.0, 1.0, -1.0]),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_relax_matches_float64_and_stays_in_the_simplex(
    regularizer: str,
    dtype: torch.dtype,
    batch: tuple[int, ...],
    n: int,
    log_scale: float,
    log_tau: float,
    offset: float,
    ties: bool,
    seed: int,
) -> None:
    scale, tau = 10.0**log_scale, 10.0**log_tau
    scores = scale * _random_scores((*batch, n), seed)
    if ties:  # exact ties: items repeat in each row
        scores = scores[..., :1].expand_as(scores).clone()
        scores[..., ::2] -= scale
    scores = scores + offset * scale * 10  # a large common offset, 10x the spread
    # Keep |scores| / tau within 1e6 and the scores within the dtype.
    limit = min(1e6 * tau, 0.5 * torch.finfo(dtype).max)
    scores = scores.clamp(-limit, limit).to(dtype)
    p = ONEHOT.relax(scores, tau, regularizer=regularizer)
    reference = ONEHOT.relax(scores.double(), tau, regularizer=regularizer)
    assert p.shape == scores.shape and p.dtype == dtype
    assert bool(((p >= 0) & (p <= 1)).all())
    tolerance = ROUNDING[dtype]
    torch.testing.assert_close(p.double(), reference, atol=tolerance, rtol=0)
    torch.testing.assert_close(
        p.double().sum(-1), torch.ones(batch, dtype=torch.float64), atol=n * tolerance, rtol=0
    )


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relax_is_exactly_invariant_to_a_representable_shift(
    regularizer: str, dtype: torch.dtype
) -> None:
    # Quarter-integers plus 2**14: every sum and difference is exact, so the result must be too.
    scores = (torch.randint(-40, 40, (3, 4, 6)) / 4).to(dtype)
    row_shift = torch.tensor([[2.0**14], [-(2.0**14)], [0.0], [2.0**10]], dtype=dtype)
    for tau in (0.01, 0.3, 1.0, 50.0):
        base = ONEHOT.relax(scores, tau, regularizer=regularizer)
        assert torch.equal(ONEHOT.relax(scores + 2.0**14, tau, regularizer=regularizer), base)
        assert torch.equal(ONEHOT.relax(scores + row_shift, tau, regularizer=regularizer), base)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_float32_relax_at_a_large_offset_matches_float64(regularizer: str) -> None:
    scores = (1e4 + torch.randn(64, 7, dtype=torch.float64) * 0.05).float()
    for tau in (0.01, 0.1, 1.0):
        p = ONEHOT.relax(scores, tau, regularizer=regularizer)
        reference = ONEHOT.relax(scores.double(), tau, regularizer=regularizer)
        torch.testing.assert_close(p.double(), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("dtype", [*HALF_TYPES, torch.float32, torch.float64])
def test_tied_scores_at_a_large_offset_are_uniform(regularizer: str, dtype: torch.dtype) -> None:
    scores = torch.full((2, 5), 1e4, dtype=dtype)
    p = ONEHOT.relax(scores, 0.01, regularizer=regularizer)
    assert torch.equal(p, torch.full((2, 5), 0.2, dtype=dtype))


def _smallest_allowed_tau(scores: torch.Tensor) -> float:
    """The smallest tau the range check lets through for ``scores``, with 1% to spare."""
    limit = torch.finfo(compute_dtype(scores.dtype)).max
    return 1.01 * float(scores.double().abs().max()) * scores.shape[-1] / limit


@pytest.mark.parametrize("dtype", [*HALF_TYPES, torch.float32, torch.float64])
@pytest.mark.parametrize("top", [6e4, 1e30])
def test_relax_never_gives_nan_down_to_the_smallest_allowed_tau(
    dtype: torch.dtype, top: float
) -> None:
    top = min(top, float(torch.finfo(dtype).max))
    scores = torch.tensor([[top, 0.0, -top], [-top, -top, -top], [1.0, 1.0, -top]], dtype=dtype)
    smallest = _smallest_allowed_tau(scores)
    with pytest.raises(ValueError, match="too small for scores"):
        ONEHOT.relax(scores, smallest / 1.1)
    for tau in (smallest, 1e-3, 1.0, 1e20):
        for regularizer in REGULARIZERS:
            p = ONEHOT.relax(scores, max(tau, smallest), regularizer=regularizer)
            assert bool(torch.isfinite(p).all()), (tau, regularizer, p)
            assert torch.equal(p[0], torch.tensor([1.0, 0.0, 0.0], dtype=dtype)) or tau > 1
            torch.testing.assert_close(
                p.double().sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-2, rtol=0
            )


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_half_log_partition_is_float32_and_finite(dtype: torch.dtype) -> None:
    scores = torch.tensor([[6e4, 0.0, -6e4], [1.0, 2.0, 3.0]], dtype=dtype)
    log_z = ONEHOT.log_partition(scores, 0.01)
    assert log_z.dtype == torch.float32
    expected = torch.logsumexp(scores.double() / 0.01, -1)
    torch.testing.assert_close(log_z.double(), expected, rtol=1e-6, atol=1e-4)
    # The private hook gives the same (estimators call it directly).
    assert torch.equal(ONEHOT._log_partition(scores, 0.01), log_z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_partition_at_large_offsets_matches_float64(dtype: torch.dtype) -> None:
    scores = (1e4 + torch.randn(8, 5, dtype=torch.float64)).to(dtype)
    for tau in (0.01, 1.0, 100.0):
        log_z = ONEHOT.log_partition(scores, tau)
        assert log_z.dtype == dtype
        expected = torch.logsumexp(scores.double() / tau, -1)
        torch.testing.assert_close(log_z.double(), expected, rtol=2e-7, atol=0)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_half_perturb_log_prob_is_float32_and_finite(dtype: torch.dtype) -> None:
    scores = torch.tensor([6e4, -6e4, 0.0], dtype=dtype)  # log p = -1.2e5: beyond float16
    x = torch.tensor([0.0, 1.0, 0.0], dtype=dtype)
    log_p = ONEHOT.perturb_log_prob(scores, x)
    assert log_p.dtype == torch.float32 and bool(torch.isfinite(log_p))
    torch.testing.assert_close(log_p.double(), -2 * scores[0].double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("batch", [(0,), (2, 0), (0, 3, 1)])
def test_empty_batches_keep_their_shape(batch: tuple[int, ...]) -> None:
    scores = torch.zeros(*batch, 4)
    assert ONEHOT.argmax(scores).shape == scores.shape
    for regularizer in REGULARIZERS:
        assert ONEHOT.relax(scores, 0.5, regularizer=regularizer).shape == scores.shape
    assert ONEHOT.log_partition(scores, 0.5).shape == batch
    x = ONEHOT.argmax(scores)
    assert ONEHOT.perturb_log_prob(scores, x).shape == batch
    assert ONEHOT.conditional_gumbel(scores, x, 2).shape == (2, *scores.shape)


def test_public_sparsemax_checks_its_input_and_keeps_half_dtypes() -> None:
    with pytest.raises(ValueError, match=r"z contains non-finite values \(1 NaN"):
        sparsemax(torch.tensor([0.0, math.nan]))
    for dtype, z, expected in (
        (torch.float16, [700.0, 699.5, -5.0], [0.75, 0.25, 0.0]),
        (torch.bfloat16, [704.0, 704.0, -5.0], [0.5, 0.5, 0.0]),
    ):
        p = sparsemax(torch.tensor(z, dtype=dtype))
        assert p.dtype == dtype
        assert torch.equal(p, torch.tensor(expected, dtype=dtype))


def test_sparsemax_with_validation_off_never_raises_an_index_error() -> None:
    with validation(False):
        p = sparsemax(torch.tensor([[0.0, math.nan, 1.0], [math.inf, 0.0, 0.0]]))
    assert p.shape == (2, 3)


def test_conditional_gumbel_is_exactly_invariant_to_a_representable_shift() -> None:
    scores = torch.randint(-40, 40, (5, 6)) / 4
    x = ONEHOT.argmax(torch.randn(5, 6))
    noise = ONEHOT.conditional_gumbel(scores, x, 3, generator=torch.Generator().manual_seed(1))
    shifted = ONEHOT.conditional_gumbel(
        scores + 2.0**14, x, 3, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(noise, shifted)


# --- fused fast paths at the extremes, and every path under no_grad / inference_mode -------------


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
@pytest.mark.parametrize("dtype", [*HALF_TYPES, torch.float32])
@pytest.mark.parametrize("tau", ["smallest", 0.01, 100.0])
def test_fused_paths_are_finite_at_extreme_scores_and_temperatures(
    estimator: str, dtype: torch.dtype, tau: float | str
) -> None:
    top = 6e4 if dtype in HALF_TYPES else 1e4
    base = torch.tensor([[top, 0.0, -top, 1.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    scores = base.to(dtype).requires_grad_()
    tau_value = _smallest_allowed_tau(scores.detach()) if tau == "smallest" else float(tau)
    generator = torch.Generator().manual_seed(3)
    x = pickgrad.select(scores, ONEHOT, estimator, tau=tau_value, generator=generator)
    assert x.dtype == dtype and torch.equal(x.sum(-1), torch.ones(2, dtype=dtype))
    weights = torch.arange(4.0).to(dtype)
    (grad,) = torch.autograd.grad((x * weights).sum(), scores, create_graph=True)
    assert bool(torch.isfinite(grad).all())
    (second,) = torch.autograd.grad(grad.sum(), scores)
    assert bool(torch.isfinite(second).all())
    # The memory-saving first-order backward too.
    x = pickgrad.select(scores, ONEHOT, estimator, tau=tau_value, generator=generator)
    (grad,) = torch.autograd.grad((x * weights).sum(), scores)
    assert bool(torch.isfinite(grad).all())


def _onehot_runs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    scores = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(9))
    x = ONEHOT.argmax(scores)
    runs = {
        "argmax": ONEHOT.argmax(scores),
        "relax": ONEHOT.relax(scores, 0.5),
        "sparsemax": ONEHOT.relax(scores, 0.5, regularizer="sparsemax"),
        "log_partition": ONEHOT.log_partition(scores, 0.5),
        "perturb_log_prob": ONEHOT.perturb_log_prob(scores, x),
        "conditional_gumbel": ONEHOT.conditional_gumbel(scores, x, 2, generator=generator),
    }
    for name in pickgrad.available_estimators(ONEHOT):
        if type(pickgrad.get_estimator(name)).needs_loss:
            runs[name] = pickgrad.estimate(
                lambda s: s.sum((-1, -2)), scores, ONEHOT, name, n_samples=2, generator=generator
            )
        else:
            runs[name] = pickgrad.select(scores, ONEHOT, name, tau=0.5, generator=generator)
    return runs


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_every_path_runs_under_no_grad_and_inference_mode(mode) -> None:  # type: ignore[no-untyped-def]
    expected = _onehot_runs(torch.Generator().manual_seed(4))
    with mode():
        got = _onehot_runs(torch.Generator().manual_seed(4))
    assert got.keys() == expected.keys()
    for name, value in got.items():
        assert not value.requires_grad, name
        torch.testing.assert_close(value, expected[name].detach(), msg=name)


# --- torch.func and torch.compile ----------------------------------------------------------------


def _weights(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(float(n), dtype=dtype)


@pytest.mark.parametrize(
    "method",
    [
        lambda t: ONEHOT.argmax(t),
        lambda t: ONEHOT.relax(t, 0.5),
        lambda t: ONEHOT.relax(t, 0.5, regularizer="sparsemax"),
        lambda t: ONEHOT.log_partition(t, 0.5).unsqueeze(-1),
        lambda t: pickgrad.select(t, ONEHOT, "relaxed", tau=0.5),
    ],
    ids=["argmax", "softmax", "sparsemax", "log_partition", "relaxed"],
)
def test_vmap_grad_and_jacrev_agree_with_batched_eager_calls(method) -> None:  # type: ignore[no-untyped-def]
    scores = _random_scores((3, 2, 5), seed=11)
    torch.testing.assert_close(torch.func.vmap(method)(scores), method(scores))

    def objective(t: torch.Tensor) -> torch.Tensor:
        return (method(t) * _weights(method(t).shape[-1], t.dtype)).sum()

    grad = torch.func.grad(objective)(scores)
    leaf = scores.clone().requires_grad_()
    value = objective(leaf)
    expected = (
        torch.autograd.grad(value, leaf)[0] if value.requires_grad else torch.zeros_like(scores)
    )
    torch.testing.assert_close(grad, expected)
    jacobian = torch.func.jacrev(method)(scores[0, 0])
    assert jacobian.shape == (*method(scores[0, 0]).shape, 5)


def test_gumbel_relaxed_runs_under_vmap_with_different_noise_per_entry() -> None:
    scores = torch.zeros(4, 6, dtype=torch.float64)
    out = torch.func.vmap(
        lambda t: pickgrad.select(t, ONEHOT, "gumbel-relaxed", tau=0.5), randomness="different"
    )(scores)
    assert out.shape == scores.shape
    torch.testing.assert_close(out.sum(-1), torch.ones(4, dtype=torch.float64))
    assert torch.unique(out, dim=0).shape[0] == 4  # four different draws


def test_sample_gumbel_under_vmap_has_the_gumbel_law() -> None:
    draws = torch.func.vmap(
        lambda t: t + sample_gumbel((500,), dtype=torch.float64, device=t.device),
        randomness="different",
    )(torch.zeros(40, 1, dtype=torch.float64))
    assert draws.shape == (40, 500)
    flat = draws.flatten().numpy()
    assert stats.kstest(flat, stats.gumbel_r.cdf).pvalue > 1e-3


# torch 2.13's dynamo warns about instantiating any autograd.Function it traces (its own doing).
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao"])
def test_fused_estimators_compile_to_one_graph_and_match_eager(estimator: str) -> None:
    scores = torch.randn(4, 5, requires_grad=True)
    weights = torch.randn(4, 5)

    def choose(t: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(t, ONEHOT, estimator, tau=0.5)

    torch.manual_seed(1)
    x = choose(scores)
    (grad,) = torch.autograd.grad((x * weights).sum(), scores)
    compiled = torch.compile(choose, fullgraph=True, backend="eager")
    torch.manual_seed(1)
    x_compiled = compiled(scores)
    (grad_compiled,) = torch.autograd.grad((x_compiled * weights).sum(), scores)
    assert torch.equal(x_compiled, x)
    torch.testing.assert_close(grad_compiled, grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_half_conditional_gumbel_is_float32_and_keeps_even_unlikely_argmaxes(
    dtype: torch.dtype,
) -> None:
    scores = torch.tensor([[6e4, -6e4, 0.0], [1.0, 2.0, 3.0]], dtype=dtype)
    x = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=dtype)
    noise = ONEHOT.conditional_gumbel(scores, x, 4, generator=torch.Generator().manual_seed(0))
    assert noise.dtype == torch.float32 and bool(torch.isfinite(noise).all())
    assert torch.equal(ONEHOT.argmax(scores.float() + noise), x.float().expand(4, 2, 3))


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_generic_gumbel_rao_on_half_scores_is_finite_and_half(dtype: torch.dtype) -> None:
    class Plain(OneHot):  # a subclass with its own relax: no fused path
        def _relax(
            self, scores: torch.Tensor, tau: float, regularizer: str = "entropy"
        ) -> torch.Tensor:
            return super()._relax(scores, tau, regularizer)

    scores = torch.tensor([[6e4, -6e4, 0.0, 1.0]], dtype=dtype, requires_grad=True)
    x = pickgrad.select(scores, Plain(), "gumbel-rao", tau=0.5)
    assert x.dtype == dtype
    (grad,) = torch.autograd.grad((x * torch.arange(4.0).to(dtype)).sum(), scores)
    assert grad.dtype == dtype and bool(torch.isfinite(grad).all())
