"""*critic slots*: fill 4 slots from 16 items of dimension 4 to maximise a fixed critic.

The reward is a small random MLP over the four picked items concatenated, so slots interact.
Its exact optimum on each held-out example is found by enumerating all 16^4 = 65,536 joint
picks; the metric is the mean gap between that optimum and the reward of the selector's mode.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor, nn

from pickgrad.nn import SlotSelector
from pickgrad.structures.onehot import OneHot
from pickgrad.tasks.base import Task

__all__ = ["CriticSlots"]


class CriticSlots(Task):
    name: ClassVar[str] = "critic-slots"
    metric: ClassVar[str] = "reward gap"
    higher_is_better: ClassVar[bool] = False
    n_items: ClassVar[int] = 16
    n_slots: ClassVar[int] = 4
    item_dim: ClassVar[int] = 4

    def __init__(
        self, seed: int = 0, n_test: int = 128, split: str = "test", critic_hidden: int = 32
    ) -> None:
        super().__init__(seed, n_test, split)
        generator = torch.Generator().manual_seed(20_000 + seed)
        width = self.n_slots * self.item_dim
        self.critic = nn.Sequential(
            nn.Linear(width, critic_hidden), nn.Tanh(), nn.Linear(critic_hidden, 1)
        )
        with torch.no_grad():
            for parameter in self.critic.parameters():
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator) / parameter.shape[-1] ** 0.5
                )
        self.critic.requires_grad_(False)

    def reward(self, picked: Tensor) -> Tensor:
        """Critic reward of picked items ``(..., S, D)``: ``(...)``."""
        flat = picked.reshape(*picked.shape[:-2], self.n_slots * self.item_dim)
        reward: Tensor = self.critic.to(picked.dtype)(flat).squeeze(-1)
        return reward

    def sample_items(self, batch_size: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch_size, self.n_items, self.item_dim, generator=generator)

    def loss_fn(self, items: Tensor) -> Callable[[Tensor], Tensor]:
        def loss(x: Tensor) -> Tensor:
            return -self.reward(x @ items)  # (n, B, S, N) @ (B, N, D) -> (n, B, S, D)

        return loss

    @cached_property
    def _test_items(self) -> Tensor:
        return self.sample_items(self.n_test, self.heldout_generator(30_000))

    @cached_property
    def _test_optimum(self) -> Tensor:
        return self.optimal_reward(self._test_items)

    def test_items(self) -> Tensor:
        return self._test_items

    def prepare(self) -> None:
        self._test_optimum  # noqa: B018  (computes and caches the exact optimum)

    def optimal_reward(self, items: Tensor, chunk: int = 8) -> Tensor:
        """The best reward over all 16^4 joint picks for each example ``(B,)``, by enumeration.

        The critic's first layer is additive over slots, so the pre-activations of every joint
        pick are sums of per-slot terms, formed by broadcasting instead of 65,536 matmuls.
        """
        first, _, last = self.critic
        assert isinstance(first, torch.nn.Linear) and isinstance(last, torch.nn.Linear)
        weight = first.weight.to(items.dtype).reshape(-1, self.n_slots, self.item_dim)  # (H, S, D)
        per_slot = torch.einsum("bnd,hsd->bsnh", items, weight)  # (B, S, N, H)
        best = []
        with torch.no_grad():
            for start in range(0, items.shape[0], chunk):
                terms = per_slot[start : start + chunk]
                pre: Tensor = first.bias.to(items.dtype)
                for slot in range(self.n_slots):  # broadcast one new axis per slot
                    view = [terms.shape[0]] + [1] * self.n_slots + [terms.shape[-1]]
                    view[1 + slot] = self.n_items
                    pre = pre + terms[:, slot].reshape(view)
                rewards = last.to(items.dtype)(torch.tanh(pre)).flatten(1)  # (c, N^S)
                best.append(rewards.max(1).values)
        return torch.cat(best)

    def evaluate(self, selector: SlotSelector) -> float:
        items, optimum = self._test_items, self._test_optimum
        with torch.no_grad():
            choice = OneHot().argmax(selector.score(items))
            return float((optimum - self.reward(choice @ items)).mean())
