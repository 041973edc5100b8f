"""SpanningTree: argmax against networkx and enumeration, matrix-tree marginals and log-partition
against brute force (also for scores spread over +-50 / tau and beyond), gradients, lengths,
every estimator, bad input."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pickgrad
from pickgrad import SpanningTree
from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _marginals_by_inverse,
)
from pickgrad.structures.spanning_tree import _symmetric

TREE = SpanningTree()


def tree_weight(x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Sum of the scores of the edges of x (upper triangle only)."""
    return (torch.triu(scores, 1) * x).sum((-1, -2))


def brute_force(scores: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log Z and edge marginals by enumerating every spanning tree (float64)."""
    n = scores.shape[-1]
    trees = TREE.enumerate((n, n), dtype=torch.float64)
    energies = tree_weight(trees, scores.double()[..., None, :, :]) / tau
    probabilities = torch.softmax(energies, dim=-1)
    marginals = (probabilities[..., None, None] * trees).sum(-3)
    return torch.logsumexp(energies, dim=-1), marginals


def assert_valid_trees(x: torch.Tensor, n: int) -> None:
    flat = x.reshape(-1, n, n)
    assert torch.equal(flat, flat.transpose(-1, -2)), "adjacency must be symmetric"
    assert bool((torch.diagonal(flat, dim1=-2, dim2=-1) == 0).all()), "no self-loops"
    assert bool(((flat == 0) | (flat == 1)).all()), "entries are 0/1"
    assert bool((flat.sum((-1, -2)) == 2 * (n - 1)).all()), "n - 1 edges"
    # Connected (hence, with n - 1 edges, acyclic): every node reachable from 0.
    reach = torch.zeros(flat.shape[0], n, dtype=flat.dtype)
    reach[:, 0] = 1
    for _ in range(n):
        reach = ((reach + (reach[:, None, :] @ flat).squeeze(1)) > 0).to(flat.dtype)
    assert bool((reach == 1).all()), "tree must be connected"


def networkx_weight(scores: torch.Tensor) -> float:
    n = scores.shape[-1]
    graph = nx.Graph()
    graph.add_weighted_edges_from(
        (i, j, float(scores[i, j])) for i in range(n) for j in range(i + 1, n)
    )
    tree = nx.maximum_spanning_tree(graph)
    return sum(weight for _, _, weight in tree.edges(data="weight"))


def random_scores(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, dtype=torch.float64, generator=generator)
    if kind == "ties":  # few distinct values: many equal-weight optima
        return torch.randint(-2, 3, shape, generator=generator).double()
    return -10 * torch.rand(shape, dtype=torch.float64, generator=generator)  # all negative


# --- argmax -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "ties", "negative"])
@pytest.mark.parametrize("n", [3, 7, 12])
def test_argmax_weight_equals_networkx(kind: str, n: int, generator: torch.Generator) -> None:
    scores = random_scores(kind, (40, n, n), generator)  # 9 x 40 = 360 graphs in all
    x = TREE.argmax(scores)
    assert_valid_trees(x, n)
    expected = torch.tensor([networkx_weight(s) for s in scores], dtype=torch.float64)
    torch.testing.assert_close(tree_weight(x, scores), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_argmax_is_best_enumerated(n: int, generator: torch.Generator) -> None:
    scores = torch.randn(64, n, n, dtype=torch.float64, generator=generator)
    trees = TREE.enumerate((n, n), dtype=torch.float64)
    best = tree_weight(trees, scores[:, None]).amax(-1)
    x = TREE.argmax(scores)
    torch.testing.assert_close(tree_weight(x, scores), best, rtol=0, atol=1e-12)
    # the argmax is one of the enumerated trees
    assert bool((x[:, None] == trees).all(-1).all(-1).any(-1).all())


@given(n=st.integers(2, 5), seed=st.integers(0, 2**31 - 1))
def test_argmax_with_ties_is_best_enumerated(n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(-1, 2, (8, n, n), generator=generator).double()
    trees = TREE.enumerate((n, n), dtype=torch.float64)
    best = tree_weight(trees, scores[:, None]).amax(-1)
    assert torch.equal(tree_weight(TREE.argmax(scores), scores), best)


def test_argmax_batch_shapes_dtype_and_ignored_entries(generator: torch.Generator) -> None:
    scores = torch.randn(2, 3, 6, 6, generator=generator)
    x = TREE.argmax(scores)
    assert x.shape == scores.shape and x.dtype == scores.dtype
    assert_valid_trees(x, 6)
    # the lower triangle and the diagonal never change the answer
    scrambled = torch.triu(scores, 1) + 100 * torch.randn(6, 6, generator=generator).tril()
    assert torch.equal(TREE.argmax(scrambled), x)
    assert TREE.argmax(scores.to(torch.bfloat16)).dtype == torch.bfloat16


# --- relax and log_partition --------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_relax_and_log_partition_equal_enumeration(
    n: int, tau: float, generator: torch.Generator
) -> None:
    scores = torch.randn(16, n, n, dtype=torch.float64, generator=generator)
    log_z, marginals = brute_force(scores, tau)
    torch.testing.assert_close(TREE.log_partition(scores, tau), log_z, rtol=0, atol=1e-10)
    # the float64 fast path is trusted up to MARGINAL_TOLERANCE[float64] = 1e-7
    torch.testing.assert_close(TREE.relax(scores, tau), marginals, rtol=0, atol=1e-7)


@pytest.mark.parametrize("spread", [50.0, 300.0])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_relax_stable_for_scores_spanning_50_over_tau(
    spread: float, tau: float, generator: torch.Generator
) -> None:
    # Uniform in [-spread, spread] * tau: exp(scores / tau) spans e^(2 spread). Groups of nodes
    # bound together far more tightly than to the rest are common here; a plain Laplacian
    # inverse or slogdet loses every digit on them (or finds the matrix singular).
    n = 5
    scores = (
        (2 * torch.rand(200, n, n, dtype=torch.float64, generator=generator) - 1) * spread * tau
    )
    log_z, marginals = brute_force(scores, tau)
    torch.testing.assert_close(TREE.log_partition(scores, tau), log_z, rtol=1e-13, atol=1e-10)
    torch.testing.assert_close(TREE.relax(scores, tau), marginals, rtol=0, atol=1e-7)
    # float32 in, float32 out: finite, within float32 rounding of the float64 answer
    single = TREE.relax(scores.float(), tau)
    assert single.dtype == torch.float32 and bool(torch.isfinite(single).all())
    torch.testing.assert_close(
        single.double(),
        TREE.relax(scores.float().double(), tau),
        rtol=0,
        atol=MARGINAL_TOLERANCE[torch.float32],  # float32 input: float32 linear algebra
    )


def test_relax_on_tightly_bound_pair_is_exact() -> None:
    # Nodes 1 and 2 are tied by e^60 and bound to node 0 by e^0: the edge {1, 2} is nearly
    # certain and the other two edges split the rest, 1/2 each (up to e^-60).
    scores = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 60.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[0.0, 0.5, 0.5], [0.5, 0.0, 1.0], [0.5, 1.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(TREE.relax(scores), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        TREE.log_partition(scores), torch.tensor(60 + math.log(2), dtype=torch.float64)
    )


def test_marginals_are_a_point_of_the_polytope(generator: torch.Generator) -> None:
    n = 9
    scores = 3 * torch.randn(4, 2, n, n, dtype=torch.float64, generator=generator)
    mu = TREE.relax(scores, tau=0.7)
    assert mu.shape == scores.shape
    torch.testing.assert_close(mu, mu.transpose(-1, -2), rtol=0, atol=0)
    assert bool((torch.diagonal(mu, dim1=-2, dim2=-1) == 0).all())
    assert bool((mu >= -1e-12).all() and (mu <= 1 + 1e-12).all())
    torch.testing.assert_close(
        mu.sum((-1, -2)) / 2, torch.full((4, 2), n - 1.0, dtype=torch.float64)
    )
    # every node is covered by at least one edge in expectation: degree >= 1
    assert bool((mu.sum(-1) >= 1 - 1e-9).all())


def test_relax_tends_to_argmax(generator: torch.Generator) -> None:
    # Distinct powers of two as edge scores: every tree has a different weight, gaps >= 1.
    n = 6
    scores = torch.zeros(8, n, n, dtype=torch.float64)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    for b in range(8):  # make the 15 upper scores a permutation of 2^0 .. 2^14
        scores[b][upper] = 2.0 ** torch.randperm(15, generator=generator).double()
    x = TREE.argmax(scores)
    torch.testing.assert_close(TREE.relax(scores, tau=0.02), x, rtol=0, atol=1e-12)


def test_relax_keeps_dtype() -> None:
    scores = torch.randn(3, 4, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        out = TREE.relax(scores.to(dtype))
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        assert TREE.log_partition(scores.to(dtype)).dtype == dtype


def test_gradcheck_relax_and_log_partition(generator: torch.Generator) -> None:
    scores = torch.randn(2, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: TREE.relax(s, 0.7), (scores,))
    assert torch.autograd.gradgradcheck(lambda s: TREE.relax(s, 0.7), (scores,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda s: TREE.log_partition(s, 0.7), (scores,))


def test_gradcheck_on_the_exact_elimination_path(generator: torch.Generator) -> None:
    # Two pairs tied by e^40, pairs joined by e^0: the fast path reports a large error estimate
    # and these graphs go through the subtraction-free elimination.
    base = torch.zeros(4, 4, dtype=torch.float64)
    base[0, 1] = base[2, 3] = 40.0
    scores = base + 0.3 * torch.randn(4, 4, dtype=torch.float64, generator=generator)
    arcs = TREE._arcs(scores, None)
    error = float(_marginals_by_inverse(_symmetric(scores), arcs)[1])
    assert error > MARGINAL_TOLERANCE[torch.float64]  # really that path
    scores.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: TREE.relax(s, 1.0), (scores,))
    assert torch.autograd.gradgradcheck(lambda s: TREE.relax(s, 1.0), (scores,), fast_mode=True)
    _, marginals = brute_force(scores.detach(), 1.0)
    torch.testing.assert_close(TREE.relax(scores, 1.0), marginals, rtol=0, atol=1e-12)


def test_log_partition_gradient_is_marginals_over_tau(generator: torch.Generator) -> None:
    tau = 0.4
    scores = torch.randn(3, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    (grad,) = torch.autograd.grad(TREE.log_partition(scores, tau).sum(), scores)
    expected = torch.triu(TREE.relax(scores.detach(), tau), 1) / tau
    torch.testing.assert_close(grad, expected)


def test_relax_gradient_is_zero_on_ignored_entries(generator: torch.Generator) -> None:
    scores = torch.randn(3, 5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(3, 5, 5, dtype=torch.float64, generator=generator)
    (TREE.relax(scores, 0.5) * weights).sum().backward()
    ignored = ~TREE.active_mask((5, 5))
    assert bool((scores.grad[:, ignored] == 0).all())
    assert bool((scores.grad[:, ~ignored] != 0).all())


def test_relax_gradient_sees_both_halves_of_the_output(generator: torch.Generator) -> None:
    # A loss on x[j, i] (lower half) must move scores[i, j]: d mu[j, i] = d mu[i, j].
    scores = torch.randn(5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    (upper,) = torch.autograd.grad(TREE.relax(scores)[1, 3], scores)
    (lower,) = torch.autograd.grad(TREE.relax(scores)[3, 1], scores)
    torch.testing.assert_close(upper, lower)
    assert float(upper[1, 3]) > 0


# --- lengths ------------------------------------------------------------------------------------


def test_lengths_equal_cropped_graphs(generator: torch.Generator) -> None:
    n = 6
    scores = 2 * torch.randn(2, 4, n, n, dtype=torch.float64, generator=generator)
    lengths = torch.tensor([[6, 1, 2, 3], [4, 5, 6, 2]])
    x = TREE.argmax(scores, lengths=lengths)
    mu = TREE.relax(scores, 0.5, lengths=lengths)
    log_z = TREE.log_partition(scores, 0.5, lengths=lengths)
    for b in range(2):
        for c in range(4):
            m = int(lengths[b, c])
            for out in (x[b, c], mu[b, c]):
                assert bool((out[m:] == 0).all() and (out[:, m:] == 0).all()), "padding is zero"
            if m == 1:
                assert float(log_z[b, c]) == 0.0  # the empty tree alone
                continue
            cropped = scores[b, c, :m, :m]
            assert torch.equal(x[b, c, :m, :m], TREE.argmax(cropped))
            torch.testing.assert_close(mu[b, c, :m, :m], TREE.relax(cropped, 0.5))
            torch.testing.assert_close(log_z[b, c], TREE.log_partition(cropped, 0.5))


def test_lengths_gradient_is_zero_on_padding(generator: torch.Generator) -> None:
    scores = torch.randn(2, 5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    lengths = torch.tensor([3, 5])
    TREE.relax(scores, lengths=lengths).pow(2).sum().backward()
    assert bool((scores.grad[0, 3:] == 0).all() and (scores.grad[0, :, 3:] == 0).all())
    assert bool((scores.grad[1][TREE.active_mask((5, 5))] != 0).all())


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        (torch.tensor([0, 3]), ValueError, r"lengths must lie in \[1, n=4\].*0 to 3"),
        (torch.tensor([2, 5]), ValueError, r"lengths must lie in \[1, n=4\].*2 to 5"),
        (torch.tensor([2, 3, 4]), ValueError, r"batch shape of scores \(2,\).*got shape \(3,\)"),
        (torch.tensor([2.0, 3.0]), TypeError, "integer dtype"),
        ("two", TypeError, "lengths must be an integer tensor"),
    ],
)
def test_bad_lengths(lengths: object, error: type, match: str) -> None:
    scores = torch.randn(2, 4, 4)
    for method in (TREE.argmax, TREE.relax, TREE.log_partition):
        with pytest.raises(error, match=match):
            method(scores, lengths=lengths)


# --- enumerate and bad input --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_enumerate_is_every_tree_once(n: int) -> None:
    trees = TREE.enumerate((n, n), dtype=torch.float64)
    assert trees.shape == (max(1, n ** (n - 2)) if n > 1 else 1, n, n)
    assert len({tuple(t.flatten().tolist()) for t in trees}) == trees.shape[0], "all distinct"
    if n >= 2:
        assert_valid_trees(trees, n)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 4), r"square scores \(\.\.\., n, n\).*\(3, 4\)"),
        ((2, 1, 1), r"n >= 2 nodes.*\(1, 1\)"),
        ((5,), r"at least 2 dimension"),
    ],
)
def test_bad_shapes(shape: tuple[int, ...], match: str) -> None:
    for method in (TREE.argmax, TREE.relax, TREE.log_partition):
        with pytest.raises(ValueError, match=match):
            method(torch.zeros(shape))


def test_bad_values_and_options() -> None:
    scores = torch.zeros(4, 4)
    scores[1, 2] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        TREE.relax(scores)
    with pytest.raises(ValueError, match="NaN"):
        pickgrad.select(scores, TREE, "st-gumbel")
    with pytest.raises(TypeError, match="floating dtype"):
        TREE.argmax(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        TREE.relax(torch.zeros(4, 4), tau=0.0)
    with pytest.raises(ValueError, match="regularizer must be 'entropy'"):
        TREE.relax(torch.zeros(4, 4), regularizer="sparsemax")
    with pytest.raises(ValueError, match=r"event_shape must be \(n, n\)"):
        TREE.enumerate((3, 4))


# --- estimators ---------------------------------------------------------------------------------


def test_straight_through_sends_both_halves_to_the_upper_score() -> None:
    scores = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], requires_grad=True)
    x = pickgrad.select(scores, TREE, "st")
    x[2, 1].backward()  # a loss on the lower half only
    expected = torch.zeros(3, 3)
    expected[1, 2] = 1.0
    assert torch.equal(scores.grad, expected)


def test_gumbel_rao_is_available_and_hard(generator: torch.Generator) -> None:
    assert "gumbel-rao" in pickgrad.available_estimators(TREE)
    scores = torch.randn(4, 5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    x = pickgrad.select(scores, TREE, "gumbel-rao", tau=0.5, generator=generator)
    assert_valid_trees(x.detach(), 5)
    (x * torch.randn(5, 5, dtype=torch.float64, generator=generator)).sum().backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    assert bool((scores.grad.tril() == 0).all()), "the ignored entries get no gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_cholesky_inverse_equals_lu_and_the_exact_marginals(dtype, tau) -> None:
    # n - 1 >= CHOLESKY_SIZE: spanning trees invert their Laplacian by Cholesky. Against the LU
    # path (symmetric=False) and the exact elimination, perturbed graphs, lengths and a mask.
    from pickgrad.structures import _matrix_tree as matrix_tree
    from pickgrad.structures._matrix_tree import arc_marginals, full_arc_mask

    generator = torch.Generator().manual_seed(11)
    n = matrix_tree.CHOLESKY_SIZE + 5  # Cholesky from CHOLESKY_SIZE rows of the minor
    noisy = torch.randn(6, n, n, dtype=torch.float64, generator=generator)
    noisy = noisy - torch.log(
        torch.rand(6, n, n, dtype=torch.float64, generator=generator).log().neg()
    )
    noisy = _symmetric(noisy).to(dtype)
    noisy[0, 2, 5] = noisy[0, 5, 2] = -math.inf  # a masked edge
    arcs = full_arc_mask(n, 0, noisy.device)
    leaves = [noisy.clone().requires_grad_() for _ in range(2)]
    fast, lu = (
        arc_marginals(leaf, arcs, 0, tau, symmetric=s)
        for leaf, s in zip(leaves, (True, False), strict=True)
    )
    tolerance = MARGINAL_TOLERANCE[dtype]
    torch.testing.assert_close(fast, lu, rtol=0, atol=2 * tolerance)
    exact = TREE.relax(noisy.double(), tau)
    torch.testing.assert_close(
        (fast + fast.transpose(-1, -2)).double(), exact, rtol=0, atol=tolerance
    )
    direction = torch.randn(noisy.shape, dtype=dtype, generator=generator)
    for marginals in (fast, lu):
        (marginals * direction).sum().backward()
    torch.testing.assert_close(leaves[0].grad, leaves[1].grad, rtol=1e-4, atol=10 * tolerance)
    lengths = torch.tensor([n, n - 3, 3, n, 2, n - 7])
    with_lengths = TREE.relax(noisy, tau, lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        alone = TREE.relax(noisy[b, :length, :length].double(), tau)
        torch.testing.assert_close(
            with_lengths[b, :length, :length].double(), alone, rtol=0, atol=tolerance
        )


@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_cholesky_path_under_vmap_grad_and_compile() -> None:
    from pickgrad.structures import _matrix_tree as matrix_tree

    n = matrix_tree.CHOLESKY_SIZE + 2
    s = torch.randn(2, 3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    s = s + s.transpose(-1, -2)
    eager = TREE.relax(s, 0.8)
    with pickgrad.validation(False):
        mapped = torch.vmap(lambda x: TREE.relax(x, 0.8))(s)
        compiled = torch.compile(lambda x: TREE.relax(x, 0.8), fullgraph=True, backend="eager")(s)
        grad = torch.func.grad(lambda x: TREE.relax(x, 0.8).square().sum())(s[0])
    torch.testing.assert_close(mapped, eager, rtol=0, atol=1e-12)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-12)
    leaf = s[0].clone().requires_grad_()
    TREE.relax(leaf, 0.8).square().sum().backward()
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-10, atol=1e-12)
