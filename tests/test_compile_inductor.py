"""``select`` compiled by the default inductor backend (code generation) matches eager.

With ``fallback_random`` inductor draws torch's eager random numbers, so the compiled forward
and backward of a random estimator must equal eager autograd under the same seed. One case:
inductor compiles C++ kernels, seconds per graph.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from func_cases import FUNC_CASES, chooser, forward_backward, scores_and_weights

# torch 2.13's dynamo warns about instantiating any autograd.Function it traces (its own doing);
# inductor's CPU backend imports torch.jit.script_method, deprecated in torch 2.13.
pytestmark = [
    pytest.mark.usefixtures("fresh_dynamo_without_validation"),
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning"),
]


def test_inductor_compiled_select_matches_eager() -> None:
    estimator = "st-gumbel"
    case = FUNC_CASES[0]
    scores, weights = scores_and_weights(case, 3, dtype=torch.float32)
    choose = chooser(case, estimator)
    with torch._inductor.config.patch(fallback_random=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inductor's notes on the CPU backend
        compiled = torch.compile(choose, fullgraph=True)
        x, gradient = forward_backward(compiled, scores, weights, seed=4)
    x_eager, gradient_eager = forward_backward(choose, scores, weights, seed=4)
    assert torch.equal(x, x_eager)
    torch.testing.assert_close(gradient, gradient_eager, atol=1e-5, rtol=1e-5)
