"""Built-in problems used by the demo, the diagnostics and the benchmarks."""

from pickgrad.tasks.base import Task
from pickgrad.tasks.critic_slots import CriticSlots
from pickgrad.tasks.pick_five import PickFive

TASKS: dict[str, type[Task]] = {"pick-the-five": PickFive, "critic-slots": CriticSlots}

__all__ = ["TASKS", "CriticSlots", "PickFive", "Task"]
