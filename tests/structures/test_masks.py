"""Masks on every structure: ``argmax``, ``relax`` and ``log_partition`` with ``mask=`` / ``-inf``.

The oracle is brute force over ``structure.enumerate`` restricted to the allowed solutions
(those using no masked entry): the best one for argmax, the log-sum-exp for log_partition and
the Gibbs marginals for relax (where relax is the Gibbs marginals: OneHot, Subset and the
trees). Masked entries must get exactly zero mass and zero gradient (autograd), a mask leaving
no solution is a ValueError naming the batch entries, and bad masks are TypeError/ValueError.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset, validation
from pickgrad.structures import Solver
from pickgrad.structures.base import Structure


def _top2(scores: Tensor) -> Tensor:
    index = scores.topk(2, dim=-1).indices
    return torch.zeros_like(scores).scatter_(-1, index, 1.0)


CASES: list[tuple[str, Structure, tuple[int, ...]]] = [
    ("onehot", OneHot(), (4, 5)),
    ("onehot-slots", OneHot(), (2, 2, 3)),
    ("subset-1", Subset(1), (4, 5)),
    ("subset-2", Subset(2), (4, 5)),
    ("subset-3", Subset(3), (4, 5)),
    ("subset-4", Subset(4), (4, 6)),
    ("subset-n", Subset(4), (4, 4)),
    ("permutation", Permutation(), (4, 3, 3)),
    ("permutation-rect", Permutation(), (4, 2, 4)),
    ("spanning-tree", SpanningTree(), (4, 4, 4)),
    ("spanning-tree-edges", SpanningTree(edge_list=True), (4, 6)),
    ("arborescence", Arborescence(), (4, 4, 4)),
    ("arborescence-root-2", Arborescence(root=2), (4, 4, 4)),
]
GIBBS = {
    "onehot",
    "onehot-slots",
    "subset-1",
    "subset-2",
    "subset-3",
    "subset-4",
    "subset-n",
    "spanning-tree",
    "spanning-tree-edges",
    "arborescence",
    "arborescence-root-2",
}


def _masked_totals(structure: Structure, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Every solution ``(C, *event)`` and its total ``(C, *batch)`` under -inf scores."""
    event = structure.event_shape(scores)
    solutions = structure.enumerate(event, dtype=scores.dtype)
    view = solutions.reshape(solutions.shape[0], *([1] * (scores.dim() - len(event))), *event)
    used = torch.where(view != 0, scores.unsqueeze(0), torch.zeros((), dtype=scores.dtype))
    active = structure.active_mask(event, scores.device)
    if active is not None:
        used = torch.where(active, used, torch.zeros((), dtype=scores.dtype))
    return view, used.sum(dim=tuple(range(-len(event), 0)))


def _draw(structure: Structure, shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=gen, dtype=torch.float64)
    keep = structure.argmax(torch.randn(shape, generator=gen, dtype=torch.float64)).bool()
    return scores, (torch.rand(shape, generator=gen) < 0.55) | keep


@pytest.mark.parametrize(("name", "structure", "shape"), CASES, ids=[c[0] for c in CASES])
def test_against_brute_force_over_allowed_solutions(
    name: str, structure: Structure, shape: tuple[int, ...]
) -> None:
    for seed in range(4):
        scores, mask = _draw(structure, shape, seed)
        masked = scores.masked_fill(~mask, -math.inf)
        solutions, totals = _masked_totals(structure, masked)
        x = structure.argmax(scores, mask=mask)
        assert torch.equal(x, structure.argmax(masked))
        _, best = _masked_totals(structure, masked)
        chosen = torch.where(x != 0, masked, torch.zeros((), dtype=masked.dtype))
        active = structure.active_mask(structure.event_shape(scores), scores.device)
        if active is not None:
            chosen = torch.where(active, chosen, torch.zeros((), dtype=masked.dtype))
        value = chosen.sum(dim=tuple(range(-structure.event_dims, 0)))
        torch.testing.assert_close(value, best.amax(0))
        leaf = scores.clone().requires_grad_()
        relaxed = structure.relax(leaf, tau=0.7, mask=mask)
        on_masked = relaxed[~mask & _active(structure, scores).expand(shape)]
        assert bool((on_masked == 0).all()), "relaxed mass on a masked entry"
        assert bool(torch.isfinite(relaxed).all())
        if name in GIBBS:
            probs = torch.softmax(totals / 0.7, dim=0)
            marginals = probs.reshape(*probs.shape, *[1] * structure.event_dims) * solutions
            expected = marginals.sum(0)
            if active is not None:
                expected = expected * active
                relaxed_cmp = relaxed * active
            else:
                relaxed_cmp = relaxed
            torch.testing.assert_close(relaxed_cmp, expected, atol=1e-7, rtol=1e-7)
            log_z = structure.log_partition(leaf, tau=0.7, mask=mask)
            torch.testing.assert_close(log_z, torch.logsumexp(totals / 0.7, 0))
            (log_z.sum() + (relaxed * torch.randn_like(relaxed)).sum()).backward()
        else:
            (relaxed * torch.randn_like(relaxed)).sum().backward()
        assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
        assert bool((leaf.grad[~mask] == 0).all()), "gradient on a masked entry"


