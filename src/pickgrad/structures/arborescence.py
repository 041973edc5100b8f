"""``Arborescence``: choose a spanning arborescence (directed tree) rooted at a given node."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from pickgrad._validation import value_checks_enabled
from pickgrad.structures._matrix_tree import (
    WORK_DTYPE,
    TreeStructure,
    arborescence_log_partition,
    arc_marginals,
    arc_mask,
    check_lengths,
    marginal_dtype,
    node_mask,
    orient_from_root,
    spanning_tree_edges,
)
from pickgrad.structures._tree_solvers import max_arborescence_parents, parents_to_adjacency

__all__ = ["Arborescence"]


class Arborescence(TreeStructure):
    """A spanning arborescence rooted at ``root``: every other node has exactly one parent.

    Scores ``(..., n, n)``: ``scores[..., i, j]`` scores the arc i -> j (i is the parent of j);
    the diagonal and the arcs into the root are ignored (they get zero gradient from every
    estimator). The output has ``x[i, j] = 1`` iff arc i -> j is chosen: each non-root column
    holds one 1, the root column none, and there is no cycle. Every leading dimension is a batch
    dimension. This is the non-projective dependency tree of a sentence whose root is ``root``.

    * ``argmax``: maximum-weight arborescence by Chu-Liu/Edmonds, batched: each round contracts
      every cycle of every graph at once (a Python loop over rounds only, usually a few; O(n^2)
      per graph and round). Exact with cycles, ties (lowest index wins) and negative scores.
    * ``relax(scores, tau)``: arc marginals ``mu[i, j] = P(i -> j in A)`` under
      ``p(A) ∝ exp(sum_{(i, j) in A} scores[i, j] / tau)``, by the directed matrix-tree theorem
      (Tutte 1948; Koo et al. 2007): ``Z = det`` of the root-deleted Laplacian and
      ``mu = w[i, j] (M^-1[j, j] - M^-1[j, i])``. Computed as for ``SpanningTree.relax``
      (input precision, accurate to 1e-5 in float32 and 1e-7 in float64, float64 and exact
      fallbacks), so scores spanning +-50 / tau are safe; differentiable; tends to ``argmax``
      as tau -> 0.
    * ``log_partition``: ``log Z``.
    * ``enumerate((n, n))``: all n^(n-2) arborescences rooted at ``root``.
    * ``lengths``: the public ``argmax``, ``relax`` and ``log_partition`` accept
      ``lengths=`` a ``(*batch)`` integer tensor; example b then uses only its first
      ``lengths[b]`` nodes (root < lengths[b] <= n) and the padded entries of the output are 0.
      ``pickgrad.select`` / ``estimate`` pass ``lengths=`` to every estimator.

    ``gumbel-rao`` is not available: there is no sampler of the Gumbel noise given the
    perturbed argmax, and ``reinforce`` uses the Gumbel utilities' density instead. What was
    tried: the two-block Gibbs sampler of ``SpanningTree`` rests on the cycle property, which
    makes "A is optimal" a set of pairwise order constraints between chosen and unchosen
    edges, so that each block's coordinates are independent truncated Gumbels. Arborescences
    are the intersection of two matroids (graphic and one-parent-per-node), and their
    optimality is not a set of single exchanges: Chu-Liu/Edmonds certifies it with reduced
    costs of contracted cycles, i.e. the condition on the unchosen arcs involves sums over
    several arcs at once (an arc into a cycle competes with the whole cycle), so the
    unchosen arcs are not conditionally independent given the chosen ones and neither block
    update is a product of truncated Gumbels. A single-site Gibbs sampler is sound (each
    arc's feasible set given the others is one half-line, its end the utility at which the
    best arborescence forced to contain, or to avoid, that arc ties), but it needs one exact
    Chu-Liu/Edmonds solve per arc and sweep, run one arc after another: O(n^2) sequential
    solves per sweep, far from the speed that would make it usable; it is not implemented.

    Args:
        root: index of the root node (an int >= 0, smaller than the number of nodes).

    Reference: Koo, Globerson, Carreras & Collins, "Structured Prediction Models via the
    Matrix-Tree Theorem", EMNLP 2007; Paulus et al., "Gradient Estimation with Stochastic
    Softmax Tricks", NeurIPS 2020.

    Masks: ``mask=`` (True = allowed) or ``-inf`` scores remove arcs, as for
    :class:`SpanningTree`; no arborescence from the root in the allowed arcs is a
    ``ValueError`` naming the graph (a value check).

    Example:
        >>> s = torch.tensor([[0.0, 1.0, 5.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
        >>> Arborescence().argmax(s)  # 0 -> 2 -> 1
        tensor([[0., 0., 1.],
                [0., 0., 0.],
                [0., 1., 0.]])
        >>> Arborescence().relax(s, tau=0.01).round()
        tensor([[0., 0., 1.],
                [0., 0., 0.],
                [0., 1., 0.]])
        >>> Arborescence().relax(torch.zeros(3, 3)).sum(0)  # one parent per non-root node
        tensor([0., 1., 1.])
    """

    #: ``lengths`` is a keyword of the public methods, not a relax option.
    relax_option_names: ClassVar[tuple[str, ...]] = ("regularizer",)

    def __init__(self, root: int = 0) -> None:
        if isinstance(root, bool) or not isinstance(root, int):
            raise TypeError(f"root must be an int node index, got {type(root).__name__} {root!r}")
        if root < 0:
            raise ValueError(f"root must be a node index >= 0, got root={root}")
        self.root = root

    def _check_event_shape(self, event_shape: tuple[int, ...], *, name: str) -> None:
        super()._check_event_shape(event_shape, name=name)
        n = event_shape[-1]
        if self.root >= n:
            raise ValueError(
                f"root={self.root} is out of range for {name} with n={n} nodes "
                f"(event shape {event_shape}); root must be < n"
            )

    def _check_lengths(self, lengths: Any, scores: Tensor) -> Tensor | None:
        checked = check_lengths(lengths, scores)
        # A value check (it reads the lengths back): only while value checks run.
        if (
            checked is not None
            and value_checks_enabled()
            and checked.numel() > 0
            and int(checked.min()) <= self.root
        ):
            raise ValueError(
                f"root={self.root} must be a node of every graph, but lengths has a graph of "
                f"n={int(checked.min())} nodes; every length must be > root"
            )
        return checked

    def active_mask(
        self, event_shape: tuple[int, ...], device: torch.device | None = None
    ) -> Tensor:
        """Off-diagonal entries not into the root: the entries that score an arc."""
        n = event_shape[-1]
        return arc_mask(torch.ones(n, dtype=torch.bool, device=device), self.root)

    def _is_solution(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Whether each ``x`` is an arborescence (of the first ``lengths[b]`` nodes)."""
        return self._is_own_argmax(x, lengths=lengths)

    def _argmax(self, scores: Tensor, lengths: Tensor | None = None) -> Tensor:
        n = scores.shape[-1]
        # Reduced costs are differences: float64, and masked arcs made finite.
        flat = self._solver_scores(scores.reshape(-1, n, n).to(WORK_DTYPE))
        nodes = node_mask(lengths, tuple(scores.shape[:-2]), n, scores.device).reshape(-1, n)
        parents = max_arborescence_parents(flat, self.root, nodes)
        return parents_to_adjacency(parents, scores.dtype).reshape(scores.shape)

    @property
    def _root(self) -> int:
        return self.root

    def _relax(
        self,
        scores: Tensor,
        tau: float,
        lengths: Tensor | None = None,
        regularizer: str = "entropy",
    ) -> Tensor:
        self._check_regularizer(regularizer)
        work = scores.to(marginal_dtype(scores.dtype))
        # -inf scores (masked arcs) need no mask of their own: arc_marginals gives them weight 0
        marginals = arc_marginals(work, self._arcs(work, lengths), self.root, tau)
        return marginals.to(scores.dtype)  # already in [0, 1]

    def _log_partition(self, scores: Tensor, tau: float, lengths: Tensor | None = None) -> Tensor:
        z = scores.to(WORK_DTYPE) / tau
        return arborescence_log_partition(
            z, self._allowed_arcs(z, lengths).expand(z.shape), self.root
        ).to(scores.dtype)

    def enumerate(
        self,
        event_shape: tuple[int, ...],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Every arborescence on n nodes rooted at ``root``: ``(n ** (n - 2), n, n)``.

        The spanning trees of :meth:`SpanningTree.enumerate`, in the same order, each oriented
        away from the root.

        Example:
            >>> Arborescence().enumerate((3, 3)).sum(0)
            tensor([[0., 2., 2.],
                    [0., 0., 1.],
                    [0., 1., 0.]])
        """
        n = self._check_enumerate_shape(event_shape)
        if self.root >= n:
            raise ValueError(f"root={self.root} is out of range for n={n} nodes; root must be < n")
        trees = spanning_tree_edges(n)
        out = torch.zeros((len(trees), n, n), dtype=dtype, device=device)
        for index, edges in enumerate(trees):
            for parent, child in orient_from_root(edges, n, self.root):
                out[index, parent, child] = 1
        return out

    def __repr__(self) -> str:
        return f"Arborescence(root={self.root})"
