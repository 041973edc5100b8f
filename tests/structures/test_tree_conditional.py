"""SpanningTree.conditional_gumbel: its draws keep the tree as the argmax, follow the law of
rejection sampling from the unconditional Gumbel law on 3-to-5-node graphs (per-coordinate
two-sample tests, means, spreads and pairwise correlations, tolerances from the measured
variance), and make ``gumbel-rao`` an estimator with ``st-gumbel``'s mean and a lower variance."""

from __future__ import annotations

import itertools
import math

import networkx as nx
import pytest
import torch
from scipy import stats

import pickgrad
from pickgrad import SpanningTree
from pickgrad.structures import edge_index, edges_to_matrix
from pickgrad.structures._matrix_tree import node_mask
from pickgrad.structures._tree_conditional import (
    DRAWS_PER_CHAIN,
    _ceilings,
    _floors,
    _lifting_layout,
    conditional_tree_gumbel,
    lower_truncated_gumbel,
    upper_truncated_gumbel,
)

TREE = SpanningTree()
#: z-score beyond which a Monte Carlo difference counts as real: several comparisons are made
#: per test, so this is about a 1e-4 two-sided level per comparison, Bonferroni-style.
Z_LIMIT = 4.5


def gumbel(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    uniform = torch.rand(shape, dtype=torch.float64, generator=generator).clamp_min(1e-300)
    return -(-uniform.log()).log()


def rejection_reference(
    scores: torch.Tensor, n_samples: int, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Unconditional draws grouped by their maximum spanning tree: (trees, edge noise each)."""
    n = scores.shape[-1]
    index = edge_index(n)
    noise = gumbel((n_samples, n, n), generator)
    trees = TREE.argmax(scores + noise)[:, index[0], index[1]]
    unique, inverse, counts = torch.unique(trees, dim=0, return_inverse=True, return_counts=True)
    by_count = counts.argsort(descending=True)
    groups = [noise[inverse == int(g)][:, index[0], index[1]] for g in by_count]
    return [unique[int(g)] for g in by_count], groups


def two_sample_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z-scores of the difference of the column means of two samples."""
    se = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (a.mean(0) - b.mean(0)) / se


def correlations(sample: torch.Tensor) -> torch.Tensor:
    return torch.corrcoef(sample.T)


def assert_same_law(gibbs: torch.Tensor, reference: torch.Tensor) -> None:
    """Per coordinate: means (z-test), spreads (z-test on the squared deviations) and a
    Kolmogorov-Smirnov two-sample test; per pair: correlations (Fisher z)."""
    z_mean = two_sample_z(gibbs, reference)
    assert float(z_mean.abs().max()) < Z_LIMIT, z_mean
    spread_gibbs = (gibbs - gibbs.mean(0)).square()
    spread_reference = (reference - reference.mean(0)).square()
    z_spread = two_sample_z(spread_gibbs, spread_reference)
    assert float(z_spread.abs().max()) < Z_LIMIT, z_spread
    columns = gibbs.shape[1]
    for column in range(columns):
        result = stats.ks_2samp(
            gibbs[:, column].numpy(), reference[:, column].numpy(), method="asymp"
        )
        assert result.pvalue > 1e-5 / columns, (column, result)
    fisher_gibbs = torch.atanh(correlations(gibbs).clamp(-0.999999, 0.999999))
    fisher_reference = torch.atanh(correlations(reference).clamp(-0.999999, 0.999999))
    se = math.sqrt(1 / (gibbs.shape[0] - 3) + 1 / (reference.shape[0] - 3))
    off_diagonal = ~torch.eye(columns, dtype=torch.bool)
    z_correlation = ((fisher_gibbs - fisher_reference) / se)[off_diagonal]
    assert float(z_correlation.abs().max()) < Z_LIMIT, z_correlation


@pytest.mark.parametrize("n", [3, 4, 5])
def test_law_matches_rejection_sampling(n: int, generator: torch.Generator) -> None:
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator) * 1.5
    trees, groups = rejection_reference(scores, 150_000, generator)
    # The most likely tree, and a less likely one (fewer draws, harder conditioning).
    picks = [0, *[i for i, g in enumerate(groups) if 3000 <= g.shape[0] < 10_000][-1:]]
    assert len(picks) == 2, [g.shape[0] for g in groups]
    index = edge_index(n)
    for pick in picks:
        reference = groups[pick][:20_000]
        adjacency = edges_to_matrix(trees[pick])
        x = adjacency + adjacency.T
        # One graph per draw, so that draws are independent: the first and the last state
        # of each chain (a chain gives DRAWS_PER_CHAIN successive states) each follow the law.
        count = reference.shape[0]
        noise = TREE.conditional_gumbel(
            scores.expand(count, n, n), x.expand(count, n, n), DRAWS_PER_CHAIN, generator=generator
        )
        assert noise.shape == (DRAWS_PER_CHAIN, count, n, n)
        assert bool((TREE.argmax(scores + noise) == x).all()), "every draw keeps the tree"
        assert_same_law(noise[0][:, index[0], index[1]], reference)
        assert_same_law(noise[-1][:, index[0], index[1]], reference)


def test_draws_keep_the_tree_at_extremes(generator: torch.Generator) -> None:
    for dtype, scale in [
        (torch.float64, 1e4),
        (torch.float32, 1e4),
        (torch.float32, 1e-3),
        (torch.float16, 30.0),
        (torch.bfloat16, 30.0),
    ]:
        scores = (torch.randn(3, 6, 6, generator=generator) * scale).to(dtype)
        x = TREE.argmax(scores + gumbel((3, 6, 6), generator).to(dtype))
        noise = TREE.conditional_gumbel(scores, x, 7, generator=generator)
        assert noise.dtype == dtype and noise.shape == (7, 3, 6, 6)
        assert bool(torch.isfinite(noise).all()), dtype
        work = scores.float() if dtype in (torch.float16, torch.bfloat16) else scores
        utilities = work + noise.to(work.dtype)
        assert bool((TREE.argmax(utilities) == x.to(work.dtype)).all()), (dtype, scale)


def test_exact_ties_and_a_tree_against_the_scores(generator: torch.Generator) -> None:
    scores = torch.zeros(2, 5, 5, dtype=torch.float64)
    scores[1] = torch.triu(torch.full((5, 5), 40.0, dtype=torch.float64), 1)
    # The path 0-1-2-3-4, while the scores of batch 1 favour nothing and of batch 0 nothing.
    path = torch.zeros(5, 5, dtype=torch.float64)
    for i in range(4):
        path[i, i + 1] = path[i + 1, i] = 1
    x = path.expand(2, 5, 5)
    noise = TREE.conditional_gumbel(scores, x, 50, generator=generator)
    assert bool((TREE.argmax(scores + noise) == x).all())


def test_lengths_pad_with_free_noise(generator: torch.Generator) -> None:
    scores = torch.randn(4, 6, 6, dtype=torch.float64, generator=generator)
    lengths = torch.tensor([6, 3, 1, 4])
    x = TREE.argmax(scores + gumbel((4, 6, 6), generator), lengths=lengths)
    noise = TREE.conditional_gumbel(scores, x, 1000, generator=generator, lengths=lengths)
    kept = TREE.argmax(scores + noise, lengths=lengths.expand(1000, 4))
    assert bool((kept == x).all())
    # Entries outside every graph are unconditional Gumbel noise: mean Euler's constant.
    outside = noise[:, 1, 3:, 3:][:, torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)]
    z = (outside.mean() - 0.5772156649015329) / (math.pi / math.sqrt(6 * outside.numel()))
    assert abs(float(z)) < Z_LIMIT


