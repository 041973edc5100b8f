"""Tests of pickgrad.nn.SlotSelector."""

from __future__ import annotations

import pytest
import torch

import pickgrad
from pickgrad.nn import SlotSelector


@pytest.mark.parametrize("estimator", ["st", "st-relaxed", "st-gumbel", "gumbel-rao"])
def test_hard_selection_and_selected_items(estimator: str) -> None:
    selector = SlotSelector(item_dim=3, n_slots=4, estimator=estimator, tau=0.5)
    items = torch.randn(5, 6, 3)
    out = selector(items, generator=torch.Generator().manual_seed(0))
    assert out.selection.shape == (5, 4, 6) and out.selected.shape == (5, 4, 3)
    assert torch.equal(out.selection.sum(-1), torch.ones(5, 4))
    assert set(out.selection.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.selected, torch.einsum("bsn,bnd->bsd", out.selection, items))
    out.selected.pow(2).sum().backward()
    grads = [p.grad for p in selector.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_context_changes_scores_and_is_validated() -> None:
    selector = SlotSelector(item_dim=2, n_slots=1, context_dim=3)
    items = torch.randn(4, 5, 2)
    a = selector.score(items, torch.zeros(4, 3))
    b = selector.score(items, torch.ones(4, 3))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="context must be"):
        selector.score(items)
    with pytest.raises(ValueError, match="items must be"):
        selector.score(torch.randn(4, 5, 7), torch.zeros(4, 3))


def test_eval_mode_takes_the_mode() -> None:
    selector = SlotSelector(item_dim=2, n_slots=2, estimator="st-gumbel", tau=1.0).eval()
    items = torch.randn(8, 5, 2)
    out = selector(items)
    torch.testing.assert_close(out.selection, pickgrad.OneHot().argmax(out.scores))


def test_schedule_as_tau_is_stepped_after_each_training_forward() -> None:
    schedule = pickgrad.ExponentialDecay(tau0=2.0, rate=0.5, tau_min=0.5)
    selector = SlotSelector(item_dim=2, n_slots=1, estimator="relaxed", tau=schedule)
    items = torch.randn(3, 4, 2)
    out = selector(items)
    # The call used the temperature before the step ...
    expected = torch.softmax(out.scores / 2.0, -1)
    torch.testing.assert_close(out.selection, expected)
    # ... and then advanced the schedule one step.
    assert schedule.step_count == 1 and float(selector.tau) == pytest.approx(2.0 * torch.e**-0.5)
    selector.eval()
    selector(items)
    assert schedule.step_count == 1  # evaluation never steps it
    manual = SlotSelector(item_dim=2, n_slots=1, tau=schedule, step_schedule=False)
    manual(items)
    assert schedule.step_count == 1


def test_the_schedule_state_is_in_the_state_dict() -> None:
    schedule = pickgrad.ExponentialDecay(tau0=2.0, rate=0.5, tau_min=0.5)
    selector = SlotSelector(item_dim=2, n_slots=1, estimator="st-gumbel", tau=schedule)
    for _ in range(3):
        selector(torch.randn(3, 4, 2))
    state = selector.state_dict()
    fresh = pickgrad.ExponentialDecay(tau0=2.0, rate=0.5, tau_min=0.5)
    resumed = SlotSelector(item_dim=2, n_slots=1, estimator="st-gumbel", tau=fresh)
    resumed.load_state_dict(state)
    assert fresh.step_count == 3 and float(resumed.tau) == pytest.approx(float(schedule))
    for name, value in selector.named_parameters():
        assert torch.equal(value, dict(resumed.named_parameters())[name])
    fixed = SlotSelector(item_dim=2, n_slots=1, estimator="st-gumbel", tau=0.5)
    with pytest.raises(ValueError, match="saved with a schedule as tau"):
        fixed.load_state_dict(state)
    with pytest.raises(ValueError, match="saved with a fixed temperature"):
        resumed.load_state_dict(fixed.state_dict())


def test_an_estimator_that_needs_the_loss_is_refused_at_construction() -> None:
    for estimator in ("reinforce", pickgrad.Reinforce(baseline="ema")):
        with pytest.raises(ValueError, match=r"needs the loss value.*pickgrad\.estimate"):
            SlotSelector(item_dim=2, n_slots=1, estimator=estimator)


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(TypeError, match=r"unknown relax option 'max_iter' for OneHot"):
        SlotSelector(item_dim=2, n_slots=1, estimator="st-gumbel", max_iter=3)
    with pytest.raises(TypeError, match=r"unknown option 'n_draw'"):
        SlotSelector(item_dim=2, n_slots=1, estimator="gumbel-rao", n_draw=3)
    with pytest.raises(ValueError, match="tau"):
        SlotSelector(item_dim=2, n_slots=1, tau=0.0)
    with pytest.raises(TypeError, match="tau"):
        SlotSelector(item_dim=2, n_slots=1, tau="hot")  # type: ignore[arg-type]
    # Permutation takes Sinkhorn's options.
    selector = SlotSelector(item_dim=2, n_slots=2, with_replacement=False, max_iter=5)
    assert selector.estimator.relax_options == {"max_iter": 5}  # type: ignore[attr-defined]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_slots"):
        SlotSelector(item_dim=2, n_slots=0)
    with pytest.raises(ValueError, match="unknown estimator"):
        SlotSelector(item_dim=2, n_slots=1, estimator="nope")


def test_without_replacement_picks_distinct_items() -> None:
    selector = SlotSelector(item_dim=3, n_slots=4, with_replacement=False, estimator="st-gumbel")
    out = selector(torch.randn(6, 5, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.selection.sum(-1), torch.ones(6, 4))
    assert (out.selection.sum(-2) <= 1).all()
    with pytest.raises(ValueError, match="n_slots <= N"):
        selector(torch.randn(2, 3, 3))
