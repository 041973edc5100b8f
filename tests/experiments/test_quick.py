"""The CI smoke test: ``pickgrad experiment graph-layout --quick`` writes every result, the
gradient monitor's CSV included."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pickgrad.cli import main
from pickgrad.diagnostics.monitor import CSV_FIELDS
from pickgrad.experiments import get_experiment
from pickgrad.experiments.loop import MONITOR_CSV

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


def test_quick_run_monitors_every_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = main(
        [*QUICK, "--methods", "tree", "--estimators", "st-gumbel", "reinforce",
         "--monitor-every", "7", "--out", str(out), "--cache-dir", str(cache)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["monitor_every"] == 7
    for run in results["runs"]:
        folder = out / "runs" / f"tree__{run['estimator']}__seed0"
        with (folder / MONITOR_CSV).open() as handle:
            rows = list(csv.DictReader(handle))
        assert tuple(rows[0]) == CSV_FIELDS
        assert [int(r["step"]) for r in rows] == [1, 7, 14] == [r["step"] for r in run["monitor"]]
        assert {r["estimator"] for r in rows} == {run["estimator"]}
        # 10-node trees are not enumerable: the reference is reinforce, with its noise.
        assert {r["reference"] for r in rows} == {"reinforce/rloo"}
        assert all(float(r["snr"]) >= 0 and -1 <= float(r["cosine"]) <= 1 for r in rows)
        assert all(int(r["samples_per_draw"]) == (4 if run["estimator"] == "reinforce" else 1)
                   for r in rows)  # fmt: skip
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    off = tmp_path / "off"
    code = main(
        [*QUICK, "--methods", "tree", "--estimators", "st-gumbel", "--monitor-every", "0",
         "--out", str(off), "--cache-dir", str(cache)]
    )  # fmt: skip
    assert code == 0
    (run_off,) = json.loads((off / "results.json").read_text())["runs"]
    assert not (off / "runs" / "tree__st-gumbel__seed0" / MONITOR_CSV).exists()
    # The monitor only observes: the same curve and test figures with it on or off.
    (run_on,) = [r for r in results["runs"] if r["estimator"] == "st-gumbel"]
    assert run_off["monitor"] == [] and run_off["curve"] == run_on["curve"]
    assert run_off["test"] == run_on["test"]
    # The picture gains two panels (SNR, cosine) beside the two validation curves.
    assert _png_width(out / "learning_curves.png") == 2 * _png_width(off / "learning_curves.png")


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")
