"""``select`` compiled by the default inductor backend (code generation) matches eager.

With ``fallback_random`` inductor draws torch's eager random numbers, so the compiled forward
and backward of a random estimator must equal eager autograd under the same seed. One case:
inductor compiles C++ kernels, seconds per graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

import pickgrad
from func_cases import FUNC_CASES, chooser, scores_and_weights

# torch 2.13's dynamo warns about instantiating any autograd.Function it traces (its own doing);
# inductor's CPU backend imports torch.jit.script_method, deprecated in torch 2.13.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning"),
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


def test_inductor_compiled_select_matches_eager() -> None:
    estimator = "st-gumbel"
    case = FUNC_CASES[0]
    scores, weights = scores_and_weights(case, 3, dtype=torch.float32)
    choose = chooser(case, estimator)
    with torch._inductor.config.patch(fallback_random=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inductor's notes on the CPU backend
        compiled = torch.compile(choose, fullgraph=True)
        x, gradient = _forward_backward(compiled, scores, weights, seed=4)
    x_eager, gradient_eager = _forward_backward(choose, scores, weights, seed=4)
    assert torch.equal(x, x_eager)
    torch.testing.assert_close(gradient, gradient_eager, atol=1e-5, rtol=1e-5)
