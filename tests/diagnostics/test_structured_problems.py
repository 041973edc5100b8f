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


def test_a_stateful_estimator_wins_only_where_its_lead_is_resolved() -> None:
    from pickgrad.diagnostics.report import STATEFUL_MSE_Z, EstimatorStats, rank_rows

    def row(label: str, mse: float, se: float, stateful: bool) -> EstimatorStats:
        return EstimatorStats(
            label, label, None, 200, mse=mse, mse_se=se, stateful=stateful, acceptable_bias=True
        )

    batch = row("reinforce/batch", 4.0, 0.2, False)
    close = row("reinforce/ema", 3.66, 0.2, True)  # 3.66 + 2 * 0.2 > 4.0: not resolved
    far = row("reinforce/ema", 3.0, 0.2, True)  # 3.0 + 2 * 0.2 < 4.0: resolved
    assert STATEFUL_MSE_Z == 2.0

    def order(rows: list[EstimatorStats]) -> list[str]:
        return [r.label for r in rank_rows(rows, rank_by="mse")]

    assert order([close, batch]) == ["reinforce/batch", "reinforce/ema"]
    assert order([far, batch]) == ["reinforce/ema", "reinforce/batch"]
    # A stateless estimator is ranked by its measured MSE, whatever its error.
    noisy = row("reinforce/rloo", 3.9, 5.0, False)
    assert rank_rows([batch, noisy], rank_by="mse")[0] is noisy


def test_training_error_prefers_a_mean_that_points_right_over_low_variance() -> None:
    from pickgrad.diagnostics.exact import ExactGradient
    from pickgrad.diagnostics.report import ADAM_BETA1, EstimatorStats, _statistics, rank_rows

    exact = torch.tensor([1.0, 0.0], dtype=f64)
    reference = ExactGradient(exact, torch.tensor(0.0), True, torch.zeros(2, dtype=f64), "given")
    tilted = torch.tensor([1.0, 0.3], dtype=f64).expand(50, 2).clone()  # deterministic, tilted
    signs = torch.tensor([1.0, -1.0], dtype=f64).repeat(25)[:, None]
    aligned = torch.tensor([1.5, 0.0], dtype=f64) + 0.5 * signs * torch.tensor([1.0, 1.0])
    rows = []
    for label, draws in (("tilted", tilted), ("aligned", aligned)):
        row = EstimatorStats(label, label, None, 50)
        _statistics(row, draws, reference, 1e-3)
        rows.append(row)
    tilted_row, aligned_row = rows
    assert tilted_row.acceptable_bias and aligned_row.acceptable_bias
    assert math.isclose(tilted_row.perpendicular_bias, 0.3, rel_tol=1e-9)
    assert aligned_row.perpendicular_bias < 1e-12
    momentum = (1 - ADAM_BETA1) / (1 + ADAM_BETA1)
    assert math.isclose(aligned_row.training_error, momentum * aligned_row.variance)
    # MSE prefers the deterministic tilted mean; the training error the aligned one.
    assert tilted_row.mse < aligned_row.mse
    assert rank_rows(rows, rank_by="mse")[0] is tilted_row
    assert rank_rows(rows)[0] is aligned_row


def test_diagnose_records_mse_standard_error_and_state() -> None:
    problem = PROBLEMS["bernoulli"](0)
    report = diagnose(
        problem.loss_fn,
        problem.scores,
        problem.structure,
        ["reinforce/ema", "reinforce/batch"],
        n_samples=30,
    )
    ema, batch = report.row("reinforce/ema"), report.row("reinforce/batch")
    assert ema.stateful and not batch.stateful
    assert 0 < ema.mse_se < ema.mse and 0 < batch.mse_se < batch.mse
