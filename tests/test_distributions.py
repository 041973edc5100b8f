"""PerturbAndMAP against torch.distributions.OneHotCategorical and brute-force enumeration."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import OneHotCategorical

import pickgrad
from pickgrad.distributions import PerturbAndMAP

STRUCTURES = [
    (pickgrad.OneHot(), (5,)),
    (pickgrad.Subset(2), (5,)),
    (pickgrad.Permutation(), (3, 3)),
    (pickgrad.SpanningTree(), (4, 4)),
    (pickgrad.Arborescence(), (4, 4)),
]


def test_onehot_matches_torch_onehot_categorical() -> None:
    scores = torch.randn(3, 2, 6, dtype=torch.float64)
    ours = PerturbAndMAP(scores, pickgrad.OneHot())
    theirs = OneHotCategorical(logits=scores)
    assert ours.batch_shape == theirs.batch_shape == (3, 2)
    assert ours.event_shape == theirs.event_shape == (6,)
    value = theirs.sample((4,))
    torch.testing.assert_close(ours.log_prob(value), theirs.log_prob(value))
    torch.testing.assert_close(ours.entropy(), theirs.entropy())
    torch.testing.assert_close(ours.mean, theirs.mean)
    torch.testing.assert_close(ours.mode, theirs.mode.to(scores.dtype))


def test_onehot_sample_frequencies_chi_squared() -> None:
    scores = torch.tensor([1.0, 0.0, -0.5, 2.0])
    draws = 20_000
    samples = PerturbAndMAP(scores, pickgrad.OneHot()).sample(
        (draws,), generator=torch.Generator().manual_seed(3)
    )
    counts = samples.sum(0).double()
    expected = torch.softmax(scores.double(), -1) * draws
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
    assert chi2 < 16.27, chi2


@pytest.mark.parametrize(("structure", "event"), STRUCTURES, ids=lambda v: repr(v))
def test_samples_are_solutions_with_the_right_shape(structure, event) -> None:
    scores = torch.randn(2, *event)
    law = PerturbAndMAP(scores, structure, validate_args=True)
    x = law.sample((3,), generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 2, *event)
    assert bool(law.support.check(x).all())
    assert bool(law.support.check(law.mode).all())
    assert law.support.is_discrete and law.support.event_dim == structure.event_dims


@pytest.mark.parametrize(("structure", "event"), STRUCTURES, ids=lambda v: repr(v))
def test_sample_equals_select_forward_with_the_same_seed(structure, event) -> None:
    scores = torch.randn(2, *event)
    law = PerturbAndMAP(scores, structure)
    sampled = law.sample((3,), generator=torch.Generator().manual_seed(5))
    drawn = law.rsample((3,), estimator="st-gumbel", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampled, drawn.detach())


def test_rsample_carries_the_estimators_gradient() -> None:
    scores = torch.zeros(2, 4, requires_grad=True)
    law = PerturbAndMAP(scores, pickgrad.Subset(2))
    x = law.rsample((6,), estimator="gumbel-relaxed", tau=0.5)
    assert x.shape == (6, 2, 4)
    (x * torch.arange(4.0)).sum().backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    assert float(scores.grad.abs().sum()) > 0


def test_rsample_refuses_an_estimator_that_needs_the_loss() -> None:
    law = PerturbAndMAP(torch.zeros(4), pickgrad.OneHot())
    with pytest.raises(ValueError, match="estimate"):
        law.rsample(estimator="reinforce")


def test_expand_broadcasts_the_batch() -> None:
    law = PerturbAndMAP(torch.randn(5, dtype=torch.float64), pickgrad.OneHot()).expand((3, 2))
    assert law.batch_shape == (3, 2) and law.event_shape == (5,)
    assert law.sample().shape == (3, 2, 5)
    torch.testing.assert_close(law.entropy(), law.entropy()[0, 0].expand(3, 2))


def test_entropy_and_mean_by_enumeration_for_onehot() -> None:
    scores = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    law = PerturbAndMAP(scores, pickgrad.OneHot())
    p = torch.softmax(scores, -1)
    assert math.isclose(float(law.entropy()), float(-(p * p.log()).sum()), rel_tol=1e-12)
    torch.testing.assert_close(law.mean, p)


@pytest.mark.parametrize(("structure", "event"), STRUCTURES[1:], ids=lambda v: repr(v))
def test_no_closed_form_raises_clearly(structure, event) -> None:
    law = PerturbAndMAP(torch.randn(*event), structure)
    for call in (lambda: law.log_prob(law.mode), law.entropy, lambda: law.mean):
        with pytest.raises(NotImplementedError, match="perturb_log_prob"):
            call()


def test_validate_args_rejects_a_value_outside_the_support() -> None:
    law = PerturbAndMAP(torch.randn(4), pickgrad.OneHot(), validate_args=True)
    with pytest.raises(ValueError, match="support"):
        law.log_prob(torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="structure"):
        PerturbAndMAP(torch.randn(4), "onehot")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating"):
        PerturbAndMAP(torch.arange(4), pickgrad.OneHot())


# --- masks --------------------------------------------------------------------------------------


def test_masked_law_is_the_categorical_of_the_allowed_items() -> None:
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    law = PerturbAndMAP(scores, pickgrad.OneHot(), mask=mask)
    reference = torch.distributions.OneHotCategorical(
        logits=scores.detach().masked_fill(~mask, -math.inf)
    )
    torch.testing.assert_close(law.mean, reference.probs)
    torch.testing.assert_close(law.entropy(), reference.entropy())
    samples = law.sample((200,), generator=torch.Generator().manual_seed(0))
    assert bool((samples[:, ~mask] == 0).all())
    (law.entropy().sum() + law.mean[:, 0].sum()).backward()
    assert scores.grad is not None and bool(torch.isfinite(scores.grad).all())
    assert bool((scores.grad[~mask] == 0).all())
    # -inf scores are the same law
    same = PerturbAndMAP(scores.detach().masked_fill(~mask, -math.inf), pickgrad.OneHot())
    torch.testing.assert_close(same.entropy(), law.entropy())
    x = law.rsample(estimator="st-gumbel", generator=torch.Generator().manual_seed(1))
    assert bool((x[~mask] == 0).all())


def test_masked_law_refuses_an_infeasible_mask() -> None:
    with pytest.raises(ValueError, match=r"mask leaves no feasible solution of Subset\(k=2\)"):
        PerturbAndMAP(torch.zeros(3), pickgrad.Subset(2), mask=torch.tensor([True, False, False]))
