"""Gumbel noise conditional on the maximum spanning tree: the sampler behind ``gumbel-rao`` on
``SpanningTree``.

With utilities ``u = s + G`` (G iid standard Gumbel) and T the maximum spanning tree of u, the
cycle property says that T is the argmax exactly when every non-tree edge f weighs less than
every tree edge on its tree path:

    u_f < u_e   for every non-tree edge f and every tree edge e on the path of T joining f's ends.

So the law of u given T is the product of Gumbel(s) densities restricted to a set cut out by
pairwise order constraints between the two groups of edges. Given the tree utilities, each
non-tree utility is a Gumbel truncated above at the smallest utility on its path (its
*bottleneck*), and the non-tree utilities are independent; given the non-tree utilities, each
tree utility is a Gumbel truncated below at the largest utility of the non-tree edges whose cycle
passes through it, independently again. :func:`conditional_tree_gumbel` alternates these two
exact block updates (two-block Gibbs sampling, a data-augmentation scheme; Tanner & Wong 1987),
each fully vectorised over batch, draws and edges: the only Python loop is over sweeps.

Why Gibbs, and where it starts. An exact sequential sampler would sample the order in which
Kruskal's algorithm meets the edges (a Plackett-Luce order) conditioned on building T, which
needs the probability of every partial state's completion: a sum over subsets of tree edges,
exponential in n. The chain instead starts from a deterministic point, the non-tree utilities at
their unconditional means ``s + gamma`` (Euler's constant); the first tree update then draws
exact tree utilities given those, so every state after it lies inside the support of the
conditional law (any tree utilities admit non-tree ones below them) and the chain, irreducible
and aperiodic on that open convex cone, converges to the conditional law. What is not exact is
only the burn-in, measured in ``benchmarks/bench_tree_gumbel_rao.py --mixing``.

Truncated Gumbel draws, in log space so that no bound overflows. With ``E = exp(-(u - mu))``,
which is Exponential(1) for an untruncated Gumbel(mu):

* truncated above at b: ``E > exp(-(b - mu))``, and by memorylessness
  ``u = -logaddexp(-b, -(mu - log E0))`` with ``E0 ~ Exp(1)``;
* truncated below at a: ``E`` is Exp(1) truncated to ``(0, c)``, ``c = exp(mu - a)``,
  ``E = -log1p(-V (1 - exp(-c)))`` with ``V ~ U(0, 1]``; ``log E`` is formed from ``log c``
  directly when c is tiny (a far above mu), where ``u -> a + Exp(1)``.

Reference: Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
Gradient Estimator", ICLR 2021 (the estimator; its closed form covers one-hot choices only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pickgrad.structures._matrix_tree import max_spanning_tree_parents, node_mask
from pickgrad.structures.edges import _cached_index

__all__ = ["DEFAULT_SWEEPS", "conditional_tree_gumbel", "lower_truncated_gumbel"]

#: Default number of Gibbs sweeps (see the module docstring and the mixing measurement in
#: ``benchmarks/bench_tree_gumbel_rao.py``).
DEFAULT_SWEEPS = 8


def _exponential(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Exp(1) draws ``-log U`` from uniforms ``U`` clamped to ``[tiny, 1)``: every draw is finite
    and positive (tails cut at about ``eps`` and ``tiny``, as in
    :func:`pickgrad.noise.sample_gumbel`); ``torch.rand`` and a log measured faster than
    ``exponential_``."""
    uniform = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return uniform.clamp_min_(torch.finfo(like.dtype).tiny).log_().neg_()


def upper_truncated_gumbel(mu: Tensor, bound: Tensor, exponential: Tensor) -> Tensor:
    """Gumbel(mu) conditioned on ``u < bound``, from ``exponential`` ~ Exp(1) (broadcast)."""
    u = -torch.logaddexp(-bound, exponential.log() - mu)
    # Rounding may land on the bound itself, a tie that could change the argmax: stay below.
    return torch.minimum(u, torch.nextafter(bound, bound.new_tensor(-math.inf)))


