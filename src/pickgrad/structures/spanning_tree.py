"""``SpanningTree``: choose a spanning tree of the complete graph on n nodes."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._validation import (
    check_generator,
    check_like_scores,
    check_positive_int,
    value_checks_enabled,
)
from pickgrad.noise import sampling_dtype
from pickgrad.structures._matrix_tree import (
    WORK_DTYPE,
    TreeStructure,
    arborescence_log_partition,
    arc_marginals,
    check_lengths,
    marginal_dtype,
    node_mask,
    spanning_tree_edges,
    unit_interval,
)
from pickgrad.structures._tree_conditional import conditional_tree_gumbel
from pickgrad.structures._tree_solvers import (
    max_spanning_tree_parents,
    parents_to_adjacency,
    spanning_tree_parents_numpy,
)
from pickgrad.structures.edges import edges_to_matrix, matrix_to_edges, nodes_from_edges

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
      per-column shifts in the input's precision (float32 for half types; small float32
      batches, under 2^15 entries, in float64 at once), accurate to 1e-5 (float32) or 1e-7
      (float64) by a per-graph error estimate; graphs that miss it are redone in float64 and,
      if need be, by an exact elimination (see ``_matrix_tree``), so scores spanning +-50 / tau
      are safe; tends to ``argmax`` as tau -> 0.
    * ``log_partition``: ``log Z`` as above.
    * ``enumerate((n, n))``: all n^(n-2) trees (Cayley), from Pruefer sequences.
    * ``lengths``: the public ``argmax``, ``relax`` and ``log_partition`` accept
      ``lengths=`` a ``(*batch)`` integer tensor; example b is then a tree on its first
      ``lengths[b]`` nodes only (1 <= lengths[b] <= n) and the padded entries of the output
      are 0, so graphs of different sizes share a batch; ``pickgrad.select`` / ``estimate``
      pass ``lengths=`` to every estimator.

    * ``edge_list=True``: scores and outputs are edge lists ``(..., m)``, ``m = n (n - 1) / 2``,
      one entry per vertex pair in the order of :func:`~pickgrad.structures.edge_index` (the
      strict upper triangle, row-major): ``x[..., k] = 1`` iff edge k is in the tree. Every
      method (``lengths`` included) and so every estimator works in that form; the results are
      those of the matrix form read through :func:`~pickgrad.structures.matrix_to_edges`.

    * ``conditional_gumbel(scores, x, K)``: Gumbel noise drawn given that ``x`` is the maximum
      spanning tree of ``scores + G``, by two-block Gibbs sampling over the cycle-property
      constraints (a non-tree edge below every tree edge of its path), each block an exact
      draw of independent truncated Gumbels (see :mod:`pickgrad.structures._tree_conditional`).
      This is what ``gumbel-rao`` uses, passing ``start=`` its forward noise G (an exact draw
      given ``x = argmax(scores + G)``): its chains start there and need no burn-in. Without a
      start, each chain burns in for ``n_sweeps`` sweeps from a fixed point.
      ``reinforce`` uses the Gumbel utilities' density.

    Args:
        edge_list: take scores ``(..., m)`` and return outputs ``(..., m)`` instead of
            ``(..., n, n)`` (default False).
        n_sweeps: burn-in sweeps of ``conditional_gumbel`` called without ``start`` (default
            None: ``default_sweeps(n)`` of :mod:`pickgrad.structures._tree_conditional`,
            ``ceil(8 + 5 log2(n / 10))`` and 8 up to 10 nodes, i.e. 13 at 20 nodes, 20 at 50;
            measured in ``benchmarks/bench_tree_gumbel_rao.py --mixing`` against rejection
            sampling at 4-5 nodes and ``--burn-in`` against long chains at 10 to 100 nodes).
            Unused with a start (``gumbel-rao``'s path).

    Reference: Paulus, Choi, Tarlow, Krause & Maddison, "Gradient Estimation with Stochastic
    Softmax Tricks", NeurIPS 2020 (spanning trees as a stochastic softmax trick).

    Masks: ``mask=`` (True = allowed; for the matrix form only the strict upper triangle's
    entries count) or ``-inf`` scores remove edges: the argmax, the matrix-tree marginals and
    the log-partition are those of the allowed graph (masked edges have weight 0, marginal
    exactly 0 and zero gradient); an allowed graph with no spanning tree (of the first
    ``lengths[b]`` nodes) is a ``ValueError`` naming the graph (a value check).

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
        >>> SpanningTree(edge_list=True).argmax(torch.tensor([3.0, 1.0, 2.0]))  # (0,1),(0,2),(1,2)
        tensor([1., 0., 1.])
    """

    #: ``lengths`` is a keyword of the public methods, not a relax option.
    relax_option_names: ClassVar[tuple[str, ...]] = ("regularizer",)

    def __init__(self, edge_list: bool = False, *, n_sweeps: int | None = None) -> None:
        if not isinstance(edge_list, bool):
            raise TypeError(
                f"edge_list must be a bool, got {type(edge_list).__name__} {edge_list!r}"
            )
        self.edge_list = edge_list
        self.n_sweeps = None if n_sweeps is None else check_positive_int(n_sweeps, name="n_sweeps")
        # Edge lists occupy one trailing dimension, matrices two.
        self.event_dims = 1 if edge_list else 2  # type: ignore[misc]

    # --- edge lists: every method runs on the matrix form ---------------------------------------

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        if not self.edge_list:
            super()._check_event_shape(event_shape, name=name)
            return
        nodes_from_edges(event_shape[-1], name=name)

    def _check_lengths(self, lengths: Any, scores: Tensor) -> Tensor | None:
        if not self.edge_list or lengths is None:
            return check_lengths(lengths, scores)
        n = nodes_from_edges(scores.shape[-1])
        # A view shaped like the matrix form, for the batch shape and the node count only.
        return check_lengths(lengths, scores[..., :1, None].expand(*scores.shape[:-1], n, n))

    def _to_matrix(self, scores: Tensor) -> Tensor:
        return edges_to_matrix(scores) if self.edge_list else scores

    def _from_matrix(self, x: Tensor) -> Tensor:
        return matrix_to_edges(x) if self.edge_list else x

    def active_mask(
        self, event_shape: tuple[int, ...], device: torch.device | None = None
    ) -> Tensor | None:
        """The strict upper triangle: the entries that score an edge (``None`` for edge lists:
        every entry scores an edge)."""
        if self.edge_list:
            return None
        n = event_shape[-1]
        return torch.ones((n, n), dtype=torch.bool, device=device).triu(diagonal=1)

    def linear_objective(self, scores: Tensor) -> Tensor:
        """``scores`` mirrored from the strict upper triangle: ``x -> <objective, x> / 2`` is the
        tree's score, so a straight-through gradient on ``x[i, j]`` and ``x[j, i]`` both reach
        ``scores[i, j]`` (i < j). For edge lists, ``scores`` itself (``<scores, x>`` is the
        tree's score)."""
        return scores if self.edge_list else _symmetric(scores)

    def _objective_transpose(self, grad: Tensor) -> Tensor | None:
        if type(self).linear_objective is not SpanningTree.linear_objective:
            return None
        if self.edge_list:
            return grad
        # The transpose of mirroring the strict upper triangle: both entries of a pair summed
        # into the upper one.
        return torch.triu(grad + grad.transpose(-1, -2), diagonal=1)

    def _argmax(self, scores: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.edge_list:
            return matrix_to_edges(self._matrix_argmax(edges_to_matrix(scores), lengths))
        return self._matrix_argmax(scores, lengths)

    def _matrix_argmax(self, scores: Tensor, lengths: Tensor | None) -> Tensor:
        n = scores.shape[-1]
        batch = scores.shape[:-2]
        nodes = node_mask(lengths, tuple(batch), n, scores.device).reshape(-1, n)
        parents = spanning_tree_parents_numpy(scores.reshape(-1, n, n), nodes)
        if parents is None:
            flat = _symmetric(self._solver_scores(scores.reshape(-1, n, n)))
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
        if self.edge_list:
            return matrix_to_edges(self._matrix_relax(edges_to_matrix(scores), tau, lengths))
        return self._matrix_relax(scores, tau, lengths)

    def _matrix_relax(self, scores: Tensor, tau: float, lengths: Tensor | None) -> Tensor:
        work = _symmetric(scores.to(marginal_dtype(scores.dtype)))
        arcs = self._arcs(work, lengths)  # -inf scores get weight 0 in arc_marginals
        # Spanning trees are the arborescences rooted at 0 of the symmetric digraph: an edge's
        # marginal is the sum of its two arcs'.
        marginals = arc_marginals(work, arcs, 0, tau, symmetric=True)
        edges = marginals + marginals.transpose(-1, -2)
        return unit_interval(edges).to(scores.dtype)

    def _log_partition(self, scores: Tensor, tau: float, lengths: Tensor | None = None) -> Tensor:
        scores = self._to_matrix(scores)
        z = _symmetric(scores.to(WORK_DTYPE)) / tau
        return arborescence_log_partition(
            z, self._allowed_arcs(z, lengths).expand(z.shape), root=0
        ).to(scores.dtype)

    def _is_solution(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Whether each ``x`` is a spanning tree (of the first ``lengths[b]`` nodes)."""
        return self._is_own_argmax(x, lengths=lengths)

    def conditional_gumbel(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int = 1,
        *,
        generator: torch.Generator | None = None,
        lengths: Tensor | None = None,
        start: Tensor | None = None,
    ) -> Tensor:
        """Gumbel noise ``G`` drawn given that ``x`` is the maximum spanning tree of ``scores + G``.

        Without ``start``, each chain burns in from a fixed point for ``n_sweeps`` sweeps (the
        structure's option; default :func:`~pickgrad.structures._tree_conditional.default_sweeps`
        of n, ``max(8, ceil(n / 3))``) and ``ceil(K / 5)`` chains give five successive states
        each. With ``start``, noise that makes ``x`` the argmax (an exact draw of this law, such
        as the forward pass's own noise), ``ceil(K / 5)`` chains start there and their states
        after each of their first 5 sweeps are exact draws: no burn-in (``n_sweeps`` is not
        used).

        Args:
            scores: ``(*batch, n, n)`` (or ``(*batch, m)`` with ``edge_list=True``).
            x: a tree of the same shape (of the first ``lengths[b]`` nodes with ``lengths``).
            n_draws: K, the number of draws.
            generator: the source of randomness.
            lengths: optional ``(*batch)`` node counts (see :meth:`argmax`).
            start: optional noise of the shape of ``scores`` with ``argmax(scores + start) = x``
                (checked with the value checks).

        Returns:
            ``(K, *scores.shape)`` noise without gradient; entries that cannot change the tree
            (ignored or padded ones) are unconditional Gumbel noise.

        Example:
            >>> s = torch.tensor([2.0, 0.0, 1.0])  # edges (0, 1), (0, 2), (1, 2)
            >>> tree = SpanningTree(edge_list=True)
            >>> g = tree.conditional_gumbel(s, torch.tensor([0.0, 1.0, 1.0]), 5)
            >>> bool((tree.argmax(s + g) == torch.tensor([0.0, 1.0, 1.0])).all())
            True
            >>> start = torch.tensor([-1.0, 1.5, 2.0])  # s + start = (1, 1.5, 3): the same tree
            >>> g = tree.conditional_gumbel(s, torch.tensor([0.0, 1.0, 1.0]), 5, start=start)
            >>> bool((tree.argmax(s + g) == torch.tensor([0.0, 1.0, 1.0])).all())
            True
        """
        self.validate(scores)
        checked = self._check_lengths(lengths, scores)
        self.check_solution(scores, x, lengths=checked)
        check_positive_int(n_draws, name="n_draws")
        check_generator(generator, scores.device)
        if start is not None:
            check_like_scores(start, scores, name="start")
            if not start.is_floating_point():
                raise TypeError(f"start must be a floating tensor, got {start.dtype}")
        with torch.no_grad():
            if start is not None and value_checks_enabled():
                start = start.detach()
                if bool((torch.isnan(start) | (start == math.inf)).any()):
                    raise ValueError("start must not contain NaN or +inf")
                solution = self._argmax(scores.detach() + start.to(scores.dtype), checked)
                wrong = (solution != x).flatten(scores.dim() - self.event_dims).any(-1)
                if bool(wrong.any()):
                    bad = [tuple(i) for i in wrong.nonzero().tolist()][:5]
                    where = f" at {int(wrong.sum())} batch entries: " if wrong.dim() else ""
                    raise ValueError(
                        "start must make x the maximum spanning tree of scores + start; it "
                        f"does not{where}{', '.join(map(str, bad)) if wrong.dim() else ''}"
                    )
            return self._conditional_gumbel(
                scores.detach(), x, n_draws, generator, checked, start=start
            )

    def _conditional_gumbel(
        self,
        scores: Tensor,
        x: Tensor,
        n_draws: int,
        generator: torch.Generator | None,
        lengths: Tensor | None = None,
        *,
        start: Tensor | None = None,
    ) -> Tensor:
        work = sampling_dtype(scores.dtype)
        matrix = self._to_matrix(scores.to(work))
        tree = x.to(work)
        if self.edge_list:
            tree = edges_to_matrix(tree)
            tree = tree + tree.transpose(-1, -2)
        if start is not None:  # the chains start there: no burn-in, n_sweeps unused
            start = self._to_matrix(start.detach().to(work))
        n_sweeps = self.n_sweeps if start is None else None
        noise = conditional_tree_gumbel(
            matrix, tree, n_draws, generator, n_sweeps=n_sweeps, lengths=lengths, start=start
        )
        return self._from_matrix(noise).to(scores.dtype)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every spanning tree on n nodes: ``(n ** (n - 2), n, n)`` symmetric adjacencies, or
        ``(n ** (n - 2), m)`` edge lists with ``edge_list=True`` (``event_shape = (m,)``).

        Ordered as the Pruefer sequences that encode them (lexicographically).

        Example:
            >>> SpanningTree().enumerate((3, 3)).sum(0)
            tensor([[0., 2., 2.],
                    [2., 0., 2.],
                    [2., 2., 0.]])
        """
        if self.edge_list:
            event_shape = tuple(event_shape)
            if len(event_shape) != 1:
                raise ValueError(f"event_shape must be (m,) for edge lists, got {event_shape}")
            n = nodes_from_edges(event_shape[0], name="event_shape")
            return matrix_to_edges(self._enumerate_matrices(n, dtype, device))
        return self._enumerate_matrices(self._check_enumerate_shape(event_shape), dtype, device)

    @staticmethod
    def _enumerate_matrices(
        n: int, dtype: torch.dtype, device: torch.device | str | None
    ) -> Tensor:
        trees = spanning_tree_edges(n)
        out = torch.zeros((len(trees), n, n), dtype=dtype, device=device)
        for index, edges in enumerate(trees):
            for i, j in edges:
                out[index, i, j] = out[index, j, i] = 1
        return out

    def __repr__(self) -> str:
        options = ["edge_list=True"] if self.edge_list else []
        if self.n_sweeps is not None:
            options.append(f"n_sweeps={self.n_sweeps}")
        return f"SpanningTree({', '.join(options)})"
