"""SpanningTree.conditional_gumbel started at an exact draw (``start=``, the forward pass's own
noise, which gumbel-rao passes): the draws follow the law of rejection sampling with no burn-in
(two-sample tests at 3 to 5 nodes, masked edges included), keep the tree, respect masks and
lengths; gumbel-rao through that path keeps st-gumbel's mean; the solution check takes lengths;
the lowest-common-ancestor depths behind the sweeps' index tables match networkx."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from test_tree_conditional import (
    Z_LIMIT,
    assert_same_law,
    gumbel,
    per_sample_gradients,
    rejection_reference,
    two_sample_z,
)

import pickgrad
from pickgrad import SpanningTree
from pickgrad.noise import sample_gumbel
from pickgrad.structures import edge_index, edges_to_matrix
from pickgrad.structures._matrix_tree import node_mask
from pickgrad.structures._tree_conditional import (
    START_DRAWS_PER_CHAIN,
    _lca_depths,
    conditional_tree_gumbel,
    default_sweeps,
)

TREE = SpanningTree()


def starts_and_references(
    scores: torch.Tensor, n_samples: int, generator: torch.Generator, *, rare: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Rejection draws of the likeliest tree (and, with ``rare``, of the least likely one with
    at least 6000 draws), each split in two independent halves of at most 12 000: starts (as
    full (n, n) noise) and the reference the chains are compared with. (x, starts, reference)
    for each tree."""
    n = scores.shape[-1]
    index = edge_index(n)
    trees, groups = rejection_reference(scores, n_samples, generator)
    picks = [0]
    if rare:
        picks += [i for i, g in enumerate(groups) if g.shape[0] >= 6000][-1:]
        assert picks[1] != 0, [g.shape[0] for g in groups]
    out = []
    for pick in picks:
        group = groups[pick]
        half = min(group.shape[0] // 2, 12_000)
        starts = torch.zeros(half, n, n, dtype=scores.dtype)
        starts[:, index[0], index[1]] = group[:half]
        adjacency = edges_to_matrix(trees[pick])
        out.append((adjacency + adjacency.T, starts, group[half : 2 * half]))
    return out


@pytest.mark.parametrize("n", [3, 4, 5])
def test_law_from_a_start_matches_rejection_sampling(n: int, generator: torch.Generator) -> None:
    """Chains from independent exact starts: their first and last states (1 and 10 sweeps in)
    each have the law of rejection sampling, for the likeliest tree and a less likely one."""
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator) * 1.5
    index = edge_index(n)
    for x, starts, reference in starts_and_references(scores, 90_000, generator):
        count = starts.shape[0]
        assert count >= 3000, count
        noise = TREE.conditional_gumbel(
            scores.expand(count, n, n),
            x.expand(count, n, n),
            START_DRAWS_PER_CHAIN,
            generator=generator,
            start=starts,
        )
        assert bool((TREE.argmax(scores + noise) == x).all()), "every draw keeps the tree"
        assert not torch.equal(noise[0], starts), "the first draw is a new state"
        for state in (noise[0], noise[-1]):
            assert_same_law(state[:, index[0], index[1]], reference)


def test_law_from_a_start_with_masked_edges(generator: torch.Generator) -> None:
    n = 5
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator)
    scores[0, 1] = scores[2, 4] = -math.inf
    index = edge_index(n)
    allowed = scores[index[0], index[1]] > -math.inf
    ((x, starts, reference),) = starts_and_references(scores, 60_000, generator, rare=False)
    count = starts.shape[0]
    noise = TREE.conditional_gumbel(
        scores.expand(count, n, n), x.expand(count, n, n), 3, generator=generator, start=starts
    )
    edges = noise[-1][:, index[0], index[1]]
    assert bool((noise[..., 0, 1] == -math.inf).all()) and bool(
        (noise[..., 2, 4] == -math.inf).all()
    )
    assert bool(torch.isfinite(edges[:, allowed]).all())
    assert bool((TREE.argmax(scores + noise) == x).all())
    assert_same_law(edges[:, allowed], reference[:, allowed])


