"""The (structure, estimator) table of the torch.compile / torch.func tests (issue 14.2).

Each entry says which transforms ``select`` works under with validation off; a pair missing from
a list is not claimed (docs/compile.md's table gives the reason). The tests in
``test_compile_estimators.py`` and ``test_func_estimators.py`` check every listed pair against
eager autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import pickgrad
from pickgrad import Arborescence, OneHot, SpanningTree, Subset
from pickgrad.structures.base import Structure

#: Every estimator with a ``select``, with small options so that the tests stay fast.
ESTIMATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "st": {},
    "st-relaxed": {},
    "relaxed": {},
    "gumbel-relaxed": {},
    "st-gumbel": {},
    "gumbel-rao": {"n_draws": 3},
    "perturbed": {"n_perturbations": 4},
    "imle": {"lambda_": 1.0, "n_perturbations": 2},
    "blackbox": {"lambda_": 1.0},
}
ALL = tuple(ESTIMATOR_OPTIONS)


NO_RAO = tuple(name for name in ALL if name != "gumbel-rao")


@dataclass(frozen=True)
class FuncCase:
    id: str
    structure: Structure
    shape: tuple[int, ...]
    compile: tuple[str, ...]
    vmap: tuple[str, ...]
    grad: tuple[str, ...]
    jacrev: tuple[str, ...]


FUNC_CASES = [
    FuncCase("onehot", OneHot(), (3, 5), ALL, ALL, ALL, ALL),
    FuncCase("subset", Subset(2), (3, 5), ALL, ALL, ALL, ALL),
    # Arborescence has no gumbel-rao at all (no conditional sampler); docs/compile.md.
    FuncCase("spanning-tree", SpanningTree(), (2, 4, 4), ALL, ALL, ALL, ALL),
    FuncCase("arborescence", Arborescence(), (2, 4, 4), NO_RAO, NO_RAO, NO_RAO, NO_RAO),
]


def pairs(transform: str) -> list[tuple[FuncCase, str]]:
    """The ``(case, estimator)`` pairs claimed to work under ``transform``."""
    return [(case, name) for case in FUNC_CASES for name in getattr(case, transform)]


def pair_id(pair: tuple[FuncCase, str]) -> str:
    return f"{pair[0].id}-{pair[1]}"


def chooser(case: FuncCase, estimator: str) -> Any:
    """``scores -> select(scores, structure, estimator, tau=0.5, **small options)``."""
    options = ESTIMATOR_OPTIONS[estimator]

    def choose(scores: torch.Tensor) -> torch.Tensor:
        return pickgrad.select(scores, case.structure, estimator, tau=0.5, **options)

    return choose


def scores_and_weights(
    case: FuncCase, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct scores (no ties) and the weights of a linear loss, of ``case.shape``."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(case.shape, dtype=dtype, generator=generator)
    weights = torch.randn(case.shape, dtype=dtype, generator=generator)
    return scores, weights


def forward_backward(
    choose: Any, scores: torch.Tensor, weights: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``choose(scores)`` and the gradient of the linear loss ``<x, weights>``, noise seeded."""
    leaf = scores.clone().requires_grad_()
    torch.manual_seed(seed)
    x = choose(leaf)
    (gradient,) = torch.autograd.grad((x * weights).sum(), leaf)
    return x.detach(), gradient


def check_compiled_matches_eager(case: FuncCase, estimator: str) -> None:
    """``select`` compiled in one graph (``fullgraph=True``, eager backend) gives eager's ``x``
    (the same hard solution for hard estimators) and gradient under the same seed."""
    scores, weights = scores_and_weights(case, 0)
    choose = chooser(case, estimator)
    compiled = torch.compile(choose, fullgraph=True, backend="eager")
    x, gradient = forward_backward(compiled, scores, weights, seed=1)
    x_eager, gradient_eager = forward_backward(choose, scores, weights, seed=1)
    torch.testing.assert_close(x, x_eager, atol=1e-12, rtol=1e-10)
    if pickgrad.get_estimator(estimator, **ESTIMATOR_OPTIONS[estimator]).hard:
        assert torch.equal(x, x_eager)  # the same hard solution
    torch.testing.assert_close(gradient, gradient_eager, atol=1e-12, rtol=1e-10)
