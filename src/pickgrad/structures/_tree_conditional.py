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
each vectorised over batch, draws and edges. Both bounds are path queries on a fixed tree, so
their index tables are built once per call (the depths of lowest common ancestors from one
inverse of the grounded Laplacian, see :func:`_lca_depths`) and each sweep is O(log n) tensor
operations: the ceilings from a sparse table of segment minima filled bottom-up (binary
lifting), the floors from a sparse table of segment maxima filled top-down (see
:func:`_lifting_layout` and :func:`_floors`).

Where the chains start. ``gumbel-rao`` draws its hard sample as ``x = argmax(s + G)`` and
passes that very noise G as ``start``: G is an exact draw of the conditional law given x, so a
chain started at G is stationary from its first state, and every later state is an exact draw
too (the Gibbs kernel leaves the law invariant). No burn-in, only correlation between the
states: the K draws of a graph come from ``ceil(K / 5)`` chains, all started at G, each giving
its states after each of its first 5 sweeps (:data:`START_DRAWS_PER_CHAIN`). Only G's
non-tree utilities are used (the first tree update redraws the tree utilities given them), so
a start whose rounding ties the argmax cannot put a chain outside the support. Measured
(``benchmarks/bench_tree_gumbel_rao.py --chains``, 10 nodes, tau 0.5, two runs): this gives
gumbel-rao the variance of K independent chains (0.300x st-gumbel against 0.300x) and the same
mean, with 10 chain-sweeps per graph instead of 24 (two chains of 8 burn-in sweeps and 4 more);
one chain of 10 sweeps has the same variance (0.29x-0.30x) but was 3-20% slower (more
sequential tensor operations), while 10 chains one sweep from G each, the fastest, measured a
higher variance (0.32x-0.33x): their draws all share G's non-tree utilities (and keeping the
state after each half-sweep too, ``half_sweeps``, 0.36x).

Without a start (the public :meth:`SpanningTree.conditional_gumbel` called without one), the
K draws of a graph come from ``ceil(K / DRAWS_PER_CHAIN)`` chains, each giving its state after
the burn-in and after each of the next sweeps; the burn-in, :func:`default_sweeps`, grows with
n (measured).

Masked edges: an edge scored ``-inf`` is never in T and bounds nothing, so it is left out of
both blocks and its noise is ``-inf`` (its perturbed score stays ``-inf``).