def test_start_with_lengths_masks_and_edge_lists(generator: torch.Generator) -> None:
    """The forward noise as start with lengths and -inf edges: masked edges get -inf, padded
    entries free noise, every draw keeps the tree; edge lists give the matrix form's draws."""
    scores = torch.randn(4, 7, 7, dtype=torch.float64, generator=generator)
    scores[:, 0, 2] = -math.inf
    lengths = torch.tensor([7, 4, 1, 5])
    start = gumbel((4, 7, 7), generator)
    x = TREE.argmax(scores + start, lengths=lengths)
    noise = TREE.conditional_gumbel(
        scores, x, 30, generator=generator, lengths=lengths, start=start
    )
    assert noise.shape == (30, 4, 7, 7)
    assert bool((noise[:, :, 0, 2] == -math.inf).all())
    assert bool((TREE.argmax(scores + noise, lengths=lengths.expand(30, 4)) == x).all())
    outside = noise[:, 1, 4:, 4:][:, torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)]
    z = (outside.mean() - 0.5772156649015329) / (math.pi / math.sqrt(6 * outside.numel()))
    assert abs(float(z)) < Z_LIMIT, "padded entries are unconditional Gumbel noise"
    index = edge_index(7)
    edges = SpanningTree(edge_list=True)
    flat = scores[:, index[0], index[1]]
    seed = 11
    from_edges = edges.conditional_gumbel(
        flat,
        x[:, index[0], index[1]],
        5,
        generator=torch.Generator().manual_seed(seed),
        lengths=lengths,
        start=start[:, index[0], index[1]],
    )
    from_matrix = TREE.conditional_gumbel(
        scores, x, 5, generator=torch.Generator().manual_seed(seed), lengths=lengths, start=start
    )
    assert torch.equal(from_edges, from_matrix[..., index[0], index[1]])


def test_gumbel_rao_from_the_forward_noise_keeps_the_mean_of_st_gumbel(
    generator: torch.Generator,
) -> None:
    """gumbel-rao starts its chains at the forward noise (no burn-in): its mean equals
    st-gumbel's on a 5-node graph with a masked edge, and its variance is lower."""
    scores = torch.randn(5, 5, dtype=torch.float64, generator=generator)
    scores[1, 3] = -math.inf
    weights = torch.randn(5, 5, dtype=torch.float64, generator=generator)
    straight = per_sample_gradients("st-gumbel", scores, weights, 20_000, generator)
    rao = per_sample_gradients("gumbel-rao", scores, weights, 5_000, generator, n_draws=10)
    z = two_sample_z(rao, straight)
    assert float(z[torch.isfinite(z)].abs().max()) < Z_LIMIT, z
    assert float(rao.var(0).sum()) < 0.7 * float(straight.var(0).sum())
    masked = edge_index(5)
    position = [k for k in range(masked.shape[1]) if (masked[0, k], masked[1, k]) == (1, 3)]
    assert bool((rao[:, position] == 0).all()) and bool((straight[:, position] == 0).all())


def test_the_estimator_passes_its_forward_noise(generator: torch.Generator) -> None:
    """gumbel-rao's gradient is that of the relaxation at the draws started at its own forward
    noise: replayed by hand from the same generator state, it matches exactly."""
    scores = torch.randn(3, 6, 6, dtype=torch.float64, generator=generator)
    weights = torch.randn(3, 6, 6, dtype=torch.float64, generator=generator)
    leaf = scores.clone().requires_grad_()
    x = pickgrad.select(
        leaf, TREE, "gumbel-rao", tau=0.5, generator=torch.Generator().manual_seed(4), n_draws=4
    )
    (grad,) = torch.autograd.grad((x * weights).sum(), leaf)
    replay = torch.Generator().manual_seed(4)
    forward = sample_gumbel(
        scores.shape, dtype=scores.dtype, device=scores.device, generator=replay
    )
    assert torch.equal(x, TREE.argmax(scores + forward))
    noise = TREE.conditional_gumbel(scores, x, 4, generator=replay, start=forward)
    leaf = scores.clone().requires_grad_()
    soft = TREE.relax(leaf + noise, 0.5).mean(0)
    (expected,) = torch.autograd.grad((soft * weights).sum(), leaf)
    torch.testing.assert_close(grad, expected)


