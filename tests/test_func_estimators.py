"""Every estimator's ``select`` under ``torch.func``: vmap, grad, jacrev and vmap of grad.

Validation is off (value checks are skipped under transforms anyway). The oracle is eager
autograd with the same seed: ``torch.func.grad`` and ``jacrev`` draw exactly the eager noise
(their forward runs once, outside any vmap level), so values and gradients must agree to
rounding. ``vmap`` has its own random streams (``randomness=``), checked by law below.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from scipy import stats

import pickgrad
from func_cases import (
    ESTIMATOR_OPTIONS,
    FUNC_CASES,
    FuncCase,
    chooser,
    pair_id,
    pairs,
    scores_and_weights,
)
from pickgrad import OneHot

DETERMINISTIC = ("st", "st-relaxed", "relaxed", "blackbox")


@pytest.fixture(autouse=True)
def _no_validation() -> Iterator[None]:
    with pickgrad.validation(False):
        yield


def _eager_gradient(case: FuncCase, estimator: str, seed: int) -> torch.Tensor:
    scores, weights = scores_and_weights(case, seed)
    leaf = scores.clone().requires_grad_()
    torch.manual_seed(seed)
    x = chooser(case, estimator)(leaf)
    (gradient,) = torch.autograd.grad((x * weights).sum(), leaf)
    return gradient


@pytest.mark.parametrize("pair", pairs("grad"), ids=pair_id)
def test_grad_equals_eager_autograd_with_the_same_seed(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 1)
    choose = chooser(case, estimator)
    torch.manual_seed(1)
    gradient = torch.func.grad(lambda s: (choose(s) * weights).sum())(scores)
    expected = _eager_gradient(case, estimator, 1)
    torch.testing.assert_close(gradient, expected, atol=1e-12, rtol=1e-10)
    if estimator not in ("relaxed", "gumbel-relaxed"):  # a hard or straight-through estimator
        assert bool(expected.abs().sum() > 0) or estimator in ("imle", "blackbox")


@pytest.mark.parametrize("pair", pairs("jacrev"), ids=pair_id)
def test_jacrev_equals_the_eager_jacobian_with_the_same_seed(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, _ = scores_and_weights(case, 2)
    choose = chooser(case, estimator)
    torch.manual_seed(2)
    jacobian = torch.func.jacrev(choose)(scores)
    torch.manual_seed(2)
    expected = torch.autograd.functional.jacobian(choose, scores)
    assert jacobian.shape == (*case.shape, *case.shape)
    torch.testing.assert_close(jacobian, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("pair", [p for p in pairs("vmap") if p[1] in DETERMINISTIC], ids=pair_id)
def test_vmap_of_a_deterministic_estimator_equals_the_batched_call(
    pair: tuple[FuncCase, str],
) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 3)
    choose = chooser(case, estimator)
    torch.testing.assert_close(torch.func.vmap(choose)(scores), choose(scores))
    # vmap of grad: one gradient per batch entry, each that of its own slice.
    gradients = torch.func.vmap(torch.func.grad(lambda s, w: (choose(s) * w).sum()))(
        scores, weights
    )
    torch.testing.assert_close(gradients, _eager_gradient(case, estimator, 3))


@pytest.mark.parametrize("pair", pairs("vmap"), ids=pair_id)
def test_vmap_and_vmap_of_grad_run_with_every_randomness_mode(pair: tuple[FuncCase, str]) -> None:
    case, estimator = pair
    scores, weights = scores_and_weights(case, 4)
    choose = chooser(case, estimator)
    eager = choose(scores)
    different = torch.func.vmap(choose, randomness="different")(scores)
    same = torch.func.vmap(choose, randomness="same")(scores)
    hard = pickgrad.get_estimator(estimator, **ESTIMATOR_OPTIONS[estimator]).hard
    for x in (different, same):
        assert x.shape == eager.shape and x.dtype == eager.dtype
        if hard:  # a solution is its own argmax
            assert torch.equal(case.structure.argmax(x), x)
    gradients = torch.func.vmap(
        torch.func.grad(lambda s, w: (choose(s) * w).sum()), randomness="different"
    )(scores, weights)
    assert gradients.shape == scores.shape and bool(torch.isfinite(gradients).all())
    if estimator in DETERMINISTIC:
        torch.testing.assert_close(different, eager)
        torch.testing.assert_close(same, eager)
    else:
        with pytest.raises(RuntimeError, match="randomness"):
            torch.func.vmap(choose)(scores)  # randomness="error", torch's default


@pytest.mark.parametrize("estimator", ["gumbel-relaxed", "st-gumbel", "gumbel-rao", "imle"])
def test_vmap_randomness_same_repeats_one_draw_and_different_draws_anew(estimator: str) -> None:
    case = FUNC_CASES[0]
    rows = torch.zeros(6, 8, dtype=torch.float64)  # identical rows: only the noise tells apart
    choose = chooser(case, estimator)
    relaxed = estimator == "gumbel-relaxed"
    same = torch.func.vmap(choose, randomness="same")(rows)
    assert torch.unique(same, dim=0).shape[0] == 1
    generator = torch.Generator().manual_seed(5)
    draws = torch.func.vmap(
        lambda s: pickgrad.select(s, OneHot(), estimator, tau=0.5, generator=generator),
        randomness="different",
    )(torch.zeros(6 if relaxed else 64, 8, dtype=torch.float64))
    distinct = torch.unique(draws, dim=0).shape[0]
    # Relaxed points: all different; one-hots of 8 items over 64 draws: nearly all 8 appear.
    assert distinct == 6 if relaxed else distinct >= 6


def test_vmap_randomness_different_gives_the_gumbel_max_law() -> None:
    scores = torch.tensor([1.0, 0.0, -0.5, 2.0], dtype=torch.float64)
    batch = scores.expand(4000, 4)
    draws = torch.func.vmap(
        lambda s: pickgrad.select(s, OneHot(), "st-gumbel"), randomness="different"
    )(batch)
    counts = draws.sum(0).numpy()
    expected = torch.softmax(scores, -1).numpy() * 4000
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_vmap_of_a_generic_gumbel_rao_matches_the_fused_eager_law() -> None:
    # Under vmap the fused OneHot path gives way to the generic one; the backward is still the
    # Rao-Blackwellised mean, whose expectation over the noise is the st-gumbel gradient.
    scores = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)
    weights = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    grad = torch.func.grad(
        lambda s: (pickgrad.select(s, OneHot(), "gumbel-rao", n_draws=4, tau=1.0) * weights).sum()
    )
    gradients = torch.func.vmap(grad, randomness="different")(scores.expand(3000, 3))
    generator = torch.Generator().manual_seed(7)
    leaf = scores.expand(3000, 3).clone().requires_grad_()
    x = pickgrad.select(leaf, OneHot(), "st-gumbel", tau=1.0, generator=generator)
    (st_gradients,) = torch.autograd.grad((x * weights).sum(), leaf)
    difference = gradients.mean(0) - st_gradients.mean(0)
    standard_error = ((gradients.var(0) + st_gradients.var(0)) / 3000) ** 0.5
    assert bool((difference.abs() < 5 * standard_error).all())
    assert bool((gradients.var(0) <= st_gradients.var(0)).all())  # Rao-Blackwell
