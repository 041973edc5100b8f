"""The l2x experiment: L2X's relaxation, metrics on hand cases, the model, bad input, smoke run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from pickgrad import Subset
from pickgrad.cli import main
from pickgrad.experiments import check_request, get_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.l2x import (
    L2XConfig,
    L2XModel,
    l2x_relaxation,
    median_ranks,
    selection_sums,
)

EXPERIMENT = get_experiment("l2x")


def test_relaxation_shapes_range_and_determinism() -> None:
    scores = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    x = l2x_relaxation(scores, 3, 0.5, generator=torch.Generator().manual_seed(1))
    again = l2x_relaxation(scores, 3, 0.5, generator=torch.Generator().manual_seed(1))
    assert x.shape == scores.shape and x.dtype == scores.dtype and torch.equal(x, again)
    assert bool(((x > 0) & (x <= 1)).all())
    # The max of k probability vectors: at least 1/n... and its sum between 1 and k.
    total = x.sum(-1)
    assert bool((total >= 1 - 1e-6).all()) and bool((total <= 3 + 1e-6).all())


def test_relaxation_is_the_max_of_k_gumbel_softmax_draws() -> None:
    scores = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = l2x_relaxation(scores, 2, 0.3, generator=torch.Generator().manual_seed(3))
    # The same uniforms, drawn in the same order, by hand.
    uniform = torch.rand(4, 2, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform))
    expected = torch.softmax((scores[:, None] + gumbel) / 0.3, -1).amax(1)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-12)


def test_relaxation_tends_to_the_union_of_k_draws_as_tau_goes_to_zero() -> None:
    scores = torch.randn(200, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    k = 3
    x = l2x_relaxation(scores, k, 1e-6, generator=torch.Generator().manual_seed(5))
    uniform = torch.rand(200, k, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    winners = (scores[:, None] - torch.log(-torch.log(uniform))).argmax(-1)
    union = torch.zeros_like(scores).scatter_(-1, winners, 1.0)
    assert torch.equal(x.round(), union)
    torch.testing.assert_close(x, union, rtol=0, atol=1e-6)
    counts = union.sum(-1)
    assert bool((counts >= 1).all()) and bool((counts <= k).all())
    # k-hot exactly when the draws are distinct, which large score gaps make certain.
    spread = torch.tensor([[40.0, 20.0, 0.0, -20.0]])
    top = l2x_relaxation(spread, 1, 1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top, Subset(1).argmax(spread))


def test_relaxation_law_at_low_temperature() -> None:
    # P(feature i chosen) = 1 - (1 - softmax(s)_i)^k; tolerance five binomial standard errors.
    scores = torch.tensor([1.0, 0.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    k, draws = 2, 20_000
    x = l2x_relaxation(scores.expand(draws, 5), k, 1e-4,
                       generator=torch.Generator().manual_seed(6))  # fmt: skip
    frequency = x.round().mean(0)
    p = 1 - (1 - torch.softmax(scores, -1)) ** k
    tolerance = 5 * torch.sqrt(p * (1 - p) / draws)
    assert bool(((frequency - p).abs() < tolerance).all()), (frequency, p)


def test_relaxation_gradient_reaches_every_score() -> None:
    scores = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()

    def relaxed(s: torch.Tensor) -> torch.Tensor:
        generator.set_state(state)
        return l2x_relaxation(s, 2, 0.7, generator=generator)

    assert torch.autograd.gradcheck(relaxed, (scores,))


def test_relaxation_bad_input() -> None:
    with pytest.raises(ValueError, match="k must be an int with 1 <= k <= n=4"):
        l2x_relaxation(torch.zeros(4), 5)
    with pytest.raises(ValueError, match="k must be"):
        l2x_relaxation(torch.zeros(4), 0)
    with pytest.raises(TypeError, match="floating tensor"):
        l2x_relaxation(torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="tau"):
        l2x_relaxation(torch.zeros(4), 2, tau=0.0)


def test_median_rank_and_precision_on_hand_cases() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.2, 0.3],  # ranks 1 2 5 4 3
            [0.1, 0.2, 0.3, 0.4, 0.5],  # ranks 5 4 3 2 1
            [0.5, 0.4, 0.3, 0.2, 0.1],  # ranks 1 2 3 4 5
        ]
    )
    relevant = torch.tensor(
        [
            [True, True, False, False, False],  # ranks {1, 2}: median 1.5
            [True, False, True, False, True],  # ranks {5, 3, 1}: median 3
            [False, False, False, False, False],  # none: 0 by definition
        ]
    )
    assert median_ranks(scores, relevant).tolist() == [1.5, 3.0, 0.0]
    sums = selection_sums(scores, relevant, 2)
    # Top-2: {0, 1} (2 hits), {4, 3} (1 hit: feature 4), {0, 1} (no truth: 0).
    assert float(sums["precision"]) == pytest.approx(1.0 + 0.5 + 0.0)
    assert float(sums["median_rank"]) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="both be"):
        median_ranks(scores, relevant[:, :3])


def test_median_rank_against_a_brute_force() -> None:
    generator = torch.Generator().manual_seed(8)
    scores = torch.randn(50, 9, generator=generator)
    relevant = torch.rand(50, 9, generator=generator) < 0.4
    got = median_ranks(scores, relevant)
    for row in range(50):
        order = sorted(range(9), key=lambda i: -float(scores[row, i]))
        rank = {feature: position + 1 for position, feature in enumerate(order)}
        true = sorted(rank[i] for i in range(9) if relevant[row, i])
        expected = 0.0 if not true else (true[(len(true) - 1) // 2] + true[len(true) // 2]) / 2
        assert float(got[row]) == expected


def _model(method: str, estimator: str, **changes: object) -> tuple[L2XConfig, L2XModel]:
    config = dataclasses.replace(EXPERIMENT.default_config(quick=True), **changes)  # type: ignore[arg-type]
    assert isinstance(config, L2XConfig)
    choice = resolve_estimator(estimator, EXPERIMENT.structure(config, "subset"))
    model = EXPERIMENT.build_model(config, method, choice)
    assert isinstance(model, L2XModel)
    return config, model


@pytest.mark.parametrize(
    ("method", "estimator"),
    [
        ("subset", "gumbel-relaxed"),
        ("subset-binary-entropy", "gumbel-relaxed"),
        ("subset-euclidean", "st-gumbel"),
        ("l2x", "gumbel-relaxed"),
        ("subset", "imle"),
        ("subset", "perturbed"),
        ("subset", "reinforce"),
        ("subset", "nvil"),
        ("subset", "gumbel-rao"),
    ],
)
def test_every_method_and_estimator_trains_the_selector(method: str, estimator: str) -> None:
    _, model = _model(method, estimator, estimators=(estimator,))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 10, generator=generator)
    target = torch.rand(16, generator=generator)
    batch = (x, target, (target > 0.5).long(), torch.zeros(16, 10, dtype=torch.bool))
    loss, logs = model(batch, generator)
    loss.backward()
    assert loss.dim() == 0 and math.isfinite(float(loss.detach())) and "objective" in logs
    grads = [p.grad for p in model.selector.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    if estimator != "imle":
        # imle's difference of two top-k's is exactly 0 unless lambda * dL/dx flips one of
        # the 16 top-k's, which the tiny gradients of a fresh predictor need not do.
        assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    sums = model.evaluation_sums(batch)
    assert float(sums["count"]) == 16 and 0 <= float(sums["precision"]) <= 16


def test_the_method_sets_the_regulariser_of_relaxing_estimators_only() -> None:
    _, model = _model("subset-euclidean", "gumbel-relaxed")
    assert model.estimator.estimator.relax_options == {"regularizer": "euclidean"}
    _, model = _model("subset-binary-entropy", "imle")
    assert not hasattr(model.estimator.estimator, "relax_options")
    _, model = _model("subset", "st-gumbel")
    assert model.estimator.estimator.relax_options == {}


def test_evaluation_uses_the_hard_top_k() -> None:
    _, model = _model("subset", "gumbel-relaxed", dataset="orange-skin")
    x = torch.randn(32, 10)
    mask = model.hard_mask(x)
    assert torch.equal(mask.sum(-1), torch.full((32,), 4.0))
    assert torch.equal(mask, Subset(4).argmax(model.selector(x)))


def test_bad_requests_are_refused_before_any_work() -> None:
    quick = EXPERIMENT.default_config(quick=True)
    with pytest.raises(ValueError, match="method 'l2x' is L2X's own relaxation"):
        check_request(EXPERIMENT, dataclasses.replace(quick, estimators=("st-gumbel",)))
    check_request(EXPERIMENT, dataclasses.replace(quick, methods=("subset",),
                                                  estimators=("st-gumbel", "reinforce")))  # fmt: skip
    with pytest.raises(ValueError, match="unknown method"):
        check_request(EXPERIMENT, dataclasses.replace(quick, methods=("softsub",)))
    with pytest.raises(ValueError, match="dataset must be one of"):
        L2XConfig(dataset="beer")
    with pytest.raises(ValueError, match="k must be 0"):
        L2XConfig(dataset="xor", k=11)
    with pytest.raises(ValueError, match="selector_hidden"):
        L2XConfig(selector_hidden=0)


def test_bad_requests_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["experiment", "l2x", "--quick", "--estimators", "imle"])
    assert code == 2 and "runs only under the estimator name 'gumbel-relaxed'" in (
        capsys.readouterr().err
    )
    code = main(["experiment", "l2x", "--quick", "--set", "dataset=beer"])
    assert code == 2 and "dataset must be one of" in capsys.readouterr().err


QUICK = ["experiment", "l2x", "--quick", "--no-progress"]


def test_quick_run_writes_every_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main([*QUICK, "--out", str(out), "--cache-dir", str(cache)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    config = EXPERIMENT.default_config(quick=True)
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == " ".join(
        ["pickgrad", *QUICK, "--out", str(out), "--cache-dir", str(cache)]
    )
    assert len(results["data"]["sha256"]) == 64 and results["chance"] == pytest.approx(0.2)
    pairs = {(r["method"], r["estimator"], r["seed"]) for r in results["runs"]}
    assert pairs == {(m, "gumbel-relaxed", 0) for m in ("subset", "l2x")}
    for run in results["runs"]:
        assert 0.0 <= run["test"]["precision"] <= 1.0
        assert 1.5 <= run["test"]["median_rank"] <= 9.5
        assert run["curve"][-1]["step"] == config.steps
    assert "| l2x | gumbel-relaxed | 1 |" in printed
    for picture in ("learning_curves.png", "selections.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"


def test_quick_digits_run_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = [*QUICK, "--set", "dataset=digits", "--methods", "subset", "--estimators", "st-gumbel",
            "--out", str(out), "--cache-dir", str(cache)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    first = json.loads((out / "results.json").read_text())
    assert first["chance"] is None
    (run,) = first["runs"]
    assert run["test"]["precision"] == 0.0 and 0.0 <= run["test"]["accuracy"] <= 1.0
    assert (out / "selections.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == first["runs"]