def test_edge_lists_and_reproducibility(generator: torch.Generator) -> None:
    tree = SpanningTree(edge_list=True)
    scores = torch.randn(2, 10, dtype=torch.float64, generator=generator)
    x = tree.argmax(scores + gumbel((2, 10), generator))
    noise = tree.conditional_gumbel(scores, x, 6, generator=torch.Generator().manual_seed(5))
    again = tree.conditional_gumbel(scores, x, 6, generator=torch.Generator().manual_seed(5))
    assert noise.shape == (6, 2, 10) and torch.equal(noise, again)
    assert bool((tree.argmax(scores + noise) == x).all())


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="n_sweeps must be >= 1"):
        SpanningTree(n_sweeps=0)
    with pytest.raises(TypeError, match="n_sweeps must be an int"):
        SpanningTree(n_sweeps=2.0)  # type: ignore[arg-type]
    scores = torch.zeros(4, 4)
    # Its own check today; the generic check_solution's message once that takes lengths=.
    with pytest.raises(ValueError, match=r"x must be a spanning tree|x is not a hard solution"):
        TREE.conditional_gumbel(scores, torch.ones(4, 4))
    with pytest.raises(ValueError, match="x must have the shape"):
        TREE.conditional_gumbel(scores, torch.ones(3, 3))
    assert TREE.supports("conditional_gumbel")
    assert repr(SpanningTree(n_sweeps=3)) == "SpanningTree(n_sweeps=3)"


