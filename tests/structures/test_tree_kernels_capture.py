"""Tree kernels under graph capture (torch.func transforms, torch.compile): no value is read
back to Python, the setup_context Function's gradients are exact, and the results match the
eager ones."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import pickgrad
from pickgrad import Arborescence, SpanningTree
from pickgrad.structures import _matrix_tree
from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _marginals_by_inverse,
    arc_marginals,
    arc_mask,
)
from pickgrad.structures._tree_solvers import _prim_torch, max_spanning_tree_parents

STRUCTURES = [Arborescence(), Arborescence(root=2), SpanningTree()]


def _refuse(*_: Any, **__: Any) -> Any:
    raise AssertionError("a tensor value was read back to Python")


@contextlib.contextmanager
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernels believe a tracer is running; every read-back of a value raises."""
    with monkeypatch.context() as patch, pickgrad.validation(False):
        patch.setattr(_matrix_tree, "graph_capture_active", lambda: True)
        for name in ("__bool__", "item", "tolist", "nonzero", "__int__", "__float__"):
            patch.setattr(torch.Tensor, name, _refuse)
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_marginals_read_no_value_under_capture(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    # Graph 0 is ordinary; graph 1 has a 2-cycle bound by e^40, beyond the float64 inverse.
    scores = torch.randn(2, 5, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    scores[1, 1, 2] = scores[1, 2, 1] = 40.0
    arcs = arc_mask(torch.ones(5, dtype=torch.bool), 0)
    weights = torch.arange(25.0, dtype=dtype).reshape(5, 5)
    leaf = scores.clone().requires_grad_()
    with captured(monkeypatch):
        marginals = arc_marginals(leaf, arcs, 0, 0.7)
        (marginals[0] * weights).sum().backward()
    # The checks read values: after the patches are undone.
    assert marginals.dtype == dtype and leaf.grad is not None
    assert torch.isfinite(marginals).flatten(1).all(1).tolist() == [True, False]
    assert bool(torch.isnan(marginals[1]).all())  # beyond float64's inverse: NaN, loudly
    eager = arc_marginals(scores, arcs, 0, 0.7)
    tolerance = MARGINAL_TOLERANCE[dtype]
    torch.testing.assert_close(marginals[0].detach(), eager[0], rtol=0, atol=tolerance)
    reference = scores.clone().requires_grad_()
    (arc_marginals(reference, arcs, 0, 0.7)[0] * weights).sum().backward()
    assert reference.grad is not None
    torch.testing.assert_close(leaf.grad, reference.grad, rtol=1e-4, atol=1e-4)
    assert float(leaf.grad[1].abs().sum()) == 0.0  # nothing flows into the NaN graph


def test_the_setup_context_function_passes_gradcheck(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Function torch.func and torch.compile see (setup_context, vmap rule), in float64.
    monkeypatch.setattr(_matrix_tree, "graph_capture_active", lambda: True)
    scores = torch.randn(3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scores.requires_grad_()
    arcs = arc_mask(torch.arange(5) < torch.tensor([5, 3, 4])[:, None], 0)
    marginals = lambda s: _marginals_by_inverse(s, arcs, tau=0.6)[0]  # noqa: E731
    assert torch.autograd.gradcheck(marginals, (scores,))
    assert torch.autograd.gradgradcheck(marginals, (scores,), fast_mode=True)


@pytest.mark.parametrize("structure", STRUCTURES, ids=repr)
def test_vmap_and_grad_match_eager(structure: SpanningTree | Arborescence) -> None:
    scores = torch.randn(4, 6, 6, generator=torch.Generator().manual_seed(2))
    relax = lambda s: structure.relax(s, 0.5)  # noqa: E731
    loss = lambda s: (relax(s) ** 2).sum()  # noqa: E731
    eager = relax(scores)
    leaf = scores.clone().requires_grad_()
    loss(leaf).backward()
    assert leaf.grad is not None
    tolerance = MARGINAL_TOLERANCE[torch.float32]
    torch.testing.assert_close(torch.func.vmap(relax)(scores), eager, rtol=0, atol=tolerance)
    torch.testing.assert_close(torch.func.grad(loss)(scores), leaf.grad, rtol=1e-4, atol=1e-4)
    per_graph = torch.func.vmap(torch.func.grad(loss))(scores)
    torch.testing.assert_close(per_graph, leaf.grad, rtol=1e-4, atol=1e-4)


def test_prim_reads_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # The torch steps of the spanning-tree argmax (every device but eager CPU, where the NumPy
    # steps take host views) are sync-free: a fixed n - 1 steps.
    weights = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(3))
    weights = weights + weights.transpose(-1, -2)
    nodes = torch.arange(6) < torch.tensor([6, 4, 2])[:, None]
    expected = max_spanning_tree_parents(weights, nodes)
    with monkeypatch.context() as patch:
        for name in ("__bool__", "item", "tolist", "nonzero", "numpy"):
            patch.setattr(torch.Tensor, name, _refuse)
        parents = _prim_torch(weights, nodes)
    assert torch.equal(parents, expected)


# Dynamo instantiates autograd Functions internally and warns about it (torch's own warning).
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_relax_compiles_without_graph_breaks() -> None:
    scores = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(4))
    with pickgrad.validation(False):
        for structure in (Arborescence(), SpanningTree()):
            compiled = torch.compile(
                lambda s, st=structure: st.relax(s, 0.5), fullgraph=True, backend="eager"
            )
            leaf = scores.clone().requires_grad_()
            out = compiled(leaf)
            (out * torch.arange(36.0).reshape(6, 6)).sum().backward()
            assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
            eager = structure.relax(scores, 0.5)
            assert not math.isnan(float(out.detach().sum()))
            tolerance = MARGINAL_TOLERANCE[torch.float32]
            torch.testing.assert_close(out.detach(), eager, rtol=0, atol=tolerance)
