"""``lengths=`` through ``pickgrad.select`` and ``pickgrad.estimate``, for every estimator.

Oracles:

* deterministic estimators (no noise): each graph cut to its length and run unbatched gives the
  same values and gradients;
* every estimator, with the same generator seed: the full-size computation in which each padded
  node is a forced leaf (mask: padded node p's only edge/arc comes from p - 1). Every tree then
  holds the forced chain, so the law of the real part is that of the graph cut to its length,
  and the noise (drawn over the same full shape) is the same tensor: the real entries agree
  exactly (up to rounding of the matrix-tree sums);
* padded entries are exactly 0 in ``x`` and get exactly zero gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import pickgrad
from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset
from pickgrad.structures import matrix_to_edges
from pickgrad.structures.base import Structure

LENGTHS = torch.tensor([5, 3, 2, 4])
N = 5
DETERMINISTIC = ("st", "st-relaxed", "relaxed", "blackbox")

STRUCTURES = {
    "spanning-tree": SpanningTree,
    "arborescence": Arborescence,
    "spanning-tree-edges": lambda: SpanningTree(edge_list=True),
}


def cases() -> list[tuple[str, str]]:
    return [
        (key, name)
        for key, factory in STRUCTURES.items()
        for name in pickgrad.available_estimators(factory())
    ]


def _edge_list(structure: Structure) -> bool:
    return bool(getattr(structure, "edge_list", False))


def _shape(structure: Structure, matrix: Tensor) -> Tensor:
    """A ``(*batch, n, n)`` tensor in the structure's own form."""
    return matrix_to_edges(matrix) if _edge_list(structure) else matrix


def _real_pairs(lengths: Tensor, n: int) -> Tensor:
    nodes = torch.arange(n) < lengths[:, None]
    return nodes[:, :, None] & nodes[:, None, :]


def _forced_leaf_mask(lengths: Tensor, n: int) -> Tensor:
    """Real pairs, plus the arc/edge p - 1 -> p for each padded node p (both directions)."""
    allowed = _real_pairs(lengths, n).clone()
    for b, length in enumerate(lengths.tolist()):
        for p in range(length, n):
            allowed[b, p - 1, p] = allowed[b, p, p - 1] = True
    return allowed


def _inputs(structure: Structure, seed: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(LENGTHS), N, N, generator=gen, dtype=torch.float64)
    weights = torch.randn(len(LENGTHS), N, N, generator=gen, dtype=torch.float64)
    return _shape(structure, scores), _shape(structure, weights)


def _loss(weights: Tensor, event_dims: int, scale: float = 1.0):  # type: ignore[no-untyped-def]
    dims = tuple(range(-event_dims, 0))
    return lambda x: scale * ((x * weights) ** 2 + x * weights).sum(dim=dims)


OPTIONS = {"gumbel-rao": {"n_draws": 3}, "perturbed": {"n_perturbations": 8}}


def _run(
    structure: Structure,
    name: str,
    scores: Tensor,
    weights: Tensor,
    *,
    seed: int,
    scale: float = 1.0,
    **kwargs: object,
) -> tuple[Tensor, Tensor, Tensor]:
    """(surrogate value, gradient, the scores' leaf) of ``estimate`` on ``scale * loss``."""
    leaf = scores.detach().clone().requires_grad_(True)
    loss_fn = _loss(weights, structure.event_dims, scale)
    options = {**OPTIONS.get(name, {}), **kwargs}
    surrogate = pickgrad.estimate(
        loss_fn,
        leaf,
        structure,
        name,
        n_samples=3,
        tau=0.7,
        generator=torch.Generator().manual_seed(seed),
        **options,
    )
    (grad,) = torch.autograd.grad(surrogate, leaf)
    return surrogate.detach(), grad, leaf


