"""Every registered estimator on both tree structures: valid hard trees, gradients only where scored."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_arborescence import assert_valid_arborescences
from test_spanning_tree import assert_valid_trees

import pickgrad
from pickgrad import Arborescence, SpanningTree
from pickgrad.estimators.base import get_estimator
from pickgrad.structures.base import Structure

N = 5
TREES: dict[str, tuple[Structure, Callable[[torch.Tensor], None]]] = {
    "SpanningTree": (SpanningTree(), lambda x: assert_valid_trees(x, N)),
    "Arborescence": (Arborescence(root=1), lambda x: assert_valid_arborescences(x, 1)),
}


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("name", pickgrad.available_estimators())
def test_every_estimator_runs(tree: str, name: str, generator: torch.Generator) -> None:
    structure, assert_valid = TREES[tree]
    scores = torch.randn(3, N, N, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.randn(N, N, dtype=torch.float64, generator=generator)
    estimator = get_estimator(name)
    if estimator.missing_capabilities(structure):
        with pytest.raises(NotImplementedError, match=f"{name}.*conditional_gumbel.*{tree}"):
            pickgrad.select(scores, structure, name)
        return
    if estimator.needs_loss:
        surrogate = pickgrad.estimate(
            lambda x: (x * target).sum((-1, -2)),
            scores,
            structure,
            name,
            n_samples=4,
            generator=generator,
        )
        surrogate.backward()
    else:
        x = pickgrad.select(scores, structure, name, tau=0.5, generator=generator)
        assert x.shape == scores.shape and x.dtype == scores.dtype
        if estimator.hard:
            assert_valid(x.detach())
        (x * target).sum().backward()
    grad = scores.grad
    assert grad is not None and bool(torch.isfinite(grad).all())
    assert bool((grad[:, ~structure.active_mask((N, N))] == 0).all()), "ignored entries get none"
    assert bool(grad.abs().sum() > 0)
