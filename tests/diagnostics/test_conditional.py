"""``conditional_gradient``: each coordinate's Gumbel integrated exactly, the rest Monte Carlo.

Checked against every exact path (OneHot's softmax, Subset's Plackett-Luce law, the spanning
tree law), against brute force on the 2 x 2 assignment and the 3-node arborescence (laws by
one-dimensional quadrature, gradients by their central differences), and its standard error
against the spread of independent repeats.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import pickgrad
from pickgrad import OneHot, Subset, exact_gradient
from pickgrad.diagnostics import exact as exact_module
from pickgrad.diagnostics.exact import conditional_gradient

f64 = torch.float64
#: |estimate - truth| / standard_error stays below this for every coordinate (a few dozen
#: coordinates per test: a normal exceeds 5 with probability 6e-7).
Z_MAX = 5.0


def z_scores(result: exact_module.ExactGradient, truth: torch.Tensor) -> torch.Tensor:
    se = result.standard_error
    resolved = se > 0
    # Coordinates with zero error must be exactly right (unused, masked or shift-invariant).
    assert bool((result.gradient[~resolved] == truth[~resolved]).all())
    return (result.gradient - truth)[resolved].abs() / se[resolved]


def test_coupled_onehot_slots_match_the_softmax_law() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 4, generator=generator, dtype=f64)
    weights = torch.randn(3, 4, generator=generator, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:  # couples the 3 slots
        return torch.sin((x * weights).sum((-1, -2)))

    truth = exact_gradient(loss, scores, OneHot())
    result = conditional_gradient(loss, scores, OneHot(), n_draws=2**13, generator=generator)
    assert not result.exact and "conditional Monte Carlo over 8192" in result.method
    assert float(z_scores(result, truth.gradient).max()) < Z_MAX
    # Informative: the error is small against the gradient.
    assert result.noise_norm < 0.05 * float(truth.gradient.norm())
    assert abs(float(result.value - truth.value)) < 5 * 0.02


def test_subset_matches_plackett_luce_law() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.tensor([0.4, -0.3, 1.1, 0.0, -0.8], dtype=f64)
    value = torch.tensor([2.0, -1.0, 0.5, 1.5, 0.3], dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x @ value)

    def expectation(s: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(s, -1)
        total = torch.zeros((), dtype=f64)
        for i, j in itertools.combinations(range(5), 2):
            prob = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
            total = total + prob * torch.cos(value[i] + value[j])
        return total

    leaf = scores.clone().requires_grad_(True)
    (truth,) = torch.autograd.grad(expectation(leaf), leaf)
    result = conditional_gradient(loss, scores, Subset(2), n_draws=2**13, generator=generator)
    assert float(z_scores(result, truth).max()) < Z_MAX


@pytest.mark.parametrize("edge_list", [False, True])
def test_spanning_tree_matches_the_kruskal_law(edge_list: bool) -> None:
    generator = torch.Generator().manual_seed(2)
    matrix = torch.randn(2, 4, 4, generator=generator, dtype=f64)
    weights = torch.randn(4, 4, generator=generator, dtype=f64)
    rows, cols = torch.triu_indices(4, 4, 1)
    structure = pickgrad.SpanningTree(edge_list=edge_list)
    scores = matrix[..., rows, cols] if edge_list else matrix
    w = weights[rows, cols] if edge_list else weights

    def loss(x: torch.Tensor) -> torch.Tensor:  # (n, 2, *event) -> (n, 2): independent entries
        return torch.sin(3 * (x * w).flatten(2).sum(-1))

    truth = exact_gradient(loss, scores, structure)
    assert truth.exact
    result = conditional_gradient(loss, scores, structure, n_draws=2**13, generator=generator)
    assert float(z_scores(result, truth.gradient).max()) < Z_MAX
    if not edge_list:  # the diagonal and lower triangle are not scored: exactly zero
        lower = torch.ones(4, 4, dtype=torch.bool).tril()
        assert float(result.gradient[..., lower].abs().max()) == 0


def test_one_row_permutation_is_a_softmax() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 1, 5, generator=generator, dtype=f64)
    cost = torch.randn(2, 1, 5, generator=generator, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * cost).sum((-1, -2)) ** 2  # (n, 2)

    p = torch.softmax(scores, -1)
    expected = (p * cost).sum(-1, keepdim=True)
    second = (p * cost**2).sum(-1, keepdim=True)
    # d/ds E[(c_x)^2] = p (c^2 - E[c^2]); averaged over the 2 kept entries.
    truth = p * (cost**2 - second) / 2
    assert torch.isfinite(expected).all()
    result = conditional_gradient(loss, scores, pickgrad.Permutation(), generator=generator)
    assert float(z_scores(result, truth).max()) < Z_MAX


def _logistic_pdf(x: float) -> float:
    return 0.25 / math.cosh(x / 2) ** 2


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_two_by_two_assignment_against_brute_force_integration() -> None:
    # Identity wins iff (G00 - G01) + (G11 - G10) > a = s01 + s10 - s00 - s11: a sum of two
    # standard logistics, so P(identity) = integral of logistic_pdf(l) sigmoid(l - a) dl and
    # dP/ds00 = dP/ds11 = -dP/ds01 = -dP/ds10 = its density at a.
    from scipy.integrate import quad

    generator = torch.Generator().manual_seed(4)
    scores = torch.tensor([[0.3, -0.4], [0.9, 0.2]], dtype=f64)
    a = float(scores[0, 1] + scores[1, 0] - scores[0, 0] - scores[1, 1])
    density, error = quad(lambda l: _logistic_pdf(l) * _logistic_pdf(a - l), -60, 60, epsabs=1e-13)
    assert error < 1e-10
    f_identity, f_swap = 1.7, -0.6
    identity = torch.eye(2, dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        is_identity = (x == identity).all(-1).all(-1)
        return torch.where(is_identity, f_identity, f_swap).to(f64)

    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=f64)
    truth = (f_identity - f_swap) * density * sign
    result = exact_gradient(loss, scores, pickgrad.Permutation(), generator=generator)
    assert "conditional Monte Carlo" in result.method
    assert float(z_scores(result, truth).max()) < Z_MAX
    assert result.noise_norm < 0.02 * float(truth.norm())


def _arborescence_expectation(s: list[list[float]], f: dict[str, float]) -> float:
    """E[loss] on 3 nodes rooted at 0 by quadrature: A = {0->1, 0->2}, B = {0->1, 1->2},
    C = {0->2, 2->1}. A beats B iff u02 > u12 and C iff u01 > u21 (disjoint pairs), so
    P(A) = sigmoid(s02 - s12) sigmoid(s01 - s21); B wins iff X = u12 - u02 > 0 and
    X + Y > 0 with Y = u01 - u21, X and Y independent logistics."""
    from scipy.integrate import quad

    mx, my = s[1][2] - s[0][2], s[0][1] - s[2][1]
    p_a = _sigmoid(-mx) * _sigmoid(my)
    p_b, error = quad(
        lambda x: _logistic_pdf(x - mx) * _sigmoid(my + x), 0, 60, epsabs=1e-14, epsrel=1e-13
    )
    assert error < 1e-11
    return f["A"] * p_a + f["B"] * p_b + f["C"] * (1 - p_a - p_b)


def test_three_node_arborescence_against_central_differences_of_its_law() -> None:
    generator = torch.Generator().manual_seed(5)
    scores = torch.tensor([[0.0, 0.4, -0.2], [0.0, 0.0, 0.7], [0.0, -0.5, 0.0]], dtype=f64)
    values = {"A": 1.0, "B": -2.0, "C": 0.5}
    structure = pickgrad.Arborescence()
    solutions = structure.enumerate((3, 3), dtype=f64)
    names = []
    for y in solutions:
        arcs = {(i, j) for i in range(3) for j in range(3) if y[i, j] == 1}
        names.append(
            {frozenset({(0, 1), (0, 2)}): "A", frozenset({(0, 1), (1, 2)}): "B"}.get(
                frozenset(arcs), "C"
            )
        )
    table = torch.tensor([values[name] for name in names], dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        match = (x[:, None] == solutions).all(-1).all(-1)  # (n, 3)
        return (match.to(f64) * table).sum(-1)

    step = 1e-4
    truth = torch.zeros(3, 3, dtype=f64)
    base = scores.tolist()
    for i, j in [(0, 1), (0, 2), (1, 2), (2, 1)]:
        up = [row[:] for row in base]
        down = [row[:] for row in base]
        up[i][j] += step
        down[i][j] -= step
        truth[i, j] = (
            _arborescence_expectation(up, values) - _arborescence_expectation(down, values)
        ) / (2 * step)
    result = exact_gradient(loss, scores, structure, generator=generator)
    assert "conditional Monte Carlo" in result.method and not result.exact
    # The diagonal and the arcs into the root are in no arborescence: exactly zero.
    assert float(z_scores(result, truth).max()) < Z_MAX
    assert result.noise_norm < 0.05 * float(truth.norm())
    assert math.isclose(
        float(result.value), _arborescence_expectation(base, values), abs_tol=5 * 0.015
    )


def test_standard_error_matches_the_spread_of_repeats() -> None:
    scores = torch.randn(4, 4, generator=torch.Generator().manual_seed(6), dtype=f64)
    weights = torch.randn(4, 4, generator=torch.Generator().manual_seed(7), dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh((x * weights).sum((-1, -2)))

    repeats = [
        conditional_gradient(
            loss,
            scores,
            pickgrad.Permutation(),
            n_draws=512,
            generator=torch.Generator().manual_seed(100 + r),
        )
        for r in range(24)
    ]
    gradients = torch.stack([r.gradient for r in repeats])
    spread = gradients.std(0)
    claimed = torch.stack([r.standard_error for r in repeats]).mean(0)
    ratio = spread / claimed
    # 24 repeats: the sample std is within about +-30% of the truth at 2 sigma.
    assert 0.6 < float(ratio.median()) < 1.4, ratio


def test_minus_inf_entries_get_exactly_zero_and_the_rest_matches() -> None:
    generator = torch.Generator().manual_seed(8)
    scores = torch.tensor([[0.2, -math.inf, 1.0, 0.3], [0.5, 0.1, -math.inf, -0.4]], dtype=f64)
    cost = torch.tensor([[1.0, 5.0, -1.0, 2.0], [0.0, 1.0, 4.0, -2.0]], dtype=f64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (x * cost).sum((-1, -2)) ** 2

    truth = exact_gradient(loss, scores, OneHot())
    result = conditional_gradient(loss, scores, OneHot(), generator=generator)
    assert float(result.gradient[0, 1]) == 0 and float(result.gradient[1, 2]) == 0
    assert bool(torch.isfinite(result.gradient).all())
    assert float(z_scores(result, truth.gradient).max()) < Z_MAX


def test_dispatch_and_bad_input() -> None:
    loss = lambda x: x[..., 0, 1]  # noqa: E731
    small = exact_gradient(loss, torch.zeros(3, 3, dtype=f64), pickgrad.Permutation())
    assert "conditional Monte Carlo" in small.method
    # 7! = 5040 > MAX_CONDITIONAL_SOLUTIONS permutations: the reinforce reference.
    assert exact_module.MAX_CONDITIONAL_SOLUTIONS == 2048
    large = exact_gradient(
        loss, torch.zeros(7, 7, dtype=f64), pickgrad.Permutation(), n_reference=64
    )
    assert "reference" in large.method
    with pytest.raises(ValueError, match="n_conditional"):
        exact_gradient(loss, torch.zeros(3, 3, dtype=f64), pickgrad.Permutation(), n_conditional=1)
    with pytest.raises(ValueError, match="n_draws"):
        conditional_gradient(loss, torch.zeros(3, 3, dtype=f64), pickgrad.Permutation(), n_draws=0)
    with pytest.raises(TypeError, match="structure"):
        conditional_gradient(loss, torch.zeros(3, 3), "permutation")  # type: ignore[arg-type]
