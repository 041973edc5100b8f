"""Batched linear assignment in torch: exact against brute force and scipy, on every edge case."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from pickgrad.structures import _assignment
from pickgrad.structures._assignment import linear_assignment, scipy_assignment, solve_assignment

SOLVERS = [linear_assignment, scipy_assignment, solve_assignment]


def is_matching(x: torch.Tensor) -> bool:
    binary = bool(((x == 0) | (x == 1)).all())
    return binary and bool((x.sum(-1) == 1).all()) and bool((x.sum(-2) <= 1).all())


def objective(scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (scores.double() * x.double()).sum((-1, -2))


def brute_force_best(scores: torch.Tensor) -> torch.Tensor:
    """``(B, s, n)`` -> ``(B,)``: the best objective over every injective row -> column map."""
    s, n = scores.shape[-2:]
    columns = torch.tensor(list(itertools.permutations(range(n), s)))
    values = scores.double()[:, torch.arange(s), columns]  # (B, count, s)
    return values.sum(-1).amax(-1)


def scipy_best(scores: torch.Tensor) -> torch.Tensor:
    flat = scores.double().reshape(-1, *scores.shape[-2:]).numpy()
    best = [float(m[linear_sum_assignment(m, maximize=True)].sum()) for m in flat]
    return torch.tensor(best, dtype=torch.float64).reshape(scores.shape[:-2])


def rounding_tolerance(scores: torch.Tensor) -> float:
    """float64 rounding of the potentials: a few ulps per row of the largest |score|."""
    s = scores.shape[-2]
    scale = float(scores.double().abs().max()) if scores.numel() else 1.0
    return 64 * torch.finfo(torch.float64).eps * s * max(scale, 1.0)


def assert_optimal(scores: torch.Tensor, x: torch.Tensor, best: torch.Tensor) -> None:
    assert x.shape == scores.shape and x.dtype == scores.dtype and x.device == scores.device
    assert is_matching(x)
    gap = (objective(scores, x) - best).abs()
    assert float(gap.max()) <= rounding_tolerance(scores), gap


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_tiny_shape_matches_brute_force(solver, dtype):
    generator = torch.Generator().manual_seed(0)
    for n in range(1, 6):
        for s in range(1, n + 1):
            for kind in ("normal", "integer", "equal"):
                if kind == "normal":
                    scores = torch.randn(20, s, n, generator=generator)
                elif kind == "integer":
                    scores = torch.randint(-2, 3, (20, s, n), generator=generator).float()
                else:
                    scores = torch.full((20, s, n), 0.5)
                scores = scores.to(dtype)
                assert_optimal(scores, solver(scores), brute_force_best(scores))


def test_ties_are_exact_on_integer_scores():
    # Integer scores: every objective is an exact float64 integer, so optimal means equal.
    generator = torch.Generator().manual_seed(1)
    for s, n in [(8, 8), (12, 20), (30, 30)]:
        scores = torch.randint(0, 3, (40, s, n), generator=generator).double()
        x = linear_assignment(scores)
        assert is_matching(x)
        assert torch.equal(objective(scores, x), scipy_best(scores))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "kind", ["normal", "integer", "equal", "large", "tiny-spread", "one-row", "one-column"]
)
def test_medium_sizes_match_scipy(kind, dtype):
    generator = torch.Generator().manual_seed(2)
    for s, n in [(7, 7), (10, 25), (33, 40), (60, 60)]:
        shape = (9, s, n)
        if kind == "normal":
            scores = torch.randn(shape, generator=generator, dtype=torch.float64)
        elif kind == "integer":
            scores = torch.randint(-3, 4, shape, generator=generator).double()
        elif kind == "equal":
            scores = torch.full(shape, -2.25, dtype=torch.float64)
        elif kind == "large":
            scores = 1e6 * torch.randn(shape, generator=generator, dtype=torch.float64)
        elif kind == "tiny-spread":
            scores = 3.0 + 1e-6 * torch.rand(shape, generator=generator, dtype=torch.float64)
        elif kind == "one-row":
            scores = torch.randn(9, 1, n, generator=generator, dtype=torch.float64)
        else:
            scores = torch.randn(9, 1, 1, generator=generator, dtype=torch.float64)
        scores = scores.to(dtype)
        assert_optimal(scores, linear_assignment(scores), scipy_best(scores))


def test_tiny_spread_is_resolved_not_rounded_away():
    # Spreads of 1e-6 on an offset of 1e3: the optimum is unique and must be found exactly.
    generator = torch.Generator().manual_seed(3)
    scores = 1e3 + 1e-6 * torch.randn(16, 12, 12, generator=generator, dtype=torch.float64)
    x = linear_assignment(scores)
    expected = scipy_assignment(scores)
    assert torch.equal(x, expected)


def test_one_row_picks_the_row_maximum_and_one_column_is_trivial():
    scores = torch.tensor([[[0.5, 2.0, -1.0, 2.0]]])
    assert torch.equal(linear_assignment(scores), torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]))
    assert torch.equal(linear_assignment(torch.tensor([[-7.0]])), torch.tensor([[1.0]]))


@pytest.mark.parametrize("batch", [(), (3,), (2, 3), (2, 1, 3), (0,), (2, 0), (0, 2, 3)], ids=str)
def test_batch_shapes_with_zero_to_three_leading_dims(batch):
    scores = torch.randn(*batch, 4, 6, generator=torch.Generator().manual_seed(4))
    x = linear_assignment(scores)
    assert x.shape == scores.shape and x.dtype == scores.dtype
    if scores.numel():
        flat = scores.reshape(-1, 4, 6)
        assert_optimal(flat, x.reshape(-1, 4, 6), scipy_best(flat))
        # Each item is solved as if alone: the batch does not change the objective.
        for item in range(flat.shape[0]):
            alone = linear_assignment(flat[item])
            assert torch.equal(
                objective(flat[item], alone), objective(flat[item], x.reshape(-1, 4, 6)[item])
            )


@pytest.mark.parametrize("check_every", [2, 8, 1000])
def test_surplus_masked_steps_between_syncs_change_nothing(check_every):
    # Off the CPU the solver reads "every item done" only every few steps; the steps run after
    # an item is done must leave it unchanged. Checked here on the CPU with the same code.
    generator = torch.Generator().manual_seed(9)
    scores = torch.randint(0, 3, (25, 15, 18), generator=generator).double()
    scores[::2] += torch.randn(13, 15, 18, generator=generator, dtype=torch.float64)
    every_step = _assignment._shortest_augmenting_paths(scores, 1)
    columns = _assignment._shortest_augmenting_paths(scores, check_every)
    assert torch.equal(columns, every_step)
    x = torch.zeros_like(scores).scatter_(-1, columns[..., None], 1.0)
    assert_optimal(scores, x, scipy_best(scores))


def test_half_precision_keeps_dtype_and_is_exact_on_its_values():
    scores = torch.randn(5, 6, 8, generator=torch.Generator().manual_seed(5))
    for dtype in (torch.float16, torch.bfloat16):
        half = scores.to(dtype)
        x = linear_assignment(half)
        assert x.dtype == dtype
        assert_optimal(half, x, scipy_best(half.float()))


def test_deterministic_and_does_not_touch_its_input():
    scores = torch.randint(0, 2, (30, 9, 11), generator=torch.Generator().manual_seed(6)).float()
    before = scores.clone()
    first = linear_assignment(scores)
    assert torch.equal(first, linear_assignment(scores))
    assert torch.equal(scores, before)


def test_gradients_are_not_tracked():
    scores = torch.randn(3, 4, 4, requires_grad=True)
    x = linear_assignment(scores)
    assert not x.requires_grad and is_matching(x)


@given(
    st.integers(1, 7).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    st.integers(1, 6),
    st.sampled_from(["normal", "integer", "scaled"]),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**31 - 1),
)
def test_hypothesis_cases_match_brute_force(shape, batch, kind, dtype, seed):
    s, n = shape
    generator = torch.Generator().manual_seed(seed)
    if kind == "normal":
        scores = torch.randn(batch, s, n, generator=generator, dtype=torch.float64)
    elif kind == "integer":
        scores = torch.randint(-1, 2, (batch, s, n), generator=generator).double()
    else:
        scale = 10.0 ** torch.randint(-6, 7, (), generator=generator).item()
        scores = scale * torch.randn(batch, s, n, generator=generator, dtype=torch.float64)
    scores = scores.to(dtype)
    assert_optimal(scores, linear_assignment(scores), brute_force_best(scores))


@given(
    st.integers(1, 40).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    st.integers(0, 2**31 - 1),
)
def test_hypothesis_larger_cases_match_scipy(shape, seed):
    s, n = shape
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 5, (4, s, n), generator=generator).double()
    scores += torch.randn(4, s, n, generator=generator, dtype=torch.float64) * (seed % 2)
    assert_optimal(scores, linear_assignment(scores), scipy_best(scores))


def test_scipy_path_splits_large_batches_over_threads_with_the_same_result(monkeypatch):
    scores = torch.randn(300, 5, 7, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(_assignment, "_ITEMS_PER_THREAD", 1_000_000)
    alone = scipy_assignment(scores)
    monkeypatch.setattr(_assignment, "_ITEMS_PER_THREAD", 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert torch.equal(scipy_assignment(scores), alone)


def test_dispatcher_on_cpu_is_the_scipy_loop():
    # Measured (benchmarks/bench_assignment.py): scipy is faster at every CPU size.
    scores = torch.randint(0, 2, (8, 6, 9), generator=torch.Generator().manual_seed(8)).float()
    assert torch.equal(solve_assignment(scores), scipy_assignment(scores))


@pytest.mark.parametrize("solver", SOLVERS)
def test_bad_input_is_rejected_with_the_shape(solver):
    with pytest.raises(ValueError, match=r"s <= n.*\(2, 5, 3\)"):
        solver(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"\(\*batch, s, n\).*\(4,\)"):
        solver(torch.zeros(4))
    with pytest.raises(TypeError, match=r"floating.*torch\.int64"):
        solver(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"torch\.Tensor.*list"):
        solver([[1.0]])
