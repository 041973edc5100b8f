"""The CI smoke test: ``pickgrad experiment graph-layout --quick`` writes every result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pickgrad.cli import main
from pickgrad.experiments import get_experiment

QUICK = ["experiment", "graph-layout", "--quick", "--no-progress"]


def test_quick_run_writes_every_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main([*QUICK, "--out", str(out), "--cache-dir", str(cache)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    experiment = get_experiment("graph-layout")
    config = experiment.default_config(quick=True)
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == " ".join(
        ["pickgrad", *QUICK, "--out", str(out), "--cache-dir", str(cache)]
    )
    assert set(results["versions"]) >= {"pickgrad", "torch", "python"}
    assert "commit" in results and len(results["data"]["sha256"]) == 64
    estimators = results["config"]["estimators"]
    assert set(estimators) == set(config.estimators)
    assert {"gumbel-relaxed", "st-gumbel", "reinforce"} <= set(estimators)
    pairs = {(r["method"], r["estimator"], r["seed"]) for r in results["runs"]}
    assert pairs == {(m, e, s) for m in config.methods for e in estimators for s in config.seeds}
    for run in results["runs"]:
        assert 0.0 <= run["test"]["precision"] <= 1.0
        assert run["best_step"] in [p["step"] for p in run["curve"]]
        assert run["curve"][-1]["step"] == config.steps
    for entry in results["summary"]:
        assert set(entry["precision"]) == {"mean", "std", "values", "below_chance"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == config.steps and saved["experiment"] == "graph-layout"
    table = (out / "results.md").read_text()
    assert "| tree | st-gumbel | 1 |" in table and "| tree | st-gumbel | 1 |" in printed
    for picture in ("learning_curves.png", "recovered_graphs.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
