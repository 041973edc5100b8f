"""``diagnose`` on the tree, arborescence and permutation problems, and with a mask."""

from __future__ import annotations

import math

import pytest
import torch

import pickgrad
from pickgrad import diagnose
from pickgrad.diagnostics.problems import PROBLEMS
from pickgrad.diagnostics.report import _not_applicable

f64 = torch.float64


@pytest.mark.parametrize(
    ("structure", "shape", "masked"),
    [
        (pickgrad.OneHot(), (2, 4), [(0, 1), (1, 3)]),
        (pickgrad.Arborescence(), (4, 4), [(0, 2), (1, 3)]),
    ],
)
def test_mask_is_forwarded_to_the_estimators_and_the_exact_gradient(
    structure: pickgrad.structures.base.Structure,
    shape: tuple[int, ...],
    masked: list[tuple[int, int]],
) -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(*shape, generator=generator, dtype=f64)
    weights = torch.randn(*shape, generator=generator, dtype=f64)
    mask = torch.ones(shape, dtype=torch.bool)
    for index in masked:
        mask[index] = False

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.sin((x * weights).sum((-1, -2)))

    estimators = ["st-gumbel", "reinforce/rloo"]
    report = diagnose(loss, scores, structure, estimators, n_samples=40, mask=mask)
    minus_inf = diagnose(
        loss, scores.masked_fill(~mask, -math.inf), structure, estimators, n_samples=40
    )
    assert report.settings["masked"] is True and minus_inf.settings["masked"] is False
    # The mask means exactly -inf scores: the same draws, the same figures.
    for row, other in zip(report.rows, minus_inf.rows, strict=True):
        assert row.error is None, row.error
        assert (row.bias, row.mse, row.cosine_mean) == (other.bias, other.mse, other.cosine_mean)
    gradient = report.reference.gradient
    assert all(float(gradient[index]) == 0 for index in masked)
    assert bool(torch.isfinite(gradient).all())
    rloo = report.row("reinforce/rloo")
    assert rloo.bias < 5 * rloo.noise_floor  # unbiased against the masked exact gradient
    with pytest.raises(ValueError, match="mask"):
        diagnose(loss, scores, structure, estimators, n_samples=4, mask=torch.zeros(shape) > 0)


def test_spanning_tree_problem_reports_gumbel_rao_next_to_st_gumbel() -> None:
    problem = PROBLEMS["spanning-tree"](0)
    report = diagnose(
        problem.loss_fn,
        problem.scores,
        problem.structure,
        ["st-gumbel", "gumbel-rao"],
        n_samples=60,
        name=problem.name,
    )
    assert report.reference.exact  # the Kruskal law
    st_gumbel, gumbel_rao = report.row("st-gumbel"), report.row("gumbel-rao")
    assert st_gumbel.error is None and gumbel_rao.error is None, gumbel_rao.error
    assert 0 < gumbel_rao.std < math.inf and 0 < st_gumbel.std < math.inf
    # Rao-Blackwellisation keeps the mean: the biases agree within their noise.
    assert abs(gumbel_rao.bias - st_gumbel.bias) < 5 * (
        gumbel_rao.noise_floor + st_gumbel.noise_floor
    )
    markdown = report.to_markdown()
    assert "| gumbel-rao | 1 | hard |" in markdown and "| st-gumbel | 1 | hard |" in markdown


@pytest.mark.parametrize(
    ("name", "relaxation"),
    [("arborescence", "matrix-tree arc marginals"), ("permutation", "Sinkhorn")],
)
def test_arborescence_and_permutation_problems_are_explained(name: str, relaxation: str) -> None:
    problem = PROBLEMS[name](0)
    report = diagnose(
        problem.loss_fn, problem.scores, problem.structure, n_samples=30, name=problem.name
    )
    assert not report.reference.exact
    assert "conditional Monte Carlo" in report.reference.method
    # The reference is far more precise than the gradient it estimates.
    assert report.reference.noise_norm < 0.1 * float(report.reference.gradient.norm())
    relaxed = report.row("st-relaxed")
    assert not relaxed.acceptable_bias
    assert relaxed.explanation is not None and relaxation in relaxed.explanation
    blackbox = report.row("blackbox")
    assert blackbox.explanation is not None and "not linear in x" in blackbox.explanation
    assert report.recommendation is not None
    markdown = report.to_markdown()
    assert "Not applicable here:" in markdown
    assert "- gumbel-rao: needs conditional_gumbel" in markdown


def test_not_applicable_names_the_missing_capability_and_its_reason() -> None:
    assert _not_applicable(pickgrad.OneHot()) == {}
    absent = _not_applicable(pickgrad.Permutation())
    assert set(absent) == {"gumbel-rao"}
    assert absent["gumbel-rao"] == (
        "needs conditional_gumbel, which Permutation() does not provide"
    )
