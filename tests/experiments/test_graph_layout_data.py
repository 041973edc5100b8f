"""The graph-layout data: networkx's Fruchterman-Reingold semantics, random trees, the cache."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from pickgrad.experiments.graph_layout_data import (
    fruchterman_reingold_step,
    generate_split,
    load_or_generate,
    random_trees,
)
from pickgrad.experiments.nri import pair_index


def _graph(edges: torch.Tensor, n: int) -> nx.Graph:
    rows, cols = pair_index(n)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(
        (int(rows[e]), int(cols[e])) for e in torch.nonzero(edges > 0.5).flatten().tolist()
    )
    return graph


@pytest.mark.parametrize("n", [3, 6, 10])
def test_one_step_matches_networkx_spring_layout(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    trees = random_trees(3, n, generator)
    rows, cols = pair_index(n)
    for edges in trees:
        graph = _graph(edges, n)
        adjacency = torch.zeros(n, n, dtype=torch.float64)
        adjacency[rows, cols] = edges.double()
        adjacency = adjacency + adjacency.T
        positions = torch.randn(n, 2, dtype=torch.float64, generator=generator)
        for _ in range(5):  # a trajectory, each frame from networkx's previous one
            theirs = nx.spring_layout(
                graph,
                pos={v: positions[v].numpy() for v in range(n)},
                iterations=1,
                threshold=1e-12,
                center=np.zeros(2),
            )
            expected = torch.tensor(np.stack([theirs[v] for v in range(n)]))
            ours = fruchterman_reingold_step(positions, adjacency)
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
            positions = expected


def test_one_step_is_batched() -> None:
    generator = torch.Generator().manual_seed(0)
    positions = torch.randn(4, 7, 2, dtype=torch.float64, generator=generator)
    adjacency = torch.rand(4, 7, 7, dtype=torch.float64, generator=generator).round()
    adjacency = torch.triu(adjacency, 1) + torch.triu(adjacency, 1).transpose(-1, -2)
    batched = fruchterman_reingold_step(positions, adjacency)
    one_by_one = torch.stack(
        [fruchterman_reingold_step(p, a) for p, a in zip(positions, adjacency, strict=True)]
    )
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-15)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="adjacency"):
        fruchterman_reingold_step(torch.zeros(5, 2), torch.zeros(4, 4))


def test_random_trees_are_spanning_trees_in_edge_list_order() -> None:
    trees = random_trees(20, 8, torch.Generator().manual_seed(1))
    assert trees.shape == (20, 28)
    for edges in trees:
        assert nx.is_tree(_graph(edges, 8))


def test_random_trees_are_maximum_spanning_trees_of_the_drawn_weights() -> None:
    # Replay the weight draw and ask networkx for the maximum spanning tree of the same weights.
    n = 6
    rows, cols = pair_index(n)
    trees = random_trees(5, n, torch.Generator().manual_seed(2))
    weights = torch.empty(5, rows.numel(), dtype=torch.float64)
    weights.exponential_(generator=torch.Generator().manual_seed(2)).log_().neg_()
    for edges, w in zip(trees, weights, strict=True):
        graph = nx.Graph()
        for e in range(rows.numel()):
            graph.add_edge(int(rows[e]), int(cols[e]), weight=float(w[e]))
        best = nx.maximum_spanning_tree(graph)
        assert set(map(frozenset, best.edges())) == set(map(frozenset, _graph(edges, n).edges()))


def test_split_is_seeded_and_in_range() -> None:
    a, ea = generate_split(6, 5, 4, torch.Generator().manual_seed(3))
    b, eb = generate_split(6, 5, 4, torch.Generator().manual_seed(3))
    assert a.shape == (6, 5, 4, 2) and ea.shape == (6, 10)
    assert torch.equal(a, b) and torch.equal(ea, eb)
    # each frame is networkx-rescaled: centred, largest coordinate 1
    assert torch.allclose(a.abs().amax((1, 3)), torch.ones(6, 4))
    assert torch.allclose(a.mean(1), torch.zeros(6, 4, 2), atol=1e-6)


def test_cache_is_reused_checked_and_normalised(tmp_path: Path) -> None:
    data = load_or_generate(tmp_path, n=5, frames=3, sizes=(10, 4, 4), seed=7)
    assert data.train[0].min() == -1 and data.train[0].max() == 1
    assert data.valid[0].shape == (4, 5, 3, 2) and data.test[1].shape == (4, 10)
    stamp = data.path.stat().st_mtime_ns
    again = load_or_generate(tmp_path, n=5, frames=3, sizes=(10, 4, 4), seed=7)
    assert again.path.stat().st_mtime_ns == stamp  # read, not regenerated
    assert again.checksum == data.checksum and torch.equal(again.test[0], data.test[0])
    other = load_or_generate(tmp_path, n=5, frames=3, sizes=(10, 4, 4), seed=8)
    assert other.checksum != data.checksum
    # a damaged cache file is refused, not used
    tensors = torch.load(data.path, weights_only=True)
    tensors["test_edges"][0, 0] = 1 - tensors["test_edges"][0, 0]
    torch.save(tensors, data.path)
    with pytest.raises(ValueError, match="does not match its checksum"):
        load_or_generate(tmp_path, n=5, frames=3, sizes=(10, 4, 4), seed=7)


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n >= 3"):
        load_or_generate(tmp_path, n=2, frames=3, sizes=(10, 4, 4), seed=0)
