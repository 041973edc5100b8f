"""pickgrad._autograd.apply: a transform-ready Function applied eagerly through its classic twin."""

from __future__ import annotations

from typing import Any

import torch

from pickgrad._autograd import apply


class _Scale(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, factor: float) -> torch.Tensor:
        return x * factor

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.factor = inputs[1]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (output,) = ctx.saved_tensors
        assert output.shape == grad.shape
        return grad * (2 * ctx.factor), None  # not the true derivative: tells the paths apart


def test_eager_apply_has_the_functions_forward_backward_and_name() -> None:
    x = torch.randn(4, requires_grad=True)
    ours = apply(_Scale, x, 3.0)
    theirs = _Scale.apply(x, 3.0)
    assert torch.equal(ours, theirs)
    assert type(ours.grad_fn).__name__ == type(theirs.grad_fn).__name__ == "_ScaleBackward"
    (grad,) = torch.autograd.grad(ours.sum(), x)
    assert torch.equal(grad, torch.full((4,), 6.0))


def test_under_a_transform_the_function_itself_runs() -> None:
    x = torch.randn(3, 4)
    out = torch.func.vmap(lambda row: apply(_Scale, row, 2.0))(x)
    assert torch.equal(out, 2 * x)
    grad = torch.func.grad(lambda v: apply(_Scale, v, 2.0).sum())(x[0])
    assert torch.equal(grad, torch.full((4,), 4.0))
