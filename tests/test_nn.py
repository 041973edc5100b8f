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


def test_schedule_as_tau() -> None:
    schedule = pickgrad.ExponentialDecay(tau0=2.0, rate=0.5, tau_min=0.5)
    selector = SlotSelector(item_dim=2, n_slots=1, estimator="st-gumbel", tau=schedule)
    selector(torch.randn(3, 4, 2)).selected.sum().backward()
    schedule.step()
    assert float(selector.tau) == pytest.approx(2.0 * torch.e**-0.5)


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
