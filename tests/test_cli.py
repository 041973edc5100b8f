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


def test_demo_rejects_unknown_estimator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), "--estimators", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pickgrad demo: error: unknown estimator(s) ['nope']")


def test_help_documents_every_demo_option(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_text(["demo"], capsys)
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
        "--allow-soft",
        "--threads",
        "--quick",
        "--out",
        "--resume",
    ):
        assert option in out


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pickgrad.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bare_pickgrad_prints_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: pickgrad") and "demo" in captured.out
    assert "diagnose" in captured.out and captured.err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import pickgrad

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pickgrad {pickgrad.__version__}"


BAD_FLAGS = [
    ("demo", "--tau", "0", "expected a number > 0"),
    ("demo", "--tau", "-1", "expected a number > 0"),
    ("demo", "--lr", "nan", "expected a finite real number"),
    ("demo", "--lr", "abc", "expected a real number"),
    ("demo", "--steps", "-5", "expected an integer >= 1"),
    ("demo", "--steps", "1.5", "expected an integer"),
    ("demo", "--batch-size", "0", "expected an integer >= 1"),
    ("demo", "--n-samples", "0", "expected an integer >= 1"),
    ("demo", "--eval-every", "0", "expected an integer >= 1"),
    ("demo", "--seed", "-1", "expected an integer >= 0"),
    ("demo", "--anneal-rate", "inf", "expected a finite real number"),
    ("demo", "--threads", "-2", "expected an integer >= 0"),
    ("diagnose", "--tau", "0", "expected a number > 0"),
    ("diagnose", "--tau-sweep", "-0.5", "expected a number > 0"),
    ("diagnose", "--n-samples", "1", "expected an integer >= 2"),
    ("diagnose", "--samples-per-draw", "0", "expected an integer >= 1"),
    ("diagnose", "--max-enumeration", "0", "expected an integer >= 1"),
    ("diagnose", "--seed", "-3", "expected an integer >= 0"),
    ("diagnose", "--threads", "-1", "expected an integer >= 0"),
]


@pytest.mark.parametrize(("command", "flag", "value", "message"), BAD_FLAGS)
def test_bad_numeric_flags_are_one_error_line_and_exit_2(
    command: str, flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, flag, value])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"pickgrad {command}: error: argument {flag}: {message}, got {value!r}"


def test_bad_flag_has_no_traceback_in_a_real_process() -> None:
    result = run_cli("demo", "--lr", "nan")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --lr: expected a finite real number, got 'nan'" in result.stderr


@pytest.mark.parametrize("command", ["demo", "diagnose"])
def test_unwritable_output_folder_fails_before_any_work(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pickgrad.diagnostics import problems as diagnose_problems
    from pickgrad.tasks import demo

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(demo, "train", no_work)
    monkeypatch.setattr(diagnose_problems, "diagnose", no_work)  # what the command calls
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([command, "--quick", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        f"pickgrad {command}: error: output folder {str(blocker / 'out')!r} is not writable: "
        "Not a directory"
    )


DEMO_SMALL = ["demo", "--quick", "--no-progress", "--tasks", "pick-the-five", "--estimators"]


def interrupt_on_call(
    monkeypatch: pytest.MonkeyPatch, module: object, name: str, when: int
) -> list:
    """Replace module.name by a wrapper that raises KeyboardInterrupt on call number ``when``."""
    real = getattr(module, name)
    calls: list[object] = []

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) == when:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_demo_ctrl_c_keeps_finished_runs_and_resume_skips_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pickgrad.tasks import demo

    arguments = [*DEMO_SMALL, "st-gumbel", "reinforce", "--out", str(tmp_path)]
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, demo, "train", when=3)
        assert main(arguments) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"interrupted: 2 of 5 runs finished and written to {tmp_path / 'results.json'}; "
        "rerun with --resume to continue"
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False
    assert [r["label"] for r in saved["results"]] == ["st-gumbel", "reinforce/none"]
    first = saved["results"]

    calls = interrupt_on_call(monkeypatch, demo, "train", when=0)
    assert main([*arguments, "--resume"]) == 0
    assert [args[1] for args in calls] == ["reinforce/ema", "reinforce/batch", "reinforce/rloo"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is True and len(saved["results"]) == 5
    assert saved["results"][:2] == first  # reused as they were
    assert "| pick-the-five | reinforce/rloo |" in capsys.readouterr().out

    # Other settings: refuse to mix runs.
    assert main([*arguments, "--resume", "--lr", "0.01"]) == 2
    assert "lr=0.003 there, 0.01 now" in capsys.readouterr().err


def test_demo_best_is_hard_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pickgrad.tasks import demo

    real_train = demo.train

    def rigged(task, label, name, options, tau, **common):  # type: ignore[no-untyped-def]
        result = real_train(task, label, name, options, tau, **common)
        result.final = {"relaxed": 1.0, "st-gumbel": 0.9}.get(label, 0.1)
        return result

    monkeypatch.setattr(demo, "train", rigged)
    arguments = [*DEMO_SMALL, "relaxed", "st-gumbel", "st", "--out", str(tmp_path)]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert (
        "best on pick-the-five (hard forward pass): st-gumbel (accuracy 0.9000); relaxed, whose "
        "forward pass is relaxed, did better" in out
    )
    assert main([*arguments, "--allow-soft"]) == 0
    assert "best on pick-the-five: relaxed (accuracy 1.0000)" in capsys.readouterr().out


DIAGNOSE_SMALL = [
    "diagnose",
    "--quick",
    "--no-progress",
    "--estimators",
    "st-gumbel",
    "reinforce/rloo",
]


def test_diagnose_exits_1_when_every_estimator_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["diagnose", "--quick", "--no-progress", "--problem", "bernoulli"]
    arguments += ["--estimators", "reinforce/rloo", "--samples-per-draw", "1"]
    assert main([*arguments, "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "failed: ValueError" in captured.out
    assert captured.err.strip().endswith(
        "error: every estimator failed on bernoulli (the reasons are in the table above)"
    )


def test_diagnose_ctrl_c_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pickgrad.diagnostics import problems  # the command diagnoses through Problem.diagnose

    arguments = [*DIAGNOSE_SMALL, "--problem", "bernoulli", "polynomial-2", "--out", str(tmp_path)]
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, problems, "diagnose", when=2)
        assert main(arguments) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        f"interrupted: 1 of 2 problem report(s) written to {tmp_path}; "
        "rerun with --resume to skip them"
    )
    assert (tmp_path / "bernoulli.json").exists() and not (tmp_path / "polynomial-2.json").exists()

    calls = interrupt_on_call(monkeypatch, problems, "diagnose", when=0)
    assert main([*arguments, "--resume"]) == 0
    assert len(calls) == 1  # only polynomial-2 was measured
    out = capsys.readouterr().out
    assert "bernoulli: already in" in out and "skipped (--resume)" in out
    assert "| bernoulli | " in out and "| polynomial-2 | " in out  # both in the summary
    # Other settings: measured again.
    assert main([*arguments, "--resume", "--tau", "0.5"]) == 0
    assert len(calls) == 3


def help_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["demo"], ["diagnose"]])
def test_help_texts_have_no_duplicated_defaults_or_markup(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(command, capsys)
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    assert "*pick" not in text and "default: None" not in text
    # One "default" per option at most: the formatter adds it only where the text lacks one.
    for block in text.split("\n  -"):
        assert block.count("default") <= 1, block
