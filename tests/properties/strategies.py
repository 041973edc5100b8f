"""Hypothesis strategies, definitional checks and float64 references for the property suite.

Every structure is drawn with a valid size, a random batch shape (0 to 3 leading dimensions,
sizes 0 to 3, so empty batches occur), a dtype among float16 / bfloat16 / float32 / float64, a
temperature tau in [0.01, 100] (log-uniform) and scores of one of four kinds, at a scale in
[1e-3, 1e4] (log-uniform):

* ``gaussian``: standard normal entries clipped to [-3, 3], times the scale;
* ``ties``: entries from {0, 1, 2} times the scale, so exact ties are frequent;
* ``constant``: every entry equal (one value per example), the fully tied case;
* ``offset``: gaussian entries plus a large common offset of magnitude 1e2 to 1e4.

Magnitudes stay below 4e4, so every dtype (float16's largest finite value is 65504) holds them
exactly as drawn; the references take the *rounded* scores, converted exactly to float64.

The checks here test the definition of each structure (row and column sums, symmetry,
connectivity, acyclicity, the subset inequalities of the tree polytopes), independently of the
library's own ``_is_solution``.

Tolerances (absolute, on entries in [0, 1]) against the float64 reference, by output dtype:

* float64: 1e-9 (OneHot, Subset), 1e-7 (trees: their documented float64 accuracy); Sinkhorn's
  float64 result is the reference itself, so only its sums are checked (its documented 1e-10);
* float32: 1e-5 (issue 11, point 2; the trees' documented float32 accuracy; Sinkhorn's
  documented column-sum tolerance);
* float16 / bfloat16: computed in float32 by contract and rounded once, so the float32
  tolerance plus one unit in the last place of 1 in the half type: 1e-5 + 2**-10 (float16) and
  1e-5 + 2**-7 (bfloat16).

Sums over a row, column or the whole event get the entry tolerance times the number of entries
summed (each entry's error adds up at worst), plus the half type's rounding of each entry.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from torch import Tensor

from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset
from pickgrad.structures import edges_to_matrix
from pickgrad.structures.base import Structure

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
STRUCTURE_KINDS = (
    "onehot",
    "subset",
    "permutation",
    "spanning-tree",
    "spanning-tree-edges",
    "arborescence",
)
SCORE_KINDS = ("gaussian", "ties", "constant", "offset")

#: Whether the long profile is selected (``HYPOTHESIS_PROFILE=long``): 10 times the examples.
LONG = os.environ.get("HYPOTHESIS_PROFILE", "ci") == "long"

#: Largest tree size compared against enumeration (n ** (n - 2) trees: 16807 at n = 7, enumerated
#: in about 1 s; n = 8 has 262144, about 20 s per root). Trees of 8 nodes are still drawn by
#: every test that needs no enumeration (relax against float64, the estimators).
MAX_ENUMERATED_TREE = 7


def examples(ci_count: int) -> settings:
    """Per-test settings: ``ci_count`` examples under the CI profile, scaled up under ``long``."""
    return settings(settings.default, max_examples=ci_count * (10 if LONG else 1))


# --- tolerances --------------------------------------------------------------------------------


def entry_tolerance(structure: Structure, dtype: torch.dtype) -> float:
    """Absolute tolerance of one relaxed entry against its float64 reference (see module doc)."""
    if dtype == torch.float64:
        return 1e-7 if isinstance(structure, (SpanningTree, Arborescence)) else 1e-9
    tolerance = 1e-5
    if dtype in HALF_DTYPES:
        tolerance += torch.finfo(dtype).eps
    return tolerance


def sum_tolerance(structure: Structure, dtype: torch.dtype, count: int) -> float:
    """Absolute tolerance of a sum of ``count`` relaxed entries against its exact value."""
    if isinstance(structure, Permutation):
        # Sinkhorn documents its column-sum tolerance; half types add their rounding.
        base = 1e-10 if dtype == torch.float64 else 1e-5
        rounding = torch.finfo(dtype).eps * count if dtype in HALF_DTYPES else 0.0
        return 2 * base + rounding
    return entry_tolerance(structure, dtype) * count


# --- drawing problems --------------------------------------------------------------------------


class Problem:
    """One drawn input: a structure, its scores (in the drawn dtype) and a temperature.

    ``repr`` is a runnable reproduction with the exact score values, so hypothesis's falsifying
    example can be pasted.
    """

    def __init__(self, structure: Structure, scores: Tensor, tau: float, kind: str) -> None:
        self.structure, self.scores, self.tau, self.kind = structure, scores, tau, kind

    @property
    def dtype(self) -> torch.dtype:
        return self.scores.dtype

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.structure.event_shape(self.scores)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.scores.shape[: self.scores.dim() - self.structure.event_dims])

    def __repr__(self) -> str:
        values = self.scores.double().tolist()
        return (
            f"Problem({self.kind}: structure={self.structure!r}, "
            f"scores=torch.tensor({values!r}, dtype={self.scores.dtype}), tau={self.tau!r})"
        )


@st.composite
def structures(
    draw: st.DrawFn, kinds: tuple[str, ...] = STRUCTURE_KINDS, max_tree: int = 8
) -> tuple[Structure, tuple[int, ...]]:
    """A structure and a valid event shape for it (sizes 1 to 8; trees 2 to ``max_tree``)."""
    kind = draw(st.sampled_from(kinds))
    if kind == "onehot":
        return OneHot(), (draw(st.integers(1, 8)),)
    if kind == "subset":
        n = draw(st.integers(1, 8))
        return Subset(draw(st.integers(1, n))), (n,)
    if kind == "permutation":
        n = draw(st.integers(1, 8))
        return Permutation(), (draw(st.integers(1, n)), n)
    n = draw(st.integers(2, max_tree))
    if kind == "spanning-tree":
        return SpanningTree(), (n, n)
    if kind == "spanning-tree-edges":
        return SpanningTree(edge_list=True), (n * (n - 1) // 2,)
    return Arborescence(root=draw(st.integers(0, n - 1))), (n, n)


batch_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
taus = st.floats(-2.0, 2.0).map(lambda exponent: 10.0**exponent)
scales = st.floats(-3.0, 4.0).map(lambda exponent: 10.0**exponent)
seeds = st.integers(0, 2**32 - 1)


def draw_scores(
    shape: tuple[int, ...],
    kind: str,
    scale: float,
    offset: float,
    seed: int,
) -> Tensor:
    """Float64 scores of ``shape`` of the given kind (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "ties":
        return torch.randint(0, 3, shape, generator=generator).double() * scale
    if kind == "constant":
        return torch.full(shape, scale, dtype=torch.float64)
    gaussian = torch.randn(shape, generator=generator, dtype=torch.float64).clamp(-3, 3) * scale
    return gaussian + offset if kind == "offset" else gaussian


@st.composite
def problems(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = STRUCTURE_KINDS,
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    max_tree: int = 8,
    batch: st.SearchStrategy[tuple[int, ...]] = batch_shapes,
) -> Problem:
    """A random :class:`Problem` over the given structure kinds and dtypes."""
    structure, event_shape = draw(structures(kinds, max_tree))
    batch_shape = draw(batch)
    score_kind = draw(st.sampled_from(SCORE_KINDS))
    offset = 0.0
    if score_kind == "offset":
        offset = draw(st.sampled_from([-1.0, 1.0])) * 10.0 ** draw(st.floats(2.0, 4.0))
    scores = draw_scores(
        (*batch_shape, *event_shape), score_kind, draw(scales), offset, draw(seeds)
    )
    dtype = draw(st.sampled_from(dtypes))
    return Problem(structure, scores.to(dtype), draw(taus), score_kind)


# --- definitional checks -----------------------------------------------------------------------


def _reach(adjacency: Tensor) -> Tensor:
    """``reach[..., i, j]``: whether j can be reached from i along arcs (paths of any length)."""
    n = adjacency.shape[-1]
    step = (adjacency.double() + torch.eye(n, dtype=torch.float64) > 0).double()
    reach = step
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
        reach = (reach @ reach > 0).double()
    return reach > 0


def is_edge_list(structure: Structure) -> bool:
    """Whether this is ``SpanningTree(edge_list=True)``: scores and outputs ``(..., m)``."""
    return isinstance(structure, SpanningTree) and bool(getattr(structure, "edge_list", False))


def tree_nodes(structure: Structure, event_shape: tuple[int, ...]) -> int:
    """The number of nodes n of a tree structure's event (m = n(n - 1)/2 edges in edge lists)."""
    if is_edge_list(structure):
        return (1 + math.isqrt(1 + 8 * event_shape[-1])) // 2
    return event_shape[-1]


def edge_matrix(x: Tensor) -> Tensor:
    """The symmetric ``(..., n, n)`` adjacency of an edge list ``(..., m)``."""
    upper = edges_to_matrix(x)
    return upper + upper.transpose(-1, -2)


def check_valid(structure: Structure, x: Tensor, scores_shape: tuple[int, ...]) -> None:
    """Assert that every ``x[b]`` is a hard solution of ``structure``, by its definition."""
    assert tuple(x.shape) == tuple(scores_shape), (tuple(x.shape), scores_shape)
    if is_edge_list(structure):
        matrix = edge_matrix(x)
        check_valid(SpanningTree(), matrix, matrix.shape)
        return
    x = x.double()
    assert bool(((x == 0) | (x == 1)).all()), "entries are not all 0 or 1"
    if isinstance(structure, OneHot):
        assert bool((x.sum(-1) == 1).all()), "not exactly one 1 per row"
    elif isinstance(structure, Subset):
        assert bool((x.sum(-1) == structure.k).all()), f"not exactly k={structure.k} ones"
    elif isinstance(structure, Permutation):
        assert bool((x.sum(-1) == 1).all()), "a row without exactly one 1"
        assert bool((x.sum(-2) <= 1).all()), "a column with two 1s"
    elif isinstance(structure, SpanningTree):
        n = x.shape[-1]
        assert bool((x == x.transpose(-1, -2)).all()), "not symmetric"
        assert bool((x.diagonal(dim1=-2, dim2=-1) == 0).all()), "nonzero diagonal"
        assert bool((x.triu(1).sum((-2, -1)) == n - 1).all()), "not n - 1 edges"
        assert bool(_reach(x).all()), "not connected"
    elif isinstance(structure, Arborescence):
        n, root = x.shape[-1], structure.root
        assert bool((x.diagonal(dim1=-2, dim2=-1) == 0).all()), "a self-loop"
        parents = x.sum(-2)
        assert bool((parents[..., root] == 0).all()), "the root has a parent"
        others = [j for j in range(n) if j != root]
        assert bool((parents[..., others] == 1).all()), "a non-root node without one parent"
        assert bool(_reach(x)[..., root, :].all()), "a node unreachable from the root (a cycle)"
    else:  # pragma: no cover - a new structure must get its definition here
        raise AssertionError(f"no definition for {structure!r}")


def _subsets(n: int, exclude: int | None = None) -> Tensor:
    """Boolean ``(count, n)`` indicators of every nonempty subset of range(n) (minus exclude)."""
    rows = [
        [bool(mask >> i & 1) for i in range(n)]
        for mask in range(1, 2**n)
        if exclude is None or not mask >> exclude & 1
    ]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, n)


