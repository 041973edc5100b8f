"""Permutation: linear-assignment argmax and Sinkhorn relaxation against brute force and scipy."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

import pickgrad
from pickgrad import Permutation
from pickgrad.structures import _assignment as assignment_module


@st.composite
def shapes(draw: st.DrawFn, max_n: int = 5) -> tuple[int, int]:
    n = draw(st.integers(1, max_n))
    return draw(st.integers(1, n)), n


def random_scores(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def is_matching(x: torch.Tensor) -> bool:
    binary = bool(((x == 0) | (x == 1)).all())
    return binary and bool((x.sum(-1) == 1).all()) and bool((x.sum(-2) <= 1).all())


@given(shapes(), st.integers(0, 2**31 - 1))
def test_argmax_is_the_best_enumerated_matching_and_agrees_with_scipy(shape, seed):
    s, n = shape
    scores = random_scores(3, s, n, seed=seed)
    x = Permutation().argmax(scores)
    assert x.shape == scores.shape and x.dtype == scores.dtype and is_matching(x)
    every = Permutation().enumerate((s, n), dtype=torch.float64)
    values = torch.einsum("bij,cij->bc", scores, every)
    assert torch.equal(x, every[values.argmax(-1)])
    for item in range(3):
        _rows, columns = linear_sum_assignment(scores[item].numpy(), maximize=True)
        assert torch.equal(x[item].argmax(-1), torch.from_numpy(columns))


@given(shapes(4), st.integers(0, 2**31 - 1))
def test_argmax_with_ties_is_optimal_and_deterministic(shape, seed):
    s, n = shape
    scores = torch.randint(0, 2, (4, s, n), generator=torch.Generator().manual_seed(seed)).double()
    x = Permutation().argmax(scores)
    assert is_matching(x)
    every = Permutation().enumerate((s, n), dtype=torch.float64)
    best = torch.einsum("bij,cij->bc", scores, every).amax(-1)
    torch.testing.assert_close((x * scores).sum((-2, -1)), best)
    assert torch.equal(Permutation().argmax(scores), x)


def test_argmax_split_over_threads_equals_the_plain_loop(monkeypatch):
    scores = torch.randn(50, 4, 6)
    one_by_one = torch.stack([Permutation().argmax(item) for item in scores])
    monkeypatch.setattr(assignment_module, "_ITEMS_PER_THREAD", 4)
    monkeypatch.setattr(assignment_module.torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(assignment_module.os, "cpu_count", lambda: 3)
    assert torch.equal(Permutation().argmax(scores), one_by_one)


def test_argmax_on_many_leading_dims():
    scores = torch.randn(2, 3, 4, 4)
    x = Permutation().argmax(scores)
    assert x.shape == scores.shape
    assert torch.equal(x[1, 2], Permutation().argmax(scores[1, 2]))


@given(shapes(), st.sampled_from([0.3, 1.0, 3.0]), st.integers(0, 2**31 - 1))
def test_sinkhorn_lies_in_the_polytope(shape, tau, seed):
    s, n = shape
    scores = 2 * random_scores(2, s, n, seed=seed)
    x = Permutation().relax(scores, tau)
    assert x.shape == scores.shape and x.dtype == scores.dtype
    assert bool((x >= 0).all()) and bool((x <= 1).all())
    torch.testing.assert_close(x.sum(-1), torch.ones(2, s, dtype=torch.float64))
    assert bool((x.sum(-2) <= 1 + 1e-9).all())
    if s == n:
        torch.testing.assert_close(
            x.sum(-2), torch.ones(2, n, dtype=torch.float64), rtol=0, atol=1e-9
        )


@given(shapes(), st.integers(0, 2**31 - 1))
def test_sinkhorn_solves_the_entropic_problem(shape, seed):
    # Optimality: log x - scores / tau = f_i + g_j on the real rows (a sum of row and column
    # potentials), and a column keeps spare capacity only if the slack row takes it.
    s, n = shape
    tau = 0.7
    scores = random_scores(s, n, seed=seed)
    residual = torch.log(Permutation().relax(scores, tau)) - scores / tau
    centred = (
        residual
        - residual.mean(-1, keepdim=True)
        - residual.mean(-2, keepdim=True)
        + residual.mean()
    )
    torch.testing.assert_close(centred, torch.zeros_like(centred), rtol=0, atol=1e-8)


def test_rectangular_with_one_row_is_the_binary_entropy_top_one():
    # One row and a slack row of mass n - 1: every column j splits its unit of capacity into
    # x_j = sigmoid((s_j - nu) / tau) and 1 - x_j for the slack, with sum_j x_j = 1: the
    # binary-entropy relaxation of Subset(1).
    scores = random_scores(3, 1, 5, seed=0)
    x = Permutation().relax(scores, 0.8)
    expected = pickgrad.Subset(1).relax(scores, 0.8, regularizer="binary-entropy")
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_sinkhorn_tends_to_argmax_as_tau_goes_to_zero(shape):
    # A planted matching worth 3 per row over noise in [0, 1): every other matching loses >= 1.
    generator = torch.Generator().manual_seed(7)
    planted = Permutation().enumerate(shape, dtype=torch.float64)
    planted = planted[torch.randint(len(planted), (3,), generator=generator)]
    scores = 3 * planted + torch.rand(3, *shape, generator=generator, dtype=torch.float64)
    hard = Permutation().argmax(scores)
    assert torch.equal(hard, planted)
    gaps = [
        float((Permutation().relax(scores, tau) - hard).abs().max()) for tau in (1.0, 0.3, 0.05)
    ]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_computed_in_float32_and_cast_back(dtype):
    scores = torch.randn(2, 3, 3).to(dtype)
    assert Permutation().relax(scores).dtype == dtype
    assert Permutation().argmax(scores).dtype == dtype


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (1, 1)])
def test_enumerate(shape):
    s, n = shape
    every = Permutation().enumerate(shape)
    assert every.shape == (math.perm(n, s), s, n)
    assert is_matching(every)
    assert len({tuple(item.flatten().tolist()) for item in every}) == math.perm(n, s)


def test_log_partition_is_unsupported_and_names_the_permanent():
    assert not Permutation().supports("log_partition")
    assert "log_partition" in Permutation.unsupported
    with pytest.raises(NotImplementedError, match="permanent"):
        Permutation().log_partition(torch.zeros(3, 3))


def test_relax_option_names_list_what_relax_accepts():
    assert Permutation.relax_option_names == ("regularizer", "max_iter", "tol")
    scores = torch.randn(2, 3, 3)
    x = Permutation().relax(scores, 0.5, regularizer="entropy", max_iter=60, tol=1e-6)
    assert float((x.sum(-2) - 1).abs().max()) <= 1e-6 + 3 * 3e-7


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
        ({"max_iter": 2.5}, TypeError, "max_iter must be an int"),
        ({"max_iter": True}, TypeError, "max_iter must be an int"),
        ({"tol": -1.0}, ValueError, "tol must be a finite float > 0"),
        ({"tol": 0}, ValueError, "tol must be a finite float > 0"),
        ({"tol": float("nan")}, ValueError, "tol must be a finite float > 0"),
        ({"tol": "1e-5"}, TypeError, "tol must be a positive float"),
        ({"tol": 1e-16}, ValueError, r"tol must be >= 2\.2e-13.*float64"),
        ({"regularizer": "euclidean"}, ValueError, r"regularizer.*valid values: 'entropy'"),
    ],
)
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        Permutation().relax(torch.zeros(2, 2), **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", ["near-max", "huge-spread", "tiny"])
def test_argmax_at_extreme_magnitudes_is_a_valid_optimal_matching(dtype, magnitude):
    generator = torch.Generator().manual_seed(11)
    base = torch.rand(4, 3, 4, generator=generator, dtype=torch.float64)
    # The largest magnitude validation accepts: the objective of a matching must not overflow.
    big = torch.finfo(dtype).max / (2 * 3 * 4)
    if magnitude == "near-max":
        scores = (big * (0.5 + 0.5 * base)).to(dtype)
    elif magnitude == "huge-spread":
        scores = (big * 0.9 * (2 * base - 1)).to(dtype)
    else:
        scores = (torch.finfo(dtype).tiny * base).to(dtype)
    x = Permutation().argmax(scores)
    assert is_matching(x)
    every = Permutation().enumerate((3, 4), dtype=torch.float64)
    values = torch.einsum("bij,cij->bc", scores.double(), every)
    assert torch.equal((x.double() * scores.double()).sum((-2, -1)), values.amax(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_argmax_of_scores_whose_objective_overflows_is_refused_before_computing(dtype):
    scores = torch.full((3, 4), torch.finfo(dtype).max / 2, dtype=dtype)
    with pytest.raises(ValueError, match=r"scores of magnitude.*overflow"):
        Permutation().argmax(scores)


def test_gumbel_rao_is_refused_clearly():
    with pytest.raises(NotImplementedError, match=r"gumbel-rao.*conditional_gumbel.*Permutation"):
        pickgrad.select(torch.zeros(3, 3), Permutation(), "gumbel-rao")


def test_bad_input():
    with pytest.raises(ValueError, match=r"s <= n.*s=4 > n=3"):
        Permutation().argmax(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"s=4 > n=3"):
        Permutation().enumerate((4, 3))
    with pytest.raises(ValueError, match=r"at least 2 dimension"):
        Permutation().relax(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        Permutation().argmax(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
