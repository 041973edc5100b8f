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
RELAX_ONLY = ("relaxed", "gumbel-relaxed")  # no solver: only the relaxation


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
    FuncCase(
        "spanning-tree",
        SpanningTree(),
        (2, 4, 4),
        tuple(name for name in ALL if name != "gumbel-rao"),
        RELAX_ONLY,
        ALL,
        ("st", "perturbed"),
    ),
    FuncCase(
        "arborescence",
        Arborescence(),
        (2, 4, 4),
        RELAX_ONLY,
        RELAX_ONLY,
        tuple(name for name in ALL if name != "gumbel-rao"),  # no conditional_gumbel
        ("st", "perturbed"),
    ),
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