def test_truncated_gumbels_follow_their_laws(generator: torch.Generator) -> None:
    count = 40_000
    exponential = -torch.rand(count, dtype=torch.float64, generator=generator).log()
    mu = torch.tensor(0.3, dtype=torch.float64)
    cdf = lambda u: torch.exp(-torch.exp(-(u - mu)))  # noqa: E731
    for bound in (-2.0, 0.5, 3.0):
        b = torch.tensor(bound, dtype=torch.float64)
        above = lower_truncated_gumbel(mu, b, exponential)
        assert bool((above > b).all())
        above_cdf = lambda u, b=b: ((cdf(torch.as_tensor(u)) - cdf(b)) / (1 - cdf(b))).numpy()  # noqa: E731
        assert stats.kstest(above.numpy(), above_cdf).pvalue > 1e-4
        below = upper_truncated_gumbel(mu, b, exponential)
        assert bool((below < b).all())
        below_cdf = lambda u, b=b: (cdf(torch.as_tensor(u)) / cdf(b)).numpy()  # noqa: E731
        assert stats.kstest(below.numpy(), below_cdf).pvalue > 1e-4
    # Far above the location, the lower-truncated law is the bound plus an Exp(1).
    for dtype in (torch.float32, torch.float64):
        far = lower_truncated_gumbel(
            torch.zeros((), dtype=dtype), torch.tensor(1e4, dtype=dtype), exponential.to(dtype)
        )
        assert bool(torch.isfinite(far).all()) and bool((far > 1e4).all())
        excess = (far.double() - 1e4).mean()
        assert abs(float(excess) - 1.0) < 0.05, excess


def per_sample_gradients(
    name: str,
    scores: torch.Tensor,
    weights: torch.Tensor,
    n_samples: int,
    generator: torch.Generator,
    **options: object,
) -> torch.Tensor:
    leaf = scores.expand(n_samples, *scores.shape).clone().requires_grad_()
    x = pickgrad.select(leaf, TREE, name, tau=0.5, generator=generator, **options)
    (grad,) = torch.autograd.grad((x * weights).sum(), leaf)
    return grad[:, torch.triu(torch.ones(scores.shape, dtype=torch.bool), 1)]


def test_gumbel_rao_has_the_mean_of_st_gumbel_and_less_variance(
    generator: torch.Generator,
) -> None:
    scores = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    weights = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    straight = per_sample_gradients("st-gumbel", scores, weights, 20_000, generator)
    rao = per_sample_gradients("gumbel-rao", scores, weights, 5_000, generator, n_draws=10)
    z = two_sample_z(rao, straight)
    assert float(z.abs().max()) < Z_LIMIT, z
    assert float(rao.var(0).sum()) < 0.7 * float(straight.var(0).sum())


def tree_paths(parents: list[int], present: int) -> dict[tuple[int, int], list[int]]:
    """For every pair of present nodes, the child nodes of the tree edges on its path."""
    graph = nx.Graph([(v, p) for v, p in enumerate(parents[:present]) if p >= 0])
    graph.add_nodes_from(range(present))
    paths = {}
    for i in range(present):
        for j in range(i + 1, present):
            path = nx.shortest_path(graph, i, j)
            paths[i, j] = [a if parents[a] == b else b for a, b in itertools.pairwise(path)]
    return paths


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_sparse_table_bounds_match_the_paths(n: int, generator: torch.Generator) -> None:
    """The ceilings (smallest tree utility on each pair's path) and floors (largest non-tree
    utility whose path covers each tree edge) of one sweep, against paths found by networkx,
    on random trees of random sizes (lengths) and random utilities."""
    batch = 6
    scores = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    lengths = torch.randint(1, n + 1, (batch,), generator=generator)
    lengths[0] = n
    x = TREE.argmax(scores + gumbel((batch, n, n), generator), lengths=lengths)
    nodes = node_mask(lengths, (batch,), n, scores.device)
    index = edge_index(n)
    m = index.shape[1]
    parents, ancestors, segments = _lifting_layout(x, nodes, index)
    tree = torch.randn(batch, n, dtype=torch.float64, generator=generator)
    tree = tree.masked_fill(parents < 0, math.inf)
    ceilings = _ceilings(tree, ancestors, segments)
    in_tree = x[:, index[0], index[1]] > 0.5
    utilities = torch.randn(batch, m, dtype=torch.float64, generator=generator)
    bounding = ~in_tree & (index[1] < lengths[:, None])  # the non-tree edges of present nodes
    floor_segments = torch.where(bounding.repeat(1, 4), segments, n)
    floors = _floors(utilities, floor_segments, ancestors)
    for b in range(batch):
        present = int(lengths[b])
        paths = tree_paths(parents[b].tolist(), present)
        expected_floor = torch.full((n,), -math.inf, dtype=torch.float64)
        for f in range(m):
            i, j = int(index[0, f]), int(index[1, f])
            if j >= present:
                assert ceilings[b, f] == math.inf
                continue
            assert ceilings[b, f] == min(float(tree[b, v]) for v in paths[i, j]), (b, i, j)
            if not in_tree[b, f]:
                for v in paths[i, j]:
                    expected_floor[v] = max(expected_floor[v], utilities[b, f])
        assert torch.equal(floors[b], expected_floor), (b, floors[b], expected_floor)


