"""Arborescence: Chu-Liu/Edmonds against networkx and enumeration (cycles, ties, negative scores,
other roots), directed matrix-tree marginals and log-partition against brute force (also for
scores spread over +-50 / tau and beyond), gradients, lengths, every estimator, bad input."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pickgrad
from pickgrad import Arborescence
from pickgrad.structures._matrix_tree import (
    MARGINAL_TOLERANCE,
    _marginals_by_inverse,
)

ARBORESCENCE = Arborescence()


def weight(x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    return (scores * x).sum((-1, -2))


def brute_force(
    structure: Arborescence, scores: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log Z and arc marginals by enumerating every arborescence (float64)."""
    n = scores.shape[-1]
    trees = structure.enumerate((n, n), dtype=torch.float64)
    energies = weight(trees, scores.double()[..., None, :, :]) / tau
    probabilities = torch.softmax(energies, dim=-1)
    marginals = (probabilities[..., None, None] * trees).sum(-3)
    return torch.logsumexp(energies, dim=-1), marginals


def assert_valid_arborescences(x: torch.Tensor, root: int) -> None:
    n = x.shape[-1]
    flat = x.reshape(-1, n, n)
    assert bool(((flat == 0) | (flat == 1)).all()), "entries are 0/1"
    parents = flat.sum(-2)
    others = torch.arange(n) != root
    assert bool((parents[:, others] == 1).all()), "one parent per non-root node"
    assert bool((parents[:, root] == 0).all()), "the root has no parent"
    assert bool((torch.diagonal(flat, dim1=-2, dim2=-1) == 0).all())
    # acyclic: following parents from any node reaches the root within n steps
    parent_of = flat.argmax(-2)  # the root's entry is meaningless and never followed
    node = torch.arange(n).expand(flat.shape[0], n)
    for _ in range(n):
        node = torch.where(node == root, node, parent_of.gather(1, node))
    assert bool((node == root).all()), "no cycles"


def networkx_weight(scores: torch.Tensor, root: int) -> float:
    n = scores.shape[-1]
    graph = nx.DiGraph()
    # no arc into the root: the root of any spanning arborescence must be `root`
    graph.add_weighted_edges_from(
        (i, j, float(scores[i, j])) for i in range(n) for j in range(n) if i != j and j != root
    )
    tree = nx.maximum_spanning_arborescence(graph)
    return sum(w for _, _, w in tree.edges(data="weight"))


def random_scores(kind: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, dtype=torch.float64, generator=generator)
    if kind == "ties":
        return torch.randint(-2, 3, shape, generator=generator).double()
    return -10 * torch.rand(shape, dtype=torch.float64, generator=generator)


