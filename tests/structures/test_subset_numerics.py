"""Subset(k) at the extremes: shift invariance, ties, huge |scores| / tau, half precision, modes,
batch shapes, option checks and the conditional Gumbel sampler at large score gaps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pickgrad
from pickgrad import Subset
from pickgrad._validation import validation
from pickgrad.structures._subset_marginals import column_path_is_exact, subset_marginals

pytestmark = pytest.mark.usefixtures("subset_engine")

REGULARIZERS = ("entropy", "binary-entropy", "euclidean")


def brute_force(scores: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginals and log-partition by enumerating every k-subset (float64). The scores are
    shifted by their row's largest first: unshifted, energies of 2e5 (scores near 1e3 at tau
    0.01) carry rounding errors of 3e-11, which the marginals under test do not have."""
    every = Subset(k).enumerate((scores.shape[-1],), dtype=torch.float64)
    shift = scores.double().amax(-1, keepdim=True)
    energies = (scores.double() - shift) @ every.T / tau
    log_partition = torch.logsumexp(energies, -1) + k * shift[..., 0] / tau
    return torch.softmax(energies, -1) @ every, log_partition


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, int, float]:
    n = draw(st.integers(1, 8))
    k = draw(st.integers(1, n))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    tau = draw(st.sampled_from([0.01, 0.3, 1.0, 100.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(3, n, generator=generator, dtype=torch.float64)
    if draw(st.booleans()):  # exact ties
        scores = scores.round(decimals=0) if scale >= 1 else torch.zeros_like(scores)
    return scores, k, tau


@settings(deadline=None, max_examples=60)
@given(problems(), st.sampled_from([0.0, 1e3, -1e4, 123.456]))
def test_entropy_marginals_and_log_partition_equal_brute_force_at_every_scale(problem, offset):
    scores, k, tau = problem
    shifted = scores + offset
    marginals, log_partition = brute_force(shifted, k, tau)
    x = Subset(k).relax(shifted, tau)
    torch.testing.assert_close(x, marginals, rtol=0, atol=1e-12)
    # log e_k shifts by exactly k * offset / tau: compare with the float64 enumeration.
    value = Subset(k).log_partition(shifted, tau)
    torch.testing.assert_close(value, log_partition, rtol=1e-12, atol=1e-9)
    assert bool((x >= 0).all()) and bool((x <= 1).all())
    torch.testing.assert_close(x.sum(-1), torch.full((3,), float(k), dtype=torch.float64))


@settings(deadline=None, max_examples=40)
@given(problems())
def test_float32_marginals_stay_within_1e_5_of_float64(problem):
    scores, k, tau = problem
    single = scores.float()
    for regularizer in REGULARIZERS:
        x = Subset(k).relax(single, tau, regularizer=regularizer)
        reference = Subset(k).relax(single.double(), tau, regularizer=regularizer)
        assert x.dtype == torch.float32
        torch.testing.assert_close(x.double(), reference, rtol=0, atol=1e-5)
        assert bool((x >= 0).all()) and bool((x <= 1).all())
        torch.testing.assert_close(x.sum(-1), torch.full((3,), float(k)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_five_tied_scores_of_1e4_at_tau_0_01(regularizer, dtype):
    scores = torch.full((2, 5), 1e4, dtype=dtype)
    x = Subset(2).relax(scores, 0.01, regularizer=regularizer)
    torch.testing.assert_close(x, torch.full_like(scores, 0.4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("offset", [1e3, 1e4, -3e4])
def test_shift_invariance_in_float32(regularizer, offset):
    # Scores on a grid of 1/8 so that score + offset is exact in float32 (no input rounding).
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(-16, 16, (4, 7), generator=generator).float() / 8
    for tau in (0.01, 0.5, 10.0):
        plain = Subset(3).relax(scores, tau, regularizer=regularizer)
        moved = Subset(3).relax(scores + offset, tau, regularizer=regularizer)
        torch.testing.assert_close(moved, plain, rtol=0, atol=1e-6)


def test_log_partition_shifts_by_k_c_over_tau():
    scores = torch.randn(3, 6, dtype=torch.float64)
    base = Subset(2).log_partition(scores, 0.5)
    moved = Subset(2).log_partition(scores + 1e5, 0.5)
    torch.testing.assert_close(moved - base, torch.full((3,), 2 * 1e5 / 0.5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_half_precision_at_extreme_ratios(dtype, regularizer):
    # |scores| / tau = 7e6: no NaN, returned in the input dtype, equal to float32 input's result.
    scores = torch.tensor([[700.0, 0.0, -5.0, 700.0, 3.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    x = Subset(2).relax(scores.to(dtype), 1e-4, regularizer=regularizer)
    assert x.dtype == dtype and bool(torch.isfinite(x).all())
    reference = Subset(2).relax(scores.to(dtype).float(), 1e-4, regularizer=regularizer)
    torch.testing.assert_close(x.float(), reference, rtol=0, atol=1e-2)
    torch.testing.assert_close(x[0].float(), torch.tensor([1.0, 0, 0, 1, 0]), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_log_partition_is_float32_and_never_a_silent_inf(dtype):
    # 600 / 0.01 * 2 = 1.2e5 > 65504: it must not come back as a float16 inf.
    scores = torch.tensor([600.0, 600.0, 0.0], dtype=dtype)
    value = Subset(2).log_partition(scores, 0.01)
    assert value.dtype == torch.float32 and bool(torch.isfinite(value))
    reference = Subset(2).log_partition(scores.double(), 0.01)
    assert float(value) == pytest.approx(float(reference), rel=1e-6)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_every_path_works_without_autograd(mode, regularizer):
    scores = torch.randn(2, 3, 9)
    expected = Subset(4).relax(scores, 0.3, regularizer=regularizer)
    with mode():
        x = Subset(4).relax(scores, 0.3, regularizer=regularizer)
        value = Subset(4).log_partition(scores, 0.3)
        hard = Subset(4).argmax(scores)
        noise = Subset(4).conditional_gumbel(scores, hard, 3)
    torch.testing.assert_close(x, expected)
    assert value.shape == (2, 3) and hard.shape == scores.shape and noise.shape == (3, 2, 3, 9)
    # The log-space fallback (k too large for the column form) under the same modes.
    wide = torch.randn(2, 40, dtype=torch.float64)
    assert not column_path_is_exact(40, 18)
    with mode():
        fallback = Subset(18).relax(wide, 0.5)
    torch.testing.assert_close(fallback.sum(-1), torch.full((2,), 18.0, dtype=torch.float64))


def test_log_space_fallback_equals_the_column_form():
    # k = 18 of n = 40 is past the column form's bound (so is its complement, 22): the sum and
    # the complement identity hold; at k = 5 the column form equals the log-space programme.
    from pickgrad.structures._subset_marginals import _log_space_marginals, _threshold

    scores = 3 * torch.randn(4, 40, dtype=torch.float64)
    assert not column_path_is_exact(40, 18)
    x = Subset(18).relax(scores, 0.7)
    torch.testing.assert_close(x.sum(-1), torch.full((4,), 18.0, dtype=torch.float64))
    z = scores / 0.7
    direct = _log_space_marginals(z - _threshold(z, 5), 5)
    torch.testing.assert_close(subset_marginals(scores, 5, 0.7), direct, rtol=0, atol=1e-13)
    # The complement identity: choosing 18 of 40 is leaving out 22.
    torch.testing.assert_close(1 - Subset(22).relax(-scores, 0.7), x, rtol=0, atol=1e-13)


@pytest.mark.parametrize("batch", [(), (0,), (3,), (2, 0, 4), (2, 3, 2)])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_batch_shapes_including_empty(batch, regularizer):
    scores = torch.randn(*batch, 6, requires_grad=True)
    x = Subset(2).relax(scores, 0.5, regularizer=regularizer)
    assert x.shape == scores.shape
    (x * torch.randn(x.shape)).sum().backward()
    assert scores.grad is not None and scores.grad.shape == scores.shape
    assert Subset(2).log_partition(scores, 0.5).shape == batch
    assert Subset(2).argmax(scores).shape == scores.shape


@pytest.mark.parametrize("k", [2, 3, 5])
def test_custom_backward_gradcheck_and_gradgradcheck(k):
    # Entries spread over +-40 temperatures, some beyond the clamp, plus a tie.
    scores = torch.tensor(
        [[0.3, -1.2, 2.0, 2.0, 40.0, -45.0, 0.7, 1.1, -0.4], [1.0] * 9], dtype=torch.float64
    ).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: Subset(k).relax(s, 0.9), (scores,))
    assert torch.autograd.gradgradcheck(lambda s: Subset(k).relax(s, 0.9), (scores,))
    assert torch.autograd.gradcheck(lambda s: Subset(k).log_partition(s, 0.9), (scores,))


def test_backward_is_the_covariance_of_x():
    scores = torch.randn(7, dtype=torch.float64, requires_grad=True)
    tau = 0.6
    jacobian = torch.autograd.functional.jacobian(lambda s: Subset(3).relax(s, tau), scores)
    every = Subset(3).enumerate((7,), dtype=torch.float64)
    p = torch.softmax(every @ scores.detach() / tau, 0)
    mean = p @ every
    covariance = (every * p[:, None]).T @ every - torch.outer(mean, mean)
    torch.testing.assert_close(jacobian, covariance / tau, rtol=0, atol=1e-12)


@pytest.mark.parametrize("magnitude", [1e6, 1e36, 3e37, 1e-30])
def test_argmax_at_extreme_magnitudes_is_a_valid_subset(magnitude):
    generator = torch.Generator().manual_seed(0)
    scores = (magnitude * torch.randn(50, 9, generator=generator, dtype=torch.float64)).float()
    scores[:5] = magnitude  # ties: lowest indices first
    # Near float32's largest value the validation refuses the scores (their sum overflows);
    # with the value checks off, argmax still returns valid subsets.
    with validation(magnitude < 1e37):
        x = Subset(4).argmax(scores)
    assert bool(Subset(4)._is_solution(x).all())
    assert torch.equal(x[:5], torch.tensor([[1.0, 1, 1, 1, 0, 0, 0, 0, 0]]).expand(5, 9))
    every = Subset(4).enumerate((9,), dtype=torch.float64)
    values = scores[5:].double() @ every.T
    first_best = (values == values.amax(-1, keepdim=True)).double().argmax(-1)
    assert torch.equal(x[5:].double(), every[first_best])


def test_is_solution_is_exact():
    structure = Subset(2)
    x = torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 0], [0.5, 0.5, 1, 0], [0, 0, 1, 1]])
    assert structure._is_solution(x).tolist() == [True, False, False, True]


def test_option_errors_name_the_option_and_the_valid_values():
    scores = torch.zeros(4)
    with pytest.raises(ValueError, match=r"regularizer must be one of 'entropy', 'binary-entropy'"):
        Subset(2).relax(scores, regularizer="sparsemax")
    with pytest.raises(ValueError, match=r"tol must be a positive finite float.*-1"):
        Subset(2).relax(scores, regularizer="binary-entropy", tol=-1.0)
    with pytest.raises(ValueError, match=r"max_iter must be a positive int.*0"):
        Subset(2).relax(scores, regularizer="binary-entropy", max_iter=0)
    with pytest.raises(ValueError, match=r"max_iter must be a positive int.*2.5"):
        Subset(2).relax(scores, max_iter=2.5)
    with pytest.raises(TypeError, match=r"regulariser.*regularizer, tol, max_iter"):
        Subset(2).relax(scores, regulariser="entropy")
    assert Subset.relax_option_names == ("regularizer", "tol", "max_iter")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gap", [750.0, 1e4])
def test_gumbel_rao_is_finite_for_large_score_gaps(dtype, gap):
    generator = torch.Generator().manual_seed(0)
    for sign in (1.0, -1.0):
        scores = torch.randn(4, 6, generator=generator, dtype=dtype)
        scores = scores + sign * gap * torch.tensor([0.0, 1, 0, 0, 1, 0], dtype=dtype)
        leaf = scores.clone().requires_grad_()
        x = pickgrad.select(leaf, Subset(2), "gumbel-rao", tau=0.5, generator=generator)
        (x * torch.randn(x.shape, generator=generator, dtype=dtype)).sum().backward()
        assert bool(torch.isfinite(leaf.grad).all())
        # Conditional draws for arbitrary (often very unlikely) subsets stay consistent.
        every = Subset(2).enumerate((6,), dtype=dtype)
        condition = every[torch.randint(len(every), (4,), generator=generator)]
        noise = Subset(2).conditional_gumbel(scores, condition, 20, generator=generator)
        assert bool(torch.isfinite(noise).all())
        assert torch.equal(Subset(2).argmax(scores + noise), condition.expand_as(noise))


def test_conditional_gumbel_matches_rejection_sampling_coordinate_by_coordinate():
    # Rejection: unconditional Gumbel draws whose top-k is x. Per coordinate, a two-sample
    # Kolmogorov-Smirnov test against the conditional sampler; Bonferroni over coordinates and
    # subsets at family level 1e-3 (the seeds are fixed, so the outcome is deterministic).
    from scipy.stats import ks_2samp

    scores = torch.tensor([1.5, -0.5, 0.0, 3.0], dtype=torch.float64)
    structure = Subset(2)
    noise = pickgrad.noise.sample_gumbel(
        (200_000, 4),
        dtype=torch.float64,
        device=scores.device,
        generator=torch.Generator().manual_seed(3),
    )
    picked = structure.argmax(scores + noise)
    subsets = structure.enumerate((4,), dtype=torch.float64)
    generator = torch.Generator().manual_seed(4)
    tests = 0
    smallest = 1.0
    for subset in subsets:
        joint = noise[(picked == subset).all(-1)]
        if len(joint) < 2000:
            continue
        conditional = structure.conditional_gumbel(scores, subset, 5000, generator=generator)
        for i in range(4):
            smallest = min(
                smallest, ks_2samp(joint[:, i].numpy(), conditional[:, i].numpy()).pvalue
            )
            tests += 1
    assert tests >= 12
    assert smallest > 1e-3 / tests, smallest


def test_row_chunks_of_the_column_form_equal_the_log_space_programme():
    # 150 rows of n = 200, k = 10 run in chunks of 65 rows (2 MB tables); values and gradients
    # must equal the log-space programme's (autograd through it).
    from pickgrad.structures._subset_marginals import _log_space_marginals, _threshold

    generator = torch.Generator().manual_seed(5)
    scores = 2 * torch.randn(150, 200, generator=generator, dtype=torch.float64)
    upstream = torch.randn(150, 200, generator=generator, dtype=torch.float64)
    leaf = scores.clone().requires_grad_()
    x = subset_marginals(leaf, 10)
    (x * upstream).sum().backward()
    reference_leaf = scores.clone().requires_grad_()
    reference = _log_space_marginals(reference_leaf - _threshold(reference_leaf, 10), 10)
    (reference * upstream).sum().backward()
    torch.testing.assert_close(x, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(leaf.grad, reference_leaf.grad, rtol=0, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0, 100.0])
@pytest.mark.parametrize(("n", "k"), [(2, 1), (10, 4), (10, 9), (50, 1), (1000, 10)])
def test_binary_entropy_threshold_converges_in_few_newton_steps(dtype, tau, n, k):
    # Newton in exp(-nu) / exp(nu) moves monotonically to the root: 12 steps are plenty, also
    # for spread, tied and masked (filled far below) scores, and nu is that of bisection.
    from pickgrad.structures.subset import _shift, _solve_sigmoid_threshold

    generator = torch.Generator().manual_seed(n + k)
    scores = torch.randn(64, n, dtype=dtype, generator=generator) * 5
    scores[1] = 0.0  # every score tied
    scores[2, : n // 2] = scores[2, 0]  # half of them tied
    if n > 2:
        scores[3, -1] = scores[3].min() - 1000.0 * tau  # a masked item as relax fills it
    z = (scores - _shift(scores, k)) / tau
    tol = 1e-12 * k if dtype == torch.float64 else 1e-6 * k
    nu = _solve_sigmoid_threshold(z, k, tol, max_iter=12)
    assert bool(torch.isfinite(nu).all())
    assert float((torch.sigmoid(z - nu).sum(-1) - k).abs().max()) <= tol
    wide = z.double()
    low, high = wide.amin(-1, keepdim=True) - 40, wide.amax(-1, keepdim=True) + 40
    for _ in range(200):  # bisection in float64, the reference
        middle = (low + high) / 2
        above = torch.sigmoid(wide - middle).sum(-1, keepdim=True) > k
        low, high = torch.where(above, middle, low), torch.where(above, high, middle)
    expected = torch.sigmoid(wide - (low + high) / 2)
    torch.testing.assert_close(torch.sigmoid(z - nu).double(), expected, atol=10 * tol, rtol=0)
