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


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: Constant("0.5"), "tau"),
        (lambda: Constant(True), "tau"),
        (lambda: ExponentialDecay(tau0="1"), "tau0"),
        (lambda: ExponentialDecay(rate=None), "rate"),
        (lambda: ExponentialDecay(tau_min=False), "tau_min"),
    ],
)
def test_schedules_reject_non_numbers(build: object, name: str) -> None:
    with pytest.raises(TypeError, match=f"{name} of .* must be a real number"):
        build()  # type: ignore[operator]


@pytest.mark.parametrize("make", [lambda: Constant(0.3), lambda: ExponentialDecay(1.0, 0.2, 0.1)])
def test_state_dict_round_trip(make: object) -> None:
    schedule = make()  # type: ignore[operator]
    assert schedule.state_dict() == {"step_count": 0}
    for _ in range(5):
        schedule.step()
    state = schedule.state_dict()
    assert state == {"step_count": 5}
    restored = make()  # type: ignore[operator]
    restored.load_state_dict(state)
    assert float(restored) == float(schedule) and restored.step() == schedule.step()
    state["step_count"] = 0  # the saved dict is a copy, not a view of the schedule
    assert schedule.step_count == 6


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ({"step": 3}, ValueError, "exactly the key 'step_count'"),
        ({"step_count": 1, "extra": 2}, ValueError, "exactly the key"),
        ({"step_count": 2.0}, TypeError, "step_count must be an int"),
        ({"step_count": True}, TypeError, "step_count must be an int"),
        ({"step_count": -1}, ValueError, "step_count must be >= 0"),
        ([("step_count", 1)], TypeError, "state must be a mapping"),
    ],
)
def test_load_state_dict_rejects_bad_states(state: object, error: type, match: str) -> None:
    schedule = ExponentialDecay()
    with pytest.raises(error, match=match):
        schedule.load_state_dict(state)  # type: ignore[arg-type]
    assert schedule.step_count == 0
