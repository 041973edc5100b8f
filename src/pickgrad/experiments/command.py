"""Run one of the seed literature's experiments end to end: data, training, evaluation, results.

Examples:
  pickgrad experiment --list
  pickgrad experiment graph-layout --quick --out /tmp/gl
  pickgrad experiment graph-layout --methods tree top-k --estimators st-gumbel --seeds 0 1 2
  torchrun --nproc_per_node=2 -m pickgrad experiment graph-layout --quick --out /tmp/gl2

A run stopped by Ctrl-C saves a checkpoint and exits with status 130; the same command with
--resume continues it (finished runs are read back), ending with the same results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from pickgrad._argtypes import (
    check_writable_dir,
    nonnegative_int,
    positive_float,
    positive_int,
)
from pickgrad.diagnostics.monitor import DEFAULT_EVERY

__all__ = ["add_arguments", "run"]


def _default_cache() -> Path:
    return Path(os.environ.get("PICKGRAD_CACHE", Path.home() / ".cache" / "pickgrad"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``experiment`` subcommand's arguments to ``parser`` and set its handler."""
    parser.add_argument("name", nargs="?", help="the experiment (see --list)")
    parser.add_argument("--list", action="store_true", help="name every experiment and exit")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--steps", type=positive_int, help="optimiser steps per run")
    parser.add_argument(
        "--seeds", nargs="+", type=nonnegative_int, metavar="SEED",
        help="one run per seed for each method x estimator",
    )  # fmt: skip
    parser.add_argument("--methods", nargs="+", metavar="NAME", help="latent-structure methods")
    parser.add_argument(
        "--estimators", nargs="+", metavar="NAME",
        help="estimator names: pickgrad's registry, plus nvil; options as name:key=value,... "
        "(e.g. gumbel-rao:n_draws=100)",
    )  # fmt: skip
    parser.add_argument("--tau", type=positive_float, help="relaxation temperature")
    parser.add_argument("--batch-size", type=positive_int, help="global batch size")
    parser.add_argument("--lr", type=positive_float, help="Adam learning rate")
    parser.add_argument("--n-samples", type=positive_int, help="samples for reinforce / nvil")
    parser.add_argument("--eval-every", type=positive_int, help="steps between validations")
    parser.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints")
    parser.add_argument(
        "--shards", type=nonnegative_int,
        help="data-parallel shards (default: one per torchrun process); one process with N "
        "shards computes what N processes do",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=nonnegative_int, help="torch threads (0: torch's default)"
    )
    parser.add_argument("--device", help="cpu, cuda or cuda:K (default cpu)")
    parser.add_argument(
        "--monitor-every", type=nonnegative_int, metavar="N",
        help="measure the estimator's gradient SNR and bias (GradientMonitor) at step 1 and "
        f"every N steps, into each run's gradient_monitor.csv; 0: off (default {DEFAULT_EVERY}, "
        "measured to cost at most 5%% of training time)",
    )  # fmt: skip
    parser.add_argument(
        "--no-kl", action="store_true", help="drop the KL term of the Gumbel utilities"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="set any other config field of the experiment, e.g. --set decoder_messages=edge",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="output folder (default pickgrad-out/NAME)")
    parser.add_argument(
        "--cache-dir", type=Path, help="data cache (default $PICKGRAD_CACHE or ~/.cache/pickgrad)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the runs found in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


_FLAG_FIELDS = (
    "steps", "seeds", "methods", "estimators", "tau", "batch_size", "lr", "n_samples",
    "eval_every", "checkpoint_every", "shards", "threads", "device", "monitor_every",
)  # fmt: skip


def _parse_field(config: Any, item: str) -> tuple[str, Any]:
    name, sep, text = item.partition("=")
    fields = {f.name: f for f in dataclasses.fields(config)}
    if not sep or name not in fields:
        raise ValueError(
            f"--set expects FIELD=VALUE with FIELD one of {', '.join(fields)}, got {item!r}"
        )
    current = getattr(config, name)
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return name, text.lower() in ("true", "1")
        if isinstance(current, tuple):
            return name, tuple(type(current[0])(p) if current else p for p in text.split(","))
        return name, type(current)(text)
    except ValueError:
        raise ValueError(
            f"--set {name}: expected a {type(current).__name__}, got {text!r}"
        ) from None


def build_config(experiment: Any, args: argparse.Namespace) -> Any:
    """The experiment's default (or ``--quick``) config with the flags given applied."""
    config = experiment.default_config(quick=args.quick)
    changes = {f: getattr(args, f) for f in _FLAG_FIELDS if getattr(args, f) is not None}
    for name in ("seeds", "methods", "estimators"):
        if name in changes:
            changes[name] = tuple(dict.fromkeys(changes[name]))  # in order, without repeats
    if args.no_kl:
        changes["kl_weight"] = 0.0
    if args.no_progress:
        changes["progress"] = False
    for item in args.set:
        name, value = _parse_field(config, item)
        changes[name] = value
    config = dataclasses.replace(config, **changes)
    if args.estimators is None:
        config = dataclasses.replace(config, estimators=_usable_defaults(experiment, config))
    return config


def _usable_defaults(experiment: Any, config: Any) -> tuple[str, ...]:
    """The default estimators, less any this pickgrad cannot provide (said on stderr); named
    explicitly with --estimators, such an estimator is an error instead."""
    from pickgrad.experiments.estimators import resolve_estimator

    usable = []
    for name in config.estimators:
        try:
            for method in config.methods:
                if method in experiment.methods:
                    resolve_estimator(name, experiment.structure(config, method))
        except ValueError as error:
            print(f"pickgrad experiment: note: leaving out {name}: {error}", file=sys.stderr)
            continue
        usable.append(name)
    return tuple(usable)


def run(args: argparse.Namespace) -> int:
    """The ``experiment`` subcommand: list, or check the request, then run and report."""
    from pickgrad.experiments import available_experiments, check_request, get_experiment
    from pickgrad.experiments.checkpoints import CheckpointError
    from pickgrad.experiments.loop import Interrupted
    from pickgrad.experiments.runner import run_experiment

    if args.list:
        for name, summary in available_experiments().items():
            print(f"{name:<16} {summary}")
        return 0

    def fail(message: str) -> int:
        print(f"pickgrad experiment: error: {message}", file=sys.stderr)
        return 2

    if args.name is None:
        return fail(f"name an experiment: one of {', '.join(available_experiments())}")
    try:
        experiment = get_experiment(args.name)
        config = build_config(experiment, args)
        check_request(experiment, config, int(os.environ.get("WORLD_SIZE", "1")))
        out = check_writable_dir(args.out or Path("pickgrad-out") / experiment.name)
        cache = check_writable_dir(args.cache_dir or _default_cache())
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        return fail(str(error))
    try:
        results = run_experiment(
            experiment,
            config,
            out,
            cache_dir=cache,
            resume=args.resume,
            command=getattr(args, "command_line", None),
        )
    except CheckpointError as error:
        return fail(str(error))
    except Interrupted as stopped:
        print(f"{stopped}\nresume with the same command and --resume", file=sys.stderr)
        return 130
    if results:
        print((out / "results.md").read_text())
        print(f"results in {out}")
    return 0
