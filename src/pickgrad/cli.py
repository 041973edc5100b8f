"""The ``pickgrad`` command: ``pickgrad demo`` and ``pickgrad diagnose``.

Bare ``pickgrad`` prints the help and exits with status 0; ``pickgrad --version`` prints the
version. User mistakes (a bad flag value, an unwritable output folder, an unknown name) are one
``pickgrad <command>: error: ...`` line on stderr and exit status 2, never a traceback; Ctrl-C
is one line and status 130.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from pickgrad._argtypes import UsageError

__all__ = ["build_parser", "main", "plain_text"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where the help text does not already say its default and the
    default is worth showing (not None, not a False flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or not action.option_strings
        ):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
        return f"{text} (default: {shown})"


def plain_text(doc: str | None) -> str:
    """A docstring as plain text for ``--help``: no reST roles, literals or emphasis.

    Example:
        >>> plain_text("Run :func:`pickgrad.diagnose` on ``x`` and *pick-the-five*.")
        'Run pickgrad.diagnose on x and pick-the-five.'
    """
    text = doc or ""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1", text)
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    """The ``pickgrad`` argument parser with its subcommands."""
    from pickgrad import __version__

    parser = argparse.ArgumentParser(
        prog="pickgrad",
        description="Hard discrete choices trainable by backpropagation: demos and gradient "
        "diagnostics. Run 'pickgrad COMMAND --help' for a command's options; bare 'pickgrad' "
        "prints this help.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pickgrad {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    from pickgrad.tasks import demo

    demo.add_arguments(
        commands.add_parser(
            "demo",
            help="train every estimator on the built-in slot-selection tasks",
            description=plain_text(demo.__doc__),
            formatter_class=_HelpFormatter,
        )
    )
    from pickgrad.diagnostics import command as diagnose

    diagnose.add_arguments(
        commands.add_parser(
            "diagnose",
            help="measure bias, variance and cost of every estimator against exact gradients",
            description=plain_text(diagnose.__doc__),
            formatter_class=_HelpFormatter,
        )
    )
    from pickgrad.experiments import command as experiment

    experiment.add_arguments(
        commands.add_parser(
            "experiment",
            help="run a seed paper's experiment end to end (graph-layout, ...); --list names them",
            description=plain_text(experiment.__doc__),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pickgrad`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # What ran, as a user would retype it; results files record it (sys.argv is the caller's
    # when main() is called from Python, e.g. from a test).
    words = sys.argv[1:] if argv is None else list(argv)
    args.command_line = " ".join(["pickgrad", *words])
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (UsageError, argparse.ArgumentTypeError) as error:
        print(f"pickgrad {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pickgrad {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