# --- argmax -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "ties", "negative"])
@pytest.mark.parametrize("n", [3, 6, 10])
def test_argmax_weight_equals_networkx(kind: str, n: int, generator: torch.Generator) -> None:
    scores = random_scores(kind, (30, n, n), generator)  # 9 x 30 x 2 roots = 540 graphs
    for root in (0, n - 1):
        structure = Arborescence(root)
        x = structure.argmax(scores)
        assert_valid_arborescences(x, root)
        expected = torch.tensor([networkx_weight(s, root) for s in scores], dtype=torch.float64)
        torch.testing.assert_close(weight(x, scores), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_argmax_is_best_enumerated(n: int, generator: torch.Generator) -> None:
    scores = 3 * torch.randn(64, n, n, dtype=torch.float64, generator=generator)
    for root in range(n):
        structure = Arborescence(root)
        trees = structure.enumerate((n, n), dtype=torch.float64)
        best = weight(trees, scores[:, None]).amax(-1)
        x = structure.argmax(scores)
        torch.testing.assert_close(weight(x, scores), best, rtol=0, atol=1e-12)
        assert bool((x[:, None] == trees).all(-1).all(-1).any(-1).all())


@given(n=st.integers(2, 5), seed=st.integers(0, 2**31 - 1))
def test_argmax_with_ties_is_best_enumerated(n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(-1, 2, (8, n, n), generator=generator).double()
    trees = ARBORESCENCE.enumerate((n, n), dtype=torch.float64)
    best = weight(trees, scores[:, None]).amax(-1)
    x = ARBORESCENCE.argmax(scores)
    assert_valid_arborescences(x, 0)
    assert torch.equal(weight(x, scores), best)


def test_argmax_contracts_nested_cycles() -> None:
    # Greedy parents: 1 <-> 2 and 3 <-> 4 form cycles, and after contraction the two super-nodes
    # prefer each other (a second-level cycle). Best: 0 -> 1 -> 2 -> 3 -> 4 (weight 1+10+5+10).
    s = torch.full((5, 5), -100.0, dtype=torch.float64)
    s[1, 2] = s[2, 1] = s[3, 4] = s[4, 3] = 10.0
    s[2, 3] = s[4, 1] = 5.0
    s[0, 1] = 1.0
    s[0, 3] = 0.5
    x = ARBORESCENCE.argmax(s)
    expected = torch.zeros(5, 5, dtype=torch.float64)
    for parent, child in [(0, 1), (1, 2), (2, 3), (3, 4)]:
        expected[parent, child] = 1
    assert torch.equal(x, expected)


def test_argmax_batch_shapes_dtype_and_ignored_entries(generator: torch.Generator) -> None:
    scores = torch.randn(2, 3, 6, 6, generator=generator)
    x = ARBORESCENCE.argmax(scores)
    assert x.shape == scores.shape and x.dtype == scores.dtype
    assert_valid_arborescences(x, 0)
    scrambled = scores.clone()
    scrambled[..., :, 0] = 100.0  # arcs into the root
    scrambled[..., torch.arange(6), torch.arange(6)] = 100.0  # self-loops
    assert torch.equal(ARBORESCENCE.argmax(scrambled), x)
    assert ARBORESCENCE.argmax(scores.to(torch.float16)).dtype == torch.float16


# --- relax and log_partition --------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_relax_and_log_partition_equal_enumeration(
    n: int, tau: float, generator: torch.Generator
) -> None:
    scores = torch.randn(16, n, n, dtype=torch.float64, generator=generator)
    for root in {0, n - 1}:
        structure = Arborescence(root)
        log_z, marginals = brute_force(structure, scores, tau)
        torch.testing.assert_close(structure.log_partition(scores, tau), log_z, rtol=0, atol=1e-10)
        # the float64 fast path is trusted up to MARGINAL_TOLERANCE[float64] = 1e-7
        torch.testing.assert_close(structure.relax(scores, tau), marginals, rtol=0, atol=1e-7)


@pytest.mark.parametrize("spread", [50.0, 300.0])
@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_relax_stable_for_scores_spanning_50_over_tau(
    spread: float, tau: float, generator: torch.Generator
) -> None:
    # Uniform in [-spread, spread] * tau: cycles of arcs far heavier than every arc leaving them
    # are common; an LU inverse or slogdet loses every digit there or finds a singular matrix.
    n = 5
    scores = (
        (2 * torch.rand(200, n, n, dtype=torch.float64, generator=generator) - 1) * spread * tau
    )
    log_z, marginals = brute_force(ARBORESCENCE, scores, tau)
    torch.testing.assert_close(
        ARBORESCENCE.log_partition(scores, tau), log_z, rtol=1e-13, atol=1e-10
    )
    torch.testing.assert_close(ARBORESCENCE.relax(scores, tau), marginals, rtol=0, atol=1e-7)
    single = ARBORESCENCE.relax(scores.float(), tau)
    assert single.dtype == torch.float32 and bool(torch.isfinite(single).all())
    torch.testing.assert_close(
        single.double(),
        ARBORESCENCE.relax(scores.float().double(), tau),
        rtol=0,
        atol=MARGINAL_TOLERANCE[torch.float32],  # float32 input: float32 linear algebra
    )


def test_relax_on_a_heavy_cycle_is_exact() -> None:
    # 1 <-> 2 weigh e^60 each way; the root reaches either by e^0. Three arborescences:
    # 0->1->2 and 0->2->1 (weight e^60 each) and 0->1, 0->2 (weight 1).
    s = torch.zeros(3, 3, dtype=torch.float64)
    s[1, 2] = s[2, 1] = 60.0
    expected = torch.tensor(
        [[0.0, 0.5, 0.5], [0.0, 0.0, 0.5], [0.0, 0.5, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(ARBORESCENCE.relax(s), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        ARBORESCENCE.log_partition(s), torch.tensor(60 + math.log(2), dtype=torch.float64)
    )


def test_marginals_are_a_point_of_the_polytope(generator: torch.Generator) -> None:
    n = 9
    scores = 3 * torch.randn(4, 2, n, n, dtype=torch.float64, generator=generator)
    for root in (0, 4):
        mu = Arborescence(root).relax(scores, tau=0.7)
        assert bool((mu >= -1e-12).all() and (mu <= 1 + 1e-12).all())
        assert bool(
            (mu[..., :, root] == 0).all() and (torch.diagonal(mu, dim1=-2, dim2=-1) == 0).all()
        )
        columns = mu.sum(-2)
        torch.testing.assert_close(
            columns[..., torch.arange(n) != root], torch.ones(4, 2, n - 1, dtype=torch.float64)
        )
        torch.testing.assert_close(
            mu.sum((-1, -2)), torch.full((4, 2), n - 1.0, dtype=torch.float64)
        )


def test_relax_tends_to_argmax(generator: torch.Generator) -> None:
    n = 5
    scores = torch.zeros(8, n, n, dtype=torch.float64)
    active = ARBORESCENCE.active_mask((n, n))
    for b in range(8):  # distinct powers of two: every arborescence has its own weight
        scores[b][active] = 2.0 ** torch.randperm(int(active.sum()), generator=generator).double()
    x = ARBORESCENCE.argmax(scores)
    torch.testing.assert_close(ARBORESCENCE.relax(scores, tau=0.02), x, rtol=0, atol=1e-12)


def test_relax_keeps_dtype() -> None:
    scores = torch.randn(3, 4, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        out = ARBORESCENCE.relax(scores.to(dtype))
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        assert ARBORESCENCE.log_partition(scores.to(dtype)).dtype == dtype


def test_gradcheck_relax_and_log_partition(generator: torch.Generator) -> None:
    structure = Arborescence(root=1)
    scores = torch.randn(2, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: structure.relax(s, 0.7), (scores,))
    assert torch.autograd.gradgradcheck(
        lambda s: structure.relax(s, 0.7), (scores,), fast_mode=True
    )
    assert torch.autograd.gradcheck(lambda s: structure.log_partition(s, 0.7), (scores,))


def test_gradcheck_on_the_exact_elimination_path(generator: torch.Generator) -> None:
    # A heavy 2-cycle 1 <-> 2 and a heavy 3 <-> 1: the fast path's error estimate is large.
    base = torch.zeros(4, 4, dtype=torch.float64)
    base[1, 2] = base[2, 1] = base[3, 1] = base[1, 3] = 40.0
    scores = base + 0.3 * torch.randn(4, 4, dtype=torch.float64, generator=generator)
    arcs = ARBORESCENCE._arcs(scores, None)
    error = float(_marginals_by_inverse(scores, arcs)[1])
    assert error > MARGINAL_TOLERANCE[torch.float64]  # really that path
    scores.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: ARBORESCENCE.relax(s, 1.0), (scores,))
    assert torch.autograd.gradgradcheck(
        lambda s: ARBORESCENCE.relax(s, 1.0), (scores,), fast_mode=True
    )
    _, marginals = brute_force(ARBORESCENCE, scores.detach(), 1.0)
    torch.testing.assert_close(ARBORESCENCE.relax(scores, 1.0), marginals, rtol=0, atol=1e-12)


def test_log_partition_gradient_is_marginals_over_tau(generator: torch.Generator) -> None:
    tau = 0.4
    scores = torch.randn(3, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    (grad,) = torch.autograd.grad(ARBORESCENCE.log_partition(scores, tau).sum(), scores)
    torch.testing.assert_close(grad, ARBORESCENCE.relax(scores.detach(), tau) / tau)


def test_relax_gradient_is_zero_on_ignored_entries(generator: torch.Generator) -> None:
    structure = Arborescence(root=2)
    scores = torch.randn(3, 5, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(3, 5, 5, dtype=torch.float64, generator=generator)
    (structure.relax(scores, 0.5) * weights).sum().backward()
    active = structure.active_mask((5, 5))
    assert bool((scores.grad[:, ~active] == 0).all())
    assert bool((scores.grad[:, active] != 0).all())


# --- lengths ------------------------------------------------------------------------------------


def test_lengths_equal_cropped_graphs(generator: torch.Generator) -> None:
    n = 6
    scores = 2 * torch.randn(2, 4, n, n, dtype=torch.float64, generator=generator)
    lengths = torch.tensor([[6, 2, 3, 4], [5, 6, 3, 2]])
    for structure in (ARBORESCENCE, Arborescence(root=1)):
        x = structure.argmax(scores, lengths=lengths)
        mu = structure.relax(scores, 0.5, lengths=lengths)
        log_z = structure.log_partition(scores, 0.5, lengths=lengths)
        for b in range(2):
            for c in range(4):
                m = int(lengths[b, c])
                cropped = scores[b, c, :m, :m]
                for out in (x[b, c], mu[b, c]):
                    assert bool((out[m:] == 0).all() and (out[:, m:] == 0).all())
                assert torch.equal(x[b, c, :m, :m], structure.argmax(cropped))
                torch.testing.assert_close(mu[b, c, :m, :m], structure.relax(cropped, 0.5))
                torch.testing.assert_close(log_z[b, c], structure.log_partition(cropped, 0.5))


def test_single_node_graphs_are_empty() -> None:
    scores = torch.randn(2, 3, 3)
    lengths = torch.tensor([1, 3])
    x = ARBORESCENCE.argmax(scores, lengths=lengths)
    assert bool((x[0] == 0).all()) and float(x[1].sum()) == 2
    assert float(ARBORESCENCE.log_partition(scores, lengths=lengths)[0]) == 0.0


@pytest.mark.parametrize(
    ("lengths", "error", "match"),
    [
        (torch.tensor([0, 3]), ValueError, r"lengths must lie in \[1, n=4\].*0 to 3"),
        (torch.tensor([2, 5]), ValueError, r"lengths must lie in \[1, n=4\].*2 to 5"),
        (torch.tensor([[2, 3]]), ValueError, r"batch shape of scores \(2,\).*got shape \(1, 2\)"),
        (torch.tensor([2.0, 3.0]), TypeError, "integer dtype"),
    ],
)
def test_bad_lengths(lengths: torch.Tensor, error: type, match: str) -> None:
    scores = torch.randn(2, 4, 4)
    for method in (ARBORESCENCE.argmax, ARBORESCENCE.relax, ARBORESCENCE.log_partition):
        with pytest.raises(error, match=match):
            method(scores, lengths=lengths)


def test_lengths_must_contain_the_root() -> None:
    with pytest.raises(ValueError, match=r"root=2 must be a node of every graph.*n=2 nodes"):
        Arborescence(root=2).relax(torch.randn(2, 4, 4), lengths=torch.tensor([4, 2]))


# --- enumerate and bad input --------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_enumerate_is_every_arborescence_once(n: int) -> None:
    for root in range(n):
        trees = Arborescence(root).enumerate((n, n))
        assert trees.shape == (n ** (n - 2), n, n)
        assert len({tuple(t.flatten().tolist()) for t in trees}) == trees.shape[0]
        assert_valid_arborescences(trees, root)


def test_root_validation() -> None:
    with pytest.raises(ValueError, match=r"root=4 is out of range for scores with n=4 nodes"):
        Arborescence(root=4).argmax(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"root=4 is out of range for n=3"):
        Arborescence(root=4).enumerate((3, 3))
    with pytest.raises(ValueError, match=r"root must be a node index >= 0, got root=-1"):
        Arborescence(root=-1)
    with pytest.raises(TypeError, match="root must be an int"):
        Arborescence(root=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 4), r"square scores \(\.\.\., n, n\).*\(3, 4\)"),
        ((2, 1, 1), r"n >= 2 nodes.*\(1, 1\)"),
    ],
)
def test_bad_shapes(shape: tuple[int, ...], match: str) -> None:
    for method in (ARBORESCENCE.argmax, ARBORESCENCE.relax, ARBORESCENCE.log_partition):
        with pytest.raises(ValueError, match=match):
            method(torch.zeros(shape))


def test_bad_values() -> None:
    scores = torch.zeros(4, 4)
    scores[2, 1] = math.inf
    with pytest.raises(ValueError, match="inf"):
        ARBORESCENCE.argmax(scores)
    scores[2, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        ARBORESCENCE.log_partition(scores)
    with pytest.raises(ValueError, match="regularizer must be 'entropy'"):
        ARBORESCENCE.relax(torch.zeros(4, 4), regularizer="sparsemax")


# --- estimators ---------------------------------------------------------------------------------


def test_gumbel_rao_is_refused_clearly() -> None:
    assert "gumbel-rao" not in pickgrad.available_estimators(ARBORESCENCE)
    with pytest.raises(NotImplementedError, match="has no sampler of Gumbel noise"):
        ARBORESCENCE.conditional_gumbel(torch.zeros(3, 3), torch.zeros(3, 3))