@pytest.mark.parametrize(("key", "name"), cases())
def test_padded_entries_exactly_zero(key: str, name: str) -> None:
    structure = STRUCTURES[key]()
    scores, weights = _inputs(structure)
    padded = ~_shape(structure, _real_pairs(LENGTHS, N).double()).bool()
    _, grad, _ = _run(structure, name, scores, weights, seed=5, lengths=LENGTHS)
    assert bool((grad[padded] == 0).all())
    assert bool(grad[~padded].abs().sum() > 0)
    if name in ("reinforce",):
        return
    leaf = scores.detach().clone().requires_grad_(True)
    x = pickgrad.select(
        leaf,
        structure,
        name,
        tau=0.7,
        generator=torch.Generator().manual_seed(5),
        lengths=LENGTHS,
        **OPTIONS.get(name, {}),
    )
    assert bool((x.detach()[padded] == 0).all())
    (x * weights).sum().backward()
    assert leaf.grad is not None and bool((leaf.grad[padded] == 0).all())


@pytest.mark.parametrize(("key", "name"), cases())
def test_equals_forced_leaves_same_seed(key: str, name: str) -> None:
    structure = STRUCTURES[key]()
    scores, weights = _inputs(structure)
    real = _shape(structure, _real_pairs(LENGTHS, N).double()).bool()
    weights = torch.where(real, weights, torch.zeros((), dtype=weights.dtype))
    mask = _shape(structure, _forced_leaf_mask(LENGTHS, N).double()).bool()
    value, grad, _ = _run(structure, name, scores, weights, seed=11, lengths=LENGTHS)
    value_ref, grad_ref, _ = _run(structure, name, scores, weights, seed=11, mask=mask)
    torch.testing.assert_close(value, value_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad[real], grad_ref[real], rtol=1e-8, atol=1e-9)
    if name == "reinforce":
        return
    xs = []
    for kwargs in ({"lengths": LENGTHS}, {"mask": mask}):
        xs.append(
            pickgrad.select(
                scores,
                structure,
                name,
                tau=0.7,
                generator=torch.Generator().manual_seed(2),
                **OPTIONS.get(name, {}),
                **kwargs,
            )
        )
    torch.testing.assert_close(xs[0][real], xs[1][real], rtol=1e-9, atol=1e-9)


def _cut(tensor: Tensor, length: int, structure: Structure) -> Tensor:
    if _edge_list(structure):
        raise AssertionError("cut in matrix form")
    return tensor[:length, :length]


@pytest.mark.parametrize("key", ["spanning-tree", "arborescence"])
@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("masked", [False, True])
def test_deterministic_equal_cut_graphs(key: str, name: str, masked: bool) -> None:
    structure = STRUCTURES[key]()
    scores, weights = _inputs(structure)
    mask = None
    if masked:  # drop edge/arc {0, 2} of every graph (all stay feasible at these lengths)
        mask = torch.ones(N, N, dtype=torch.bool)
        mask[0, 2] = mask[2, 0] = False
        mask = mask.expand(len(LENGTHS), N, N)
    extra = {} if mask is None else {"mask": mask}
    value, grad, _ = _run(structure, name, scores, weights, seed=0, lengths=LENGTHS, **extra)
    x = pickgrad.select(scores, structure, name, tau=0.7, lengths=LENGTHS, **extra)
    losses = []
    for b, length in enumerate(LENGTHS.tolist()):
        cut_extra = {} if mask is None else {"mask": _cut(mask[b], length, structure)}
        cut_scores = _cut(scores[b], length, structure)
        cut_weights = _cut(weights[b], length, structure)
        # The batch's surrogate is a mean over graphs: the cut graph's loss is scaled to match
        # (blackbox's interpolation is not linear in the incoming gradient's scale).
        v, g, _ = _run(
            structure, name, cut_scores, cut_weights, seed=0, scale=1 / len(LENGTHS), **cut_extra
        )
        losses.append(v)
        torch.testing.assert_close(grad[b, :length, :length], g, rtol=1e-9, atol=1e-10)
        cut_x = pickgrad.select(cut_scores, structure, name, tau=0.7, **cut_extra)
        torch.testing.assert_close(x[b, :length, :length], cut_x, rtol=1e-9, atol=1e-10)
        assert bool((x[b, length:] == 0).all()) and bool((x[b, :, length:] == 0).all())
    torch.testing.assert_close(value, torch.stack(losses).sum(), rtol=1e-9, atol=1e-10)


