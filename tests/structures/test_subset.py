"""Subset(k): top-k argmax, exact marginals, log-partition and relaxations against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pickgrad
from pickgrad import OneHot, Subset
from pickgrad.structures.subset import capped_simplex_projection

pytestmark = pytest.mark.usefixtures("subset_engine")

REGULARIZERS = ("entropy", "binary-entropy", "euclidean")


@st.composite
def sizes(draw: st.DrawFn, max_n: int = 7) -> tuple[int, int]:
    n = draw(st.integers(1, max_n))
    return n, draw(st.integers(1, n))


def brute_force(scores: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginals and log-partition of p(x) ∝ exp(<scores, x> / tau) by enumerating k-subsets."""
    every = Subset(k).enumerate((scores.shape[-1],), dtype=scores.dtype)
    energies = scores @ every.T / tau
    return torch.softmax(energies, -1) @ every, torch.logsumexp(energies, -1)


@given(sizes(), st.integers(0, 2**31 - 1))
def test_argmax_is_the_best_enumerated_subset_and_agrees_with_topk(size, seed):
    n, k = size
    scores = torch.randn(3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = Subset(k).argmax(scores)
    every = Subset(k).enumerate((n,), dtype=torch.float64)
    assert torch.equal(x, every[(scores @ every.T).argmax(-1)])
    top = torch.zeros_like(scores).scatter_(-1, torch.topk(scores, k).indices, 1.0)
    assert torch.equal(x, top)


@given(sizes(), st.integers(0, 2**31 - 1))
def test_ties_go_to_the_lowest_index(size, seed):
    n, k = size
    # Small integers make ties frequent; the first best subset in enumeration order has the
    # lowest indices.
    scores = torch.randint(0, 3, (4, n), generator=torch.Generator().manual_seed(seed)).double()
    every = Subset(k).enumerate((n,), dtype=torch.float64)
    values = scores @ every.T
    first_best = (values == values.amax(-1, keepdim=True)).double().argmax(-1)
    assert torch.equal(Subset(k).argmax(scores), every[first_best])


def test_argmax_of_equal_scores_picks_the_first_k_items():
    x = Subset(2).argmax(torch.zeros(2, 4))
    assert torch.equal(x, torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0]]))