def lower_truncated_gumbel(mu: Tensor, bound: Tensor, exponential: Tensor) -> Tensor:
    """Gumbel(mu) conditioned on ``u > bound``, from ``exponential`` ~ Exp(1) (broadcast).

    ``V = exp(-exponential)`` is uniform on (0, 1); ``E = -log1p(-V w)``, ``w = 1 - exp(-c)``,
    ``c = exp(mu - bound)``; ``u = mu - log E``. Both logarithms are formed from their own logs
    when their arguments are tiny, so a bound far above ``mu`` gives ``bound + Exp(1)``
    (the exact limit) rather than an overflow.

    Example:
        >>> u = lower_truncated_gumbel(torch.zeros(4), torch.tensor([-1e30, 0.0, 50.0, 1e4]),
        ...                            torch.ones(4))
        >>> bool((u > torch.tensor([-1e30, 0.0, 50.0, 1e4])).all())
        True
    """
    log_c = mu - bound
    c = log_c.exp()
    # log w = log(1 - exp(-c)); for c below 1e-9 its series log c - c / 2 is exact to rounding.
    log_w = torch.where(log_c > -20.0, torch.log(-torch.expm1(-c)), log_c - 0.5 * c)
    log_q = log_w - exponential  # log(V w)
    q = log_q.exp()
    log_e = torch.where(log_q > -20.0, torch.log(-torch.log1p(-q)), log_q + 0.5 * q)
    # Rounding may land on the bound itself (e.g. bound + Exp(1) at 1e4 in float32): stay above.
    return torch.maximum(mu - log_e, torch.nextafter(bound, bound.new_tensor(math.inf)))