def test_masked_edges_law_matches_rejection_sampling(generator: torch.Generator) -> None:
    """-inf scores (masked edges): the draws of the allowed edges follow the law of rejection
    sampling from the graph without those edges; the masked ones are -inf."""
    n = 5
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator)
    scores[0, 1] = scores[1, 3] = scores[2, 4] = -math.inf
    trees, groups = rejection_reference(scores, 60_000, generator)
    index = edge_index(n)
    allowed = scores[index[0], index[1]] > -math.inf
    adjacency = edges_to_matrix(trees[0])
    x = adjacency + adjacency.T
    reference = groups[0][:20_000]
    count = reference.shape[0]
    noise = TREE.conditional_gumbel(scores.expand(count, n, n), x.expand(count, n, n), 1)[0]
    edges = noise[:, index[0], index[1]]
    assert bool((edges[:, ~allowed] == -math.inf).all())
    assert bool(torch.isfinite(edges[:, allowed]).all())
    assert bool((TREE.argmax(scores + noise) == x).all())
    assert_same_law(edges[:, allowed], reference[:, allowed])


def test_gumbel_rao_gives_masked_edges_no_gradient(generator: torch.Generator) -> None:
    """-inf scores and mask=, with lengths through conditional_gumbel: masked edges never in
    the tree, exactly zero gradient, nothing NaN; matrices and edge lists."""
    scores = torch.randn(4, 6, 6, dtype=torch.float64, generator=generator)
    scores[:, 0, 1] = -math.inf
    scores[1, 2, 5] = scores[3, 3, 4] = -math.inf
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[1, 4] = False
    weights = torch.randn(4, 6, 6, dtype=torch.float64, generator=generator)
    leaf = scores.clone().requires_grad_()
    x = pickgrad.select(leaf, TREE, "gumbel-rao", tau=0.5, generator=generator, mask=mask)
    (x * weights).sum().backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    for b, i, j in [(0, 0, 1), (1, 0, 1), (1, 2, 5), (3, 3, 4), (2, 1, 4)]:
        assert x[b, i, j] == 0 and leaf.grad[b, i, j] == 0, (b, i, j)
    assert bool((leaf.grad[:, 2, 3] != 0).any())  # allowed edges do get a gradient
    edges = SpanningTree(edge_list=True)
    edge_scores = torch.randn(3, 15, dtype=torch.float64, generator=generator)
    edge_scores[:, 4] = -math.inf
    leaf = edge_scores.clone().requires_grad_()
    y = pickgrad.select(leaf, edges, "gumbel-rao", tau=0.5, generator=generator)
    (y * torch.randn(3, 15, dtype=torch.float64, generator=generator)).sum().backward()
    assert (
        leaf.grad is not None and bool((y[:, 4] == 0).all()) and bool((leaf.grad[:, 4] == 0).all())
    )
    assert bool(torch.isfinite(leaf.grad).all())
    # lengths and -inf together: padded nodes and masked edges both respected.
    lengths = torch.tensor([6, 4, 5, 3])
    x = TREE.argmax(scores + gumbel((4, 6, 6), generator), lengths=lengths)
    noise = TREE.conditional_gumbel(scores, x, 200, generator=generator, lengths=lengths)
    assert bool((noise[:, :, 0, 1] == -math.inf).all()) and bool(
        (noise[:, 1, 2, 5] == -math.inf).all()
    )
    kept = TREE.argmax(scores + noise, lengths=lengths.expand(200, 4))
    assert bool((kept == x).all())


