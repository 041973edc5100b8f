"""Value types for the ``pickgrad`` command's flags.

Each of ``positive_float``, ``positive_int``, ``nonnegative_int``, ``finite_float`` and
``probability`` is an argparse ``type=`` callable: it parses one command-line string and raises
``argparse.ArgumentTypeError`` with a message saying what was expected, so argparse prints one
error line and exits with status 2 instead of a traceback. ``check_writable_dir`` creates an output
folder and proves it can be written before any work starts.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--tau", type=positive_float, default=1.0)
    >>> parser.parse_args(["--tau", "0.5"]).tau
    0.5
    >>> positive_int("3")
    3
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

__all__ = [
    "UsageError",
    "check_writable_dir",
    "finite_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
    "probability",
]


class UsageError(Exception):
    """A user mistake found after parsing (a bad combination of flags, an unknown name).

    ``pickgrad``'s ``main`` prints it as one ``pickgrad <command>: error: ...`` line and exits
    with status 2, as argparse does for a bad flag.
    """


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a real number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite real number, got {text!r}")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def finite_float(text: str) -> float:
    """Parse a finite real number (no NaN, no infinity).

    Args:
        text: the flag's value as typed.

    Returns:
        The number as a float.

    Raises:
        argparse.ArgumentTypeError: for text that is not a number, or NaN / inf.

    Example:
        >>> finite_float("-2.5")
        -2.5
    """
    return _parse_float(text)


def positive_float(text: str) -> float:
    """Parse a finite real number > 0 (a temperature, a learning rate, a noise scale).

    Example:
        >>> positive_float("1e-3")
        0.001
    """
    value = _parse_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """Parse a real number in [0, 1].

    Example:
        >>> probability("0.25")
        0.25
    """
    value = _parse_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def positive_int(text: str) -> int:
    """Parse an integer >= 1 (a step count, a sample count, a batch size).

    Example:
        >>> positive_int("10")
        10
    """
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """Parse an integer >= 0 (a seed, an interval where 0 means never).

    Example:
        >>> nonnegative_int("0")
        0
    """
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def check_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create the folder ``path`` (and its parents) and check that a file can be written in it.

    Call it before any work, so that a bad output folder fails in a second, not after training.

    Args:
        path: the output folder.

    Returns:
        The folder as a ``Path``.

    Raises:
        argparse.ArgumentTypeError: if the folder cannot be created or written (the message names
            the path and the operating system's reason). As an argparse ``type=`` it becomes one
            error line and exit status 2.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     check_writable_dir(Path(root) / "out" / "run").is_dir()
        True
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pickgrad-write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise argparse.ArgumentTypeError(
            f"output folder {str(folder)!r} is not writable: {reason}"
        ) from None
    return folder