Why Gibbs. An exact sequential sampler would sample the order in which Kruskal's algorithm
meets the edges (a Plackett-Luce order) conditioned on building T, which needs the probability
of every partial state's completion: a sum over subsets of tree edges, exponential in n. A
chain without a start begins at a deterministic point, the non-tree utilities at their scores
(the Gumbels' locations); the first tree update then draws exact tree utilities given those,
so every state after it lies inside the support of the conditional law (any tree utilities
admit non-tree ones below them) and the chain, irreducible and aperiodic on that open convex
cone, converges to the conditional law. What is not exact is only the burn-in, measured in
``benchmarks/bench_tree_gumbel_rao.py``: against rejection sampling (``--mixing``, 4 and 5
nodes) 8 sweeps are at the Monte Carlo noise level; against 64-sweep chains (``--burn-in``)
the chain needs 6-8 sweeps at 10 nodes, 12 at 20 and 30, 20 at 50 and 100, hence
:func:`default_sweeps`.

Why this does not carry over to arborescences and assignments: their optimality certificates
(Chu-Liu/Edmonds' contracted cycles; the optimal dual's reduced costs) are not pairwise order
constraints between a chosen and an unchosen coordinate, so neither block of a two-block chain
is a product of truncated Gumbels, and a single-site chain needs an exact solve per coordinate
and sweep (see ``Arborescence``'s and ``Permutation``'s docstrings).

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

import functools
import math

import torch
from torch import Tensor

from pickgrad.noise import sample_exponential, sample_gumbel
from pickgrad.structures._matrix_tree import node_mask
from pickgrad.structures.edges import _cached_index, _flat_upper

__all__ = [
    "DEFAULT_SWEEPS",
    "DRAWS_PER_CHAIN",
    "START_DRAWS_PER_CHAIN",
    "START_SWEEPS",
    "conditional_tree_gumbel",
    "default_sweeps",
    "lower_truncated_gumbel",
]

#: Burn-in sweeps without a start at small sizes (see :func:`default_sweeps`).
DEFAULT_SWEEPS = 8

#: Sweeps from a start before the first kept state (any state after it is exact).
START_SWEEPS = 1

#: Draws taken from each chain when the chains start at an exact draw.
START_DRAWS_PER_CHAIN = 5


def default_sweeps(n: int) -> int:
    """Burn-in sweeps of a chain without a start on n-node graphs:
    ``ceil(8 + 5 log2(n / 10))``, and 8 up to 10 nodes (13 at 20 nodes, 16 at 30, 20 at 50,
    25 at 100).

    Measured (``benchmarks/bench_tree_gumbel_rao.py --burn-in``, chains after s sweeps against
    chains after 64): at the Monte Carlo noise level after 6-8 sweeps at 10 nodes, 12 at 20
    and 30, 20 at 50 and at 100 (16 leaves a visible bias at 50 nodes). Chains started at an
    exact draw (``start=``) need none of this.
    """
    if n <= 10:
        return DEFAULT_SWEEPS
    return math.ceil(DEFAULT_SWEEPS + 5 * math.log2(n / 10))


#: Draws taken from each chain without a start, one per sweep after the burn-in:
#: ``ceil(K / 5)`` chains per graph. Measured (``benchmarks/bench_tree_gumbel_rao.py
#: --chains``): the gumbel-rao gradient's variance is the same as with K independent chains,
#: at about half the time.
DRAWS_PER_CHAIN = 5


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


def _floor_log2(n: int, device: torch.device) -> Tensor:
    """``floor(log2 d)`` for d = 0..n (0 for d = 0), as a lookup table."""
    return torch.tensor([max(d.bit_length() - 1, 0) for d in range(n + 1)], device=device)


def _lca_depths(adjacency: Tensor, nodes: Tensor) -> Tensor:
    """``(B, n, n)`` integer depths of the lowest common ancestors of the trees rooted at node 0.

    In a tree the effective resistance between two nodes is their distance, so the inverse of
    the Laplacian with the root's row and column removed (the grounded Laplacian) holds
    ``depth(lca(i, j))`` at ``[i - 1, j - 1]`` (the length of the path the two share to the
    root); the matrix is unimodular (det 1, one spanning tree), so the inverse is an integer
    matrix, exact after rounding. One batched inverse replaces a search for the parents (n - 1
    sequential steps) and a transitive closure. Absent nodes (no edges) get a unit diagonal;
    their entries are set to -1 off the diagonal and 0 on it (their own depth).
    """
    work = adjacency.to(torch.float64)
    absent = (~nodes).to(torch.float64)
    laplacian = torch.diag_embed(work.sum(-1) + absent) - work
    inverse = torch.linalg.inv(laplacian[:, 1:, 1:])
    common = torch.nn.functional.pad(inverse.round_().long(), (1, 0, 1, 0))
    both = nodes[:, :, None] & nodes[:, None, :]
    eye = torch.eye(adjacency.shape[-1], dtype=torch.bool, device=adjacency.device)
    return torch.where(both, common, torch.where(eye, 0, -1))


def _lifting_layout(
    adjacency: Tensor, nodes: Tensor, index: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The index tables of the sparse-table sweeps, built once per call from the trees alone.

    Rooted at node 0, each node v other than the root owns the tree edge (parent(v), v). A
    *segment* ``(k, v)`` is the run of ``2^k`` tree edges going up from v. The path of a pair
    (i, j) is the run from i and the run from j up to their lowest common ancestor l; a run of
    length ``d >= 1`` is the union of two (overlapping) segments, ``(k, i)`` and ``(k, w)``,
    ``k = floor(log2 d)`` and w the ancestor of i at depth ``depth(l) + 2^k``. Minima and
    maxima are idempotent, so the overlap is harmless.

    Args:
        adjacency: ``(B, n, n)`` symmetric tree adjacency (of the present nodes).
        nodes: ``(B, n)`` boolean, the present nodes.
        index: ``(2, m)``, the pairs (i, j), i < j, in edge-list order.

    Returns ``(parents, ancestors, segments)``: ``parents`` ``(B, n)`` (-1 for the root and
    absent nodes); ``ancestors`` ``(B, L, n + 1)``, the ``2^k``-th ancestor of each node, or
    the sentinel ``n`` where there is none (the sentinel is its own), with ``L`` levels,
    ``2^(L-1) <= max(1, n - 1)``; ``segments`` ``(B, 4 m)``: for each pair its four segments as
    flat positions ``k (n + 1) + v`` in an ``(L, n + 1)`` table, the two of i's run for every
    pair, then the two of j's run (an empty run, or a pair with an absent end, points at the
    sentinel of level 0).
    """
    graphs, n = adjacency.shape[0], adjacency.shape[-1]
    device = adjacency.device
    labels = torch.arange(n, device=device)
    common = _lca_depths(adjacency, nodes)  # (B, n, n): depth(lca(i, j)), -1 across absent nodes
    depth = common.diagonal(dim1=-2, dim2=-1)  # (B, n); the root and absent nodes: 0
    # The parent is the neighbour one level up (none for the root and absent nodes).
    above = (adjacency > 0.5) & (depth[:, None, :] == depth[:, :, None] - 1)
    parents = torch.where(above, labels, -1).amax(-1)
    # is_ancestor[b, i, a]: a is i or an ancestor of i, i.e. lca(i, a) = a.
    is_ancestor = common == depth[:, None, :]
    # at_depth[b, i, d]: the ancestor of i at depth d (-1 below i's own depth).
    candidates = torch.where(is_ancestor, labels, -1)
    at_depth = torch.full((graphs, n, n), -1, dtype=torch.long, device=device).scatter_reduce(
        -1, depth[:, None, :].expand(graphs, n, n), candidates, "amax"
    )
    flat_depth = at_depth.view(graphs, n * n)
    levels = max(1, (n - 1).bit_length())
    powers = 2 ** torch.arange(levels, device=device)
    target = depth[:, None, :] - powers[:, None]  # (B, L, n): depth of the 2^k-th ancestor
    position = (labels * n + target.clamp_min(0)).view(graphs, -1)
    ancestors = flat_depth.gather(-1, position).view(graphs, levels, n)
    ancestors = torch.where(target >= 0, ancestors, n)
    ancestors = torch.cat([ancestors, ancestors.new_full((graphs, levels, 1), n)], dim=-1)
    log2 = _floor_log2(n, device)
    runs = []
    for end, other in ((index[0], index[1]), (index[1], index[0])):
        lca_depth = common[:, end, other]  # (B, m)
        length = depth[:, end] - lca_depth
        valid = (length >= 1) & (lca_depth >= 0) & nodes[:, end] & nodes[:, other]
        k = log2[length.clamp(0, n)]
        w = flat_depth.gather(-1, end * n + (lca_depth + powers[k]).clamp(0, n - 1))
        runs.append(torch.where(valid, k * (n + 1) + end, n))
        runs.append(torch.where(valid, k * (n + 1) + w, n))
    return parents, ancestors, torch.cat(runs, dim=-1)


def conditional_tree_gumbel(
    scores: Tensor,
    x: Tensor,
    n_draws: int,
    generator: torch.Generator | None,
    *,
    n_sweeps: int | None = None,
    lengths: Tensor | None = None,
    draws_per_chain: int | None = None,
    thin: int = 1,
    start: Tensor | None = None,
    half_sweeps: bool = False,
) -> Tensor:
    """Gumbel noise G drawn from its law given ``max spanning tree(scores + G) = x``.

    Each sweep costs O(n^2 log n) elementwise work per graph and draw in O(log n) tensor
    operations over the whole batch and every draw (sparse tables, see
    :func:`_lifting_layout`): the *ceiling* of every pair, the smallest tree utility on its
    path, is the minimum of four segment minima, the table of segment minima doubling its
    segments level by level; the *floor* of every tree edge, the largest non-tree utility whose
    path covers it, comes from scattering each non-tree utility into its four segments (a
    running maximum) and then pushing every segment's maximum down into its two halves, level
    by level. The index tables depend on the trees alone and are built once per call.

    Args:
        scores: ``(*batch, n, n)`` edge scores (strict upper triangle read), a float dtype that
            is also the dtype of the computation (callers pass float32 for half types); ``-inf``
            marks an edge that is not allowed.
        x: ``(*batch, n, n)`` symmetric adjacency of a spanning tree (of the first
            ``lengths[b]`` nodes when ``lengths`` is given).
        n_draws: K, the number of draws.
        generator: the source of randomness.
        n_sweeps: sweeps (each a tree update then a non-tree update) before a chain's first
            kept state, >= 1; default :func:`default_sweeps` of n without ``start`` (a
            burn-in), :data:`START_SWEEPS` with it.
        lengths: optional ``(*batch)`` node counts.
        draws_per_chain: d, the draws taken from each chain (1: K independent chains; default
            :data:`DRAWS_PER_CHAIN` without ``start``, :data:`START_DRAWS_PER_CHAIN` with it):
            ``ceil(K / d)`` chains per graph each give d states, after ``n_sweeps`` and then
            every ``thin`` sweeps (each state has the conditional law, exactly from a start,
            to the burn-in otherwise; successive states of a chain are correlated).
        thin: sweeps between two states taken from one chain, >= 1.
        half_sweeps: also keep the state after each tree update (two states per sweep; each
            has the law, but measured in ``--chains`` they raise gumbel-rao's variance from
            0.30x to 0.36x st-gumbel for a 20-30% cheaper sampler: off by default).
        start: optional ``(*batch, n, n)`` noise with ``argmax(scores + start) = x`` (an exact
            draw of the conditional law, e.g. the forward pass's own noise): every chain of a
            graph starts at its non-tree utilities, so no state needs a burn-in.

    Returns:
        ``(K, *batch, n, n)`` noise. On the strict upper triangle of present edges it follows
        the conditional law (exactly from a start, to the burn-in without); an edge scored ``-inf`` gets ``-inf`` (it can
        never be in the tree); elsewhere (entries the tree never reads, edges of padded nodes)
        it is standard Gumbel noise, their exact conditional law since they cannot change the
        argmax.
    """
    n, dtype, device = scores.shape[-1], scores.dtype, scores.device
    batch = tuple(scores.shape[:-2])
    flat_scores = scores.reshape(-1, n, n)
    graphs = flat_scores.shape[0]
    if graphs == 0:  # an empty batch: nothing to draw (and no shape to infer from)
        return scores.new_empty((n_draws, *batch, n, n))
    if n_sweeps is None:
        n_sweeps = START_SWEEPS if start is not None else default_sweeps(n)
    if draws_per_chain is None:
        draws_per_chain = START_DRAWS_PER_CHAIN if start is not None else DRAWS_PER_CHAIN
    per_graph = -(-n_draws // draws_per_chain)  # chains per graph
    k, chains = per_graph, graphs * per_graph
    nodes = node_mask(lengths, batch, n, device).reshape(-1, n)
    index = _cached_index(n, device)
    m = index.shape[1]
    edge_scores = flat_scores[:, index[0], index[1]]  # (B, m)
    adjacency = x.reshape(-1, n, n).to(dtype)
    in_tree = adjacency[:, index[0], index[1]] > 0.5
    allowed = edge_scores > -math.inf
    present = nodes[:, index[0]] & nodes[:, index[1]] & allowed
    constrained = present & ~in_tree  # the non-tree edges that bound tree edges
    parents, ancestors, segments = _lifting_layout(adjacency, nodes, index)
    has_parent = parents >= 0
    nodes_index = torch.arange(n, device=device)
    low_end = torch.minimum(parents, nodes_index)
    high_end = torch.maximum(parents, nodes_index)
    parent_edge = (low_end * n - low_end * (low_end + 1) // 2 + (high_end - low_end - 1)).clamp_min(
        0
    )
    tree_mu = edge_scores.gather(1, parent_edge).masked_fill(~has_parent, 0.0)  # by child node

    def per_chain(t: Tensor) -> Tensor:  # (B, ...) -> (B * R, ...), graph-major
        return t.repeat_interleave(k, dim=0)

    mu_tree = per_chain(tree_mu)  # (C, n)
    mu_edges = per_chain(edge_scores)  # (C, m)
    # A forced tree edge scored -inf (only when no finite tree exists) keeps utility -inf.
    rootless = per_chain(~has_parent | (tree_mu == -math.inf))
    chain_ancestors = per_chain(ancestors)  # (C, L, n + 1)
    chain_segments = per_chain(segments)  # (C, 4 m)
    # Only the non-tree edges bound the tree edges: the others go to the sentinel slot.
    bounding = constrained.repeat(1, 4)
    chain_floor_segments = per_chain(torch.where(bounding, segments, n))

    if start is None:
        initial = mu_edges  # a deterministic point; the first tree update enters the support
    else:  # an exact draw: every later state is one too (stationarity), no burn-in
        start_edges = start.reshape(-1, n, n)[:, index[0], index[1]].to(dtype)
        initial = per_chain(edge_scores + start_edges)
    utilities = initial
    tree = mu_tree
    states: list[tuple[Tensor, Tensor]] = []
    sweep = 0
    # Out of place throughout: under vmap any of these tensors may be batched or not (with
    # randomness="same" the draws are not), and an in-place op into an unbatched one fails.
    while len(states) < draws_per_chain:
        sweep += 1
        keep = sweep >= n_sweeps and (sweep - n_sweeps) % thin == 0
        floor = _floors(utilities, chain_floor_segments, chain_ancestors)
        exponential = sample_exponential(
            (chains, n), dtype=dtype, device=device, generator=generator
        )
        tree = lower_truncated_gumbel(mu_tree, floor, exponential)
        tree = tree.masked_fill(rootless, math.inf)  # no edge: no bound (and never read)
        if keep and half_sweeps:
            states.append((utilities, tree))
            if len(states) == draws_per_chain:
                break
        ceiling = _ceilings(tree, chain_ancestors, chain_segments)
        # Non-tree utilities: Gumbel(mu) below the ceiling (see upper_truncated_gumbel).
        exponential = sample_exponential(
            (chains, m), dtype=dtype, device=device, generator=generator
        )
        utilities = upper_truncated_gumbel(mu_edges, ceiling, exponential)
        if keep:
            states.append((utilities, tree))
    # Tree utilities into their edges' slots (nodes without a parent write into a spare one).
    slot = torch.where(per_chain(has_parent), per_chain(parent_edge), m)
    stacked = torch.stack([state for state, _ in states])  # (d, C, m)
    padded = torch.cat([stacked, stacked.new_zeros(len(states), chains, 1)], dim=-1)
    trees = torch.stack([tree for _, tree in states])
    padded = padded.scatter(-1, slot.expand(len(states), -1, -1), trees)
    draws = (padded[..., :m] - mu_edges).view(len(states), graphs, per_graph, m)
    draws = draws.permute(1, 2, 0, 3).reshape(graphs, -1, m)[:, :n_draws]
    conditional = draws.transpose(0, 1)  # (K, B, m)
    conditional = torch.where(allowed, conditional, -math.inf)
    # The entries the tree never reads (diagonal, lower triangle, edges of padded nodes) get
    # unconditional Gumbel noise, their exact conditional law: drawn only where needed.
    unread = flat_unread(n, device)
    free = sample_gumbel(
        (n_draws, graphs, unread.numel()), dtype=dtype, device=device, generator=generator
    )
    if lengths is not None:
        padded_free = sample_gumbel(
            (n_draws, graphs, m), dtype=dtype, device=device, generator=generator
        )
        conditional = torch.where(present | ~allowed, conditional, padded_free)
    # One concatenation and one gather into the (n, n) layout (two out-of-place index_copy
    # into an empty tensor cloned it twice: about a fifth of the sampler at 128 x 10 x 10).
    out = torch.cat([free, conditional], dim=-1).index_select(-1, assembly_order(n, device))
    return out.reshape(n_draws, *batch, n, n)


def _floors(utilities: Tensor, segments: Tensor, ancestors: Tensor) -> Tensor:
    """Floor of each tree edge (by child node): the largest utility of the non-tree edges whose
    path runs over it, from a sparse table of segment maxima filled top-down.

    Each non-tree utility goes into the maxima of its path's four segments (a scatter); then,
    level by level from the top, the maximum of every segment ``(k, v)`` passes down into its
    two halves, ``(k - 1, v)`` and ``(k - 1, a)``, a the ``2^(k-1)``-th ancestor of v; level 0
    then holds, for each edge, the maximum over the paths covering it. Out of place (each level
    a new tensor), so that vmap can batch it whichever of its inputs are batched.

    Args:
        utilities: ``(C, m)`` edge utilities.
        segments: ``(C, 4 m)`` from :func:`_lifting_layout`, pointing at the sentinel ``n`` of
            level 0 for every edge that bounds nothing (tree edges, masked and absent ones).
        ancestors: ``(C, L, n + 1)`` from :func:`_lifting_layout`.

    Returns ``(C, n)``; ``-inf`` where no non-tree edge covers the edge (and for the root).
    """
    chains, levels, slots = ancestors.shape
    empty = utilities.new_full((chains, levels * slots), -math.inf)
    table = empty.scatter_reduce(-1, segments, utilities.repeat(1, 4), "amax")
    table = table.view(chains, levels, slots)
    upper = table[:, levels - 1]
    for level in range(levels - 1, 0, -1):
        lower = torch.maximum(table[:, level - 1], upper)
        upper = lower.scatter_reduce(-1, ancestors[:, level - 1], upper, "amax")
    return upper[:, : slots - 1]


def _ceilings(tree: Tensor, ancestors: Tensor, segments: Tensor) -> Tensor:
    """Ceiling of each pair: the smallest tree utility on its path, from a sparse table.

    Out of place (the levels are stacked at the end), so that vmap can batch it.

    Args:
        tree: ``(C, n)`` tree utilities by child node (``+inf`` for nodes without an edge).
        ancestors, segments: ``(C, L, n + 1)`` and ``(C, 4 m)`` from :func:`_lifting_layout`.

    Returns ``(C, m)``; ``+inf`` for a pair with an absent end.
    """
    chains, levels = tree.shape[0], ancestors.shape[1]
    previous = torch.cat([tree, tree.new_full((chains, 1), math.inf)], dim=-1)  # sentinel: +inf
    table = [previous]
    for level in range(1, levels):
        previous = torch.minimum(previous, previous.gather(-1, ancestors[:, level - 1]))
        table.append(previous)
    runs = torch.stack(table, dim=1).view(chains, -1).gather(-1, segments).view(chains, 4, -1)
    return torch.minimum(
        torch.minimum(runs[:, 0], runs[:, 1]), torch.minimum(runs[:, 2], runs[:, 3])
    )


@functools.lru_cache(maxsize=64)
def flat_unread(n: int, device: torch.device) -> Tensor:
    """Flat positions ``i n + j``, ``i >= j``, of the entries no edge is scored by."""
    rows, columns = torch.tril_indices(n, n, device=device)
    positions: Tensor = rows * n + columns
    return positions


@functools.lru_cache(maxsize=64)
def assembly_order(n: int, device: torch.device) -> Tensor:
    """For each flat position ``i n + j`` of an (n, n) matrix, where it lies in the
    concatenation of the unread entries (:func:`flat_unread`) and the edges (edge-list order)."""
    order: Tensor = torch.argsort(torch.cat([flat_unread(n, device), _flat_upper(n, device)]))
    return order
