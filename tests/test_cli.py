"""Smoke tests of the ``pickgrad`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pickgrad.cli import main


def test_demo_quick_writes_table_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "demo",
            "--quick",
            "--no-progress",
            "--out",
            str(tmp_path),
            "--estimators",
            "st-gumbel",
            "reinforce",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pick-the-five | st-gumbel |" in printed
    assert "| critic-slots | reinforce/rloo |" in printed
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {r["label"] for r in results} == {
        "st-gumbel",
        "reinforce/none",
        "reinforce/ema",
        "reinforce/batch",
        "reinforce/rloo",
    }
    assert all(len(r["curve_steps"]) == len(r["curve_values"]) >= 2 for r in results)
    accuracy = [r["final"] for r in results if r["task"] == "pick-the-five"]
    assert all(0.0 <= a <= 1.0 for a in accuracy)
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_unknown_estimator(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown estimator"):
        main(["demo", "--quick", "--out", str(tmp_path), "--estimators", "nope"])


def test_help_documents_every_demo_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pickgrad.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--tasks",
        "--estimators",
        "--steps",
        "--batch-size",
        "--n-samples",
        "--lr",
        "--seed",
        "--tau",
        "--schedule",
        "--tune",
        "--quick",
        "--out",
    ):
        assert option in out
