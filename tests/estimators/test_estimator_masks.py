"""Masks through every estimator: ``select`` / ``estimate`` with ``mask=`` or ``-inf`` scores.

For every structure and every estimator it supports: hard outputs never use a masked entry,
relaxed outputs give them exactly zero mass, and the gradient is finite everywhere and exactly
zero on masked entries; ``mask=`` and ``-inf`` scores give the same samples and gradients from
the same seed; estimator objects take ``mask=`` too.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import pickgrad
from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset
from pickgrad.structures import Solver
from pickgrad.structures.base import Structure


def _top2(scores: Tensor) -> Tensor:
    # A plain user solver (a 2-subset): the two largest entries of the last dimension.
    index = scores.topk(2, dim=-1).indices
    return torch.zeros_like(scores).scatter_(-1, index, 1.0)


CASES: list[tuple[str, Structure, tuple[int, ...]]] = [
    ("onehot", OneHot(), (3, 5)),
    ("subset", Subset(2), (3, 5)),
    ("subset-complement", Subset(3), (2, 5)),
    ("permutation", Permutation(), (2, 3, 3)),
    ("permutation-rect", Permutation(), (2, 2, 4)),
    ("spanning-tree", SpanningTree(), (2, 4, 4)),
    ("spanning-tree-edges", SpanningTree(edge_list=True), (2, 6)),
    ("arborescence", Arborescence(), (2, 4, 4)),
    ("solver", Solver(_top2, event_dims=1), (3, 5)),
]


def _case(structure: Structure, shape: tuple[int, ...], seed: int) -> tuple[Tensor, Tensor]:
    """Scores and a feasible mask: random, but keeping one solution (the argmax of other
    random scores) allowed."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=gen, dtype=torch.float64)
    keep = structure.argmax(torch.randn(shape, generator=gen, dtype=torch.float64)).bool()
    mask = (torch.rand(shape, generator=gen) < 0.5) | keep
    return scores, mask


def _event_sum(structure: Structure, x: Tensor) -> Tensor:
    return x.sum(dim=tuple(range(-structure.event_dims, 0)))


def _weights(shape: tuple[int, ...]) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)


PAIRS = [
    (name, structure, shape, estimator)
    for name, structure, shape in CASES
    for estimator in pickgrad.available_estimators(structure)
]


def _run(structure: Structure, shape: tuple[int, ...], estimator: str, scores: Tensor, **kw):
    """(output or samples, gradient) of one estimator call, seeded."""
    weights = _weights(shape)
    leaf = scores.clone().requires_grad_()
    gen = torch.Generator().manual_seed(5)
    seen: list[Tensor] = []
    cls = pickgrad.estimators.base._REGISTRY[estimator]
    if cls.needs_loss:
        options = {"baseline": "rloo"} if estimator == "reinforce" else {}

        def loss_fn(x: Tensor) -> Tensor:
            seen.append(x.detach())
            return _event_sum(structure, x * weights)

        surrogate = pickgrad.estimate(
            loss_fn, leaf, structure, estimator, n_samples=3, generator=gen, **options, **kw
        )
        surrogate.backward()
        out = seen[0]
    else:
        out = pickgrad.select(leaf, structure, estimator, generator=gen, **kw)
        _event_sum(structure, out * weights).sum().backward()
        out = out.detach()
    assert leaf.grad is not None
    return out, leaf.grad


def _ids(pairs: list) -> list[str]:
    return [f"{name}-{estimator}" for name, _, _, estimator in pairs]


