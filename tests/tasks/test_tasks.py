"""Tests of the built-in demo tasks."""

from __future__ import annotations

import torch

import pickgrad
from pickgrad.tasks import CriticSlots, PickFive


def test_pick_five_has_exactly_one_five_and_values_in_range() -> None:
    task = PickFive()
    values = task.sample_values(500, torch.Generator().manual_seed(0))
    assert values.shape == (500, 8)
    assert ((values == 5).sum(1) == 1).all()
    assert values.min() >= 0 and values.max() <= 10
    torch.testing.assert_close(task.decode(task.encode(values)), values.float())


def test_pick_five_loss_is_zero_exactly_at_the_five() -> None:
    task = PickFive()
    items = task.sample_items(3, torch.Generator().manual_seed(1))
    values = task.decode(items)
    picks = torch.nn.functional.one_hot(values.eq(5).float().argmax(-1), 8).float()[
        None, :, None, :
    ]
    assert torch.equal(task.loss_fn(items)(picks), torch.zeros(1, 3))
    wrong = torch.nn.functional.one_hot(values.eq(5).float().argmin(-1), 8).float()[
        None, :, None, :
    ]
    assert (task.loss_fn(items)(wrong) > 0).all()


def test_critic_optimum_equals_brute_force_enumeration() -> None:
    task = CriticSlots(n_test=3)
    items = task.test_items()
    picks = pickgrad.OneHot().enumerate((4, 16))
    brute = task.reward(picks[:, None] @ items).max(0).values
    torch.testing.assert_close(task.optimal_reward(items), brute)


def test_critic_reward_has_slot_interactions() -> None:
    # A reward additive over slots would satisfy r(a,b) + r(a',b') == r(a,b') + r(a',b).
    task = CriticSlots()
    r = task.reward
    x, y = torch.randn(4, 4), torch.randn(4, 4)
    xy, yx = x.clone(), y.clone()
    xy[0], yx[0] = y[0], x[0]
    assert abs(float(r(x) + r(y) - r(xy) - r(yx))) > 1e-4


def test_diagnostic_problems_have_documented_shapes() -> None:
    for task, shape in ((PickFive(), (4, 1, 8)), (CriticSlots(), (4, 4, 16))):
        loss_fn, scores = task.diagnostic_problem()
        assert scores.shape == shape and scores.dtype == torch.float64 and not scores.requires_grad
        x = pickgrad.OneHot().argmax(scores).expand(3, *shape)
        assert loss_fn(x).shape == (3, 4)
