"""Temperature schedules, usable wherever pickgrad takes a temperature ``tau``.

A schedule is stateful: :meth:`Schedule.step` advances it one training step, and ``float()``
gives the current temperature, so a schedule can be passed directly as ``tau=``. Its state (the
step count) is saved and restored with :meth:`Schedule.state_dict` and
:meth:`Schedule.load_state_dict`, like a torch optimiser's or learning-rate scheduler's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["Constant", "ExponentialDecay", "Schedule"]


def _real(value: Any, name: str, schedule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} of {schedule} must be a real number, got {value!r}")
    return float(value)


class Schedule:
    """Base class: a temperature that depends on the training step."""

    def __init__(self) -> None:
        self.step_count = 0

    def at(self, step: int) -> float:
        """The temperature at ``step`` (pure; does not change the state)."""
        raise NotImplementedError

    def step(self) -> float:
        """Advance one step and return the new temperature."""
        self.step_count += 1
        return self.at(self.step_count)

    def __float__(self) -> float:
        return self.at(self.step_count)

    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint: ``{"step_count": int}`` (the parameters are not state).

        Example:
            >>> schedule = ExponentialDecay(tau0=1.0, rate=0.1, tau_min=0.5)
            >>> _ = schedule.step(), schedule.step()
            >>> schedule.state_dict()
            {'step_count': 2}
        """
        return {"step_count": self.step_count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`.

        Raises ``TypeError``/``ValueError`` for anything but ``{"step_count": int >= 0}``.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        if set(state) != {"step_count"}:
            raise ValueError(
                f"a {type(self).__name__} state has exactly the key 'step_count', got {sorted(state)}"
            )
        step_count = state["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, int):
            raise TypeError(f"step_count must be an int, got {type(step_count).__name__}")
        if step_count < 0:
            raise ValueError(f"step_count must be >= 0, got {step_count}")
        self.step_count = step_count


class Constant(Schedule):
    """A fixed temperature.

    Example:
        >>> float(Constant(0.5))
        0.5
    """

    def __init__(self, tau: float) -> None:
        super().__init__()
        tau = _real(tau, "tau", "Constant")
        if not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"tau must be finite and > 0, got {tau}")
        self.tau = float(tau)

    def at(self, step: int) -> float:
        return self.tau

    def __repr__(self) -> str:
        return f"Constant({self.tau})"


class ExponentialDecay(Schedule):
    """``tau = max(tau_min, tau0 * exp(-rate * step))``, the annealing of Jang et al. (2017).

    Args:
        tau0: initial temperature (> 0).
        rate: decay per step (>= 0).
        tau_min: floor (> 0).

    Example:
        >>> schedule = ExponentialDecay(tau0=1.0, rate=0.1, tau_min=0.5)
        >>> [round(schedule.at(step), 3) for step in (0, 1, 10)]
        [1.0, 0.905, 0.5]
    """

    def __init__(self, tau0: float = 1.0, rate: float = 1e-4, tau_min: float = 0.5) -> None:
        super().__init__()
        tau0 = _real(tau0, "tau0", "ExponentialDecay")
        rate = _real(rate, "rate", "ExponentialDecay")
        tau_min = _real(tau_min, "tau_min", "ExponentialDecay")
        if not math.isfinite(tau0) or tau0 <= 0:
            raise ValueError(f"tau0 must be finite and > 0, got {tau0}")
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"rate must be finite and >= 0, got {rate}")
        if not math.isfinite(tau_min) or tau_min <= 0:
            raise ValueError(f"tau_min must be finite and > 0, got {tau_min}")
        self.tau0, self.rate, self.tau_min = float(tau0), float(rate), float(tau_min)

    def at(self, step: int) -> float:
        return max(self.tau_min, self.tau0 * math.exp(-self.rate * step))

    def __repr__(self) -> str:
        return f"ExponentialDecay(tau0={self.tau0}, rate={self.rate}, tau_min={self.tau_min})"