def _tree_layout(x: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Parents ``(B, n)`` (-1 for the root 0 and absent nodes), a top-down order of the nodes
    ``(B, n)`` (root first, absent nodes last), and ``inside`` ``(B, n, n)``:
    ``inside[b, v, j]`` is True iff j lies in the subtree of v, for the trees ``x`` ``(B, n, n)``.
    """
    n = x.shape[-1]
    parents = max_spanning_tree_parents(x, nodes)  # a tree is its own maximum spanning tree
    has_parent = parents >= 0
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    step = torch.nn.functional.one_hot(parents.clamp_min(0), n).to(x.dtype)
    step = step * has_parent[..., None].to(x.dtype) + eye
    up = step  # up[b, i, v] = 1 iff v is i or an ancestor of i: the closure, by squaring
    for _ in range(max(1, math.ceil(math.log2(n)))):
        up = (up @ up).clamp_max_(1.0)
    depth = up.sum(-1) + (~nodes).to(x.dtype) * n
    order = torch.sort(depth, dim=-1, stable=True).indices
    return parents, order, up.transpose(-1, -2) > 0.5


def conditional_tree_gumbel(
    scores: Tensor,
    x: Tensor,
    n_draws: int,
    generator: torch.Generator | None,
    *,
    n_sweeps: int = DEFAULT_SWEEPS,
    lengths: Tensor | None = None,
) -> Tensor:
    """Gumbel noise G drawn from its law given ``max spanning tree(scores + G) = x``.

    Each sweep costs O(n^2) per graph and draw: the bottleneck of every vertex pair is filled
    in top-down (the path to a node is the path to its parent plus one edge), and the largest
    non-tree utility leaving every subtree bottom-up (a subtree's is the largest of its
    children's and its root's), each a Python loop over the n nodes of tensor operations over
    the whole batch and every draw.

    Args:
        scores: ``(*batch, n, n)`` edge scores (strict upper triangle read), a float dtype that
            is also the dtype of the computation (callers pass float32 for half types).
        x: ``(*batch, n, n)`` symmetric adjacency of a spanning tree (of the first
            ``lengths[b]`` nodes when ``lengths`` is given).
        n_draws: K, the number of draws (independent chains).
        generator: the source of randomness.
        n_sweeps: Gibbs sweeps per chain (each a tree update then a non-tree update), >= 1.
        lengths: optional ``(*batch)`` node counts.

    Returns:
        ``(K, *batch, n, n)`` noise. On the strict upper triangle of present edges it follows
        the conditional law (to the burn-in); elsewhere (entries the tree never reads, edges of
        padded nodes, edges scored -inf) it is standard Gumbel noise, their exact conditional
        law since they cannot change the argmax.
    """
    n, dtype, device = scores.shape[-1], scores.dtype, scores.device
    batch = tuple(scores.shape[:-2])
    flat_scores = scores.reshape(-1, n, n)
    graphs, k = flat_scores.shape[0], n_draws
    chains = graphs * k
    nodes = node_mask(lengths, batch, n, device).reshape(-1, n)
    index = _cached_index(n, device)
    m = index.shape[1]
    edge_scores = flat_scores[:, index[0], index[1]]  # (B, m)
    adjacency = x.reshape(-1, n, n).to(dtype)
    in_tree = adjacency[:, index[0], index[1]] > 0.5
    present = nodes[:, index[0]] & nodes[:, index[1]] & (edge_scores > -math.inf)
    constrained = present & ~in_tree  # the non-tree edges that bound tree edges
    parents, order, inside = _tree_layout(adjacency, nodes)
    has_parent = parents >= 0
    nodes_index = torch.arange(n, device=device)
    low_end = torch.minimum(parents, nodes_index)
    high_end = torch.maximum(parents, nodes_index)
    parent_edge = (low_end * n - low_end * (low_end + 1) // 2 + (high_end - low_end - 1)).clamp_min(
        0
    )
    tree_mu = edge_scores.gather(1, parent_edge).masked_fill(~has_parent, 0.0)  # by child node

    def per_chain(t: Tensor) -> Tensor:  # (B, ...) -> (B * K, ...), graph-major
        return t.repeat_interleave(k, dim=0)

    mu_tree = per_chain(tree_mu)  # (C, n)
    mu_edges = per_chain(edge_scores)  # (C, m)
    free_edge = per_chain(~constrained)
    outside = per_chain(inside)  # True where j lies inside v's subtree: not a crossing end
    # Per step t of the top-down order: the node and its parent (absent nodes: themselves).
    safe_parents = torch.where(has_parent, parents, nodes_index)
    chain_order = per_chain(order)
    chain_parent = per_chain(safe_parents).gather(1, chain_order)
    # Flat positions, per step: the node's and the parent's rows of a (C * n, n) view, and the
    # node's column of a (C * n * n) view (index_select / index_copy_ on these measured several
    # times faster than gather / scatter with expanded indices).
    base = torch.arange(chains, device=device) * n
    node_rows = [base + chain_order[:, t] for t in range(1, n)]
    parent_rows = [base + chain_parent[:, t] for t in range(1, n)]
    offsets = torch.arange(n, device=device) * n
    node_columns = [
        (base * n + chain_order[:, t])[:, None].add(offsets).reshape(-1) for t in range(1, n)
    ]
    flat_upper = index[0] * n + index[1]
    flat_lower = index[1] * n + index[0]

    utilities = mu_edges.clone()  # the chain starts with non-tree utilities at their modes
    tree = mu_tree
    for _ in range(n_sweeps):
        # Floor of each tree edge (parent(v), v): the largest non-tree utility leaving v's
        # subtree. reach[v, j] = max over i in the subtree of v of u[i, j], bottom-up.
        masked = utilities.masked_fill(free_edge, -math.inf)
        reach = torch.full((chains, n * n), -math.inf, dtype=dtype, device=device)
        reach.index_copy_(1, flat_upper, masked).index_copy_(1, flat_lower, masked)
        rows = reach.view(chains * n, n)
        for node, parent in zip(reversed(node_rows), reversed(parent_rows), strict=True):
            merged = torch.maximum(rows.index_select(0, node), rows.index_select(0, parent))
            rows.index_copy_(0, parent, merged)
        floor = reach.view(chains, n, n).masked_fill_(outside, -math.inf).amax(dim=-1)
        tree = lower_truncated_gumbel(mu_tree, floor, _exponential((chains, n), scores, generator))
        # Ceiling of each non-tree edge: its bottleneck, the smallest tree utility on its path.
        # The matrix is kept symmetric, so the parent's column is read as its row.
        bottleneck = torch.full((chains * n, n), math.inf, dtype=dtype, device=device)
        flat = bottleneck.view(-1)
        tree_in_order = tree.gather(1, chain_order)  # (C, n), step t at [:, t]
        for step in range(1, n):
            node = node_rows[step - 1]
            row = torch.minimum(
                bottleneck.index_select(0, parent_rows[step - 1]), tree_in_order[:, step, None]
            )
            row.view(-1).index_fill_(0, node, math.inf)  # the node's own entry (node, node)
            bottleneck.index_copy_(0, node, row)
            flat.index_copy_(0, node_columns[step - 1], row.view(-1))
        ceiling = bottleneck.view(chains, n * n).index_select(1, flat_upper)
        utilities = upper_truncated_gumbel(
            mu_edges, ceiling, _exponential((chains, m), scores, generator)
        )
    # Tree utilities into their edges' slots (nodes without a parent write into a spare one).
    slot = torch.where(per_chain(has_parent), per_chain(parent_edge), m)
    padded = torch.cat([utilities, utilities.new_zeros(chains, 1)], dim=-1)
    padded = padded.scatter(-1, slot, tree)
    conditional = (padded[:, :m] - mu_edges).view(graphs, k, m).transpose(0, 1)
    free = _exponential((k, graphs, n * n), scores, generator).log_().neg_()
    upper = free.index_select(-1, flat_upper)
    free.index_copy_(-1, flat_upper, torch.where(present, conditional, upper))
    return free.reshape(k, *batch, n, n)
