"""Temperature schedules, usable wherever pickgrad takes a temperature ``tau``.

A schedule is stateful: :meth:`Schedule.step` advances it one training step, and ``float()``
gives the current temperature, so a schedule can be passed directly as ``tau=``.
"""

from __future__ import annotations

import math

__all__ = ["Constant", "ExponentialDecay", "Schedule"]


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


class Constant(Schedule):
    """A fixed temperature.

    Example:
        >>> float(Constant(0.5))
        0.5
    """

    def __init__(self, tau: float) -> None:
        super().__init__()
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