@given(sizes(), st.sampled_from([0.3, 1.0, 2.5]), st.integers(0, 2**31 - 1))
def test_marginals_and_log_partition_equal_brute_force(size, tau, seed):
    n, k = size
    scores = 2 * torch.randn(
        2, 3, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    marginals, log_partition = brute_force(scores, k, tau)
    torch.testing.assert_close(Subset(k).relax(scores, tau), marginals, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        Subset(k).log_partition(scores, tau), log_partition, rtol=1e-10, atol=1e-12
    )


def test_marginals_survive_extreme_scores():
    # Gaps far beyond exp's range in float32: the log-space programme must stay exact and finite.
    scores = torch.tensor([[300.0, -200.0, 0.0, 299.0, 1e4]], dtype=torch.float64)
    x = Subset(2).relax(scores, tau=0.5)
    # 1e4 is certain; 300 and 299 share the other place with odds exp(2).
    close = math.exp(2) / (1 + math.exp(2))
    expected = torch.tensor([[close, 0.0, 0.0, 1 - close, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    # float32 keeps the relative precision of its inputs (about 1e-7 of 2e4).
    torch.testing.assert_close(
        Subset(2).relax(scores.float(), tau=0.5), expected.float(), atol=1e-4, rtol=0
    )
    assert torch.isfinite(Subset(3).log_partition(scores, 1e-3)).all()


def test_subset_of_one_is_onehot():
    scores = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(Subset(1).relax(scores, 0.7), OneHot().relax(scores, 0.7))
    torch.testing.assert_close(
        Subset(1).log_partition(scores, 0.7), OneHot().log_partition(scores, 0.7)
    )
    assert torch.equal(Subset(1).argmax(scores), OneHot().argmax(scores))


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@given(sizes(), st.sampled_from([0.1, 1.0, 10.0]), st.integers(0, 2**31 - 1))
def test_relaxations_lie_in_the_polytope(regularizer, size, tau, seed):
    n, k = size
    scores = 3 * torch.randn(
        2, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    x = Subset(k).relax(scores, tau, regularizer=regularizer)
    assert x.shape == scores.shape and x.dtype == scores.dtype
    assert bool((x >= -1e-12).all()) and bool((x <= 1 + 1e-12).all())
    torch.testing.assert_close(x.sum(-1), torch.full((2,), float(k), dtype=torch.float64))


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_relaxations_tend_to_argmax_as_tau_goes_to_zero(regularizer):
    # Distinct scores 0.1 apart: at tau = 1e-3 every gap is 100 temperatures wide.
    generator = torch.Generator().manual_seed(3)
    scores = torch.stack([torch.randperm(8, generator=generator) for _ in range(5)]).double() / 10
    hard = Subset(3).argmax(scores)
    gaps = []
    for tau in (1.0, 0.1, 1e-3):
        gaps.append(
            float((Subset(3).relax(scores, tau, regularizer=regularizer) - hard).abs().max())
        )
    assert gaps[0] >= gaps[1] >= gaps[2]
    assert gaps[2] < 1e-6


def test_binary_entropy_relaxation_is_a_shifted_sigmoid():
    scores = torch.randn(4, 7, dtype=torch.float64)
    tau = 0.6
    x = Subset(3).relax(scores, tau, regularizer="binary-entropy")
    # x = sigmoid((s - nu) / tau) for one nu per row: s - tau * logit(x) is constant in a row.
    nu = scores - tau * torch.logit(x)
    torch.testing.assert_close(nu, nu[:, :1].expand_as(nu), rtol=0, atol=1e-9)


@given(sizes(6), st.integers(0, 2**31 - 1))
def test_euclidean_relaxation_is_the_closest_point_of_the_polytope(size, seed):
    n, k = size
    generator = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, generator=generator, dtype=torch.float64)
    x = Subset(k).relax(z, 1.0, regularizer="euclidean")
    # Candidates: every vertex and random points of the hull (convex combinations of vertices).
    vertices = Subset(k).enumerate((n,), dtype=torch.float64)
    weights = torch.distributions.Dirichlet(torch.ones(len(vertices), dtype=torch.float64))
    candidates = torch.cat([vertices, weights.sample((200,)) @ vertices])
    best = ((candidates - z) ** 2).sum(-1).min()
    assert float(((x - z) ** 2).sum()) <= float(best) + 1e-12
    # And its KKT form: x = clamp(z - nu, 0, 1) for one nu.
    free = (x > 1e-12) & (x < 1 - 1e-12)
    if bool(free.any()):
        nu = (z - x)[free][0]
        torch.testing.assert_close(x, (z - nu).clamp(0, 1))


def test_euclidean_projection_handles_ties_and_flat_pieces():
    # Exactly two entries far above the rest: the threshold function is flat at k = 2.
    z = torch.tensor([[5.0, 5.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    x = capped_simplex_projection(z, 2)
    torch.testing.assert_close(
        x, torch.tensor([[1.0, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    )


@pytest.mark.parametrize("regularizer", REGULARIZERS)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_gradcheck(regularizer, k):
    scores = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s: Subset(k).relax(s, 0.7, regularizer=regularizer), (scores,)
    )


@pytest.mark.parametrize("regularizer", ["entropy", "binary-entropy"])
def test_gradgradcheck(regularizer):
    scores = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda s: Subset(2).relax(s, 0.7, regularizer=regularizer), (scores,)
    )


def test_second_derivative_is_finite_for_extreme_scores():
    scores = (100 * torch.randn(3, 6)).requires_grad_()
    x = Subset(3).relax(scores, 0.1)
    (grad,) = torch.autograd.grad((x * torch.randn(6)).sum(), scores, create_graph=True)
    (hessian_row,) = torch.autograd.grad(grad.sum(), scores)
    assert torch.isfinite(hessian_row).all()


def test_marginals_are_the_gradient_of_the_log_partition():
    scores = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    tau = 0.8
    (grad,) = torch.autograd.grad(Subset(2).log_partition(scores, tau).sum(), scores)
    torch.testing.assert_close(tau * grad, Subset(2).relax(scores, tau))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_low_precision_is_computed_in_float32_and_cast_back(dtype, regularizer):
    scores = torch.randn(2, 3, 6)
    x = Subset(2).relax(scores.to(dtype), 0.5, regularizer=regularizer)
    assert x.dtype == dtype
    reference = Subset(2).relax(scores.to(dtype).float(), 0.5, regularizer=regularizer)
    torch.testing.assert_close(x.float(), reference, atol=1e-2, rtol=0)


def test_enumerate_counts_and_content():
    every = Subset(3).enumerate((6,))
    assert every.shape == (math.comb(6, 3), 6)
    assert torch.equal(every.sum(-1), torch.full((20,), 3.0))
    assert len({tuple(row.tolist()) for row in every}) == 20


def test_repr():
    assert repr(Subset(3)) == "Subset(k=3)"


def test_bad_k():
    with pytest.raises(ValueError, match=r"k must be >= 1.*k=0"):
        Subset(0)
    with pytest.raises(ValueError, match=r"k=-2"):
        Subset(-2)
    with pytest.raises(TypeError, match=r"k must be an int.*float"):
        Subset(2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"k must be an int"):
        Subset(True)  # type: ignore[arg-type]


def test_k_larger_than_n():
    with pytest.raises(ValueError, match=r"k=4.*n=3"):
        Subset(4).argmax(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"k=4.*n=3"):
        Subset(4).relax(torch.zeros(3))
    with pytest.raises(ValueError, match=r"k=4.*n=3"):
        Subset(4).enumerate((3,))


def test_bad_scores_and_options():
    with pytest.raises(ValueError, match="NaN"):
        Subset(2).relax(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(TypeError, match="floating"):
        Subset(2).argmax(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="regularizer must be one of"):
        Subset(2).relax(torch.zeros(3), regularizer="sparsemax")
    with pytest.raises(ValueError, match="tau"):
        Subset(2).relax(torch.zeros(3), tau=0.0)


def test_conditional_gumbel_reproduces_the_joint_law_of_noise_and_top_k():
    # Draw (x, G) jointly; for each subset x compare statistics of the unconditional G that led
    # to x with conditional draws given x. Tolerance: 5 standard errors of the difference.
    scores = torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64)
    structure = Subset(2)
    noise = pickgrad.noise.sample_gumbel(
        (100_000, 4),
        dtype=torch.float64,
        device=scores.device,
        generator=torch.Generator().manual_seed(0),
    )
    picked = structure.argmax(scores + noise)
    generator = torch.Generator().manual_seed(1)
    for subset in structure.enumerate((4,), dtype=torch.float64):
        joint = noise[(picked == subset).all(-1)]
        conditional = structure.conditional_gumbel(scores, subset, 20_000, generator=generator)
        assert torch.equal(structure.argmax(scores + conditional), subset.expand_as(conditional))
        for transform in (lambda g: g, lambda g: g**2, lambda g: torch.exp(-g).clamp(max=50)):
            a, b = transform(joint), transform(conditional)
            standard_error = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
            assert bool(((a.mean(0) - b.mean(0)).abs() < 5 * standard_error).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conditional_gumbel_is_consistent_with_the_argmax_for_extreme_scores(dtype):
    generator = torch.Generator().manual_seed(2)
    scores = (30 * torch.randn(8, 7, generator=generator)).to(dtype)
    # Arbitrary (often very unlikely) 3-subsets as the condition.
    every = Subset(3).enumerate((7,), dtype=dtype)
    x = every[torch.randint(len(every), (8,), generator=generator)]
    noise = Subset(3).conditional_gumbel(scores, x, 50, generator=generator)
    assert noise.shape == (50, 8, 7) and noise.dtype == dtype
    assert torch.isfinite(noise).all()
    assert torch.equal(Subset(3).argmax(scores + noise), x.expand_as(noise))


def test_conditional_gumbel_of_the_full_set_is_plain_gumbel_noise():
    noise = Subset(3).conditional_gumbel(torch.zeros(3), torch.ones(3), 4000)
    assert noise.shape == (4000, 3)
    # Standard Gumbel mean: the Euler-Mascheroni constant; variance pi^2 / 6.
    standard_error = math.pi / math.sqrt(6) / math.sqrt(noise.numel())
    assert abs(float(noise.mean()) - 0.5772156649) < 5 * standard_error
