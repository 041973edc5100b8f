"""pickgrad._softmax: the same values and derivatives as torch's softmax, on both paths."""

from __future__ import annotations

import math

import pytest
import torch

from pickgrad._softmax import _FEWEST_ENTRIES, log_softmax, softmax, uses_composition

FUNCTIONS = [(softmax, torch.softmax), (log_softmax, torch.log_softmax)]


@pytest.mark.parametrize("ours, theirs", FUNCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3000, 2), (300, 10), (40, 7, 10), (300, 15), (100, 40)])
def test_values_and_gradients_equal_torch(ours, theirs, dtype, shape) -> None:
    generator = torch.Generator().manual_seed(0)
    x = (4 * torch.randn(shape, generator=generator)).to(dtype)
    x[0, ..., 0] = -math.inf  # a masked entry
    direction = torch.randn(shape, generator=generator).to(dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    mine, reference = ours(a), theirs(b, -1)
    eps = 1e-6 if dtype == torch.float32 else 1e-14  # rounding, relative for the log values
    tolerance = {"rtol": eps, "atol": eps}
    torch.testing.assert_close(mine, reference, **tolerance)
    finite = torch.isfinite(reference)
    (torch.where(finite, mine, 0) * direction).sum().backward()
    (torch.where(finite, reference, 0) * direction).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, **tolerance)
    if ours is softmax:
        assert mine[0, ..., 0].eq(0).all() and bool(((mine >= 0) & (mine <= 1)).all())


def test_the_composition_serves_short_rows_and_torch_the_rest() -> None:
    many = _FEWEST_ENTRIES
    assert uses_composition(torch.zeros(many, 10))
    assert uses_composition(torch.zeros(many, 2))
    assert uses_composition(torch.zeros(many, 4, dtype=torch.float64), log=True)
    assert not uses_composition(torch.zeros(many, 2, dtype=torch.float64))  # torch as fast
    assert not uses_composition(torch.zeros(many, 2), log=True)
    assert not uses_composition(torch.zeros(many, 64))  # long rows: torch's vectorised kernel
    assert not uses_composition(torch.zeros(10, 10))  # few entries
    assert not uses_composition(torch.zeros(many, 10, dtype=torch.float16))
    assert not uses_composition(torch.zeros(many, 10, dtype=torch.bfloat16))


@pytest.mark.parametrize("ours", [softmax, log_softmax])
def test_derivatives_of_the_composition_to_second_order(ours) -> None:
    x = torch.randn(_FEWEST_ENTRIES // 4, 4, dtype=torch.float64, requires_grad=True)
    assert uses_composition(x)
    torch.autograd.gradcheck(ours, (x,))
    torch.autograd.gradgradcheck(ours, (x,))


def test_a_row_of_only_masked_entries_is_nan_as_in_torch() -> None:
    x = torch.randn(_FEWEST_ENTRIES // 8, 8)
    x[3] = -math.inf
    assert uses_composition(x)
    assert softmax(x)[3].isnan().all() and torch.softmax(x, -1)[3].isnan().all()
    assert log_softmax(x)[3].isnan().all() and torch.log_softmax(x, -1)[3].isnan().all()


def test_vmap_takes_torchs_kernel() -> None:
    x = torch.randn(4, _FEWEST_ENTRIES, 5)
    torch.testing.assert_close(torch.vmap(softmax)(x), torch.softmax(x, -1))
    torch.testing.assert_close(torch.vmap(log_softmax)(x), torch.log_softmax(x, -1))


def test_torch_compile_traces_through_to_torchs_kernel() -> None:
    x = torch.randn(_FEWEST_ENTRIES, 5)
    compiled = torch.compile(softmax, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), torch.softmax(x, -1))
