"""Edge-list tree scores: the conversions, and ``SpanningTree(edge_list=True)`` against the
matrix form (argmax, relax, log_partition, enumerate, lengths, every estimator)."""

from __future__ import annotations

import pytest
import torch
from test_spanning_tree import assert_valid_trees

import pickgrad
from pickgrad import SpanningTree
from pickgrad.estimators.base import get_estimator
from pickgrad.structures import edge_index, edges_to_matrix, matrix_to_edges

EDGES = SpanningTree(edge_list=True)
MATRIX = SpanningTree()


def test_edge_index_is_the_row_major_upper_triangle() -> None:
    assert edge_index(4).tolist() == [[0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3]]
    for n in (2, 3, 7):
        index = edge_index(n)
        assert index.shape == (2, n * (n - 1) // 2)
        pairs = [(int(i), int(j)) for i, j in index.T]
        assert pairs == [(i, j) for i in range(n) for j in range(i + 1, n)]


def test_edge_index_is_a_fresh_tensor() -> None:
    first = edge_index(5)
    first.zero_()
    assert int(edge_index(5)[1, 0]) == 1, "the cached index must not be handed out"


def test_conversions_round_trip(generator: torch.Generator) -> None:
    edges = torch.randn(2, 3, 10, generator=generator, dtype=torch.float64)
    matrix = edges_to_matrix(edges)
    assert matrix.shape == (2, 3, 5, 5)
    assert torch.equal(matrix, torch.triu(matrix, 1)), "only the strict upper triangle is set"
    assert torch.equal(matrix_to_edges(matrix), edges)
    index = edge_index(5)
    assert torch.equal(matrix[..., index[0], index[1]], edges)
    # matrix_to_edges reads the upper triangle only.
    full = torch.randn(4, 4, generator=generator)
    assert torch.equal(matrix_to_edges(full), full[edge_index(4)[0], edge_index(4)[1]])


def test_conversions_are_differentiable(generator: torch.Generator) -> None:
    edges = torch.randn(2, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: edges_to_matrix(e).square().sum((-1, -2)), (edges,))
    matrix = torch.randn(3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: matrix_to_edges(s).exp(), (matrix,))


@pytest.mark.parametrize("m", [0, 2, 4, 11])
def test_bad_edge_counts_are_errors(m: int) -> None:
    with pytest.raises(ValueError, match=f"m={m}"):
        edges_to_matrix(torch.zeros(3, m))
    if m > 0:
        with pytest.raises(ValueError, match=f"m={m}"):
            EDGES.argmax(torch.zeros(3, m))


def test_bad_arguments_are_errors() -> None:
    with pytest.raises(ValueError, match="n must be >= 2"):
        edge_index(1)
    with pytest.raises(TypeError, match="n must be an int"):
        edge_index(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        matrix_to_edges(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="edge_scores must be a torch"):
        edges_to_matrix([1.0, 2.0, 3.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="edge_list must be a bool"):
        SpanningTree(edge_list=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lengths must lie in"):
        EDGES.argmax(torch.zeros(2, 6), lengths=torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="event_shape must be"):
        EDGES.enumerate((4, 4))


def test_methods_match_the_matrix_form(generator: torch.Generator) -> None:
    edges = torch.randn(3, 2, 10, generator=generator, dtype=torch.float64) * 3
    matrix = edges_to_matrix(edges)
    x = EDGES.argmax(edges)
    assert x.shape == edges.shape and x.dtype == edges.dtype
    assert torch.equal(x, matrix_to_edges(MATRIX.argmax(matrix)))
    assert_valid_trees(edges_to_matrix(x) + edges_to_matrix(x).transpose(-1, -2), 5)
    for tau in (0.1, 1.0, 3.0):
        torch.testing.assert_close(
            EDGES.relax(edges, tau), matrix_to_edges(MATRIX.relax(matrix, tau)), rtol=0, atol=0
        )
        torch.testing.assert_close(
            EDGES.log_partition(edges, tau), MATRIX.log_partition(matrix, tau), rtol=0, atol=0
        )
    lengths = torch.tensor([[5, 2], [3, 4], [1, 5]])
    for method in (EDGES.argmax, EDGES.relax, EDGES.log_partition):
        name = method.__name__
        matrix_result = getattr(MATRIX, name)(matrix, lengths=lengths)
        if name != "log_partition":
            matrix_result = matrix_to_edges(matrix_result)
        assert torch.equal(method(edges, lengths=lengths), matrix_result), name


def test_relax_gradient_matches_the_matrix_form(generator: torch.Generator) -> None:
    edges = torch.randn(2, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    (grad_edges,) = torch.autograd.grad((EDGES.relax(edges, 0.7) * weights).sum(), edges)
    matrix = edges_to_matrix(edges.detach()).requires_grad_()
    loss = (MATRIX.relax(matrix, 0.7) * edges_to_matrix(weights)).sum()
    (grad_matrix,) = torch.autograd.grad(loss, matrix)
    torch.testing.assert_close(grad_edges, matrix_to_edges(grad_matrix))
    assert torch.autograd.gradcheck(lambda e: EDGES.relax(e, 0.7), (edges,))


def test_enumerate_matches_the_matrix_form() -> None:
    for n in (2, 3, 4, 5):
        m = n * (n - 1) // 2
        trees = EDGES.enumerate((m,), dtype=torch.float64)
        assert trees.shape == (max(1, n ** (n - 2)), m)
        assert torch.equal(trees, matrix_to_edges(MATRIX.enumerate((n, n), dtype=torch.float64)))
        assert bool((trees.sum(-1) == n - 1).all())
        assert bool(EDGES._is_solution(trees).all())
    # (0, 1), (0, 2), (1, 2): a triangle that leaves node 3 out.
    assert not bool(EDGES._is_solution(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])))


def test_argmax_is_the_best_enumerated_tree(generator: torch.Generator) -> None:
    edges = torch.randn(20, 10, generator=generator, dtype=torch.float64)
    trees = EDGES.enumerate((10,), dtype=torch.float64)
    best = trees[(edges @ trees.T).argmax(-1)]
    assert torch.equal(EDGES.argmax(edges), best)


def test_capabilities_match_the_matrix_form() -> None:
    for capability in pickgrad.structures.CAPABILITIES:
        assert EDGES.supports(capability) == MATRIX.supports(capability), capability
    assert EDGES.active_mask((10,)) is None
    assert EDGES.event_dims == 1 and MATRIX.event_dims == 2
    assert repr(EDGES) == "SpanningTree(edge_list=True)"
    assert pickgrad.available_estimators(EDGES) == pickgrad.available_estimators(MATRIX)


@pytest.mark.parametrize("name", pickgrad.available_estimators())
def test_every_estimator_runs_on_edge_lists(name: str, generator: torch.Generator) -> None:
    edges = torch.randn(3, 10, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randn(10, dtype=torch.float64, generator=generator)
    estimator = get_estimator(name)
    if estimator.missing_capabilities(EDGES):
        with pytest.raises(NotImplementedError, match=name):
            pickgrad.select(edges, EDGES, name)
        return
    if estimator.needs_loss:
        surrogate = pickgrad.estimate(
            lambda x: (x * target).sum(-1), edges, EDGES, name, n_samples=4, generator=generator
        )
        assert surrogate.shape == ()
        surrogate.backward()
    else:
        x = pickgrad.select(edges, EDGES, name, tau=0.5, generator=generator)
        assert x.shape == edges.shape and x.dtype == edges.dtype
        if estimator.hard:
            adjacency = edges_to_matrix(x.detach())
            assert_valid_trees(adjacency + adjacency.transpose(-1, -2), 5)
        (x * target).sum().backward()
    grad = edges.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("name", ["st", "st-relaxed", "relaxed", "blackbox"])
def test_deterministic_estimators_match_the_matrix_form(
    name: str, generator: torch.Generator
) -> None:
    edges = torch.randn(2, 10, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(2, 10, dtype=torch.float64, generator=generator)
    x = pickgrad.select(edges, EDGES, name, tau=0.5)
    (grad_edges,) = torch.autograd.grad((x * weights).sum(), edges)
    matrix = edges_to_matrix(edges.detach()).requires_grad_()
    y = pickgrad.select(matrix, MATRIX, name, tau=0.5)
    # A loss on the edge list is a loss on the upper triangle of the matrix output.
    (grad_matrix,) = torch.autograd.grad((y * edges_to_matrix(weights)).sum(), matrix)
    assert torch.equal(x.detach(), matrix_to_edges(y.detach()))
    torch.testing.assert_close(grad_edges, matrix_to_edges(grad_matrix))
