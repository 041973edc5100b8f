"""pickgrad is typed: ``mypy --strict`` is clean on ``src/`` and on a user script of every name.

One mypy run (``mypy --strict src/ tests/typing_user_script.py``, with the ``[tool.mypy]``
settings of pyproject.toml) serves both checks; mypy is in the ``test`` extra.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import pickgrad
import pickgrad.diagnostics
import pickgrad.distributions
import pickgrad.experiments
import pickgrad.nn
import pickgrad.schedules
import pickgrad.structures

ROOT = Path(__file__).resolve().parents[1]
USER_SCRIPT = Path(__file__).with_name("typing_user_script.py")
PUBLIC_MODULES = [
    pickgrad,
    pickgrad.structures,
    pickgrad.nn,
    pickgrad.distributions,
    pickgrad.schedules,
    pickgrad.diagnostics,
    pickgrad.experiments,
]
_ERROR = re.compile(r"^(?P<path>[^:\n]+\.py):\d+: error: .*$", re.M)


@cache
def mypy_errors() -> dict[str, list[str]]:
    """Every mypy --strict error line, by file path (posix, relative to the repository)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "src/", str(USER_SCRIPT.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode not in (0, 1) or "error: " in result.stderr:
        pytest.fail(f"mypy did not run: {result.returncode}\n{result.stdout}\n{result.stderr}")
    errors: dict[str, list[str]] = {}
    for match in _ERROR.finditer(result.stdout):
        errors.setdefault(Path(match["path"]).as_posix(), []).append(match[0])
    assert (result.returncode == 0) == (not errors), result.stdout
    return errors


def test_mypy_strict_is_clean_on_src() -> None:
    errors = {path: lines for path, lines in mypy_errors().items() if path.startswith("src/")}
    summary = "\n".join(f"{path}: {len(lines)}" for path, lines in sorted(errors.items()))
    details = "\n".join(line for lines in errors.values() for line in lines)
    if errors:
        pytest.fail(f"mypy --strict errors per file:\n{summary}\n\n{details}", pytrace=False)


def test_mypy_strict_accepts_a_user_script_of_every_public_name() -> None:
    errors = [
        e for path, lines in mypy_errors().items() if "typing_user_script" in path for e in lines
    ]
    assert not errors, "\n".join(errors)


def test_user_script_uses_every_public_name() -> None:
    text = USER_SCRIPT.read_text()
    missing = [
        f"{module.__name__}.{name}"
        for module in PUBLIC_MODULES
        for name in module.__all__
        if not re.search(rf"\b{re.escape(name)}\b", text)
    ]
    assert not missing, f"add these public names to {USER_SCRIPT.name}: {missing}"


def test_user_script_runs() -> None:
    import typing_user_script

    typing_user_script.main()


def test_package_ships_its_type_marker() -> None:
    marker = Path(pickgrad.__file__).with_name("py.typed")
    assert marker.is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'pickgrad = ["py.typed"]' in pyproject
