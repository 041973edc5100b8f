"""*pick-the-five*: out of 8 items valued 0..10, exactly one worth 5, pick the 5.

Loss ``(picked value - 5) ** 2``; metric: the share of held-out examples where the selector's
mode picks the 5. An item's only feature is its value, scaled to ``(value - 5) / 5`` (D = 1), so
the network must learn a score that peaks in the middle of the range.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor

from pickgrad.nn import SlotSelector
from pickgrad.tasks.base import Task

__all__ = ["PickFive"]

_N_VALUES = 11  # item values 0..10
_TARGET = 5


class PickFive(Task):
    name: ClassVar[str] = "pick-the-five"
    metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    n_items: ClassVar[int] = 8
    n_slots: ClassVar[int] = 1
    item_dim: ClassVar[int] = 1

    def sample_values(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """Item values ``(B, 8)``: seven draws from {0..10} minus {5}, and one 5 at a random place."""
        others = torch.randint(0, _N_VALUES - 1, (batch_size, self.n_items), generator=generator)
        values = others + (others >= _TARGET).long()  # skip the 5
        position = torch.randint(0, self.n_items, (batch_size, 1), generator=generator)
        return values.scatter(1, position, _TARGET)

    @staticmethod
    def encode(values: Tensor) -> Tensor:
        return ((values.float() - _TARGET) / _TARGET)[..., None]

    @staticmethod
    def decode(items: Tensor) -> Tensor:
        return items[..., 0] * _TARGET + _TARGET

    def sample_items(self, batch_size: int, generator: torch.Generator) -> Tensor:
        return self.encode(self.sample_values(batch_size, generator))

    def loss_fn(self, items: Tensor) -> Callable[[Tensor], Tensor]:
        values = self.decode(items)  # (B, N)

        def loss(x: Tensor) -> Tensor:
            picked = (x * values[:, None, :]).sum(-1)  # (n, B, S)
            return ((picked - _TARGET) ** 2).sum(-1)

        return loss

    @cached_property
    def _test_values(self) -> Tensor:
        return self.sample_values(self.n_test, self.heldout_generator(10_000))

    def test_items(self) -> Tensor:
        return self.encode(self._test_values)

    def evaluate(self, selector: SlotSelector) -> float:
        with torch.no_grad():
            scores = selector.score(self.test_items())
        picked = self._test_values.gather(1, scores[:, 0].argmax(-1, keepdim=True))
        return float((picked == _TARGET).float().mean())