@pytest.mark.parametrize(("name", "structure", "shape", "estimator"), PAIRS, ids=_ids(PAIRS))
def test_masked_entries_unused_and_get_zero_gradient(
    name: str, structure: Structure, shape: tuple[int, ...], estimator: str
) -> None:
    for seed in range(3):
        scores, mask = _case(structure, shape, seed)
        # -inf scores, not mask= (whose masked_fill alone would zero the gradient there).
        out, grad = _run(structure, shape, estimator, scores.masked_fill(~mask, -math.inf))
        active = structure.active_mask(structure.event_shape(scores), scores.device)
        used = out != 0
        if active is not None:
            used = used & active
        assert not bool((used & ~mask).any()), f"{estimator} put mass on a masked entry"
        assert bool(torch.isfinite(out).all())
        assert bool(torch.isfinite(grad).all()), f"{estimator}: non-finite gradient"
        assert bool((grad[~mask] == 0).all()), f"{estimator}: gradient on a masked entry"


@pytest.mark.parametrize(("name", "structure", "shape", "estimator"), PAIRS, ids=_ids(PAIRS))
def test_mask_equals_minus_inf_scores(
    name: str, structure: Structure, shape: tuple[int, ...], estimator: str
) -> None:
    scores, mask = _case(structure, shape, 7)
    out_mask, grad_mask = _run(structure, shape, estimator, scores, mask=mask)
    out_inf, grad_inf = _run(structure, shape, estimator, scores.masked_fill(~mask, -math.inf))
    assert torch.equal(out_mask, out_inf)
    # The gradient of masked_fill at the masked entries is 0, as is -inf's own gradient.
    assert torch.allclose(grad_mask, grad_inf, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "structure", "shape"), [c for c in CASES if c[0] != "solver"])
def test_estimator_objects_take_mask(name: str, structure: Structure, shape: tuple[int, ...]):
    scores, mask = _case(structure, shape, 3)
    leaf = scores.clone().requires_grad_()
    x = pickgrad.StraightThrough().select(leaf, structure, tau=1.0, generator=None, mask=mask)
    assert not bool(((x != 0) & ~mask & _active(structure, scores)).any())
    _event_sum(structure, x * _weights(shape)).sum().backward()
    assert leaf.grad is not None and bool((leaf.grad[~mask] == 0).all())
    leaf.grad = None
    surrogate = pickgrad.Reinforce(baseline="rloo").estimate(
        lambda x: _event_sum(structure, x * _weights(shape)),
        leaf,
        structure,
        n_samples=4,
        tau=1.0,
        generator=torch.Generator().manual_seed(0),
        mask=mask,
    )
    surrogate.backward()
    assert bool(torch.isfinite(leaf.grad).all()) and bool((leaf.grad[~mask] == 0).all())


def _active(structure: Structure, scores: Tensor) -> Tensor:
    active = structure.active_mask(structure.event_shape(scores), scores.device)
    return torch.ones((), dtype=torch.bool) if active is None else active


def test_select_refuses_an_infeasible_mask_naming_the_entries() -> None:
    scores = torch.zeros(3, 4)
    mask = torch.tensor([[True, True, False, False], [True] * 4, [True, False, False, False]])
    with pytest.raises(
        ValueError,
        match=r"mask leaves no feasible solution of Subset\(k=2\) at "
        r"1 batch entry: \(2,\)",
    ):
        pickgrad.select(scores, Subset(2), "st", mask=mask)
    with pytest.raises(ValueError, match=r"at 1 batch entry: \(2,\)"):
        pickgrad.estimate(lambda x: x.sum(-1), scores, Subset(2), "reinforce", mask=mask)
    with pickgrad.validation(False):  # a value check: skipped, and no NaN either
        x = pickgrad.select(scores, Subset(2), "st", mask=mask)
    assert bool(torch.isfinite(x).all())


