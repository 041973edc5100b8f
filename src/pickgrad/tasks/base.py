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

    def warm_selector(
        self, steps: int, *, batch_size: int = 32, n_samples: int = 4, lr: float = 3e-3
    ) -> SlotSelector:
        """The initial float64 selector after ``steps`` Adam steps of unbiased training.

        Training's gradient is ``reinforce`` with the leave-one-out baseline (unbiased: in
        expectation it follows the exact gradient, so the point reached favours no relaxation)
        on batches of training examples drawn with seed ``90_000 + seed``, the demo's batch,
        samples per step and learning rate by default.
        """
        from pickgrad.estimators.reinforce import Reinforce  # lazy: keeps the import light
        from pickgrad.select import estimate
        from pickgrad.structures.onehot import OneHot

        selector = self.make_selector(self.seed).double()
        optimizer = torch.optim.Adam(selector.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(90_000 + self.seed)
        estimator = Reinforce(baseline="rloo")
        for _ in range(steps):
            items = self.sample_items(batch_size, generator).double()
            surrogate = estimate(
                self.loss_fn(items), selector.score(items), OneHot(), estimator,
                n_samples=n_samples, generator=generator,
            )  # fmt: skip
            optimizer.zero_grad()
            surrogate.backward()
            optimizer.step()
        return selector

    def diagnostic_network_problem(
        self, batch_size: int = 32, warm_steps: int = 0
    ) -> tuple[Callable[[Tensor], Tensor], Tensor, tuple[Tensor, ...]]:
        """``(loss_fn, scores, parameters)``: :meth:`diagnostic_problem` with the scores' graph.

        ``scores`` float64 ``(batch_size, S, N)`` of the first held-out examples come from the
        float64 selector (freshly initialised, or :meth:`warm_selector` after ``warm_steps``)
        whose ``parameters`` they depend on through autograd, for
        ``pickgrad.diagnose(..., parameters=parameters)`` (the gradient its optimiser sees).
        """
        selector = self.warm_selector(warm_steps)
        items = self.test_items()[:batch_size].double()
        return self.loss_fn(items), selector.score(items), tuple(selector.parameters())

    def test_items(self) -> Tensor:
        """The held-out examples ``(n_test, N, D)``."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Build the held-out set (and anything cached for evaluation) before any timing starts."""
        self.test_items()
