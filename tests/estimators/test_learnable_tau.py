"""A temperature tensor that requires grad keeps its gradient through every relaxing estimator.

``relax(s, tau) = relax(s / tau, 1)`` for every regularised relaxation, so ``select`` binds the
tensor into the structure's relax; the hard forward and the scores' gradient are those of a
float ``tau`` of the same value, and ``d/d tau`` is the surrogate's: exact (gradcheck) for the
soft estimators, and for the straight-through ones the gradient of the relaxation they put in
the backward pass, replayed with the same noise.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import pickgrad
from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset
from pickgrad.noise import sample_gumbel
from pickgrad.structures.base import Structure

f64 = torch.float64
CASES: list[tuple[Structure, tuple[int, ...]]] = [
    (OneHot(), (3, 5)),
    (Subset(2), (3, 5)),
    (SpanningTree(), (2, 4, 4)),
    (Arborescence(), (2, 4, 4)),
    (Permutation(), (2, 3, 3)),
]
RELAXING = ["relaxed", "st-relaxed", "gumbel-relaxed", "st-gumbel", "gumbel-rao"]
PAIRS = [
    pytest.param(structure, shape, name, id=f"{structure!r}-{name}")
    for structure, shape in CASES
    for name in RELAXING
    if name in pickgrad.available_estimators(structure)
]


def _select(scores: Tensor, structure: Structure, name: str, tau: float | Tensor) -> Tensor:
    return pickgrad.select(
        scores, structure, name, tau=tau, generator=torch.Generator().manual_seed(3)
    )


@pytest.mark.parametrize(("structure", "shape", "name"), PAIRS)
def test_tensor_tau_gives_the_float_tau_forward_and_scores_gradient(
    structure: Structure, shape: tuple[int, ...], name: str
) -> None:
    torch.manual_seed(0)
    weights = torch.randn(shape, dtype=f64)
    grads, outputs = [], []
    for tau in (0.7, torch.tensor(0.7, dtype=f64, requires_grad=True)):
        scores = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(1))
        scores.requires_grad_(True)
        x = _select(scores, structure, name, tau)
        (x * weights).sum().backward()
        outputs.append(x.detach())
        grads.append(scores.grad)
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(
    ("structure", "shape", "name"),
    [p for p in PAIRS if p.values[2] in ("relaxed", "gumbel-relaxed")],
)
def test_soft_estimators_differentiate_tau_exactly(
    structure: Structure, shape: tuple[int, ...], name: str
) -> None:
    scores = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(2))
    tau = torch.tensor(0.7, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: (_select(scores, structure, name, t) * weights).sum(), (tau,)
    )


@pytest.mark.parametrize(
    ("structure", "shape", "name"),
    [p for p in PAIRS if p.values[2] in ("st-relaxed", "st-gumbel")],
)
def test_straight_through_tau_gradient_is_its_relaxations(
    structure: Structure, shape: tuple[int, ...], name: str
) -> None:
    scores = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(2))
    soft = {"st-relaxed": "relaxed", "st-gumbel": "gumbel-relaxed"}[name]
    got, want = (
        torch.autograd.grad((_select(scores, structure, estimator, tau) * weights).sum(), tau)[0]
        for estimator, tau in (
            (name, torch.tensor(0.7, dtype=f64, requires_grad=True)),
            (soft, torch.tensor(0.7, dtype=f64, requires_grad=True)),
        )
    )
    torch.testing.assert_close(got, want)
    assert float(got) != 0.0


@pytest.mark.parametrize(
    ("structure", "shape"),
    [(s, shape) for s, shape in CASES if "gumbel-rao" in pickgrad.available_estimators(s)],
)
def test_gumbel_rao_tau_gradient_is_the_mean_over_its_conditional_draws(
    structure: Structure, shape: tuple[int, ...]
) -> None:
    scores = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(2))
    tau = torch.tensor(0.7, dtype=f64, requires_grad=True)
    x = pickgrad.select(
        scores, structure, "gumbel-rao", tau=tau, n_draws=4,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    (got,) = torch.autograd.grad((x * weights).sum(), tau)
    # Replay: the same generator draws the forward noise, then the conditional draws from it.
    generator = torch.Generator().manual_seed(3)
    noise = sample_gumbel(scores.shape, dtype=f64, device=scores.device, generator=generator)
    assert torch.equal(structure.argmax(scores + noise), x.detach())
    draws = structure._conditional_gumbel(scores, x.detach(), 4, generator, start=noise)
    replay = torch.tensor(0.7, dtype=f64, requires_grad=True)
    soft = structure.relax((scores + draws) / replay, 1.0).mean(0)
    (want,) = torch.autograd.grad((soft * weights).sum(), replay)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("name", "options"), [("st", {}), ("perturbed", {"sigma": 0.5})])
def test_estimators_that_do_not_use_tau_read_a_tensor_tau_as_a_float_and_say_so(
    name: str, options: dict[str, float]
) -> None:
    tau = torch.tensor(0.5, requires_grad=True)
    with pytest.warns(UserWarning, match="no gradient reaches it"):
        x = pickgrad.select(
            torch.randn(3, 4, requires_grad=True), OneHot(), name, tau=tau, **options
        )
    x.sum().backward()
    assert tau.grad is None


@pytest.mark.parametrize(("structure", "shape"), CASES[:3])
def test_perturbed_with_a_tensor_tau_matches_a_float_tau(
    structure: Structure, shape: tuple[int, ...]
) -> None:
    weights = torch.randn(shape, dtype=f64)
    grads, outputs = [], []
    for tau in (0.7, torch.tensor(0.7, dtype=f64, requires_grad=True)):
        scores = torch.randn(shape, dtype=f64, generator=torch.Generator().manual_seed(1))
        scores.requires_grad_(True)
        x = _select(scores, structure, "perturbed", tau)
        (x * weights).sum().backward()
        outputs.append(x.detach())
        grads.append(scores.grad)
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_perturbed_tau_gradient_is_unbiased_for_the_noise_scale() -> None:
    # With Gumbel noise on OneHot, E[argmax(s + tau G)] = softmax(s / tau) exactly.
    # Loss = the expected score: its derivative in tau is -Var_p(s) / tau^2, far from zero.
    scores = torch.tensor([[0.3, -0.2, 0.8, 0.0]], dtype=f64)
    weights = scores[0]
    tau = torch.tensor(0.4, dtype=f64, requires_grad=True)
    draws = []
    for seed in range(40):
        x = pickgrad.select(
            scores, OneHot(), "perturbed", tau=tau, n_perturbations=500,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        draws.append(torch.autograd.grad((x * weights).sum(), tau)[0])
    estimate = torch.stack(draws)
    exact_tau = tau.detach().clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(
        (torch.softmax(scores / exact_tau, -1) * weights).sum(), exact_tau
    )
    standard_error = estimate.std() / len(draws) ** 0.5
    assert abs(float(estimate.mean() - exact)) < 4 * float(standard_error) + 1e-9
    assert abs(float(exact)) > 10 * float(standard_error)  # the test can see a wrong sign


def test_learnable_tau_with_lengths_on_trees() -> None:
    scores = torch.randn(2, 5, 5, dtype=f64)
    lengths = torch.tensor([5, 3])
    tau = torch.tensor(0.5, dtype=f64, requires_grad=True)
    x = pickgrad.select(scores, Arborescence(), "relaxed", tau=tau, lengths=lengths)
    want = Arborescence().relax(scores / tau.detach(), 1.0, lengths=lengths)
    torch.testing.assert_close(x.detach(), want)
    (x * torch.randn(5, 5, dtype=f64)).sum().backward()
    assert tau.grad is not None and bool(torch.isfinite(tau.grad))
