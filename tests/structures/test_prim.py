"""The spanning-tree argmax's two forms of Prim: the NumPy steps used on CPU in eager mode and the
torch steps used under capture and on other devices give the same parents, ties included."""

from __future__ import annotations

import math

import pytest
import torch

import pickgrad
from pickgrad import SpanningTree
from pickgrad.structures._tree_solvers import (
    _prim_numpy,
    _prim_torch,
    max_spanning_tree_parents,
    parents_to_adjacency,
    spanning_tree_parents_numpy,
)


def _graphs(batch: int, n: int, dtype: torch.dtype, seed: int, ties: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(batch, n, n, dtype=dtype, generator=generator)
    if ties:  # a handful of distinct values: many equal edges
        weights = weights.mul(1.5).round()
    return weights + weights.transpose(-1, -2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize(("batch", "n"), [(0, 5), (3, 1), (4, 2), (16, 7), (8, 30)])
def test_numpy_and_torch_steps_give_the_same_parents(
    batch: int, n: int, dtype: torch.dtype, ties: bool
) -> None:
    weights = _graphs(batch, n, dtype, seed=batch * 100 + n, ties=ties)
    generator = torch.Generator().manual_seed(n)
    lengths = torch.randint(1, n + 1, (batch,), generator=generator)
    for nodes in (torch.ones(batch, n, dtype=torch.bool), torch.arange(n) < lengths[:, None]):
        expected = _prim_torch(weights, nodes)
        parents = _prim_numpy(weights, nodes)
        assert parents.dtype == torch.long and torch.equal(parents, expected)


def test_masked_edges_and_a_non_contiguous_input() -> None:
    weights = _graphs(6, 9, torch.float64, seed=1, ties=False)
    low = weights.min() - 1.0  # masked edges: a finite value below every allowed one
    allowed = torch.rand(6, 9, 9, generator=torch.Generator().manual_seed(2)) < 0.5
    allowed = allowed | allowed.transpose(-1, -2)
    weights = torch.where(allowed, weights, low).transpose(-1, -2)  # symmetric, strided
    nodes = torch.ones(6, 9, dtype=torch.bool)
    assert torch.equal(_prim_numpy(weights, nodes), _prim_torch(weights, nodes))


def test_eager_cpu_takes_the_numpy_steps_and_capture_the_torch_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pickgrad.structures import _tree_solvers

    calls: list[str] = []
    for name in ("_prim_arrays", "_prim_torch"):
        original = getattr(_tree_solvers, name)

        def spy(*args: object, _name: str = name, _original: object = original) -> object:
            calls.append(_name)
            return _original(*args)  # type: ignore[operator]

        monkeypatch.setattr(_tree_solvers, name, spy)
    scores = _graphs(2, 5, torch.float32, seed=3, ties=False)
    eager = SpanningTree().argmax(scores)
    assert calls == ["_prim_arrays"]
    with pickgrad.validation(False):
        vmapped = torch.func.vmap(SpanningTree().argmax)(scores)
    assert calls == ["_prim_arrays", "_prim_torch"] and torch.equal(vmapped, eager)
    # half types are computed by the torch steps too (NumPy has no bfloat16)
    max_spanning_tree_parents(scores.to(torch.bfloat16), torch.ones(2, 5, dtype=torch.bool))
    assert calls[-1] == "_prim_torch"


def _torch_parents(scores: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """The argmax's general route to the parents: mirror the upper triangle in float64, torch
    Prim."""
    upper = torch.triu(scores.to(torch.float64), diagonal=1)
    return _prim_torch(upper + upper.transpose(-1, -2), nodes)


def _torch_route(scores: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """The argmax's general route: :func:`_torch_parents`, then the mirrored adjacency."""
    arcs = parents_to_adjacency(_torch_parents(scores, nodes), scores.dtype)
    return arcs + arcs.transpose(-1, -2)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str
)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize(("batch", "n"), [(0, 5), (3, 1), (4, 2), (16, 7), (8, 30)])
def test_the_numpy_tree_is_the_torch_route_tree(
    batch: int, n: int, dtype: torch.dtype, ties: bool
) -> None:
    generator = torch.Generator().manual_seed(batch * 10 + n)
    scores = torch.randn(batch, n, n, generator=generator)  # not symmetric: the upper is read
    if ties:
        scores = scores.mul(1.5).round()
    lower = torch.ones(n, n, dtype=torch.bool).tril(-1)
    scores = scores.to(dtype).masked_fill(lower, -math.inf)  # ignored: no torch-route fallback
    scores.diagonal(dim1=-2, dim2=-1).fill_(math.nan)  # never read
    lengths = torch.randint(1, n + 1, (batch,), generator=generator)
    for given in (None, lengths):
        nodes = torch.arange(n) < (torch.full((batch,), n) if given is None else given)[:, None]
        parents = spanning_tree_parents_numpy(scores, nodes)
        assert parents is not None and parents.dtype == torch.long
        assert torch.equal(parents, _torch_parents(scores, nodes))
        tree = SpanningTree()._matrix_argmax(scores, given)
        assert tree.dtype == dtype and torch.equal(tree, _torch_route(scores, nodes))


def test_a_masked_upper_edge_sends_the_tree_to_the_torch_route() -> None:
    scores = torch.randn(3, 5, 5)
    scores[1, 0, 3] = -math.inf
    assert spanning_tree_parents_numpy(scores, torch.ones(3, 5, dtype=torch.bool)) is None
    tree = SpanningTree().argmax(scores)  # still solved (filled), without edge {0, 3} in graph 1
    assert tree[1, 0, 3] == 0 and torch.equal(tree.triu(1).sum((-2, -1)), torch.full((3,), 4.0))
    filled = scores.masked_fill(scores == -math.inf, -1e6)
    assert torch.equal(tree, _torch_route(filled, torch.ones(3, 5, dtype=torch.bool)))
