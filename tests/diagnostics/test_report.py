"""``diagnose``: the figures' definitions, the advisor rule, and the renderings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import pickgrad
from pickgrad import OneHot, diagnose
from pickgrad.diagnostics.problems import PROBLEMS
from pickgrad.diagnostics.report import (
    EstimatorStats,
    parse_estimator,
    rank,
    rank_rows,
    recommend,
    resolve_estimators,
)
from pickgrad.structures.base import Structure

f64 = torch.float64
SCORES = torch.tensor([[0.5, -0.2, 0.1], [1.0, 0.0, -1.0]], dtype=f64)
COST = torch.tensor([[1.0, 3.0, -1.0], [0.0, 2.0, 1.0]], dtype=f64)


def loss_fn(x: torch.Tensor) -> torch.Tensor:
    return ((x * COST).sum(-1) - 1.0) ** 2  # (n, 2)


def test_figures_follow_their_definitions() -> None:
    report = diagnose(loss_fn, SCORES, OneHot(), ["st-gumbel", "reinforce/rloo"], n_samples=50)
    exact = report.reference.gradient
    for row in report.rows:
        assert row.error is None and row.n_draws == 50
        # mse = bias^2 + variance (R-1)/R exactly, for an exact reference.
        assert math.isclose(row.mse, row.bias**2 + row.variance * 49 / 50, rel_tol=1e-9)
        assert math.isclose(row.std, math.sqrt(row.variance))
        assert math.isclose(row.noise_floor, math.sqrt(row.variance / 50))
        assert math.isclose(row.relative_bias, row.bias / float(exact.norm()))
        assert math.isclose(row.efficiency, row.mse * row.time_per_gradient)
        assert -1 <= row.cosine_draw <= 1 and -1 <= row.cosine_mean <= 1
        assert 0 <= row.sign_agreement <= 1 and row.time_per_gradient > 0


def test_deterministic_estimator_has_zero_variance_and_its_exact_bias() -> None:
    report = diagnose(loss_fn, SCORES, OneHot(), ["relaxed"], n_samples=5, tau=0.7)
    row = report.rows[0]
    leaf = SCORES.clone().requires_grad_(True)
    pickgrad.estimate(loss_fn, leaf, OneHot(), "relaxed", n_samples=4, tau=0.7).backward()
    assert row.variance == pytest.approx(0, abs=1e-25)
    assert row.bias == pytest.approx(float((leaf.grad - report.reference.gradient).norm()))
    assert row.tau == 0.7 and row.cosine_draw == pytest.approx(row.cosine_mean)


def test_same_seed_same_report() -> None:
    first = diagnose(loss_fn, SCORES, OneHot(), ["gumbel-rao", "reinforce/ema"], n_samples=10)
    second = diagnose(loss_fn, SCORES, OneHot(), ["gumbel-rao", "reinforce/ema"], n_samples=10)
    for a, b in zip(first.rows, second.rows, strict=True):
        assert (a.bias, a.variance, a.sign_agreement) == (b.bias, b.variance, b.sign_agreement)


def test_default_estimators_are_every_applicable_one_with_each_reinforce_baseline() -> None:
    labels = [label for label, _ in resolve_estimators(None, OneHot())]
    names = set(pickgrad.available_estimators(OneHot())) - {"reinforce"}
    assert names <= set(labels)
    assert {f"reinforce/{b}" for b in pickgrad.BASELINES} <= set(labels)
    assert len(labels) == len(names) + len(pickgrad.BASELINES)
    assert labels[0] == "st"


def test_estimator_specs() -> None:
    label, estimator = parse_estimator("gumbel-rao:n_draws=3")
    assert label == "gumbel-rao:n_draws=3" and estimator.n_draws == 3  # type: ignore[attr-defined]
    assert parse_estimator("reinforce/batch")[1].baseline == "batch"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown estimator"):
        parse_estimator("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_estimator("gumbel-rao:n_draws")
    with pytest.raises(ValueError, match="bad estimator spec"):
        parse_estimator("st-gumbel:n_draws=2")


def test_a_failing_estimator_is_reported_not_fatal() -> None:
    report = diagnose(
        loss_fn, SCORES, OneHot(), ["st-gumbel", "reinforce/rloo"], n_samples=5, samples_per_draw=1
    )
    assert report.row("st-gumbel").error is None
    error = report.row("reinforce/rloo").error
    assert error is not None and "n_samples >= 2" in error
    assert report.recommendation is not None
    assert report.recommendation.label == "st-gumbel"
    assert "failed: ValueError" in report.to_markdown()


def stats(
    label: str, mse: float, cost: float, acceptable: bool, *, hard: bool = True
) -> EstimatorStats:
    row = EstimatorStats(label, label, None, 10, mse=mse, time_per_gradient=cost * 1e-3)
    row.relative_cost, row.efficiency = cost, mse * cost * 1e-3
    row.acceptable_bias, row.hard = acceptable, hard
    return row


def test_recommendation_rule() -> None:
    rows = [
        stats("cheap-biased", 0.1, 1.0, False),
        stats("slow-good", 1.0, 10.0, True),
        stats("fast-noisy", 5.0, 1.0, True),
    ]
    # Default: lowest MSE among the acceptable ones (equal loss evaluations); the biased one last.
    rec = recommend(rows)
    assert rec is not None and rec.label == "slow-good" and "acceptable" in rec.reason
    assert [row.label for row in rank_rows(rows)] == ["slow-good", "fast-noisy", "cheap-biased"]
    # At equal wall-clock time: MSE x relative cost, 5 < 10.
    rec = recommend(rows, rank_by="mse-time")
    assert rec is not None and rec.label == "fast-noisy"
    none_ok = recommend([stats("a", 2.0, 1.0, False), stats("b", 1.0, 1000.0, False)])
    assert none_ok is not None and none_ok.label == "b"
    assert "no hard-forward estimator has acceptable bias" in none_ok.reason
    assert recommend([]) is None
    with pytest.raises(ValueError, match="rank_by must be one of"):
        recommend(rows, rank_by="time")


def test_hard_by_default() -> None:
    soft = stats("relaxed", 0.1, 1.0, True, hard=False)
    rows = [soft, stats("st-gumbel", 1.0, 1.0, True), stats("reinforce/rloo", 2.0, 1.0, True)]
    rec = recommend(rows)
    assert rec is not None and rec.label == "st-gumbel"
    assert "relaxed, whose forward pass is relaxed, would rank first" in rec.reason
    assert "allow_soft=True" in rec.reason
    assert soft not in rank_rows(rows)
    rec = recommend(rows, allow_soft=True)
    assert rec is not None and rec.label == "relaxed" and "not a hard choice" in rec.reason
    assert recommend([soft]) is None
    assert recommend([soft], allow_soft=True) is not None


def test_rank_is_the_one_function_of_advisor_and_demo() -> None:
    items = [("relaxed", 0.1), ("st-gumbel", 0.5), ("reinforce", 0.3), ("st", 0.3)]
    ranked = rank(items, key=lambda item: item[1], hard=lambda item: item[0] != "relaxed")
    assert ranked == [("reinforce", 0.3), ("st", 0.3), ("st-gumbel", 0.5)]  # ties keep order
    everything = rank(items, key=lambda item: item[1], hard=lambda _: False, allow_soft=True)
    assert everything[0] == ("relaxed", 0.1)


def test_diagnose_default_is_hard_and_allow_soft_switches() -> None:
    # A linear loss: relaxed's gradient is exact (bias 0, variance 0), the best MSE of all.
    cost = torch.tensor([1.0, 3.0, -1.0, 0.5], dtype=f64)
    scores = torch.tensor([0.2, -0.4, 0.9, 0.0], dtype=f64)
    estimators = ["relaxed", "reinforce/rloo", "st-gumbel"]
    hard = diagnose(lambda x: x @ cost, scores, OneHot(), estimators, n_samples=30)
    soft = diagnose(lambda x: x @ cost, scores, OneHot(), estimators, n_samples=30, allow_soft=True)
    assert not hard.row("relaxed").hard and hard.row("st-gumbel").hard
    assert hard.recommendation is not None and hard.recommendation.label != "relaxed"
    assert soft.recommendation is not None and soft.recommendation.label == "relaxed"
    assert hard.settings["allow_soft"] is False and soft.settings["allow_soft"] is True
    assert "relaxed (tau=1), whose forward pass is relaxed" in hard.recommendation.reason
    with pytest.raises(TypeError, match="allow_soft must be a bool"):
        diagnose(lambda x: x @ cost, scores, OneHot(), ["st"], allow_soft="yes")  # type: ignore[arg-type]


def test_perturbed_hard_option_counts_as_hard() -> None:
    cost = torch.tensor([1.0, 3.0, -1.0], dtype=f64)
    report = diagnose(
        lambda x: x @ cost,
        torch.zeros(3, dtype=f64),
        OneHot(),
        ["perturbed", "perturbed:hard=true"],
        n_samples=4,
    )
    assert not report.row("perturbed").hard and report.row("perturbed:hard=true").hard


def test_cost_is_reported_with_threads_and_a_reference_op() -> None:
    report = diagnose(loss_fn, SCORES, OneHot(), ["st", "gumbel-rao"], n_samples=10)
    assert report.settings["threads"] == torch.get_num_threads()
    reference = report.settings["reference_seconds"]
    assert reference > 0
    for row in report.rows:
        assert math.isclose(row.relative_cost, row.time_per_gradient / reference)
    markdown = report.to_markdown()
    assert f"times at {torch.get_num_threads()} torch thread(s)" in markdown
    assert "cost (x st)" in markdown


def test_explanations_say_why_from_the_measured_figures() -> None:
    from pickgrad.diagnostics.problems import pick_the_five

    problem = pick_the_five()
    report = diagnose(
        problem.loss_fn,
        problem.scores,
        problem.structure,
        ["imle", "blackbox", "st", "st-relaxed", "reinforce/rloo"],
        n_samples=20,
    )
    assert report.recommendation is not None
    assert report.recommendation.label == "reinforce/rloo"
    imle = report.row("imle")
    assert not imle.acceptable_bias and imle.cosine_mean < 0
    assert imle.explanation is not None
    assert imle.explanation.startswith(
        f"mean gradient points away from the exact one: cosine {imle.cosine_mean:.2f}"
    )
    assert "not linear in x, which imle and blackbox assume" in imle.explanation
    assert imle.explanation.endswith("try reinforce/rloo")
    for label in ("blackbox", "st", "st-relaxed"):
        row = report.row(label)
        assert not row.acceptable_bias and row.explanation is not None
        assert f"relative bias {row.relative_bias:.2g}" in row.explanation
    assert "at tau=1 in place of the argmax" in (report.row("st-relaxed").explanation or "")
    assert report.row("reinforce/rloo").explanation is None
    markdown = report.to_markdown()
    assert "Why not the others:" in markdown and f"- imle: {imle.explanation}" in markdown
    assert json.loads(report.to_json())["rows"][0]["explanation"] == imle.explanation


def test_failures_are_explained() -> None:
    report = diagnose(
        loss_fn, SCORES, OneHot(), ["st-gumbel", "reinforce/rloo"], n_samples=5, samples_per_draw=1
    )
    explanation = report.row("reinforce/rloo").explanation
    assert explanation is not None and explanation.startswith("failed with ValueError: ")
    assert "n_samples >= 2" in explanation and explanation.endswith("try st-gumbel at tau=1")
    assert not report.all_failed
    broken = diagnose(
        loss_fn, SCORES, OneHot(), ["reinforce/rloo"], n_samples=5, samples_per_draw=1
    )
    assert broken.all_failed and broken.recommendation is None
    assert "none (every estimator failed)" in broken.to_markdown()


def test_reference_given_as_tensor_and_shape_checked() -> None:
    exact = pickgrad.exact_gradient(loss_fn, SCORES, OneHot()).gradient
    report = diagnose(loss_fn, SCORES, OneHot(), ["st"], n_samples=2, reference=exact)
    default = diagnose(loss_fn, SCORES, OneHot(), ["st"], n_samples=2)
    assert report.reference.method == "given" and default.reference.method != "given"
    assert report.rows[0].bias == pytest.approx(default.rows[0].bias, rel=1e-12)
    with pytest.raises(ValueError, match="reference must have the shape"):
        diagnose(loss_fn, SCORES, OneHot(), ["st"], n_samples=2, reference=exact[0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_samples"):
        diagnose(loss_fn, SCORES, OneHot(), ["st"], n_samples=1)
    with pytest.raises(ValueError, match="tau"):
        diagnose(loss_fn, SCORES, OneHot(), ["st"], tau=0.0)
    with pytest.raises(TypeError, match="list of names"):
        diagnose(loss_fn, SCORES, OneHot(), "st")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="conditional_gumbel"):
        diagnose(lambda x: x.sum((-1,)), torch.zeros(4), OneHotWithoutSampler(), ["gumbel-rao"])


class OneHotWithoutSampler(OneHot):
    """OneHot without its conditional Gumbel sampler and closed-form law."""

    _conditional_gumbel = Structure._conditional_gumbel
    _perturb_log_prob = Structure._perturb_log_prob


def test_reference_from_monte_carlo_widens_the_noise_floor() -> None:
    scores = torch.tensor([0.3, -0.1, 0.4, 0.0], dtype=f64)
    value = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=f64)
    report = diagnose(
        lambda x: (x @ value) ** 2, scores, OneHotWithoutSampler(), ["reinforce/rloo"], n_samples=30
    )
    row, reference = report.rows[0], report.reference
    assert not reference.exact and reference.noise_norm > 0
    assert row.noise_floor**2 == pytest.approx(row.variance / 30 + reference.noise_norm**2)
    assert row.bias < 5 * row.noise_floor


def test_renderings(tmp_path: Path) -> None:
    report = diagnose(
        loss_fn,
        SCORES,
        OneHot(),
        ["st-gumbel", "gumbel-rao:n_draws=2", "reinforce/rloo"],
        n_samples=8,
        tau=1.0,
        tau_sweep=[0.5, 1.0],
        name="toy",
    )
    # The sweep holds the temperature-dependent estimators at each tau, the main tau reused.
    assert sorted((r.label, r.tau) for r in report.sweep) == [
        ("gumbel-rao:n_draws=2", 0.5),
        ("gumbel-rao:n_draws=2", 1.0),
        ("st-gumbel", 0.5),
        ("st-gumbel", 1.0),
    ]
    assert report.row("st-gumbel", 1.0) is report.row("st-gumbel")
    markdown = report.to_markdown()
    assert "### toy" in markdown and "| reinforce/rloo | - |" in markdown
    assert "| st-gumbel | " in markdown and "tau=0.5 | tau=1 |" in markdown
    assert "**Recommendation: " in markdown
    data = json.loads(report.to_json(tmp_path / "toy.json"))
    assert data == json.loads((tmp_path / "toy.json").read_text())
    assert [row["label"] for row in data["rows"]] == [row.label for row in report.rows]
    assert data["reference"]["exact"] is True and len(data["sweep"]) == 4
    assert data["recommendation"]["label"] == report.recommendation.label  # type: ignore[union-attr]
    report.to_png(tmp_path / "toy.png")
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_ranking_is_the_same_at_one_and_two_threads(name: str) -> None:
    # Times change with the thread count (and the machine's load); the ranking must not.
    problem = PROBLEMS[name](0)
    reference = problem.exact_gradient()
    rankings = []
    for threads in (1, 2):
        torch.set_num_threads(threads)  # the conftest fixture restores the caller's setting
        report = diagnose(
            problem.loss_fn, problem.scores, problem.structure, n_samples=10, reference=reference
        )
        assert report.settings["threads"] == threads
        rankings.append([(row.label, row.tau) for row in report.ranking()])
    assert len(rankings[0]) >= 8
    assert rankings[0] == rankings[1]


def test_a_mean_that_points_the_right_way_is_acceptable_whatever_its_length() -> None:
    from pickgrad.diagnostics.exact import ExactGradient
    from pickgrad.diagnostics.report import ACCEPTABLE_COSINE, _statistics

    exact = torch.tensor([1.0, 2.0, -1.0], dtype=f64)
    reference = ExactGradient(exact, torch.tensor(0.0), True, torch.zeros(3, dtype=f64), "given")
    rotated = torch.tensor([2.0, 1.0, 0.5], dtype=f64)  # cosine 0.6 with exact
    for draws, acceptable in (
        (2 * exact.expand(5, 3), True),  # relative bias 1, cosine 1
        (1.05 * exact.expand(5, 3), True),  # relative bias 0.05
        (rotated.expand(5, 3), False),
    ):
        row = EstimatorStats("x", "x", None, 5)
        _statistics(row, draws.clone(), reference, 1e-3)
        assert row.noise_floor == 0 and row.acceptable_bias is acceptable, (draws[0], row)
        assert (row.cosine_mean >= ACCEPTABLE_COSINE or row.relative_bias <= 0.2) is acceptable
