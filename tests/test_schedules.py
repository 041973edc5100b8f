"""Temperature schedules: values, floor, stepping, and use as ``tau=``."""

from __future__ import annotations

import math

import pytest
import torch

import pickgrad
from pickgrad import Constant, ExponentialDecay, OneHot


def test_constant() -> None:
    schedule = Constant(0.7)
    assert float(schedule) == 0.7
    assert [schedule.step() for _ in range(3)] == [0.7, 0.7, 0.7]
    assert schedule.at(10**6) == 0.7
    assert repr(schedule) == "Constant(0.7)"


def test_exponential_decay_values_and_floor() -> None:
    schedule = ExponentialDecay(tau0=2.0, rate=0.01, tau_min=0.5)
    for step in (0, 1, 50, 100):
        assert schedule.at(step) == pytest.approx(2.0 * math.exp(-0.01 * step))
    # The floor is reached at step log(tau0 / tau_min) / rate = 138.6 and held from there on.
    assert schedule.at(138) > 0.5
    assert schedule.at(139) == 0.5
    assert schedule.at(10**6) == 0.5
    values = [schedule.at(step) for step in range(300)]
    assert values == sorted(values, reverse=True)


def test_exponential_decay_steps() -> None:
    schedule = ExponentialDecay(tau0=1.0, rate=0.5, tau_min=0.1)
    assert float(schedule) == 1.0
    assert schedule.step() == pytest.approx(math.exp(-0.5))
    assert schedule.step() == pytest.approx(math.exp(-1.0))
    assert float(schedule) == pytest.approx(math.exp(-1.0))
    assert schedule.at(0) == 1.0  # at() does not depend on the state


def test_zero_rate_is_constant() -> None:
    schedule = ExponentialDecay(tau0=0.8, rate=0.0, tau_min=0.1)
    assert {schedule.step() for _ in range(5)} == {0.8}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"tau0": 0.0}, "tau0"),
        ({"tau0": math.nan}, "tau0"),
        ({"rate": -0.1}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"tau_min": 0.0}, "tau_min"),
        ({"tau_min": -1.0}, "tau_min"),
    ],
)
def test_exponential_decay_rejects_bad_parameters(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be"):
        ExponentialDecay(**kwargs)


@pytest.mark.parametrize("tau", [0.0, -1.0, math.nan, math.inf])
def test_constant_rejects_bad_tau(tau: float) -> None:
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        Constant(tau)


def test_schedules_are_usable_as_tau() -> None:
    scores = torch.tensor([[1.0, 0.0, -1.0]])
    schedule = ExponentialDecay(tau0=2.0, rate=1.0, tau_min=0.25)
    for _ in range(4):
        relaxed = pickgrad.select(scores, OneHot(), "relaxed", tau=schedule)
        torch.testing.assert_close(relaxed, torch.softmax(scores / float(schedule), -1))
        schedule.step()
    assert float(schedule) == 0.25
    relaxed = pickgrad.select(scores, OneHot(), "gumbel-relaxed", tau=Constant(0.5))
    assert relaxed.shape == scores.shape
    value = pickgrad.estimate(
        lambda x: x[..., 0].sum(-1), scores, OneHot(), "st-gumbel", tau=schedule, n_samples=2
    )
    assert value.shape == ()
