"""The ``Task`` interface shared by the built-in slot-selection problems."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from pickgrad.nn import SlotSelector

__all__ = ["Task"]


class Task:
    """A slot-selection problem: items, a loss on the picks, and a held-out metric.

    Subclasses draw batches of items ``(B, N, D)``, define the loss of a pick
    ``x`` ``(n_samples, B, S, N)`` as ``(n_samples, B)`` losses, and score a trained selector on
    a fixed held-out set.
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    n_items: ClassVar[int]
    n_slots: ClassVar[int]
    item_dim: ClassVar[int]

    def __init__(self, seed: int = 0, n_test: int = 256, split: str = "test") -> None:
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        self.seed = seed
        self.n_test = n_test
        self.split = split

    def heldout_generator(self, base: int) -> torch.Generator:
        """Generator of the held-out examples: the validation split (for tuning) differs from test."""
        return torch.Generator().manual_seed(
            base + self.seed + (0 if self.split == "test" else 5_000)
        )

    def make_selector(self, seed: int, hidden: int = 32, **kwargs: object) -> SlotSelector:
        """A freshly initialised selector, the same for every estimator given the same seed."""
        torch.manual_seed(seed)
        return SlotSelector(self.item_dim, self.n_slots, hidden=hidden, **kwargs)  # type: ignore[arg-type]

    def sample_items(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """A batch of training examples ``(B, N, D)``."""
        raise NotImplementedError

    def loss_fn(self, items: Tensor) -> Callable[[Tensor], Tensor]:
        """Loss of picks ``x`` ``(n_samples, B, S, N)`` on ``items`` ``(B, N, D)``: ``(n_samples, B)``."""
        raise NotImplementedError

    def evaluate(self, selector: SlotSelector) -> float:
        """The task's metric for the selector's mode (argmax of its scores) on the held-out set."""
        raise NotImplementedError

    def diagnostic_problem(self, batch_size: int = 4) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """``(loss_fn, scores)`` of a freshly initialised selector on a few held-out examples.

        Scores are float64 ``(batch_size, S, N)`` and detached; use with ``pickgrad.OneHot()``.
        """
        selector = self.make_selector(self.seed).double()
        items = self.test_items()[:batch_size].double()
        with torch.no_grad():
            scores = selector.score(items)
        return self.loss_fn(items), scores

    def test_items(self) -> Tensor:
        """The held-out examples ``(n_test, N, D)``."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Build the held-out set (and anything cached for evaluation) before any timing starts."""
        self.test_items()
