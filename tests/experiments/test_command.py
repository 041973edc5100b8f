"""``pickgrad experiment``: the --quick smoke run, --list, python -m pickgrad, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pickgrad import SpanningTree
from pickgrad.cli import main

QUICK = ["experiment", "graph-layout", "--quick", "--no-progress", "--estimators", "st-gumbel"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_list_names_every_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "--list"]) == 0
    assert "graph-layout" in capsys.readouterr().out


def test_python_dash_m_pickgrad_is_the_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pickgrad", "experiment", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("graph-layout")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["experiment", "no-such"], "unknown experiment 'no-such'; known: graph-layout"),
        ([*QUICK, "--methods", "forest"], "valid: tree, top-k, independent"),
        ([*QUICK, "--estimators", "magic"], "estimator 'magic' cannot be used"),
        ([*QUICK, "--estimators", "st-gumbel:colour=red"], "unknown option 'colour'"),
        ([*QUICK, "--batch-size", "7", "--shards", "2"], "multiple of the shards"),
        ([*QUICK, "--set", "rollout=50"], "rollout must be in"),
        ([*QUICK, "--set", "colour=red"], "--set expects FIELD=VALUE"),
    ],
)
def test_bad_requests_fail_before_any_work(
    flags: list[str], message: str, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*flags, "--out", str(tmp_path / "out"), "--cache-dir", str(cache)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not cache.exists()  # no data generated


def test_unknown_estimator_lists_the_valid_ones(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main([*QUICK, "--estimators", "magic", "--out", str(tmp_path), "--cache-dir", str(cache)])
    error = capsys.readouterr().err
    assert "st-gumbel" in error and "nvil" in error and "reinforce" in error


def test_estimator_the_structure_cannot_use_is_refused_before_training(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tree without relax (declared unsupported) cannot serve gumbel-relaxed.
    monkeypatch.setattr(SpanningTree, "unsupported", {"relax": "switched off by this test"})
    code = main(
        [*QUICK, "--methods", "tree", "--estimators", "gumbel-relaxed", "--out", str(tmp_path),
         "--cache-dir", str(cache)]
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "method 'tree': estimator 'gumbel-relaxed' cannot be used" in error
    assert not cache.exists()


def test_unwritable_out_fails_before_any_work(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main([*QUICK, "--out", str(blocker / "out"), "--cache-dir", str(cache)])
    assert code == 2
    assert "not writable" in capsys.readouterr().err
    assert not cache.exists()
