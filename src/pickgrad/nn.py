"""``torch.nn`` modules that choose discrete structures inside a network."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pickgrad._validation import check_tau
from pickgrad.estimators.base import Estimator, get_estimator
from pickgrad.schedules import Schedule
from pickgrad.select import select
from pickgrad.structures.base import Structure
from pickgrad.structures.onehot import OneHot

__all__ = ["SlotSelection", "SlotSelector"]


class SlotSelection(NamedTuple):
    """What :class:`SlotSelector` returns.

    Attributes:
        selection: ``(B, S, N)``: row s is the (hard, for hard estimators) one-hot pick of slot s.
        selected: ``(B, S, D)``: ``selection @ items``, the picked items.
        scores: ``(B, S, N)``: the scores the selection was made from.
    """

    selection: Tensor
    selected: Tensor
    scores: Tensor


class SlotSelector(nn.Module):
    """Score N items for S slots with a small network and pick one item per slot.

    Each item is scored from its own features, the mean of all items (so the scores can depend
    on the whole set) and an optional context vector::

        scores[b, s, i] = MLP([items[b, i], mean_j items[b, j], context[b]])[s]

    Args:
        item_dim: D, the feature size of an item.
        n_slots: S, the number of slots.
        context_dim: size of the optional context vector (0 for none).
        hidden: width of the scoring network.
        estimator: estimator name or object used in :meth:`forward`: any estimator that works
            with :func:`pickgrad.select`. One that needs the loss (``reinforce``) is refused
            here; for those, compute ``scores = selector.score(items)`` and call
            :func:`pickgrad.estimate` with your loss.
        tau: temperature, a float or a :class:`pickgrad.schedules.Schedule`. A schedule is
            saved in the module's ``state_dict`` (its step count, as extra state) and, with
            ``step_schedule=True``, advanced by one step after each forward call in training
            mode (the call itself uses the temperature before the step); evaluation-mode calls
            never step it.
        step_schedule: whether :meth:`forward` steps a schedule ``tau`` (set False to step it
            yourself, e.g. once per epoch).
        with_replacement: if True (default) slots are independent ``OneHot`` picks and an item
            may fill several slots; if False the slots get distinct items through
            ``Permutation`` (needs S <= N).
        **estimator_options: options of a named estimator, e.g. ``n_draws=10``.

    Shapes:
        items ``(B, N, D)``, context ``(B, C)`` -> :class:`SlotSelection` with selection
        ``(B, S, N)``, selected ``(B, S, D)``, scores ``(B, S, N)``.

    Example:
        >>> selector = SlotSelector(item_dim=3, n_slots=2, estimator="st-gumbel", tau=0.5)
        >>> out = selector(torch.randn(5, 7, 3))
        >>> out.selection.shape, out.selected.shape, out.selection.sum(-1).unique().tolist()
        (torch.Size([5, 2, 7]), torch.Size([5, 2, 3]), [1.0])
    """

    def __init__(
        self,
        item_dim: int,
        n_slots: int,
        *,
        context_dim: int = 0,
        hidden: int = 64,
        estimator: str | Estimator = "st-gumbel",
        tau: float | Schedule = 1.0,
        with_replacement: bool = True,
        step_schedule: bool = True,
        **estimator_options: Any,
    ) -> None:
        super().__init__()
        for name, value in (("item_dim", item_dim), ("n_slots", n_slots), ("hidden", hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(context_dim, int) or context_dim < 0:
            raise ValueError(f"context_dim must be a non-negative int, got {context_dim!r}")
        self.item_dim, self.n_slots, self.context_dim = item_dim, n_slots, context_dim
        self.scorer = nn.Sequential(
            nn.Linear(2 * item_dim + context_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_slots),
        )
        if not isinstance(with_replacement, bool) or not isinstance(step_schedule, bool):
            raise TypeError("with_replacement and step_schedule must be bools")
        # The module keeps its estimator object, so a stateful one would keep its state.
        self.estimator = get_estimator(estimator, warn_stateful=False, **estimator_options)
        if self.estimator.needs_loss:
            raise ValueError(
                f"SlotSelector's forward uses pickgrad.select, but estimator {self.estimator!r} "
                "needs the loss value; compute scores = selector.score(items) and call "
                "pickgrad.estimate(loss_fn, scores, structure, estimator, ...) instead"
            )
        if not isinstance(tau, Schedule):
            tau = check_tau(tau)
        self.tau = tau
        self.with_replacement = with_replacement
        self.step_schedule = step_schedule
        self.structure: Structure = OneHot() if with_replacement else _permutation()
        self.estimator.check_structure(self.structure)  # relax options fail here, not at forward

    def score(self, items: Tensor, context: Tensor | None = None) -> Tensor:
        """Scores ``(B, S, N)`` of every item for every slot."""
        if items.dim() != 3 or items.shape[-1] != self.item_dim:
            raise ValueError(f"items must be (B, N, {self.item_dim}), got {tuple(items.shape)}")
        batch, n_items, _ = items.shape
        if not self.with_replacement and self.n_slots > n_items:
            raise ValueError(
                f"with_replacement=False needs n_slots <= N, got n_slots={self.n_slots}, N={n_items}"
            )
        features = [items, items.mean(1, keepdim=True).expand_as(items)]
        if self.context_dim:
            if context is None or tuple(context.shape) != (batch, self.context_dim):
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"context must be (B, {self.context_dim}) with B={batch}, got {got}"
                )
            features.append(context[:, None, :].expand(batch, n_items, self.context_dim))
        elif context is not None:
            raise ValueError("context given but context_dim=0; set context_dim in the constructor")
        scores: Tensor = self.scorer(torch.cat(features, dim=-1))
        return scores.transpose(1, 2)

    def forward(
        self,
        items: Tensor,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> SlotSelection:
        scores = self.score(items, context)
        if not self.training and self.estimator.hard:
            # At evaluation time take the mode: no noise.
            selection = self.structure.argmax(scores)
        else:
            selection = select(
                scores, self.structure, self.estimator, tau=self.tau, generator=generator
            )
            if self.training and self.step_schedule and isinstance(self.tau, Schedule):
                self.tau.step()
        return SlotSelection(selection, selection @ items, scores)

    def get_extra_state(self) -> dict[str, Any]:
        """The schedule's state (``{"schedule": {...}}``), or ``{}`` for a fixed temperature."""
        return {"schedule": self.tau.state_dict()} if isinstance(self.tau, Schedule) else {}

    def set_extra_state(self, state: Any) -> None:
        """Restore the schedule's state saved by :meth:`get_extra_state`."""
        if not isinstance(state, dict) or not set(state) <= {"schedule"}:
            raise ValueError(f"not a SlotSelector extra state: {state!r}")
        tau = self.tau
        if ("schedule" in state) != isinstance(tau, Schedule):
            saved = "a schedule" if "schedule" in state else "a fixed temperature"
            raise ValueError(
                f"the state_dict was saved with {saved} as tau, but this SlotSelector's tau is "
                f"{self.tau!r}; build it with the same kind of tau before loading"
            )
        if isinstance(tau, Schedule):
            tau.load_state_dict(state["schedule"])

    def extra_repr(self) -> str:
        return (
            f"item_dim={self.item_dim}, n_slots={self.n_slots}, context_dim={self.context_dim}, "
            f"estimator={self.estimator!r}, tau={self.tau!r}, with_replacement={self.with_replacement}"
        )


def _permutation() -> Structure:
    from pickgrad.structures import Permutation

    return Permutation()
