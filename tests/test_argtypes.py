"""The argparse value types of the CLI (contract #6)."""

from __future__ import annotations

import argparse

import pytest

from pickgrad._argtypes import (
    check_writable_dir,
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
)


@pytest.mark.parametrize(
    ("parse", "text", "expected"),
    [
        (finite_float, "-1.5", -1.5),
        (finite_float, "0", 0.0),
        (positive_float, "1e-3", 1e-3),
        (probability, "0", 0.0),
        (probability, "1", 1.0),
        (positive_int, "1", 1),
        (nonnegative_int, "0", 0),
    ],
)
def test_accepts(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (finite_float, "nan", "finite"),
        (finite_float, "inf", "finite"),
        (finite_float, "abc", "real number"),
        (positive_float, "0", "> 0"),
        (positive_float, "-1", "> 0"),
        (positive_float, "nan", "finite"),
        (probability, "1.5", "[0, 1]"),
        (probability, "-0.1", "[0, 1]"),
        (positive_int, "0", ">= 1"),
        (positive_int, "2.5", "integer"),
        (nonnegative_int, "-1", ">= 0"),
        (nonnegative_int, "x", "integer"),
    ],
)
def test_rejects_with_message(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("[", r"\[")) as info:
        parse(text)
    assert repr(text) in str(info.value)


def test_argparse_turns_rejection_into_exit_2(capsys):
    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--tau", type=positive_float)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--tau", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--tau" in err and "> 0" in err and "Traceback" not in err


def test_check_writable_dir_creates(tmp_path):
    folder = check_writable_dir(tmp_path / "a" / "b")
    assert folder == tmp_path / "a" / "b" and folder.is_dir()
    assert list(folder.iterdir()) == []  # the probe file is removed


def test_check_writable_dir_rejects_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(argparse.ArgumentTypeError, match="not writable") as info:
        check_writable_dir(blocker / "sub")
    assert str(blocker / "sub") in str(info.value)