def test_select_checks_the_mask_type_and_shape() -> None:
    scores = torch.zeros(2, 4)
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        pickgrad.select(scores, OneHot(), "st", mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast"):
        pickgrad.select(scores, OneHot(), "st", mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"mask must be a bool torch\.Tensor"):
        pickgrad.estimate(lambda x: x.sum(-1), scores, OneHot(), "reinforce", mask=[True] * 4)


def test_a_broadcast_mask_masks_every_batch_entry() -> None:
    scores = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([False, True, True, False])
    x = pickgrad.select(scores, OneHot(), "st-gumbel", mask=mask)
    assert bool((x[:, ~mask] == 0).all()) and bool((x.sum(-1) == 1).all())


@pytest.mark.parametrize(("name", "structure", "shape"), [c for c in CASES if c[0] != "solver"])
def test_fenchel_young_loss_with_a_mask(name: str, structure: Structure, shape: tuple[int, ...]):
    scores, mask = _case(structure, shape, 2)
    target = structure.argmax(scores, mask=mask)
    leaf = scores.clone().requires_grad_()
    loss = pickgrad.fenchel_young_loss(
        leaf,
        target,
        structure,
        n_perturbations=8,
        generator=torch.Generator().manual_seed(0),
        mask=mask,
    )
    loss.backward()
    assert bool(torch.isfinite(loss.detach())) and float(loss.detach()) >= 0
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert bool((leaf.grad[~mask] == 0).all())
    # -inf scores: the same loss and gradient from the same seed
    other = scores.masked_fill(~mask, -math.inf).requires_grad_()
    same = pickgrad.fenchel_young_loss(
        other, target, structure, n_perturbations=8, generator=torch.Generator().manual_seed(0)
    )
    same.backward()
    torch.testing.assert_close(same, loss)
    assert other.grad is not None
    torch.testing.assert_close(other.grad, leaf.grad)


def test_fenchel_young_refuses_a_target_on_a_masked_entry() -> None:
    scores = torch.zeros(2, 3)
    mask = torch.tensor([True, True, False])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="target has mass on 1 masked entries"):
        pickgrad.fenchel_young_loss(scores, target, OneHot(), mask=mask)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pickgrad.fenchel_young_loss(scores, target, OneHot(), mask=mask, sigma=-1.0)


def test_straight_through_backward_is_the_identity_off_minus_inf() -> None:
    # Its backward is by design not the derivative of its (constant) forward, so no gradcheck:
    # the vector-Jacobian product is checked to be the identity, zeroed on -inf entries.
    from pickgrad.estimators.straight_through import _StraightThroughMasked

    hard = torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    objective = torch.tensor([[0.5, 2.0, -1.0, 0.25]], dtype=torch.float64, requires_grad=True)
    out = _StraightThroughMasked.apply(hard, objective)
    assert torch.equal(out, hard)
    upstream = torch.randn(1, 4, dtype=torch.float64)
    (vjp,) = torch.autograd.grad(out, objective, upstream)
    assert torch.equal(vjp, upstream)
    masked = torch.tensor([[0.5, 2.0, -math.inf, 0.25]], dtype=torch.float64, requires_grad=True)
    _StraightThroughMasked.apply(hard, masked).sum().backward()
    assert masked.grad is not None
    assert masked.grad.tolist() == [[1.0, 1.0, 0.0, 1.0]]


class _PlainOneHot(OneHot):
    """OneHot without its fused paths (a subclass redefining a solver gets the generic
    composition: the path taken under torch.compile and torch.func too)."""

    def _argmax(self, scores: Tensor) -> Tensor:
        return super()._argmax(scores)


@pytest.mark.parametrize("estimator", ["st-gumbel", "gumbel-rao", "gumbel-relaxed"])
def test_generic_gumbel_paths_handle_minus_inf(estimator: str) -> None:
    scores, mask = _case(OneHot(), (4, 6), 8)
    leaf = scores.masked_fill(~mask, -math.inf).requires_grad_()
    x = pickgrad.select(leaf, _PlainOneHot(), estimator, generator=torch.Generator().manual_seed(0))
    (x * _weights((4, 6))).sum().backward()
    assert bool((x[~mask] == 0).all())
    assert leaf.grad is not None and bool(torch.isfinite(leaf.grad).all())
    assert bool((leaf.grad[~mask] == 0).all())
