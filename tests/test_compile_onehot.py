"""Every estimator's ``select`` under ``torch.compile(fullgraph=True)`` with validation off.

Forward and backward of the compiled ``select`` are compared with eager autograd under the same
seed. Most pairs use the ``eager`` backend (dynamo traces one graph, fails on any graph break,
and runs it without code generation: fast enough for a test); the default inductor backend
is checked in ``test_compile_inductor.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import pickgrad
from func_cases import ESTIMATOR_OPTIONS, FuncCase, chooser, pair_id, pairs, scores_and_weights

CASE = "onehot"  # test_compile_subset.py and test_compile_trees.py run the others

# torch 2.13's dynamo warns about instantiating any autograd.Function it traces (its own
# doing), and that it traces through functools.lru_cache (the trees' cached index tables: the
# traced graph recomputes them, with the same values).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`"),
]


@pytest.fixture(autouse=True)
def _no_validation_fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    with pickgrad.validation(False):
        yield
    torch._dynamo.reset()


def _forward_backward(
    choose: object, scores: torch.Tensor, weights: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = scores.clone().requires_grad_()
    torch.manual_seed(seed)
    x = choose(leaf)  # type: ignore[operator]
    (gradient,) = torch.autograd.grad((x * weights).sum(), leaf)
    return x.detach(), gradient


@pytest.mark.parametrize("pair", [p for p in pairs("compile") if p[0].id == CASE], ids=pair_id)
def test_compiled_select_is_one_graph_and_matches_eager(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 0)
    choose = chooser(case, estimator)
    compiled = torch.compile(choose, fullgraph=True, backend="eager")
    x, gradient = _forward_backward(compiled, scores, weights, seed=1)
    x_eager, gradient_eager = _forward_backward(choose, scores, weights, seed=1)
    torch.testing.assert_close(x, x_eager, atol=1e-12, rtol=1e-10)
    if pickgrad.get_estimator(estimator, **ESTIMATOR_OPTIONS[estimator]).hard:
        assert torch.equal(x, x_eager)  # the same hard solution
    torch.testing.assert_close(gradient, gradient_eager, atol=1e-12, rtol=1e-10)
