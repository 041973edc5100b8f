"""``exact_gradient`` against hand-written closed forms, and its reference fallback."""

from __future__ import annotations

import itertools
import math

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
    """OneHot that hides its closed-form law and its enumeration, to exercise the reference
    fallback."""

    _perturb_log_prob = Structure._perturb_log_prob
    enumerate = Structure.enumerate  # type: ignore[assignment]


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


# --- spanning trees: exact law through Kruskal's orderings ---------------------------------


def test_tree_law_on_three_nodes_matches_one_dimensional_integral() -> None:
    # On K_3 the maximum spanning tree leaves out the edge with the smallest perturbed score:
    # P(tree without e) = integral of f_e(u) prod_{o != e} (1 - F_o(u)) du, Gumbel(s) f and F.
    from scipy.integrate import quad

    from pickgrad.diagnostics.exact import spanning_tree_log_prob

    scores = torch.tensor([0.7, -1.2, 0.4], dtype=f64)  # edges (0,1), (0,2), (1,2)
    log_p, trees = spanning_tree_log_prob(scores)
    values = scores.tolist()

    def cdf(u: float, s: float) -> float:
        return math.exp(-math.exp(-(u - s)))

    for index, tree in enumerate(trees):
        (left_out,) = [e for e in range(3) if tree[e] == 0]
        s = values[left_out]
        others = [values[e] for e in range(3) if e != left_out]

        def density(u: float, s: float = s, others: list[float] = others) -> float:
            f = math.exp(-(u - s)) * cdf(u, s)
            return f * math.prod(1 - cdf(u, o) for o in others)

        integral, error = quad(density, -30, 30, epsabs=1e-13, epsrel=1e-12)
        assert error < 1e-10
        assert math.isclose(float(log_p[index].exp()), integral, rel_tol=1e-9)


def test_tree_law_matches_sampled_argmax_frequencies() -> None:
    # Chi-squared goodness of fit of argmax(scores + G) against the law, 16 trees on K_4.
    from pickgrad.diagnostics.exact import spanning_tree_log_prob

    generator = torch.Generator().manual_seed(11)
    scores = torch.randn(6, generator=generator, dtype=f64)
    log_p, trees = spanning_tree_log_prob(scores)
    draws = 40_000
    uniform = torch.rand(draws, 6, generator=generator, dtype=f64)
    samples = pickgrad.SpanningTree(edge_list=True).argmax(scores - torch.log(-torch.log(uniform)))
    counts = (samples[:, None, :] == trees).all(-1).sum(0).double()
    assert int(counts.sum()) == draws  # every sample is one of the enumerated trees
    expected = draws * log_p.exp()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 37.7  # the 0.999 quantile of chi-squared with 15 degrees of freedom


@pytest.mark.parametrize("edge_list", [False, True])
def test_spanning_tree_gradient_is_exact_and_agrees_with_the_reference(edge_list: bool) -> None:
    generator = torch.Generator().manual_seed(12)
    matrix = torch.randn(2, 4, 4, generator=generator, dtype=f64)
    weights = torch.randn(4, 4, generator=generator, dtype=f64)
    rows, cols = torch.triu_indices(4, 4, 1)
    structure = pickgrad.SpanningTree(edge_list=edge_list)
    scores = matrix[..., rows, cols] if edge_list else matrix
    w = weights[rows, cols] if edge_list else weights

    def loss(x: torch.Tensor) -> torch.Tensor:  # (n, 2, *event) -> (n, 2)
        return torch.sin(3 * (x * w).flatten(2).sum(-1))

    result = exact_gradient(loss, scores, structure)
    assert result.exact and "enumeration of 16 joint solutions" in result.method
    hidden = exact_module._by_reference(
        loss,
        scores.clone().requires_grad_(True),
        scores,
        structure,
        2**15,
        torch.Generator().manual_seed(13),
    )
    z = (hidden.gradient - result.gradient).abs() / hidden.standard_error.clamp_min(1e-12)
    upper = z if edge_list else z[..., rows, cols]
    assert float(upper.max()) < 5, upper
    if not edge_list:  # the lower triangle and the diagonal are ignored by the structure
        lower = torch.ones(4, 4, dtype=torch.bool).tril()
        assert float(result.gradient[..., lower].abs().max()) == 0


def test_spanning_tree_gradient_is_the_derivative_of_its_expectation() -> None:
    # Central differences of the exact E[loss] against the autograd gradient through the law.
    generator = torch.Generator().manual_seed(14)
    scores = torch.randn(10, generator=generator, dtype=f64)  # K_5, edge list
    weights = torch.randn(10, generator=generator, dtype=f64)
    structure = pickgrad.SpanningTree(edge_list=True)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ weights)

    result = exact_gradient(loss, scores, structure)
    assert result.exact
    step = 1e-5
    for edge in (0, 4, 9):
        bump = torch.zeros(10, dtype=f64)
        bump[edge] = step
        up = exact_gradient(loss, scores + bump, structure).value
        down = exact_gradient(loss, scores - bump, structure).value
        assert math.isclose(
            float((up - down) / (2 * step)), float(result.gradient[edge]), abs_tol=1e-8
        )


def test_large_trees_fall_back_to_conditional_then_reference() -> None:
    scores = torch.zeros(6, 6, dtype=f64)  # 6 nodes > MAX_TREE_NODES: 1296 trees, conditional
    result = exact_gradient(
        lambda x: x[..., 0, 1], scores, pickgrad.SpanningTree(), n_conditional=64
    )
    assert exact_module.MAX_TREE_NODES == 5
    assert not result.exact and "conditional Monte Carlo" in result.method
    scores = torch.zeros(7, 7, dtype=f64)  # 16807 trees > MAX_CONDITIONAL_SOLUTIONS
    result = exact_gradient(lambda x: x[..., 0, 1], scores, pickgrad.SpanningTree(), n_reference=64)
    assert not result.exact and "reference" in result.method