def _active(structure: Structure, scores: Tensor) -> Tensor:
    active = structure.active_mask(structure.event_shape(scores), scores.device)
    return torch.ones((), dtype=torch.bool) if active is None else active


@pytest.mark.parametrize(("name", "structure", "shape"), CASES, ids=[c[0] for c in CASES])
def test_minus_inf_scores_get_zero_gradient_without_mask(
    name: str, structure: Structure, shape: tuple[int, ...]
) -> None:
    scores, mask = _draw(structure, shape, 11)
    leaf = scores.masked_fill(~mask, -math.inf).requires_grad_()
    out = structure.relax(leaf, tau=0.5)
    loss = (out * torch.randn_like(out)).sum()
    if structure.supports("log_partition"):
        loss = loss + structure.log_partition(leaf, tau=0.5).sum()
    loss.backward()
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert bool((leaf.grad[~mask] == 0).all())


INFEASIBLE = [
    ("onehot", OneHot(), torch.tensor([[True, False], [False, False]]), r"\(1,\)"),
    (
        "subset",
        Subset(2),
        torch.tensor([[True, True, False], [True, False, False]]),
        r"\(1,\) \(fewer than k=2 allowed items\)",
    ),
    (
        "permutation",
        Permutation(),
        torch.tensor([[[True, False], [True, False]], [[True, False], [False, True]]]),
        r"\(0,\) \(no matching",
    ),
    (
        "spanning-tree",
        SpanningTree(),
        torch.tensor([[[False, True, False], [False, False, False], [False, False, False]]]),
        r"\(0,\) \(the allowed edges hold no tree",
    ),
    (
        "arborescence",
        Arborescence(),
        torch.tensor([[[False, True, False], [False, False, False], [False, False, False]]]),
        r"\(0,\) \(the allowed edges hold no tree",
    ),
]


@pytest.mark.parametrize(
    ("name", "structure", "mask", "where"), INFEASIBLE, ids=[c[0] for c in INFEASIBLE]
)
def test_a_mask_with_no_solution_is_a_value_error(
    name: str, structure: Structure, mask: Tensor, where: str
) -> None:
    scores = torch.zeros(mask.shape)
    for method in (structure.argmax, structure.relax):
        with pytest.raises(ValueError, match=r"mask leaves no feasible solution .*" + where):
            method(scores, mask=mask)
    with pytest.raises(ValueError, match=r"scores leaves no feasible solution"):
        structure.argmax(scores.masked_fill(~mask, -math.inf))
    with validation(False):  # a value check only
        structure.argmax(scores, mask=mask)


def test_tree_masks_combine_with_lengths() -> None:
    tree = SpanningTree()
    scores = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([3, 4])
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 1] = False  # graph 0 (3 nodes) keeps the edges (0, 2) and (1, 2)
    x = tree.argmax(scores, mask=mask, lengths=lengths)
    assert x[0, 0, 1] == 0 and x[0, :3, :3].sum() == 4
    marginals = tree.relax(scores, mask=mask, lengths=lengths)
    torch.testing.assert_close(marginals[0, 0, 2], torch.tensor(1.0, dtype=torch.float64))
    assert marginals[0, 0, 1] == 0
    mask[0, 0, 2] = False  # node 0 of graph 0 is cut off; graph 1 is fine
    with pytest.raises(ValueError, match=r"at 1 batch entry: \(0,\)"):
        tree.argmax(scores, mask=mask, lengths=lengths)


