"""``SpanningTree``: choose a spanning tree of the complete graph on n nodes."""

from __future__ import annotations

import torch
from torch import Tensor

from pickgrad.structures._matrix_tree import (
    WORK_DTYPE,
    TreeStructure,
    arborescence_log_partition,
    arc_marginals,
    marginal_dtype,
    max_spanning_tree_parents,
    node_mask,
    parents_to_adjacency,
    spanning_tree_edges,
)

__all__ = ["SpanningTree"]


def _symmetric(scores: Tensor) -> Tensor:
    """Mirror the strict upper triangle: ``out[i, j] = out[j, i] = scores[min, max]``, diag 0."""
    upper = torch.triu(scores, diagonal=1)
    return upper + upper.transpose(-1, -2)


class SpanningTree(TreeStructure):
    """A spanning tree of the complete graph on n nodes, as a symmetric adjacency matrix.

    Scores ``(..., n, n)``: edge {i, j} is scored by ``scores[..., i, j]`` with i < j; the lower
    triangle and the diagonal are ignored (they get zero gradient from every estimator). The
    output ``x`` is symmetric with zero diagonal, ``x[i, j] = x[j, i] = 1`` iff {i, j} is an
    edge, and has n - 1 edges. Every leading dimension is a batch dimension.

    * ``argmax``: maximum-weight spanning tree by a vectorised Prim (n - 1 batched steps,
      O(n^2) per graph; ties go to the lowest index).
    * ``relax(scores, tau)``: edge marginals ``mu[i, j] = P(edge {i, j} in T)`` under
      ``p(T) ∝ exp(sum_{e in T} scores_e / tau)``, by the matrix-tree theorem (Kirchhoff 1847):
      ``Z = det`` of a Laplacian minor and ``mu = d log Z / d(scores / tau)``. Written to both
      ``[i, j]`` and ``[j, i]``, so a loss on either entry reaches ``scores[i, j]``. Computed with
      per-column shifts in the input's precision (float32 for half types), accurate to 1e-5
      (float32) or 1e-7 (float64) by a per-graph error estimate; graphs that miss it are redone
      in float64 and, if need be, by an exact elimination (see ``_matrix_tree``), so scores
      spanning +-50 / tau are safe; tends to ``argmax`` as tau -> 0.
    * ``log_partition``: ``log Z`` as above.
    * ``enumerate((n, n))``: all n^(n-2) trees (Cayley), from Pruefer sequences.
    * ``lengths``: the public ``argmax``, ``relax`` and ``log_partition`` accept
      ``lengths=`` a ``(*batch)`` integer tensor; example b is then a tree on its first
      ``lengths[b]`` nodes only (1 <= lengths[b] <= n) and the padded entries of the output
      are 0, so graphs of different sizes share a batch. Estimators do not pass ``lengths``.

    There is no exact sampler of the Gumbel noise given the perturbed argmax, so ``gumbel-rao``
    is not available; ``reinforce`` uses the Gumbel utilities' density.

    Reference: Paulus, Choi, Tarlow, Krause & Maddison, "Gradient Estimation with Stochastic
    Softmax Tricks", NeurIPS 2020 (spanning trees as a stochastic softmax trick).

    Example:
        >>> s = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
        >>> SpanningTree().argmax(s)
        tensor([[0., 1., 0.],
                [1., 0., 1.],
                [0., 1., 0.]])
        >>> SpanningTree().relax(s, tau=0.01).round()
        tensor([[0., 1., 0.],
                [1., 0., 1.],
                [0., 1., 0.]])
        >>> SpanningTree().relax(torch.zeros(3, 3)).sum() / 2  # n - 1 edges in expectation
        tensor(2.)
    """

    def active_mask(
        self, event_shape: tuple[int, ...], device: torch.device | None = None
    ) -> Tensor:
        """The strict upper triangle: the entries that score an edge."""
        n = event_shape[-1]
        return torch.ones((n, n), dtype=torch.bool, device=device).triu(diagonal=1)

    def linear_objective(self, scores: Tensor) -> Tensor:
        """``scores`` mirrored from the strict upper triangle: ``x -> <objective, x> / 2`` is the
        tree's score, so a straight-through gradient on ``x[i, j]`` and ``x[j, i]`` both reach
        ``scores[i, j]`` (i < j)."""
        return _symmetric(scores)

    def _argmax(self, scores: Tensor, lengths: Tensor | None = None) -> Tensor:
        n = scores.shape[-1]
        batch = scores.shape[:-2]
        flat = _symmetric(scores.reshape(-1, n, n))
        nodes = node_mask(lengths, tuple(batch), n, scores.device).reshape(-1, n)
        parents = max_spanning_tree_parents(flat, nodes)
        arcs = parents_to_adjacency(parents, scores.dtype)
        return (arcs + arcs.transpose(-1, -2)).reshape(scores.shape)

    def _relax(
        self,
        scores: Tensor,
        tau: float,
        lengths: Tensor | None = None,
        regularizer: str = "entropy",
    ) -> Tensor:
        self._check_regularizer(regularizer)
        arcs = self._arcs(scores, lengths)
        work = _symmetric(scores.to(marginal_dtype(scores.dtype)))
        # Spanning trees are the arborescences rooted at 0 of the symmetric digraph: an edge's
        # marginal is the sum of its two arcs'.
        marginals = arc_marginals(work, arcs, 0, tau)
        edges = marginals + marginals.transpose(-1, -2)
        return edges.to(scores.dtype)

    def _log_partition(self, scores: Tensor, tau: float, lengths: Tensor | None = None) -> Tensor:
        z = _symmetric(scores.to(WORK_DTYPE)) / tau
        return arborescence_log_partition(
            z, self._arcs(scores, lengths).expand(z.shape), root=0
        ).to(scores.dtype)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every spanning tree on n nodes: ``(n ** (n - 2), n, n)`` symmetric adjacencies.

        Ordered as the Pruefer sequences that encode them (lexicographically).

        Example:
            >>> SpanningTree().enumerate((3, 3)).sum(0)
            tensor([[0., 2., 2.],
                    [2., 0., 2.],
                    [2., 2., 0.]])
        """
        n = self._check_enumerate_shape(event_shape)
        trees = spanning_tree_edges(n)
        out = torch.zeros((len(trees), n, n), dtype=dtype, device=device)
        for index, edges in enumerate(trees):
            for i, j in edges:
                out[index, i, j] = out[index, j, i] = 1
        return out

    def __repr__(self) -> str:
        return "SpanningTree()"