def check_in_polytope(structure: Structure, x: Tensor, scores_shape: tuple[int, ...]) -> None:
    """Assert that every ``x[b]`` lies in the convex hull of the structure's hard solutions.

    Entries in [0, 1] (within the dtype's tolerance) and the sums and inequalities that define
    the hull: simplex, capped simplex, the (partial) Birkhoff polytope, the spanning-tree
    polytope (Edmonds 1971: at most |S| - 1 edges inside every node set S) and the
    arborescence polytope (at least one arc into every node set without the root).
    """
    assert tuple(x.shape) == tuple(scores_shape), (tuple(x.shape), scores_shape)
    if is_edge_list(structure):
        matrix = edge_matrix(x)
        check_in_polytope(SpanningTree(), matrix, matrix.shape)
        return
    x_dtype = x.dtype
    entry = entry_tolerance(structure, x_dtype)
    x = x.double()
    assert bool(torch.isfinite(x).all()), "non-finite entries"
    assert bool(((x >= -entry) & (x <= 1 + entry)).all()), (
        f"entries outside [0, 1]: min {x.min().item() if x.numel() else None}, "
        f"max {x.max().item() if x.numel() else None}"
    )

    def close(value: Tensor, target: float, count: int, what: str, at_most: bool = False) -> None:
        tolerance = sum_tolerance(structure, x_dtype, count)
        error = value - target if at_most else (value - target).abs()
        worst = error.max().item() if error.numel() else 0.0
        assert worst <= tolerance, f"{what}: off by {worst:.3g} > {tolerance:.3g}"

    if isinstance(structure, OneHot):
        close(x.sum(-1), 1.0, x.shape[-1], "row sum")
    elif isinstance(structure, Subset):
        close(x.sum(-1), float(structure.k), x.shape[-1], f"sum (k={structure.k})")
    elif isinstance(structure, Permutation):
        s, n = x.shape[-2:]
        close(x.sum(-1), 1.0, n, "row sum")
        close(x.sum(-2), 1.0, s, "column sum", at_most=s < n)
    elif isinstance(structure, SpanningTree):
        n = x.shape[-1]
        assert bool(((x - x.transpose(-1, -2)).abs() <= entry).all()), "not symmetric"
        assert bool((x.diagonal(dim1=-2, dim2=-1).abs() <= entry).all()), "nonzero diagonal"
        upper = x.triu(1)
        close(upper.sum((-2, -1)), float(n - 1), n * (n - 1) // 2, "edge count")
        sets = _subsets(n)
        inside = torch.einsum("si,...ij,sj->...s", sets, upper, sets)
        excess = inside - (sets.sum(-1) - 1)
        tolerance = sum_tolerance(structure, x_dtype, n * (n - 1) // 2)
        worst = excess.max().item() if excess.numel() else 0.0
        assert worst <= tolerance, f"a node set holds {worst:.3g} more than |S| - 1 edges"
    elif isinstance(structure, Arborescence):
        n, root = x.shape[-1], structure.root
        assert bool((x.diagonal(dim1=-2, dim2=-1).abs() <= entry).all()), "a self-loop"
        close(x[..., root], 0.0, n, "arcs into the root")
        others = [j for j in range(n) if j != root]
        close(x.sum(-2)[..., others], 1.0, n, "in-degree of a non-root node")
        sets = _subsets(n, exclude=root)
        entering = torch.einsum("si,...ij,sj->...s", 1 - sets, x, sets)
        tolerance = sum_tolerance(structure, x_dtype, n * n)
        worst = (1 - entering).max().item() if entering.numel() else 0.0
        assert worst <= tolerance, f"a node set without the root has only {1 - worst:.3g} in-arcs"
    else:  # pragma: no cover
        raise AssertionError(f"no polytope for {structure!r}")


# --- exact references by enumeration -----------------------------------------------------------


def enumerable(structure: Structure, event_shape: tuple[int, ...]) -> bool:
    """Whether brute force over ``enumerate`` is affordable for this size."""
    if isinstance(structure, (SpanningTree, Arborescence)):
        return tree_nodes(structure, event_shape) <= MAX_ENUMERATED_TREE
    return True


@functools.lru_cache(maxsize=64)
def _enumerated(structure_repr: str, event_shape: tuple[int, ...]) -> Tensor:
    structure = eval(structure_repr, {}, _STRUCTURE_NAMESPACE)
    return structure.enumerate(event_shape, dtype=torch.float64).reshape(-1, math.prod(event_shape))


_STRUCTURE_NAMESPACE = {
    "OneHot": OneHot,
    "Subset": Subset,
    "Permutation": Permutation,
    "SpanningTree": SpanningTree,
    "Arborescence": Arborescence,
}


def enumerated(structure: Structure, event_shape: tuple[int, ...]) -> Tensor:
    """Every hard solution, flattened: float64 ``(count, prod(event_shape))``, cached."""
    return _enumerated(repr(structure), tuple(event_shape))


def objectives(structure: Structure, scores: Tensor) -> tuple[Tensor, Tensor]:
    """``(<scores, y>`` for every enumerated y, the enumerated y)``, in float64.

    Returns ``(batch..., count)`` objectives and ``(count, prod(event))`` solutions. Scores the
    structure ignores (tree diagonals, the lower triangle of ``SpanningTree``, arcs into the
    root) are masked by ``active_mask``.
    """
    event_shape = structure.event_shape(scores)
    every = enumerated(structure, event_shape)
    objective = active_scores(structure, scores.double())
    batch = objective.shape[: objective.dim() - len(event_shape)]
    flat = objective.reshape(*batch, math.prod(event_shape))
    return flat @ every.T, every


def active_scores(structure: Structure, scores: Tensor) -> Tensor:
    """``scores`` with the entries the structure ignores set to 0."""
    mask = structure.active_mask(structure.event_shape(scores), scores.device)
    return scores if mask is None else scores * mask


def objective_of(structure: Structure, scores: Tensor, x: Tensor) -> Tensor:
    """``<scores, x>`` in float64 over the event dims, ignoring inactive score entries."""
    dims = tuple(range(scores.dim() - structure.event_dims, scores.dim()))
    return (active_scores(structure, scores.double()) * x.double()).sum(dims)


def gibbs_marginals(structure: Structure, scores: Tensor, tau: float) -> Tensor:
    """``E[x]`` under ``p(x) ∝ exp(<scores, x> / tau)``, by enumeration, float64."""
    values, every = objectives(structure, scores)
    marginals = torch.softmax(values / tau, dim=-1) @ every
    return marginals.reshape(scores.shape)


def log_partition_reference(structure: Structure, scores: Tensor, tau: float) -> Tensor:
    """``logsumexp_x <scores, x> / tau`` by enumeration, float64, shape ``(*batch,)``."""
    values, _ = objectives(structure, scores)
    return torch.logsumexp(values / tau, dim=-1)


def relax_reference(structure: Structure, scores: Tensor, tau: float) -> Tensor:
    """The float64 result that ``relax(scores, tau)`` must match.

    The Gibbs marginals by enumeration where relax is the entropy-regularised marginal and
    enumeration is affordable; otherwise (Sinkhorn, which is not the Gibbs marginal, and trees
    above the enumerated size) the library's own float64 result on the same rounded scores.
    """
    if not isinstance(structure, Permutation) and enumerable(
        structure, structure.event_shape(scores)
    ):
        return gibbs_marginals(structure, scores, tau)
    return structure.relax(scores.double(), tau)


def solution_count(structure: Structure, event_shape: tuple[int, ...]) -> int:
    """How many hard solutions the structure has at this size (closed forms)."""
    if isinstance(structure, OneHot):
        return event_shape[-1]
    if isinstance(structure, Subset):
        return math.comb(event_shape[-1], structure.k)
    if isinstance(structure, Permutation):
        s, n = event_shape
        return math.perm(n, s)
    n = tree_nodes(structure, event_shape)
    return n ** (n - 2)


def cases(values: list[Any], ids: list[str]) -> list[Any]:
    """``pytest.param`` objects with the given ids."""
    return [
        pytest.param(*value, id=id_) if isinstance(value, tuple) else pytest.param(value, id=id_)
        for value, id_ in zip(values, ids, strict=True)
    ]


# --- masks -------------------------------------------------------------------------------------


def draw_mask(structure: Structure, scores: Tensor, seed: int, density: float) -> Tensor:
    """A bool mask of ``scores``' shape (True = allowed) that keeps at least one solution: the
    argmax of other random scores is always allowed, every other entry with probability
    ``density``."""
    generator = torch.Generator().manual_seed(seed)
    other = torch.randn(scores.shape, generator=generator, dtype=torch.float64)
    keep = structure.argmax(other).bool()
    return (torch.rand(scores.shape, generator=generator) < density) | keep


def masked_objectives(structure: Structure, scores: Tensor, mask: Tensor) -> Tensor:
    """``<scores, y>`` for every enumerated y, ``-inf`` for those using a masked active entry;
    float64 ``(batch..., count)``."""
    values, every = objectives(structure, scores)
    event_shape = structure.event_shape(scores)
    active = structure.active_mask(event_shape, scores.device)
    forbidden = ~mask if active is None else ~mask & active
    batch = scores.shape[: scores.dim() - len(event_shape)]
    flat = forbidden.reshape(*batch, math.prod(event_shape)).double()
    uses = (flat @ every.T) > 0
    return values.masked_fill(uses, -math.inf)
