"""The ``pickgrad`` command: ``pickgrad demo`` and ``pickgrad diagnose``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pickgrad",
        description="Hard discrete choices trainable by backpropagation: demos and gradient diagnostics.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from pickgrad.tasks import demo

    demo.add_arguments(
        commands.add_parser(
            "demo",
            help="train every estimator on the built-in slot-selection tasks",
            description=demo.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
    )
    from pickgrad.diagnostics import command as diagnose

    diagnose.add_arguments(
        commands.add_parser(
            "diagnose",
            help="measure bias, variance and cost of every estimator against exact gradients",
            description=diagnose.__doc__,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