def test_solver_structure_takes_a_mask() -> None:
    solver = Solver(_top2, event_dims=1)
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    mask = torch.tensor([False, True, True, True])
    assert solver.argmax(scores, mask=mask).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_bad_masks_name_mask() -> None:
    scores = torch.zeros(2, 3)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        OneHot().argmax(scores, mask=torch.ones(2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not broadcast"):
        Subset(1).relax(scores, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a bool torch\.Tensor"):
        SpanningTree().argmax(torch.zeros(3, 3), mask="all")
    with pytest.raises(TypeError, match=r"scores must be a torch\.Tensor"):
        OneHot().argmax([1.0], mask=torch.ones(1, dtype=torch.bool))


def test_mask_broadcasts_over_the_batch_and_keeps_half_dtypes() -> None:
    scores = torch.randn(5, 4).to(torch.float16)
    mask = torch.tensor([True, False, True, False])
    out = OneHot().relax(scores, mask=mask)
    assert out.dtype == torch.float16 and bool((out[:, ~mask] == 0).all())
    torch.testing.assert_close(out.float().sum(-1), torch.ones(5), atol=1e-3, rtol=0)
    assert Subset(2).argmax(scores, mask=mask)[:, mask].eq(1).all()


REGULARIZED = [
    (OneHot(), 6, "entropy"),
    (OneHot(), 6, "sparsemax"),
    (Subset(2), 7, "entropy"),
    (Subset(4), 7, "entropy"),
    (Subset(2), 7, "binary-entropy"),
    (Subset(4), 7, "binary-entropy"),
    (Subset(2), 7, "euclidean"),
    (Subset(4), 7, "euclidean"),
    (Subset(12), 30, "entropy"),  # the log-space programme (no column path at this size)
    (Subset(18), 30, "entropy"),  # its complement
]


@pytest.mark.parametrize(("structure", "n", "regularizer"), REGULARIZED)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_relax_is_the_relax_of_the_allowed_items(
    structure: Structure, n: int, regularizer: str, dtype: torch.dtype
) -> None:
    # Masking items is removing them: every regularizer's relaxation of the masked row equals
    # its relaxation of the allowed items alone, and masked items get exactly 0 and no gradient.
    gen = torch.Generator().manual_seed(n)
    for _ in range(3):
        scores = torch.randn(n, generator=gen, dtype=dtype) * 2
        mask = torch.rand(n, generator=gen) < 0.6
        mask[: n // 2 + 1] = True  # enough allowed items for every k here
        mask = mask[torch.randperm(n, generator=gen)]
        leaf = scores.clone().requires_grad_()
        out = structure.relax(leaf, tau=0.5, mask=mask, regularizer=regularizer)
        alone = structure.relax(scores[mask], tau=0.5, regularizer=regularizer)
        tolerance = 1e-9 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(out[mask], alone, atol=tolerance, rtol=tolerance)
        assert bool((out[~mask] == 0).all())
        (out * torch.randn(n, generator=gen, dtype=dtype)).sum().backward()
        assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
        assert bool((leaf.grad[~mask] == 0).all())


@pytest.mark.parametrize("k", [12, 18])
def test_masked_subset_log_partition_is_that_of_the_allowed_items(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    scores = torch.randn(30, generator=gen, dtype=torch.float64)
    mask = torch.ones(30, dtype=torch.bool)
    mask[torch.randperm(30, generator=gen)[:6]] = False
    torch.testing.assert_close(
        Subset(k).log_partition(scores, tau=0.3, mask=mask),
        Subset(k).log_partition(scores[mask], tau=0.3),
    )


def test_exactly_k_allowed_items_is_the_one_subset() -> None:
    scores = torch.tensor([[0.3, -2.0, 1.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True, False, False])
    for k_structure in (Subset(2),):
        out = k_structure.relax(scores, mask=mask)
        torch.testing.assert_close(out, mask.to(out.dtype)[None])
        log_z = k_structure.log_partition(scores, mask=mask)
        torch.testing.assert_close(log_z, torch.tensor([1.3], dtype=torch.float64))
        (out.sum() + log_z.sum()).backward()
        assert scores.grad is not None and bool((scores.grad[0, ~mask] == 0).all())


@pytest.mark.parametrize(("structure", "shape"), [(OneHot(), (3, 5)), (Subset(2), (3, 5))])
def test_conditional_gumbel_draws_minus_inf_for_masked_entries(
    structure: Structure, shape: tuple[int, ...]
) -> None:
    scores, mask = _draw(structure, shape, 4)
    masked = scores.masked_fill(~mask, -math.inf)
    x = structure.argmax(masked)
    noise = structure.conditional_gumbel(masked, x, 50, generator=torch.Generator().manual_seed(0))
    assert bool((noise[:, ~mask] == -math.inf).all())
    assert bool(torch.isfinite(noise[:, mask]).all())
    assert bool((structure.argmax(masked + noise) == x).all())
