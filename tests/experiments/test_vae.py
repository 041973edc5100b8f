"""``pickgrad experiment vae``: the CI smoke test (--quick, digits), resume, and the model's rules."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pickgrad.cli import main
from pickgrad.estimators import GumbelRao
from pickgrad.experiments import get_experiment, run_experiment
from pickgrad.experiments.estimators import resolve_estimator
from pickgrad.experiments.loop import Interrupted
from pickgrad.experiments.vae import VaeConfig, VaeModel

EXPERIMENT = get_experiment("vae")
QUICK = ["experiment", "vae", "--quick", "--no-progress"]


def _quick(**changes: Any) -> VaeConfig:
    config = EXPERIMENT.default_config(quick=True)
    assert isinstance(config, VaeConfig)
    return dataclasses.replace(config, progress=False, **changes)


def test_quick_run_writes_every_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main([*QUICK, "--out", str(out), "--cache-dir", str(cache)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    config = _quick()
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["dataset"] == "digits"
    estimators = results["config"]["estimators"]
    assert estimators == ["gumbel-relaxed", "st-gumbel", "gumbel-rao", "reinforce"]
    pairs = {(r["method"], r["estimator"], r["seed"]) for r in results["runs"]}
    assert pairs == {(m, e, s) for m in config.methods for e in estimators for s in config.seeds}
    for run in results["runs"]:
        test = run["test"]
        assert set(test) == {"nelbo_hard", "nelbo_relaxed", "nll_iw"}
        # Bits per image: 64 pixels, so every bound lies in (0, 64 log 2 + KL].
        assert all(0.0 < v < 200.0 for v in test.values()), test
        assert run["curve"][-1]["step"] == config.steps
        assert {"valid_nelbo_hard", "valid_nll_iw", "train_objective"} <= set(run["curve"][-1])
    for entry in results["summary"]:
        assert set(entry["nelbo_hard"]) >= {"mean", "std", "values"}
    assert "| categorical | st-gumbel | 1 |" in printed
    assert "| binary | reinforce | 1 |" in (out / "results.md").read_text()
    for picture in ("learning_curves.png", "reconstructions.png", "samples.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"


def test_training_improves_the_bound_on_digits(tmp_path: Path) -> None:
    config = _quick(methods=("categorical",), estimators=("st-gumbel",), steps=60, eval_every=30)
    results = run_experiment(EXPERIMENT, config, tmp_path / "out", cache_dir=tmp_path / "c")
    curve = results["runs"][0]["curve"]
    assert curve[-1]["valid_nelbo_hard"] < curve[0]["valid_nelbo_hard"]


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    config = _quick(methods=("binary",), estimators=("reinforce",), checkpoint_every=5)
    whole = run_experiment(EXPERIMENT, config, tmp_path / "a", cache_dir=tmp_path / "c")

    def stop(step: int) -> None:
        if step == 7:
            raise Interrupted("binary__reinforce__seed0", step, tmp_path)

    with pytest.raises(Interrupted):
        run_experiment(
            EXPERIMENT, config, tmp_path / "b", cache_dir=tmp_path / "c", after_step=stop
        )
    resumed = run_experiment(
        EXPERIMENT, config, tmp_path / "b", cache_dir=tmp_path / "c", resume=True
    )
    a, b = whole["runs"][0], resumed["runs"][0]
    assert a["curve"] == b["curve"] and a["test"] == b["test"]


def _model(estimator: str, **changes: Any) -> VaeModel:
    config = _quick(**changes)
    torch.manual_seed(0)
    choice = resolve_estimator(estimator, EXPERIMENT.structure(config, "categorical"))
    model = EXPERIMENT.build_model(config, "categorical", choice)
    assert isinstance(model, VaeModel)
    return model


def _batch(count: int = 32) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, 2, (count, 64), generator=generator, dtype=torch.uint8),)


def test_gumbel_rao_takes_n_draws_from_the_config() -> None:
    estimator = _model("gumbel-rao", n_draws=7).estimator.estimator
    assert isinstance(estimator, GumbelRao) and estimator.n_draws == 7


@pytest.mark.parametrize(
    ("estimator", "equal", "rows"),
    [("st-gumbel", True, 32), ("gumbel-rao", True, 32), ("reinforce", True, 32),
     ("reinforce", False, 64)],
)  # fmt: skip
def test_decoder_evaluations_per_step(estimator: str, equal: bool, rows: int) -> None:
    model = _model(estimator, equal_decoder_evaluations=equal, n_samples=2)
    seen: list[int] = []
    model.network.decoder.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].shape[:-1].numel())
    )
    loss, logs = model(_batch(32), torch.Generator().manual_seed(1))
    assert sum(seen) == rows
    loss.backward()
    encoder_grad = model.network.encoder[0].weight.grad
    assert encoder_grad is not None and float(encoder_grad.abs().sum()) > 0
    assert torch.isfinite(loss) and set(logs) == {"objective", "kl"}


def test_evaluation_is_deterministic_and_the_iw_bound_is_the_tightest() -> None:
    model = _model("st-gumbel", eval_samples=50, relaxed_samples=5)
    batch = _batch(16)
    first, second = model.evaluation_sums(batch), model.evaluation_sums(batch)
    assert first.keys() == {"count", "nelbo_hard", "nelbo_relaxed", "nll_iw"}
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert float(first["nll_iw"]) < float(first["nelbo_hard"])


def test_pictures_and_prior_samples_have_image_shapes() -> None:
    model = _model("st-gumbel")
    assert tuple(model.reconstruct(_batch(3)[0]).shape) == (3, 64)
    samples = model.sample_prior(5, torch.Generator().manual_seed(0))
    assert tuple(samples.shape) == (5, 64) and bool(((samples >= 0) & (samples <= 1)).all())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="relaxed_samples=20"):
        VaeConfig(eval_samples=10, relaxed_samples=20)
    with pytest.raises(ValueError, match="binarization='otsu'"):
        VaeConfig(binarization="otsu")
    with pytest.raises(ValueError, match="dataset='mnist' is not known"):
        VaeConfig(dataset="mnist")
    with pytest.raises(ValueError, match="unknown method"):
        from pickgrad.experiments import check_request

        check_request(EXPERIMENT, _quick(methods=("gaussian",)))