def test_bad_starts_are_refused(generator: torch.Generator) -> None:
    scores = torch.randn(2, 5, 5, generator=generator)
    start = gumbel((2, 5, 5), generator).float()
    x = TREE.argmax(scores + start)
    with pytest.raises(ValueError, match="start must have the shape of scores"):
        TREE.conditional_gumbel(scores, x, start=start[0])
    with pytest.raises(TypeError, match="start must be a floating tensor"):
        TREE.conditional_gumbel(scores, x, start=torch.zeros(2, 5, 5, dtype=torch.long))
    wrong = start.clone()
    wrong[1] = -wrong[1] * 50  # another tree for graph 1 (almost surely)
    assert not torch.equal(TREE.argmax(scores + wrong)[1], x[1])
    with pytest.raises(ValueError, match=r"start must make x the maximum spanning tree.*\(1,\)"):
        TREE.conditional_gumbel(scores, x, start=wrong)
    bad = start.clone()
    bad[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        TREE.conditional_gumbel(scores, x, start=bad)
    with pickgrad.validation(False):  # value checks off: no check of the start's tree
        noise = TREE.conditional_gumbel(scores, x, 2, generator=generator, start=start)
    assert noise.shape == (2, 2, 5, 5)


def test_check_solution_takes_lengths(generator: torch.Generator) -> None:
    """check_solution(**solver_options): a tree on the first lengths[b] nodes is a solution
    there, a tree on all n nodes is not; conditional_gumbel uses the shared check."""
    scores = torch.randn(3, 5, 5, generator=generator)
    lengths = torch.tensor([5, 3, 2])
    short = TREE.argmax(scores, lengths=lengths)
    assert TREE.check_solution(scores, short, lengths=lengths) is short
    full = TREE.argmax(scores)
    with pytest.raises(ValueError, match=r"x is not a hard solution of SpanningTree\(\) at 2 "):
        TREE.check_solution(scores, full, lengths=lengths)
    with pytest.raises(ValueError, match="x is not a hard solution"):
        TREE.conditional_gumbel(scores, full, lengths=lengths)
    with pytest.raises(ValueError, match="x is not a hard solution"):
        TREE.check_solution(scores, short)  # without lengths: padded graphs are no trees
    assert bool(TREE._is_solution(short, lengths=lengths).all())


def test_default_sweeps_grow_with_the_size(generator: torch.Generator) -> None:
    """Without a start the burn-in is default_sweeps(n) unless n_sweeps is given."""
    assert SpanningTree().n_sweeps is None and repr(SpanningTree()) == "SpanningTree()"
    assert default_sweeps(4) == default_sweeps(10) == 8
    assert default_sweeps(50) >= 16
    assert all(default_sweeps(n) <= default_sweeps(n + 1) for n in range(2, 200))
    for n, given in [(6, None), (40, None), (6, 3)]:
        scores = torch.randn(2, n, n, generator=generator)
        x = TREE.argmax(scores)
        sweeps = default_sweeps(n) if given is None else given
        public = SpanningTree(n_sweeps=given).conditional_gumbel(
            scores, x, 3, generator=torch.Generator().manual_seed(1)
        )
        direct = conditional_tree_gumbel(
            scores, x, 3, torch.Generator().manual_seed(1), n_sweeps=sweeps
        )
        assert torch.equal(public, direct), (n, given)


@pytest.mark.parametrize("n", [2, 3, 6, 11])
def test_lca_depths_match_networkx(n: int, generator: torch.Generator) -> None:
    """The grounded Laplacian's inverse gives depth(lca(i, j)) rooted at 0 on random trees of
    random sizes; -1 across absent nodes, 0 on an absent node's diagonal."""
    batch = 5
    scores = torch.randn(batch, n, n, generator=generator)
    lengths = torch.randint(1, n + 1, (batch,), generator=generator)
    x = TREE.argmax(scores, lengths=lengths)
    nodes = node_mask(lengths, (batch,), n, scores.device)
    common = _lca_depths(x, nodes)
    for b in range(batch):
        present = int(lengths[b])
        index = edge_index(n)
        graph = nx.Graph()
        graph.add_nodes_from(range(present))
        graph.add_edges_from(
            (int(i), int(j)) for i, j in index.T.tolist() if x[b, int(i), int(j)] > 0.5
        )
        depth = nx.shortest_path_length(graph, 0) if present else {}
        rooted = nx.bfs_tree(graph, 0)
        for i in range(n):
            for j in range(n):
                if i < present and j < present:
                    lca = nx.lowest_common_ancestor(rooted, i, j)
                    assert common[b, i, j] == depth[lca], (b, i, j)
                else:
                    assert common[b, i, j] == (0 if i == j else -1), (b, i, j)


def test_arborescence_check_solution_takes_lengths(generator: torch.Generator) -> None:
    structure = pickgrad.Arborescence()
    scores = torch.randn(3, 5, 5, generator=generator)
    lengths = torch.tensor([5, 3, 2])
    short = structure.argmax(scores, lengths=lengths)
    assert structure.check_solution(scores, short, lengths=lengths) is short
    with pytest.raises(
        ValueError, match=r"x is not a hard solution of Arborescence\(root=0\) at 2"
    ):
        structure.check_solution(scores, structure.argmax(scores), lengths=lengths)


def test_half_sweep_states_follow_the_law(generator: torch.Generator) -> None:
    """half_sweeps keeps the state after each tree update too: every state of such a chain
    from a start keeps the tree and has the law of independent long chains."""
    n, count = 4, 8_000
    scores = torch.randn(n, n, dtype=torch.float64, generator=generator)
    start = gumbel((count, n, n), generator)
    x = TREE.argmax(scores + start)
    batch = scores.expand(count, n, n)
    index = edge_index(n)
    noise = conditional_tree_gumbel(batch, x, 4, generator, start=start, half_sweeps=True)
    assert noise.shape == (4, count, n, n)
    assert bool((TREE.argmax(scores + noise) == x).all())
    # Each chain's graph has its own tree: compare with independent chains of the same trees.
    reference = conditional_tree_gumbel(batch, x, 1, generator, n_sweeps=16, draws_per_chain=1)
    for state in noise:
        assert_same_law(state[:, index[0], index[1]], reference[0][:, index[0], index[1]])
