"""Measure the bias, variance and cost of every gradient estimator against the exact gradient,
on built-in problems or on your own, and recommend one. For each problem it prints a markdown
table (bias = ||mean - exact||, variance = trace of the covariance, MSE, cosine of one draw and
of the mean with the exact gradient, sign agreement, time per gradient, MSE x time), writes
<problem>.json and <problem>.png (bias against standard deviation; MSE against temperature with
--tau-sweep) in --out, and ends with a summary of the recommendations. The recommendation is the
lowest MSE x time among estimators whose bias is at most 20% of ||exact|| or within 3 noise floors
of zero. Your own problem: --problem mymodule:make, where make() takes no argument and returns
(loss_fn, scores, structure) or a pickgrad.diagnostics.Problem; loss_fn maps samples
(n, *scores.shape) to losses (n,) or (n, *batch); mymodule is imported from the current folder
or PYTHONPATH.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from pickgrad.diagnostics.exact import DEFAULT_MAX_ENUMERATION
from pickgrad.diagnostics.problems import PROBLEMS, Problem, load_problem
from pickgrad.diagnostics.report import DiagnosticReport, diagnose, resolve_estimators

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pickgrad diagnose``."""
    parser.add_argument(
        "--problem",
        nargs="+",
        metavar="NAME",
        default=list(PROBLEMS),
        help=f"built-in problems ({', '.join(PROBLEMS)}) and/or module:function for your own",
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
        "--n-samples", type=int, default=200, help="gradient draws per estimator (and per tau)"
    )
    parser.add_argument(
        "--samples-per-draw",
        type=int,
        default=4,
        help="samples per gradient draw, the same for every estimator (rloo needs >= 2)",
    )
    parser.add_argument("--tau", type=float, default=1.0, help="temperature of the relaxations")
    parser.add_argument(
        "--tau-sweep",
        nargs="+",
        type=float,
        metavar="TAU",
        default=None,
        help="also measure temperature-dependent estimators at these taus (MSE-vs-tau plot)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the problems and the noise")
    parser.add_argument(
        "--max-enumeration",
        type=int,
        default=DEFAULT_MAX_ENUMERATION,
        help="most joint solutions enumerated per batch entry for the exact gradient",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("pickgrad-out/diagnose"), help="output folder"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long run (20 draws, at most 2 taus)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: leave torch's default); the problems are tiny, and one "
        "thread avoids thread synchronisation dominating the time per gradient",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--list", action="store_true", help="list the built-in problems and exit")
    parser.set_defaults(run=run)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "problem"


def summary_table(reports: list[DiagnosticReport]) -> str:
    """One line per problem: the recommended estimator, its tau, MSE and time per gradient."""
    lines = [
        "| problem | recommended | tau | bias | MSE | ms/grad | reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        rec = report.recommendation
        if rec is None:
            lines.append(f"| {report.problem} | none | - | - | - | - | - |")
            continue
        row = report.row(rec.label, rec.tau)
        kind = "exact" if report.reference.exact else "estimated"
        lines.append(
            f"| {report.problem} | {rec.label} | {row.tau_text} | {row.bias:.3g} | {row.mse:.3g} "
            f"| {row.time_per_gradient * 1e3:.3g} | {kind} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``pickgrad diagnose`` from parsed arguments; returns the exit code."""
    if args.list:
        for name, factory in PROBLEMS.items():
            print(f"{name}: {factory(args.seed).description}")
        return 0
    if args.n_samples < 2:
        raise SystemExit(f"--n-samples must be >= 2, got {args.n_samples}")
    if args.samples_per_draw < 1:
        raise SystemExit(f"--samples-per-draw must be >= 1, got {args.samples_per_draw}")
    for tau in [args.tau, *(args.tau_sweep or [])]:
        if not tau > 0:
            raise SystemExit(f"temperatures must be > 0, got {tau}")
    if args.threads < 0:
        raise SystemExit(f"--threads must be >= 0, got {args.threads}")
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
            raise SystemExit(f"--problem {spec}: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    reports = []
    for problem in problems:
        try:
            pairs = resolve_estimators(args.estimators, problem.structure)
        except (ValueError, TypeError) as error:
            raise SystemExit(f"--estimators: {error}") from None
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
            raise SystemExit(
                f"no estimator given applies to {problem.name} ({problem.structure!r})"
            )
        try:
            report = diagnose(
                problem.loss_fn,
                problem.scores,
                problem.structure,
                usable,
                n_samples=n_samples,
                tau=args.tau,
                samples_per_draw=args.samples_per_draw,
                tau_sweep=tau_sweep,
                expected_loss=problem.expected_loss,
                max_enumeration=args.max_enumeration,
                seed=args.seed,
                name=problem.name,
                progress=not args.no_progress,
            )
        except ValueError as error:
            raise SystemExit(f"{problem.name}: {error}") from None
        stem = _file_stem(problem.name)
        report.to_json(args.out / f"{stem}.json")
        report.to_png(args.out / f"{stem}.png")
        print(report.to_markdown())
        print()
        reports.append(report)
    print("### Recommendations")
    print()
    print(summary_table(reports))
    print()
    print(f"wrote {len(reports)} JSON and PNG report(s) to {args.out}")
    return 0