def test_length_one_graph() -> None:
    """A graph of one node has the empty tree: x is 0 and so is its gradient."""
    scores = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([1, 4])
    x = pickgrad.select(scores, SpanningTree(), "st-gumbel", lengths=lengths)
    assert bool((x[0] == 0).all()) and float(x[1].detach().sum()) == 6.0
    (x * torch.randn(2, 4, 4, dtype=torch.float64)).sum().backward()
    assert scores.grad is not None and bool((scores.grad[0] == 0).all())


@pytest.mark.parametrize(
    ("structure", "scores"),
    [
        (OneHot(), torch.zeros(3, 4)),
        (Subset(2), torch.zeros(3, 4)),
        (Permutation(), torch.zeros(3, 4, 4)),
    ],
)
def test_structures_without_lengths_refuse_it(structure: Structure, scores: Tensor) -> None:
    with pytest.raises(TypeError, match=r"SpanningTree, Arborescence\).*mask="):
        pickgrad.select(scores, structure, "st", lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths="):
        pickgrad.estimate(lambda x: x.sum(-1), scores, structure, "st", lengths=[1, 2, 3])


def test_bad_lengths_named() -> None:
    scores = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="batch shape"):
        pickgrad.select(scores, SpanningTree(), lengths=torch.tensor([2, 3]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, n=4\]"):
        pickgrad.select(scores, SpanningTree(), lengths=torch.tensor([2, 3, 5]))
    with pytest.raises(TypeError, match="integer dtype"):
        pickgrad.select(scores, SpanningTree(), lengths=torch.tensor([2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="root=2"):
        pickgrad.select(scores, Arborescence(root=2), lengths=torch.tensor([2, 3, 4]))


def test_mask_infeasible_within_lengths_is_named() -> None:
    """Feasibility is decided on the first lengths[b] nodes: graph 1 loses its only edge."""
    scores = torch.zeros(2, 4, 4)
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[1, 0, 1] = False
    with pytest.raises(ValueError, match=r"mask leaves no feasible solution .* \(1,\)"):
        pickgrad.select(scores, SpanningTree(), "st", mask=mask, lengths=torch.tensor([4, 2]))
    # Without lengths the same mask leaves graph 1 trees (through nodes 2 and 3).
    pickgrad.select(scores, SpanningTree(), "st", mask=mask)


def test_padded_minus_inf_scores_are_fine() -> None:
    """Padded entries are never read: -inf there (a common padding) changes nothing."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 4, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([4, 3])
    padded = scores.clone()
    padded[1, 3, :] = padded[1, :, 3] = -torch.inf
    for name in ("st-gumbel", "gumbel-rao", "relaxed"):
        a = pickgrad.select(scores, SpanningTree(), name, lengths=lengths,
                            generator=torch.Generator().manual_seed(1))  # fmt: skip
        b = pickgrad.select(padded, SpanningTree(), name, lengths=lengths,
                            generator=torch.Generator().manual_seed(1))  # fmt: skip
        torch.testing.assert_close(a, b)


def test_gradient_probe_forwards_lengths() -> None:
    from pickgrad.diagnostics.monitor import GradientProbe

    scores = torch.randn(3, 4, 4, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3])
    probe = GradientProbe(
        scores, lambda x: x.sum((-1, -2)), SpanningTree(), "st-gumbel", options={"lengths": lengths}
    )
    assert probe.options["lengths"] is lengths