def test_draws_per_chain_and_thinning(generator: torch.Generator) -> None:
    """K draws from ceil(K / d) chains: the shape, the tree kept, and the law of each state of
    a thinned chain equal to that of independent draws (two-sample tests between the two)."""
    scores = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    x = TREE.argmax(scores + gumbel((4, 4), generator))
    count = 20_000
    batch = scores.expand(count, 4, 4)
    trees = x.expand(count, 4, 4)
    for draws, per_chain, thin in [(7, 3, 2), (10, 10, 1), (3, 1, 1)]:
        noise = conditional_tree_gumbel(
            scores[None], x[None], draws, generator, draws_per_chain=per_chain, thin=thin
        )
        assert noise.shape == (draws, 1, 4, 4)
        assert bool((TREE.argmax(scores + noise) == x).all())
    index = edge_index(4)
    independent = conditional_tree_gumbel(batch, trees, 1, generator, draws_per_chain=1)[0]
    thinned = conditional_tree_gumbel(batch, trees, 3, generator, draws_per_chain=3, thin=2)
    for state in thinned:
        assert_same_law(state[:, index[0], index[1]], independent[:, index[0], index[1]])


def test_empty_batches(generator: torch.Generator) -> None:
    for shape in [(0, 4, 4), (2, 0, 3, 3)]:
        scores = torch.randn(shape, generator=generator)
        noise = TREE.conditional_gumbel(scores, TREE.argmax(scores), 3, generator=generator)
        assert noise.shape == (3, *shape)
    edges = SpanningTree(edge_list=True)
    scores = torch.zeros(0, 6)
    assert edges.conditional_gumbel(scores, edges.argmax(scores), 2).shape == (2, 0, 6)
    leaf = torch.zeros(0, 6, dtype=torch.float16, requires_grad=True)
    pickgrad.select(leaf, edges, "gumbel-rao").sum().backward()
    assert leaf.grad is not None and leaf.grad.shape == (0, 6)


@pytest.mark.parametrize("use_start", [False, True], ids=["burn-in", "start"])
def test_vmap_draws_the_eager_noise_of_each_graph(use_start: bool) -> None:
    """The sampler is out of place, so vmap batches it: with ``randomness="same"`` every vmapped
    graph sees the uniforms an eager call on that graph alone draws from the same seed, so each
    entry must equal that eager call to rounding (lengths and a masked edge included); with
    ``"different"`` every draw keeps its graph's tree."""
    generator = torch.Generator().manual_seed(8)
    scores = torch.randn(3, 6, 6, dtype=torch.float64, generator=generator)
    scores[1, 0, 2] = -math.inf
    lengths = torch.tensor([6, 4, 5])
    start = gumbel((3, 6, 6), generator) if use_start else None
    x = TREE.argmax(scores + (start if use_start else 0), lengths=lengths)

    def sample(
        s: torch.Tensor, tree: torch.Tensor, n: torch.Tensor, g: torch.Tensor
    ) -> torch.Tensor:
        return conditional_tree_gumbel(
            s[None], tree[None], 4, None, lengths=n[None], start=g[None] if use_start else None
        )[:, 0]

    noise_start = start if use_start else torch.zeros_like(scores)
    torch.manual_seed(3)
    vmapped = torch.func.vmap(sample, randomness="same")(scores, x, lengths, noise_start)
    for b in range(3):
        torch.manual_seed(3)
        eager = sample(scores[b], x[b], lengths[b], noise_start[b])
        torch.testing.assert_close(vmapped[b], eager, rtol=1e-12, atol=1e-12)
    different = torch.func.vmap(sample, randomness="different")(scores, x, lengths, noise_start)
    assert different.shape == (3, 4, 6, 6)
    for b in range(3):
        kept = TREE.argmax(scores[b] + different[b], lengths=lengths[b].expand(4))
        assert torch.equal(kept, x[b].expand(4, 6, 6))


def test_vmapped_gumbel_rao_gradients_have_the_eager_law(generator: torch.Generator) -> None:
    """Per-example gumbel-rao gradients on SpanningTree from ``vmap(grad)`` (a fresh draw per
    example) against the rows of one eager batched call: the same law, coordinate by coordinate
    and jointly (their means are the estimator's expectation)."""
    scores = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    weights = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    count = 4000
    batch = scores.expand(count, 4, 4).clone()

    def loss(s: torch.Tensor) -> torch.Tensor:
        return (pickgrad.select(s, TREE, "gumbel-rao", tau=0.5, n_draws=3) * weights).sum()

    with pickgrad.validation(False):
        vmapped = torch.func.vmap(torch.func.grad(loss), randomness="different")(batch)
    leaf = batch.clone().requires_grad_()
    (eager,) = torch.autograd.grad(loss(leaf), leaf)
    index = edge_index(4)
    assert_same_law(vmapped[:, index[0], index[1]], eager[:, index[0], index[1]])
