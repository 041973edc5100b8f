"""``exact_gradient`` against hand-written closed forms, and its reference fallback."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pickgrad
from pickgrad import OneHot, Subset, exact_gradient
from pickgrad.diagnostics import exact as exact_module
from pickgrad.diagnostics.problems import categorical_quadratic
from pickgrad.structures.base import Structure

f64 = torch.float64


def autograd_of(expectation, scores: torch.Tensor) -> torch.Tensor:
    leaf = scores.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(expectation(leaf), leaf)
    return gradient


@given(n=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_one_slot_matches_softmax_expectation(n: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=generator, dtype=f64) * 2
    cost = torch.randn(n, generator=generator, dtype=f64)
    result = exact_gradient(lambda x: x @ cost, scores, OneHot())
    expected = autograd_of(lambda s: torch.softmax(s, -1) @ cost, scores)
    assert result.exact
    torch.testing.assert_close(result.gradient, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.value, torch.softmax(scores, -1) @ cost)
    assert result.standard_error.abs().max() == 0


def test_coupled_slots_match_product_of_softmaxes() -> None:
    # 2 slots of 3 with an arbitrary (non-separable) loss table L[i, j]: E = sum_ij p_i q_j L_ij.
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, generator=generator, dtype=f64)
    table = torch.randn(3, 3, generator=generator, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:  # (n, 2, 3) -> (n,)
        return torch.einsum("ni,ij,nj->n", x[:, 0], table, x[:, 1])

    result = exact_gradient(loss, scores, OneHot())
    expected = autograd_of(
        lambda s: torch.softmax(s[0], -1) @ table @ torch.softmax(s[1], -1), scores
    )
    torch.testing.assert_close(result.gradient, expected, rtol=1e-10, atol=1e-12)
    assert "9 joint solutions" in result.method


def test_kept_batch_dims_are_independent_problems_averaged() -> None:
    # (B, S, n) scores with a loss keeping B: each entry's S slots are enumerated jointly,
    # the objective is the mean over B, as in pickgrad.estimate.
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 2, 4, generator=generator, dtype=f64)
    weights = torch.randn(3, 4, 4, generator=generator, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:  # (n, 3, 2, 4) -> (n, 3)
        return torch.tanh(torch.einsum("nbi,bij,nbj->nb", x[:, :, 0], weights, x[:, :, 1]))

    def expectation(s: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(s, -1)
        total = 0
        for i, j in itertools.product(range(4), range(4)):
            total = total + p[:, 0, i] * p[:, 1, j] * torch.tanh(weights[:, i, j])
        return total.mean()

    result = exact_gradient(loss, scores, OneHot())
    torch.testing.assert_close(result.gradient, autograd_of(expectation, scores))
    torch.testing.assert_close(result.value, expectation(scores))


def test_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 3, 5, generator=generator, dtype=f64)
    weights = torch.randn(15, generator=generator, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:  # couples every slot of every entry: (n,)
        return torch.sin(x.flatten(2) @ weights.reshape(3, 5).flatten()).sum(-1)

    whole = exact_gradient(loss, scores, OneHot())
    monkeypatch.setattr(exact_module, "_CHUNK_ELEMENTS", 997 * scores.numel())  # 16 uneven chunks
    chunked = exact_gradient(loss, scores, OneHot())
    torch.testing.assert_close(chunked.gradient, whole.gradient, rtol=1e-12, atol=1e-14)


def test_categorical_quadratic_closed_form_matches_enumeration() -> None:
    problem = categorical_quadratic(seed=3, n_slots=3, n_classes=4)
    enumerated = exact_gradient(problem.loss_fn, problem.scores, problem.structure)
    closed = problem.exact_gradient()
    assert closed.method == "closed form" and "64 joint" in enumerated.method
    torch.testing.assert_close(closed.gradient, enumerated.gradient, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed.value, enumerated.value)


def test_too_many_joint_solutions_is_a_clear_error() -> None:
    scores = torch.zeros(6, 10, dtype=f64)
    with pytest.raises(ValueError, match=r"10\^6 = 1000000 joint solutions.*max_enumeration=1000"):
        exact_gradient(lambda x: x.sum((-1, -2)), scores, OneHot(), max_enumeration=1000)
    # The same loss keeping the slot dim is separable: 10 solutions per slot.
    result = exact_gradient(lambda x: x[..., 0], scores, OneHot(), max_enumeration=1000)
    torch.testing.assert_close(result.gradient[:, 0], torch.full((6,), 0.09 / 6, dtype=f64))


def test_float32_scores_give_float32_gradient() -> None:
    scores = torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.5, -1.0]])
    cost = torch.tensor([1.0, -2.0, 0.5])
    result = exact_gradient(lambda x: (x @ cost).prod(-1), scores, OneHot())
    reference = exact_gradient(lambda x: (x @ cost.double()).prod(-1), scores.double(), OneHot())
    assert result.gradient.dtype == torch.float32 and result.value.dtype == torch.float32
    torch.testing.assert_close(result.gradient.double(), reference.gradient, rtol=1e-5, atol=1e-6)


def test_bad_input() -> None:
    scores = torch.zeros(3, dtype=f64)
    with pytest.raises(TypeError, match="structure"):
        exact_gradient(lambda x: x.sum(-1), scores, "onehot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss_fn must return"):
        exact_gradient(lambda x: x, scores, OneHot())
    with pytest.raises(ValueError, match="NaN"):
        exact_gradient(lambda x: x.sum(-1), torch.tensor([0.0, float("nan")]), OneHot())
    with pytest.raises(ValueError, match="max_enumeration"):
        exact_gradient(lambda x: x.sum(-1), scores, OneHot(), max_enumeration=0)


class OneHotWithoutLaw(OneHot):
    """OneHot that hides its closed-form law, to exercise the reference fallback."""

    _perturb_log_prob = Structure._perturb_log_prob


def test_reference_fallback_is_unbiased_within_its_standard_error() -> None:
    generator = torch.Generator().manual_seed(4)
    scores = torch.tensor([[0.5, -0.5, 1.0], [0.0, 0.2, -0.3]], dtype=f64)
    cost = torch.tensor([[1.0, 3.0, -1.0], [0.0, 2.0, 1.0]], dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * cost).sum((-1, -2)) ** 2

    truth = exact_gradient(loss, scores, OneHot())
    reference = exact_gradient(
        loss, scores, OneHotWithoutLaw(), n_reference=2**14, generator=generator
    )
    assert not reference.exact and "reference" in reference.method
    assert bool((reference.standard_error > 0).all())
    z = (reference.gradient - truth.gradient).abs() / reference.standard_error
    assert float(z.max()) < 5, z
    # The reference is informative: far more precise than the gradient itself.
    assert reference.noise_norm < 0.2 * float(truth.gradient.norm())


def test_reference_on_subset_matches_plackett_luce_law() -> None:
    # Top-2 of scores + Gumbel: P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j), p = softmax.
    generator = torch.Generator().manual_seed(5)
    scores = torch.tensor([0.4, -0.3, 1.1, 0.0], dtype=f64)
    value = torch.tensor([2.0, -1.0, 0.5, 1.5], dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x @ value)

    def expectation(s: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(s, -1)
        total = 0
        for i, j in itertools.combinations(range(4), 2):
            prob = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
            total = total + prob * torch.cos(value[i] + value[j])
        return total

    reference = pickgrad.exact_gradient(
        loss, scores, Subset(2), n_reference=2**14, generator=generator
    )
    truth = autograd_of(expectation, scores)
    if reference.exact:  # Subset has gained a closed-form law
        torch.testing.assert_close(reference.gradient, truth)
    else:
        z = (reference.gradient - truth).abs() / reference.standard_error
        assert float(z.max()) < 5, z
