"""The Sinkhorn solver behind ``Permutation().relax``: converged sums, warning, implicit backward.

Oracles: the 2 x 2 closed form, the entropic optimum's KKT conditions (``log P - scores / tau``
is a sum of row and column potentials, and the sums are right: a strictly concave problem has
one such point), brute force over ``enumerate`` as tau -> 0, gradcheck in float64, and the
backward of many unrolled plain Sinkhorn rounds.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import pickgrad
from pickgrad import Permutation
from pickgrad.structures import _sinkhorn
from pickgrad.structures.permutation import log_sinkhorn

TAUS = (100.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01)


def gaussian(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def sum_errors(x: torch.Tensor) -> tuple[float, float]:
    """Largest |row sum - 1| and largest column excess (|column sum - 1| when square)."""
    x = x.double()
    s, n = x.shape[-2:]
    rows = float((x.sum(-1) - 1).abs().amax()) if x.numel() else 0.0
    columns = x.sum(-2) - 1
    columns = columns.abs() if s == n else columns.clamp_min(0.0)
    return rows, float(columns.amax()) if x.numel() else 0.0


def default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def cast_rounding(dtype: torch.dtype) -> float:
    # Casting the float64 plan rounds each entry by at most eps/2 relative; entries are >= 0 and
    # sum to 1 along a row or column, so a sum moves by at most eps/2.
    return torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (5, 5), (3, 7), (20, 20), (1, 6)])
def test_sums_are_within_the_documented_tolerance_at_every_tau(shape, dtype):
    scores = gaussian(3, *shape, seed=sum(shape), dtype=dtype)
    for tau in TAUS:
        x = Permutation().relax(scores, tau)
        assert x.dtype == dtype and x.shape == scores.shape
        assert bool((x >= 0).all()) and bool((x <= 1).all())
        rows, columns = sum_errors(x)
        bound = default_tol(dtype) + cast_rounding(dtype)
        assert rows <= cast_rounding(dtype) * 4, (tau, rows)
        assert columns <= bound, (tau, columns)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(100, 100), (60, 100)])
def test_sums_are_within_tolerance_at_100_by_100(shape, dtype):
    scores = gaussian(1, *shape, seed=5, dtype=dtype)
    for tau in (100.0, 1.0, 0.1, 0.01):
        x = Permutation().relax(scores, tau)
        _rows, columns = sum_errors(x)
        assert columns <= default_tol(dtype) + cast_rounding(dtype), (tau, columns)


@pytest.mark.parametrize("tau", [0.3, 0.1])
def test_the_issue_gaussian_5x5_converges(tau):
    scores = gaussian(5, 5, seed=0, dtype=torch.float32)
    _rows, columns = sum_errors(Permutation().relax(scores, tau))
    assert columns <= 1e-5 + 1.2e-7


def test_the_issue_3x3_at_tau_001_is_the_assignment():
    scores = torch.tensor([[-2.2, 1.5, -1.2], [0.6, 3.9, -0.1], [0.3, 0.4, -0.5]])
    x = Permutation().relax(scores, 0.01)
    hard = Permutation().argmax(scores)
    assert torch.equal(hard, torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    # The runner-up matching is worth 0.4 less: entries move off the argmax by ~exp(-0.4/0.01).
    torch.testing.assert_close(x, hard, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.32, 0.05, 1.0, 7.0])
def test_2x2_matches_the_closed_form(tau):
    # (p / (1 - p))^2 = exp((s00 + s11 - s01 - s10) / tau) on a doubly stochastic 2 x 2.
    scores = gaussian(4, 2, 2, seed=3)
    gap = scores[:, 0, 0] + scores[:, 1, 1] - scores[:, 0, 1] - scores[:, 1, 0]
    p = torch.sigmoid(gap / (2 * tau))
    expected = torch.stack([torch.stack([p, 1 - p], -1), torch.stack([1 - p, p], -1)], -2)
    x = Permutation().relax(scores, tau)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(4, 4), (3, 6), (1, 1), (5, 5)])
@pytest.mark.parametrize("tau", [5.0, 0.5, 0.05])
def test_kkt_conditions_of_the_entropic_optimum(shape, tau):
    s, n = shape
    scores = gaussian(2, s, n, seed=s * n)
    x = Permutation().relax(scores, tau, tol=1e-12)
    # The solver's whole plan: with s < n its last row is the slack (score 0, mass n - s).
    x_full, _error, _steps = _sinkhorn._plan(scores, tau, 1e-12, 60)
    torch.testing.assert_close(x_full[:, :s], x, rtol=0, atol=0)
    scores_full = scores
    if s < n:
        scores_full = torch.cat([scores, torch.zeros(2, 1, n, dtype=scores.dtype)], dim=-2)
        torch.testing.assert_close(
            x_full[:, s].sum(-1), torch.full((2,), n - s + 0.0, dtype=torch.float64)
        )
    residual = torch.log(x_full) - scores_full / tau
    centred = (
        residual
        - residual.mean(-1, keepdim=True)
        - residual.mean(-2, keepdim=True)
        + residual.mean((-2, -1), keepdim=True)
    )
    # log P has entries down to ~-max|scores|/tau; the additive structure holds to rounding.
    scale = 1 + float(scores.abs().max()) / tau
    torch.testing.assert_close(centred, torch.zeros_like(centred), rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(x.sum(-1), torch.ones(2, s, dtype=torch.float64))
    torch.testing.assert_close(x_full.sum(-2), torch.ones(2, n, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(3, 3), (2, 4)])
def test_small_tau_gives_the_brute_force_argmax(shape):
    scores = gaussian(6, *shape, seed=9)
    every = Permutation().enumerate(shape, dtype=torch.float64)
    values = torch.einsum("bij,cij->bc", scores, every)
    top2 = values.topk(2, dim=-1).values
    gap = float((top2[:, 0] - top2[:, 1]).min())
    best = every[values.argmax(-1)]
    n = shape[1]
    tau = gap / (20 * n)
    # Moving mass round a cycle of k <= n entries costs at least `gap`, spread over k entries:
    # the entropic plan puts about exp(-gap / (k tau)) on it (the 2 x 2 closed form has k = 2).
    bound = n * n * math.exp(-gap / (n * tau))
    torch.testing.assert_close(Permutation().relax(scores, tau), best, rtol=0, atol=bound)
    # At large tau the plan tends to the uniform doubly (sub)stochastic matrix 1/n.
    far = Permutation().relax(scores, 1e6)
    torch.testing.assert_close(far, torch.full_like(far, 1 / shape[1]), rtol=0, atol=1e-5)


def test_unconverged_solve_warns_once_with_the_error_reached():
    scores = gaussian(4, 12, 12, seed=20, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match=r"column sums off by up to .*above tol=1e-05") as seen:
        Permutation().relax(scores, 0.01, max_iter=1)
    assert len(seen) == 1
    # Attributed to the caller of relax (this file), not to the library's internals.
    assert seen[0].filename == __file__


def test_unconverged_solve_through_an_estimator_warns():
    scores = gaussian(4, 12, 12, seed=20, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="raise max_iter or tol"):
        pickgrad.select(scores, Permutation(), "relaxed", tau=0.01, max_iter=1)


def test_converged_solves_stop_early():
    scores = gaussian(4, 6, 6, seed=2)
    _plan, error, used = _sinkhorn._plan(scores, 100.0, 1e-10, 60)
    assert used <= 4 and float(error.max()) <= 1e-10
    _plan, error, used_small = _sinkhorn._plan(scores, 0.01, 1e-10, 60)
    assert used < used_small < 60 and float(error.max()) <= 1e-10


def test_with_value_checks_off_a_fixed_schedule_runs_without_warning():
    scores = gaussian(3, 5, 5, seed=4, dtype=torch.float32)
    with pickgrad.validation(False), warnings.catch_warnings():
        warnings.simplefilter("error")
        unconverged = Permutation().relax(scores, 0.01, max_iter=1)  # no warning, no host read
        x = Permutation().relax(scores, 0.1)
    assert unconverged.shape == scores.shape
    _rows, columns = sum_errors(x)
    assert columns <= 1e-5 + 1.2e-7


def test_vmap_and_func_grad_with_value_checks_off():
    scores = gaussian(3, 4, 4, seed=6)
    upstream = gaussian(3, 4, 4, seed=7)

    def loss(item: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (Permutation()._relax(item, 0.5, tol=1e-12) * weight).sum()

    with pickgrad.validation(False):
        mapped = torch.func.vmap(lambda t: Permutation()._relax(t, 0.5, tol=1e-12))(scores)
        grads = torch.func.vmap(torch.func.grad(loss))(scores, upstream)
    torch.testing.assert_close(mapped, Permutation().relax(scores, 0.5, tol=1e-12))
    leaf = scores.clone().requires_grad_()
    (Permutation().relax(leaf, 0.5, tol=1e-12) * upstream).sum().backward()
    torch.testing.assert_close(grads, leaf.grad)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (1, 3), (1, 1), (4, 4)])
@pytest.mark.parametrize("tau", [0.7, 0.2])
def test_gradcheck(shape, tau):
    scores = gaussian(2, *shape, seed=sum(shape)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: Permutation().relax(t, tau, tol=1e-12), (scores,), atol=1e-6
    )


def unrolled_sinkhorn(log_alpha: torch.Tensor, rounds: int) -> torch.Tensor:
    """Plain log-domain Sinkhorn with the slack row, differentiated by unrolling."""
    s, n = log_alpha.shape[-2:]
    z = log_alpha
    log_r = torch.zeros(s, 1, dtype=z.dtype)
    if s < n:
        z = torch.cat([z, torch.zeros_like(z[..., :1, :])], dim=-2)
        log_r = torch.cat([log_r, torch.full((1, 1), math.log(n - s), dtype=z.dtype)])
    for _ in range(rounds):
        z = z - torch.logsumexp(z, -2, keepdim=True)
        z = z - torch.logsumexp(z, -1, keepdim=True) + log_r
    return z[..., :s, :].exp()


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (1, 4)])
def test_backward_equals_the_unrolled_backward_when_converged(shape):
    scores = gaussian(3, *shape, seed=8)
    upstream = gaussian(3, *shape, seed=9)
    tau = 1.5
    ours = scores.clone().requires_grad_()
    (Permutation().relax(ours, tau, tol=1e-12) * upstream).sum().backward()
    unrolled = scores.clone().requires_grad_()
    (unrolled_sinkhorn(unrolled / tau, 3000) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, unrolled.grad, rtol=0, atol=1e-9)


def test_backward_memory_is_the_plan_only():
    scores = gaussian(2, 5, 5, seed=10).requires_grad_()
    x = Permutation().relax(scores, 0.05)
    saved = x.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(2, 5, 5)]


def test_float32_gradient_matches_float64():
    scores = gaussian(2, 6, 6, seed=11)
    upstream = gaussian(2, 6, 6, seed=12)
    grads = []
    for dtype in (torch.float32, torch.float64):
        leaf = scores.to(dtype).requires_grad_()
        (Permutation().relax(leaf, 0.3) * upstream.to(dtype)).sum().backward()
        assert leaf.grad.dtype == dtype
        grads.append(leaf.grad.double())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 5), (4, 6)])
def test_shift_invariance_per_row_and_column(dtype, shape):
    # Rows may always be shifted; columns only when square (with s < n the slack row's score
    # is fixed, so a column shift changes how much of that column the real rows take).
    s, n = shape
    scores = gaussian(2, s, n, seed=13, dtype=dtype)
    shift = 3.0 * gaussian(2, s, 1, seed=14, dtype=dtype)
    if s == n:
        shift = shift + 3.0 * gaussian(2, 1, n, seed=15, dtype=dtype)
    for tau in (1.0, 0.1):
        x = Permutation().relax(scores, tau)
        shifted = Permutation().relax(scores + shift, tau)
        # Exact in exact arithmetic; the shifted scores themselves are rounded once.
        atol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(shifted, x, rtol=0, atol=atol)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_float32_equals_float64_at_large_magnitudes_and_ties(offset):
    generator = torch.Generator().manual_seed(16)
    spread = torch.randn(3, 5, 5, generator=generator) * 100
    tied = torch.zeros(1, 5, 5)
    half_tied = torch.randint(0, 2, (2, 5, 5), generator=generator).float() * 100
    scores = torch.cat([spread, tied, half_tied]) + offset  # |scores| / tau up to ~1e6
    tau = 0.01
    x32 = Permutation().relax(scores, tau)
    x64 = Permutation().relax(scores.double(), tau)
    assert bool(torch.isfinite(x32).all())
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-5)
    torch.testing.assert_close(x32[3], torch.full((5, 5), 0.2), rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_solved_in_float32_or_better_and_returned_in_its_dtype(dtype):
    scores = (gaussian(2, 4, 4, seed=17) * 100).to(dtype)
    leaf = scores.clone().requires_grad_()
    x = Permutation().relax(leaf, 1e-4)  # |scores| / tau ~ 1e6
    assert x.dtype == dtype and bool(torch.isfinite(x).all())
    reference = Permutation().relax(scores.double(), 1e-4)
    torch.testing.assert_close(x.double(), reference, rtol=0, atol=torch.finfo(dtype).eps)
    x.float().pow(2).sum().backward()
    assert leaf.grad.dtype == dtype and bool(torch.isfinite(leaf.grad).all())


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("estimator", ["relaxed", "st-gumbel", "gumbel-relaxed", "st-relaxed"])
def test_modes(mode, estimator):
    scores = gaussian(2, 3, 4, seed=18).requires_grad_()
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        x = Permutation().relax(scores, 0.1)
        y = pickgrad.select(scores, Permutation(), estimator, tau=0.1)
    assert not x.requires_grad and not y.requires_grad
    _rows, columns = sum_errors(x)
    assert columns <= 1e-10 + 1e-15
    assert y.shape == scores.shape


@pytest.mark.parametrize("batch", [(), (0,), (3,), (2, 0), (2, 3), (1, 2, 2)])
def test_batches_of_0_to_3_leading_dims(batch):
    scores = torch.randn(*batch, 3, 4, dtype=torch.float64, requires_grad=True)
    x = Permutation().relax(scores, 0.2)
    assert x.shape == scores.shape
    x.pow(2).sum().backward()
    assert scores.grad.shape == scores.shape
    if scores.numel():
        flat = scores.detach().reshape(-1, 3, 4)
        torch.testing.assert_close(
            x.detach().reshape(-1, 3, 4)[-1], Permutation().relax(flat[-1], 0.2)
        )


def test_log_sinkhorn_is_the_log_of_relax_at_tau_one():
    scores = gaussian(2, 3, 5, seed=19, dtype=torch.float32)
    torch.testing.assert_close(log_sinkhorn(scores / 0.5).exp(), Permutation().relax(scores, 0.5))


def test_double_backward_is_refused_clearly():
    scores = gaussian(3, 3, seed=21).requires_grad_()
    (grad,) = torch.autograd.grad(
        Permutation().relax(scores, 0.5).pow(2).sum(), scores, create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
