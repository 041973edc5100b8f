"""Measure the bias, variance and cost of every gradient estimator against the exact gradient,
on built-in problems or on your own, and recommend one.

For each problem it prints a markdown table (bias = ||mean - exact||, variance = trace of the
covariance, MSE, cosine of one draw and of the mean with the exact gradient, sign agreement,
time per gradient at the current torch thread count, cost relative to one st gradient), a
ranking, one line on each estimator whose bias is not acceptable, and writes <problem>.json and
<problem>.png (bias against standard deviation; MSE against temperature with --tau-sweep) in
--out, then a summary of the recommendations.

Ranking rule: only estimators whose forward pass is a hard choice, unless --allow-soft says the
loss accepts relaxed inputs; those whose bias is at most 20% of ||exact||, within 3 noise
floors of zero, or whose mean gradient has a cosine of at least 0.9 with the exact one first;
within each group the lowest training error (--rank-by training, the default: squared
perpendicular bias + variance / 19, the error of the direction Adam's momentum follows), MSE
at equal loss evaluations (--rank-by mse) or MSE x cost (--rank-by mse-time). The first is the recommendation.

Your own problem: --problem mymodule:make, where make() takes no argument and returns
(loss_fn, scores, structure) or a pickgrad.diagnostics.Problem; loss_fn maps samples
(n, *scores.shape) to losses (n,) or (n, *batch); mymodule is imported from the current folder
or PYTHONPATH.

Exit status: 0; 1 if every estimator failed on some problem; 2 for a usage error; 130 when
interrupted (the problems finished so far are written; --resume skips them next time).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from pickgrad._argtypes import (
    UsageError,
    check_writable_dir,
    nonnegative_int,
    positive_float,
    positive_int,
)
from pickgrad.diagnostics.exact import DEFAULT_MAX_ENUMERATION
from pickgrad.diagnostics.problems import PROBLEMS, Problem, load_problem
from pickgrad.diagnostics.report import RANK_BY, resolve_estimators

__all__ = ["add_arguments", "run"]


def _at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pickgrad diagnose``."""
    parser.add_argument(
        "--problem",
        nargs="+",
        metavar="NAME",
        default=list(PROBLEMS),
        help=f"built-in problems ({', '.join(PROBLEMS)}) and/or module:function for your own "
        "(default: every built-in problem)",
    )
    parser.add_argument(
        "--estimators",
        nargs="+",
        metavar="SPEC",
        default=None,
        help="estimators to measure: name, reinforce/<baseline>, or name:key=value,... "
        "(default: every estimator the problem's structure supports; reinforce once per baseline)",
    )
    parser.add_argument(
        "--n-samples",
        type=_at_least_two,
        default=200,
        help="gradient draws per estimator (and per tau), at least 2",
    )
    parser.add_argument(
        "--samples-per-draw",
        type=positive_int,
        default=4,
        help="samples per gradient draw, the same for every estimator (rloo needs >= 2)",
    )
    parser.add_argument(
        "--tau", type=positive_float, default=1.0, help="temperature of the relaxations"
    )
    parser.add_argument(
        "--tau-sweep",
        nargs="+",
        type=positive_float,
        metavar="TAU",
        default=None,
        help="also measure temperature-dependent estimators at these taus (MSE-vs-tau plot)",
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the problems and the noise"
    )
    parser.add_argument(
        "--max-enumeration",
        type=positive_int,
        default=DEFAULT_MAX_ENUMERATION,
        help="most joint solutions enumerated per batch entry for the exact gradient",
    )
    parser.add_argument(
        "--allow-soft",
        action="store_true",
        help="the loss accepts relaxed inputs: also recommend estimators whose forward pass is "
        "not a hard choice (relaxed, gumbel-relaxed, perturbed)",
    )
    parser.add_argument(
        "--rank-by",
        choices=RANK_BY,
        default="training",
        help="training (default): squared error of the direction Adam's momentum follows "
        "(perpendicular bias^2 + variance/19); mse: at equal loss evaluations per draw; "
        "mse-time: at equal wall-clock time",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("pickgrad-out/diagnose"), help="output folder"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the problems whose report in --out was made with the same settings",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long run (20 draws, at most 2 taus)"
    )
    parser.add_argument(
        "--threads",
        type=nonnegative_int,
        default=0,
        help="torch CPU threads during the run; 0 keeps torch's current setting. The report "
        "records the count; the ranking does not depend on it",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--list", action="store_true", help="list the built-in problems and exit")
    parser.set_defaults(run=run)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "problem"


def _fmt(value: Any, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else (format(value, spec))
    )


def summary_table(reports: list[dict[str, Any]]) -> str:
    """One line per problem (reports as ``DiagnosticReport.to_dict()``): the recommended
    estimator, its tau, bias, MSE, time per gradient and cost relative to st."""
    lines = [
        "| problem | recommended | tau | bias | MSE | ms/grad | cost (x st) | reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        rec = report["recommendation"]
        if rec is None:
            lines.append(f"| {report['problem']} | none | - | - | - | - | - | - |")
            continue
        rows = report["rows"] + report["sweep"]
        row = next(r for r in rows if r["label"] == rec["label"] and r["tau"] == rec["tau"])
        kind = "exact" if report["reference"]["exact"] else "estimated"
        seconds = row["time_per_gradient"]
        lines.append(
            f"| {report['problem']} | {rec['label']} | {_fmt(row['tau'], 'g')} "
            f"| {_fmt(row['bias'], '.3g')} | {_fmt(row['mse'], '.3g')} "
            f"| {_fmt(None if seconds is None else seconds * 1e3, '.3g')} "
            f"| {_fmt(row['relative_cost'], '.3g')} | {kind} |"
        )
    return "\n".join(lines)


def _settings(
    args: argparse.Namespace, n_samples: int, tau_sweep: list[float] | None
) -> dict[str, Any]:
    """What a resumed report must have been made with to be reused."""
    return {
        "n_draws": n_samples,
        "samples_per_draw": args.samples_per_draw,
        "tau": args.tau,
        "tau_sweep": sorted(tau_sweep or []),
        "seed": args.seed,
        "allow_soft": args.allow_soft,
        "rank_by": args.rank_by,
        "estimators": args.estimators,
    }


def _resumable(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The report at ``path`` if it exists and was made with ``expected`` settings."""
    try:
        data = json.loads(path.read_text())
        settings = dict(data["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    settings["tau_sweep"] = sorted(settings.get("tau_sweep") or [])
    if any(settings.get(key) != value for key, value in expected.items()):
        return None
    report: dict[str, Any] = data
    return report


def run(args: argparse.Namespace) -> int:
    """Run ``pickgrad diagnose`` from parsed arguments; returns the exit code."""
    if args.list:
        for name, factory in PROBLEMS.items():
            print(f"{name}: {factory(args.seed).description}")
        return 0
    out = check_writable_dir(args.out)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    n_samples, tau_sweep = args.n_samples, args.tau_sweep
    if args.quick:
        n_samples = min(n_samples, 20)
        tau_sweep = None if tau_sweep is None else sorted(set(tau_sweep))[:2]
    problems: list[Problem] = []
    for spec in args.problem:
        try:
            problems.append(load_problem(spec, args.seed))
        except (ValueError, TypeError) as error:
            raise UsageError(f"--problem {spec}: {error}") from None
    plans = []
    for problem in problems:
        try:
            pairs = resolve_estimators(args.estimators, problem.structure)
        except (ValueError, TypeError) as error:
            raise UsageError(f"--estimators: {error}") from None
        usable = [
            (label, est) for label, est in pairs if not est.missing_capabilities(problem.structure)
        ]
        for label, est in pairs:
            missing = est.missing_capabilities(problem.structure)
            if missing:
                print(
                    f"{problem.name}: skipping {label} (needs {', '.join(missing)})",
                    file=sys.stderr,
                )
        if not usable:
            raise UsageError(
                f"no estimator given applies to {problem.name} ({problem.structure!r})"
            )
        plans.append((problem, usable))
    expected = _settings(args, n_samples, tau_sweep)
    summaries: list[dict[str, Any]] = []
    failed: list[str] = []
    try:
        for problem, usable in plans:
            stem = _file_stem(problem.name)
            previous = _resumable(out / f"{stem}.json", expected) if args.resume else None
            if previous is not None:
                print(f"{problem.name}: already in {out / (stem + '.json')}, skipped (--resume)")
                print()
                summaries.append(previous)
                continue
            try:
                report = problem.diagnose(
                    usable,
                    n_samples=n_samples,
                    tau=args.tau,
                    samples_per_draw=args.samples_per_draw,
                    tau_sweep=tau_sweep,
                    max_enumeration=args.max_enumeration,
                    seed=args.seed,
                    progress=not args.no_progress,
                    allow_soft=args.allow_soft,
                    rank_by=args.rank_by,
                )
            except ValueError as error:
                raise UsageError(f"{problem.name}: {error}") from None
            report.settings["estimators"] = args.estimators
            report.to_json(out / f"{stem}.json")
            report.to_png(out / f"{stem}.png")
            print(report.to_markdown())
            print()
            summaries.append(report.to_dict())
            if report.all_failed:
                failed.append(problem.name)
    except KeyboardInterrupt:
        print(
            f"interrupted: {len(summaries)} of {len(plans)} problem report(s) written to {out}; "
            "rerun with --resume to skip them",
            file=sys.stderr,
        )
        return 130
    print("### Recommendations")
    print()
    print(summary_table(summaries))
    print()
    print(f"wrote {len(summaries)} JSON and PNG report(s) to {out}")
    if failed:
        print(
            f"error: every estimator failed on {', '.join(failed)} (the reasons are in the "
            "table above)",
            file=sys.stderr,
        )
        return 1
    return 0
