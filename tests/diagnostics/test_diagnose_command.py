"""``pickgrad diagnose`` on the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pickgrad.cli import main
from pickgrad.diagnostics.problems import PROBLEMS

PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_run_prints_tables_and_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "diagnose",
            "--quick",
            "--no-progress",
            "--problem",
            "bernoulli",
            "polynomial-2",
            "--estimators",
            "st-gumbel",
            "reinforce/rloo",
            "--tau-sweep",
            "0.5",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "### bernoulli" in printed and "### polynomial-2" in printed
    assert "| reinforce/rloo | - |" in printed and "### Recommendations" in printed
    for stem in ("bernoulli", "polynomial-2"):
        data = json.loads((tmp_path / f"{stem}.json").read_text())
        assert data["problem"] == stem and data["settings"]["n_draws"] == 20
        assert {row["label"] for row in data["rows"]} == {"st-gumbel", "reinforce/rloo"}
        assert {row["tau"] for row in data["sweep"]} == {0.5, 1.0}
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == PNG


def test_every_builtin_problem_loads_and_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in PROBLEMS:
        assert f"{name}: " in listed
    assert {"pick-the-five", "critic-slots", "bernoulli", "categorical-quadratic"} <= set(PROBLEMS)
    assert {"polynomial-1.5", "polynomial-2", "polynomial-3"} <= set(PROBLEMS)


def test_user_problem_from_module_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "my_pickgrad_problem.py").write_text(
        "import torch, pickgrad\n"
        "def make():\n"
        "    cost = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)\n"
        "    return (lambda x: x @ cost), torch.zeros(3, dtype=torch.float64), pickgrad.OneHot()\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_pickgrad_problem", raising=False)
    out = tmp_path / "out"
    arguments = ["--quick", "--no-progress", "--problem", "my_pickgrad_problem:make"]
    code = main(["diagnose", *arguments, "--estimators", "reinforce/rloo", "--out", str(out)])
    assert code == 0
    assert "### my_pickgrad_problem:make" in capsys.readouterr().out
    data = json.loads((out / "my_pickgrad_problem_make.json").read_text())
    assert data["reference"]["exact"] is True


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--problem", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
        (["--problem", "json:nope"], "has no function 'nope'"),
        (["--problem", "bernouli"], "unknown problem 'bernouli'"),
        (["--problem", "bernoulli", "--estimators", "nope"], "unknown estimator"),
    ],
)
def test_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main(["diagnose", *arguments, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pickgrad diagnose: error: ") and message in err
    assert "Traceback" not in err


def test_n_samples_below_two_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["diagnose", "--n-samples", "1"])
    assert info.value.code == 2
    assert "--n-samples: expected an integer >= 2, got '1'" in capsys.readouterr().err


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["diagnose", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--problem",
        "--estimators",
        "--n-samples",
        "--samples-per-draw",
        "--tau",
        "--tau-sweep",
        "--seed",
        "--max-enumeration",
        "--out",
        "--quick",
        "--threads",
        "--allow-soft",
        "--rank-by",
        "--resume",
        "--no-progress",
        "--list",
        "module:function",
    ):
        assert option in text


def test_allow_soft_rank_by_and_threads_reach_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    arguments = ["diagnose", "--quick", "--no-progress", "--problem", "bernoulli"]
    arguments += ["--estimators", "relaxed", "reinforce/rloo", "--out", str(tmp_path)]
    assert main([*arguments, "--allow-soft", "--rank-by", "mse-time"]) == 0
    data = json.loads((tmp_path / "bernoulli.json").read_text())
    assert data["settings"]["allow_soft"] is True and data["settings"]["rank_by"] == "mse-time"
    assert data["settings"]["threads"] == torch.get_num_threads()  # the caller's, not forced
    assert main(arguments) == 0
    data = json.loads((tmp_path / "bernoulli.json").read_text())
    assert data["settings"]["allow_soft"] is False
    assert data["recommendation"]["label"] == "reinforce/rloo"  # the only hard-forward one
    assert "| relaxed | 1 | soft |" in capsys.readouterr().out
