"""Graph-layout trajectories: latent random trees laid out by Fruchterman-Reingold, frame by frame.

The data of the graph-layout experiment of Paulus et al. 2020 (Sec. 7.1 and Appendix C), after
Kipf et al. 2018 (neural relational inference): ``n`` vertices in 2-D; the latent graph is the
maximum spanning tree of iid standard Gumbel edge weights (a uniform-ish random tree); the initial
positions are ``N(0, I)``; each of the ``T`` stored frames is one Fruchterman-Reingold iteration
from the previous positions (the first from the initial ones), with the semantics of networkx's
``spring_layout(G, pos=pos, iterations=1)``; finally every coordinate is mapped to [-1, 1] by the
training split's global minimum and maximum.

Edges are stored as an edge list in pickgrad's order: the ``m = n(n-1)/2`` pairs ``(i, j)``,
``i < j``, of the upper triangle, row-major. Data are generated once for a configuration, with a
fixed seed, and cached on disk beside a SHA-256 checksum of their bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.data_cache import load_or_generate_tensors
from pickgrad.structures import SpanningTree, edges_to_matrix

__all__ = [
    "GraphLayoutData",
    "fruchterman_reingold_step",
    "generate_split",
    "load_or_generate",
    "random_trees",
]

# Bump when the generator changes, so a stale cache is never read as current data.
GENERATOR_VERSION = 1


def fruchterman_reingold_step(positions: Tensor, adjacency: Tensor) -> Tensor:
    """One Fruchterman-Reingold iteration, then networkx's rescaling to [-1, 1].

    For each graph (batched), with ``k = sqrt(1 / n)``, ``d_ij = p_i - p_j``,
    ``r_ij = max(|d_ij|, 0.01)`` and the temperature ``t = 0.1 * max_axis(max p - min p)``::

        F_i = sum_j d_ij (k^2 / r_ij^2 - A_ij r_ij / k)
        p_i <- p_i + t F_i / max(|F_i|, 0.01)
        p   <- (p - mean p) / max |p - mean p|

    which is what ``networkx.spring_layout(G, pos=p, iterations=1, center=(0, 0))`` computes for
    fewer than 500 vertices (Fruchterman & Reingold 1991).

    Args:
        positions: ``(*batch, n, 2)`` floating tensor.
        adjacency: ``(*batch, n, n)`` symmetric 0/1 (or weighted) tensor, zero diagonal.

    Returns:
        ``(*batch, n, 2)``: the new positions, centred, largest absolute coordinate 1.

    Example:
        >>> p = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> a = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
        >>> q = fruchterman_reingold_step(p, a)
        >>> float(q.abs().max()), [round(v, 12) for v in q.mean(-2).tolist()]
        (1.0, [0.0, 0.0])
    """
    if positions.shape[-1] != 2 or adjacency.shape[-2:] != positions.shape[-2:-1] * 2:
        raise ValueError(
            f"positions must be (*batch, n, 2) and adjacency (*batch, n, n), got "
            f"{tuple(positions.shape)} and {tuple(adjacency.shape)}"
        )
    n = positions.shape[-2]
    k = math.sqrt(1.0 / n)
    extent = positions.amax(-2) - positions.amin(-2)  # (*batch, 2)
    temperature = 0.1 * extent.amax(-1)[..., None, None]
    delta = positions[..., :, None, :] - positions[..., None, :, :]
    distance = delta.norm(dim=-1).clamp_min(0.01)
    weight = k * k / distance**2 - adjacency * distance / k
    force = (delta * weight[..., None]).sum(-2)
    length = force.norm(dim=-1, keepdim=True).clamp_min(0.01)
    moved = positions + force * (temperature / length)
    centred = moved - moved.mean(-2, keepdim=True)
    limit = centred.abs().amax((-2, -1), keepdim=True)
    return torch.where(limit > 0, centred / limit, centred)


def random_trees(count: int, n: int, generator: torch.Generator) -> Tensor:
    """Maximum spanning trees of iid standard Gumbel edge weights, as edge lists.

    Args:
        count: number of trees.
        n: vertices per tree (>= 2).
        generator: source of the weights.

    Returns:
        ``(count, m)`` float tensor of 0/1, ``m = n(n-1)/2``, edges in upper-triangle row-major
        order; each row has ``n - 1`` ones forming a spanning tree.

    Example:
        >>> trees = random_trees(4, 5, torch.Generator().manual_seed(0))
        >>> trees.shape, trees.sum(-1).tolist()
        (torch.Size([4, 10]), [4.0, 4.0, 4.0, 4.0])
    """
    weights = torch.empty(count, n * (n - 1) // 2, dtype=torch.float64)
    weights.exponential_(generator=generator).log_().neg_()
    return SpanningTree(edge_list=True).argmax(weights).float()


def generate_split(
    count: int, n: int, frames: int, generator: torch.Generator, *, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """Trajectories of ``frames`` Fruchterman-Reingold iterations on random trees (not normalised).

    Args:
        count: number of examples.
        n: vertices.
        frames: stored frames ``T``; frame 0 is one iteration from ``N(0, I)`` positions.
        generator: source of the trees and initial positions.
        chunk: examples generated at once (memory bound only; the result does not depend on it
            because the trees and positions are drawn first).

    Returns:
        ``positions (count, n, T, 2)`` float32 and ``edges (count, m)`` float32 0/1.
    """
    edges = random_trees(count, n, generator)
    start = torch.randn(count, n, 2, generator=generator, dtype=torch.float64)
    out = torch.empty(count, n, frames, 2, dtype=torch.float32)
    for first in range(0, count, chunk):
        upper = edges_to_matrix(edges[first : first + chunk].double())
        adjacency = upper + upper.transpose(-1, -2)
        pos = start[first : first + chunk]
        for t in range(frames):
            pos = fruchterman_reingold_step(pos, adjacency)
            out[first : first + chunk, :, t] = pos.float()
    return out, edges


@dataclass(frozen=True)
class GraphLayoutData:
    """The three splits: ``positions (N, n, T, 2)`` in [-1, 1] and ``edges (N, m)`` 0/1 each."""

    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    checksum: str
    path: Path


def _generate(n: int, frames: int, sizes: tuple[int, int, int], seed: int) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for offset, (split, count) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        # One generator per split: changing the training size leaves the test data alone.
        generator = torch.Generator().manual_seed(seed * 3 + offset)
        tensors[f"{split}_positions"], tensors[f"{split}_edges"] = generate_split(
            count, n, frames, generator
        )
    low, high = tensors["train_positions"].min(), tensors["train_positions"].max()
    for split in ("train", "valid", "test"):
        key = f"{split}_positions"
        tensors[key] = ((tensors[key] - low) * (2.0 / (high - low)) - 1.0).contiguous()
    return tensors


def load_or_generate(
    cache_dir: str | Path, *, n: int, frames: int, sizes: tuple[int, int, int], seed: int
) -> GraphLayoutData:
    """The data set for these settings: read from ``cache_dir`` if cached, else generated and cached.

    The cache file is named by every setting and the generator's version; its checksum is kept in
    a ``.json`` beside it and checked on every read. A file whose bytes do not match is refused
    (``ValueError`` naming it), never silently used.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     data = load_or_generate(root, n=4, frames=3, sizes=(8, 2, 2), seed=0)
        ...     again = load_or_generate(root, n=4, frames=3, sizes=(8, 2, 2), seed=0)
        >>> data.train[0].shape, data.checksum == again.checksum
        (torch.Size([8, 4, 3, 2]), True)
    """
    if n < 3 or frames < 2 or min(sizes) < 1:
        raise ValueError(
            f"graph-layout data needs n >= 3 vertices, frames >= 2 and every split >= 1 example, "
            f"got n={n}, frames={frames}, sizes={sizes}"
        )
    stem = (
        f"graph_layout_v{GENERATOR_VERSION}_n{n}_T{frames}_{'-'.join(map(str, sizes))}_seed{seed}"
    )
    tensors, checksum, path = load_or_generate_tensors(
        cache_dir,
        stem,
        lambda: _generate(n, frames, sizes, seed),
        what="graph-layout data",
        version=GENERATOR_VERSION,
    )
    return GraphLayoutData(
        train=(tensors["train_positions"], tensors["train_edges"]),
        valid=(tensors["valid_positions"], tensors["valid_edges"]),
        test=(tensors["test_positions"], tensors["test_edges"]),
        checksum=checksum,
        path=path,
    )
