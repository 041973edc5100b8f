"""Estimator names in the experiments, and the estimator state the runner saves and averages."""

from __future__ import annotations

import pytest
import torch

import pickgrad
from pickgrad import OneHot, Reinforce, SpanningTree, Subset
from pickgrad.experiments.estimators import (
    average_states,
    estimator_state,
    load_estimator_state,
    resolve_estimator,
)


def test_registry_names_pass_through_and_reinforce_means_rloo() -> None:
    for name in pickgrad.available_estimators(Subset(3)):
        choice = resolve_estimator(name, Subset(3))
        assert choice.name == name
        if name == "reinforce":
            assert choice.estimator._options() == {"baseline": "rloo"}
        else:
            assert type(choice.estimator) is type(pickgrad.get_estimator(name))
        assert choice.needs_loss == type(choice.estimator).needs_loss


def test_an_estimator_the_structure_lacks_is_refused_listing_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SpanningTree, "unsupported", {"relax": "switched off by this test"})
    with pytest.raises(ValueError, match="cannot be used with") as error:
        resolve_estimator("st-gumbel", SpanningTree(edge_list=True))
    assert "reinforce" in str(error.value) and "st-gumbel, " not in str(error.value)


def test_options_by_name_build_the_estimator_and_label_the_run_with_the_spec() -> None:
    choice = resolve_estimator("gumbel-rao:n_draws=100", OneHot())
    assert choice.name == "gumbel-rao:n_draws=100"
    assert choice.estimator._options() == {"n_draws": 100}
    assert not choice.needs_loss
    ema = resolve_estimator("reinforce:baseline=ema,ema_decay=0.5", OneHot())
    assert ema.estimator._options() == {"baseline": "ema", "ema_decay": 0.5} and ema.needs_loss
    # reinforce keeps the experiments' leave-one-out baseline unless the spec names one
    assert resolve_estimator("reinforce:normalize=true", OneHot()).estimator._options() == {
        "baseline": "rloo",
        "normalize": True,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gumbel-rao:n_draws", "must be key=value"),
        ("gumbel-rao:", "must be key=value"),
        ("gumbel-rao:bogus=1", "unknown option 'bogus'"),
        ("gumbel-rao:n_draws=0", "n_draws"),
        ("nvil:normalize=true", "takes no options"),
        ("no-such:n_draws=2", "cannot be used with"),
    ],
)
def test_bad_option_specs_are_refused_before_training(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_estimator(spec, OneHot())


def _ema_step(estimator: Reinforce, seed: int) -> torch.Tensor:
    scores = torch.zeros(3, 4, requires_grad=True)
    target = torch.tensor([0.0, 1.0, 0.0, 0.0])
    surrogate = pickgrad.estimate(
        lambda x: (x * target).sum(-1), scores, OneHot(), estimator, n_samples=2,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    surrogate.backward()
    assert scores.grad is not None
    return scores.grad


def test_state_round_trip_reproduces_the_next_gradient() -> None:
    first = Reinforce(baseline="ema")
    _ema_step(first, 0)
    state = estimator_state(first)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    second = Reinforce(baseline="ema")
    load_estimator_state(second, state)
    torch.testing.assert_close(_ema_step(first, 1), _ema_step(second, 1), rtol=0, atol=0)


def test_average_states_averages_floating_entries() -> None:
    a, b = Reinforce(baseline="ema"), Reinforce(baseline="ema")
    _ema_step(a, 0)
    _ema_step(b, 5)
    mean = average_states([estimator_state(a), estimator_state(b)])
    assert a.ema is not None and b.ema is not None
    both = Reinforce(baseline="ema")
    load_estimator_state(both, mean)
    assert both.ema == pytest.approx((a.ema + b.ema) / 2, rel=1e-12)
