"""Train every applicable estimator on the built-in slot-selection tasks and compare them.

Tasks: *pick-the-five* (pick the item worth 5 out of 8; metric: held-out accuracy) and
*critic slots* (fill 4 slots from 16 items to maximise a fixed critic with slot interactions;
metric: mean reward gap to the exact optimum). Every estimator trains the same network from the
same initialisation, on the same batches, for the same number of steps and loss evaluations,
each at its tuned temperature (``st-relaxed`` at 0.6, the setting users report). Prints a
table and the best estimator of each task, writes results.json (after every run) and
learning_curves.png.

The best is chosen by the rule of ``pickgrad diagnose`` (one ranking function for both): only
estimators whose forward pass is a hard choice, unless --allow-soft; the final held-out metric
first, the mean of the learning curve to break ties. Ctrl-C keeps the finished runs in
results.json (exit status 130); --resume skips them next time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
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
from pickgrad.diagnostics.report import kept_estimator, rank
from pickgrad.estimators.base import available_estimators
from pickgrad.estimators.reinforce import BASELINES
from pickgrad.schedules import Constant, ExponentialDecay, Schedule
from pickgrad.select import estimate
from pickgrad.structures.onehot import OneHot
from pickgrad.tasks import TASKS
from pickgrad.tasks.base import Task

__all__ = [
    "DEFAULT_TAU",
    "RunResult",
    "add_arguments",
    "estimator_runs",
    "rank_results",
    "run",
    "train",
    "training_key",
]

#: Temperature per task and estimator: the best of TUNE_GRID on each task's validation split
#: (``pickgrad demo --tune``, recorded in BENCHMARKS.md). Estimators not listed use 1.0.
DEFAULT_TAU: dict[str, dict[str, float]] = {
    "pick-the-five": {
        "relaxed": 0.5,
        "gumbel-relaxed": 0.25,
        "st-gumbel": 0.1,
        "gumbel-rao": 0.1,
        "perturbed": 0.25,
    },
    "critic-slots": {
        "relaxed": 2.0,
        "gumbel-relaxed": 0.5,
        "st-gumbel": 0.5,
        "gumbel-rao": 0.25,
        "perturbed": 2.0,
    },
}
#: Temperatures that are never tuned: st-relaxed at 0.6 is the setting users report failing.
PINNED_TAU: dict[str, float] = {"st-relaxed": 0.6}
TUNE_GRID = (0.1, 0.25, 0.5, 1.0, 2.0)
#: Options the demo gives some estimators to stay within its time budget.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {"perturbed": {"n_perturbations": 10}}
#: Table order: the order of DESIGN.md; estimators registered later come after.
ORDER = ("st", "st-relaxed", "relaxed", "gumbel-relaxed", "st-gumbel", "gumbel-rao", "reinforce")


@dataclass
class RunResult:
    """One estimator trained on one task."""

    task: str
    label: str
    estimator: str
    tau: float | None
    metric: str
    final: float
    wall_time: float
    score_spread: float = 0.0  # std of the final scores across items, mean over held-out slots
    options: dict[str, Any] = field(default_factory=dict)
    curve_steps: list[int] = field(default_factory=list)
    curve_values: list[float] = field(default_factory=list)


def uses_tau(name: str, options: dict[str, Any] | None = None) -> bool:
    return kept_estimator(name, **(options or {})).uses_tau


def estimator_runs(names: list[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """``(label, name, options)`` for each estimator to train; reinforce once per baseline."""
    runs = []
    known = available_estimators(OneHot())
    default = sorted(known, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    for name in names or default:
        if name == "reinforce":
            runs += [(f"reinforce/{b}", name, {"baseline": b}) for b in BASELINES]
        else:
            options = DEMO_OPTIONS.get(name, {})
            label = name + "".join(f":{key}={value}" for key, value in options.items())
            runs.append((label, name, options))
    return runs


def train(
    task: Task,
    label: str,
    name: str,
    options: dict[str, Any],
    tau: float | Schedule,
    *,
    steps: int,
    batch_size: int,
    n_samples: int,
    lr: float,
    seed: int,
    eval_every: int,
) -> RunResult:
    """Train a fresh selector on ``task`` with one estimator; evaluate its mode along the way."""
    selector = task.make_selector(seed)
    optimizer = torch.optim.Adam(selector.parameters(), lr=lr)
    # One estimator object for the whole run: the ema baseline keeps state across steps.
    estimator = kept_estimator(name, **options)
    generator = torch.Generator().manual_seed(seed)
    structure = OneHot()
    result = RunResult(
        task.name,
        label,
        name,
        float(tau) if estimator.uses_tau else None,
        task.metric,
        0.0,
        0.0,
        options=dict(options),
    )
    start = time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            result.curve_steps.append(step)
            result.curve_values.append(task.evaluate(selector))
        if step == steps:
            break
        items = task.sample_items(batch_size, generator)
        surrogate = estimate(
            task.loss_fn(items),
            selector.score(items),
            structure,
            estimator,
            n_samples=n_samples,
            tau=tau,
            generator=generator,
        )
        optimizer.zero_grad()
        surrogate.backward()
        optimizer.step()
        if isinstance(tau, Schedule):
            tau.step()
    result.wall_time = time.perf_counter() - start
    result.final = result.curve_values[-1]
    with torch.no_grad():
        result.score_spread = float(selector.score(task.test_items()).std(-1).mean())
    return result


def _tau_for(base: float, args: argparse.Namespace) -> float | Schedule:
    if args.schedule == "exponential":
        return ExponentialDecay(tau0=max(1.0, base), rate=args.anneal_rate, tau_min=base)
    return Constant(base)


def format_table(results: list[RunResult]) -> str:
    """A markdown table: one row per (task, estimator)."""
    lines = [
        "| task | estimator | tau | metric | final | score spread | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tau = "-" if r.tau is None else f"{r.tau:g}"
        lines.append(
            f"| {r.task} | {r.label} | {tau} | {r.metric} | {r.final:.4f} | {r.score_spread:.3g} "
            f"| {r.wall_time:.1f} |"
        )
    return "\n".join(lines)


def plot_curves(results: list[RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    labels = list(dict.fromkeys(r.label for r in results))
    # One colour per estimator (the same in every panel); line style per family: solid if it
    # uses relax, dashed for score-function, dash-dot if it needs nothing but argmax.
    palette = plt.get_cmap("tab20").colors  # type: ignore[attr-defined]
    colour = {label: palette[i % len(palette)] for i, label in enumerate(labels)}

    def line_style(r: RunResult) -> str:
        estimator = kept_estimator(r.estimator)
        if estimator.needs_loss:
            return "--"
        return "-" if "relax" in estimator.needs else "-."

    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks) + 1.8, 4.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in results if r.task == task):
            axis.plot(
                r.curve_steps,
                r.curve_values,
                line_style(r),
                color=colour[r.label],
                label=r.label,
                linewidth=1.4,
            )
        metric = next(r.metric for r in results if r.task == task)
        axis.set(title=task, xlabel="training step", ylabel=f"held-out {metric}")
        if "gap" in metric:
            axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pickgrad demo``."""
    parser.add_argument(
        "--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="tasks to run"
    )
    parser.add_argument(
        "--estimators",
        nargs="+",
        metavar="NAME",
        default=None,
        help="estimators to train (default: every estimator that works on OneHot)",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=1000, help="training steps per estimator"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per step")
    parser.add_argument(
        "--n-samples",
        type=positive_int,
        default=4,
        help="samples per example per step, the same for every estimator (rloo needs >= 2)",
    )
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate")
    parser.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the network, data and noise"
    )
    parser.add_argument(
        "--eval-every", type=positive_int, default=25, help="steps between evaluations"
    )
    parser.add_argument(
        "--tau",
        type=positive_float,
        default=None,
        help="one temperature for every estimator (default: each estimator's tuned one)",
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "exponential"),
        default="constant",
        help="temperature schedule; exponential anneals max(1, tau) down to tau (Jang et al. 2017)",
    )
    parser.add_argument(
        "--anneal-rate",
        type=positive_float,
        default=5e-3,
        help="rate r of the exponential schedule",
    )
    parser.add_argument(
        "--tune", action="store_true", help=f"grid-search tau over {TUNE_GRID} per estimator first"
    )
    parser.add_argument(
        "--allow-soft",
        action="store_true",
        help="the 'best' line may name an estimator whose forward pass is relaxed (relaxed, "
        "gumbel-relaxed, perturbed); by default only hard-forward ones, as in pickgrad diagnose",
    )
    parser.add_argument(
        "--threads",
        type=nonnegative_int,
        default=1,
        help="torch CPU threads; the networks are tiny, so one thread is fastest; 0 keeps "
        "torch's setting",
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long run (for tests)")
    parser.add_argument("--out", type=Path, default=Path("pickgrad-out/demo"), help="output folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the runs already in --out/results.json (made with the same settings)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


#: Settings that must match for ``--resume`` to reuse a results.json.
RESUME_KEYS = (
    "steps",
    "batch_size",
    "n_samples",
    "lr",
    "seed",
    "eval_every",
    "schedule",
    "anneal_rate",
    "tau",
)


def training_key(result: RunResult, higher_is_better: bool) -> tuple[float, float]:
    """Sort key of a trained run, smaller is better: final metric, then the learning curve's
    mean (how fast it got there) to break ties."""
    sign = -1.0 if higher_is_better else 1.0
    area = sum(result.curve_values) / max(len(result.curve_values), 1)
    return (sign * result.final, sign * area)


def rank_results(
    results: list[RunResult], higher_is_better: bool, *, allow_soft: bool = False
) -> list[RunResult]:
    """Trained runs of one task, best first, by the advisor's hard-by-default rule
    (:func:`pickgrad.diagnostics.report.rank`): only hard-forward estimators unless
    ``allow_soft``."""
    return rank(
        results,
        lambda r: training_key(r, higher_is_better),
        hard=lambda r: bool(kept_estimator(r.estimator, **r.options).hard),
        allow_soft=allow_soft,
    )


def _write(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file, so an interrupted write never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    temporary.replace(path)


def _load_previous(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The finished runs of a previous results.json, after checking its settings match."""
    if not path.exists():
        return {"tuning": {}, "results": []}
    try:
        previous = json.loads(path.read_text())
        old = previous["config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--resume: cannot read {path}: {error}") from None
    different = [
        f"{key}={old.get(key)!r} there, {config[key]!r} now"
        for key in RESUME_KEYS
        if old.get(key) != config[key]
    ]
    if different:
        raise UsageError(
            f"--resume: {path} was made with other settings ({'; '.join(different)}); "
            "use another --out or drop --resume"
        )
    return {"tuning": previous.get("tuning", {}), "results": previous.get("results", [])}


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; returns the exit code.

    Results go to ``--out/results.json`` after every run, so Ctrl-C (exit 130) keeps the
    finished ones and ``--resume`` continues from them.
    """
    from tqdm.auto import tqdm

    out = check_writable_dir(args.out)
    if args.quick:
        args.steps, args.eval_every = min(args.steps, 20), min(args.eval_every, 10)
    known = available_estimators(OneHot())
    unknown = [name for name in args.estimators or [] if name not in known]
    if unknown:
        raise UsageError(f"unknown estimator(s) {unknown}; known for OneHot: {', '.join(known)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    runs = estimator_runs(args.estimators)
    tasks = [TASKS[name](seed=args.seed) for name in args.tasks]
    common = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        n_samples=args.n_samples,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
    )
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key != "run"
    }
    config["threads"] = torch.get_num_threads()
    path = out / "results.json"
    previous = _load_previous(path, config) if args.resume else {"tuning": {}, "results": []}
    done = {(r["task"], r["label"]): RunResult(**r) for r in previous["results"]}
    tuning: dict[str, dict[str, dict[str, list[float]]]] = previous["tuning"]
    results: list[RunResult] = []

    def save(complete: bool) -> None:
        payload = {
            "config": config,
            "complete": complete,
            "tuning": tuning,
            "results": [asdict(r) for r in results],
        }
        _write(path, payload)

    taus = {
        (task.name, name): args.tau
        if args.tau is not None
        else PINNED_TAU.get(name) or DEFAULT_TAU[task.name].get(name, 1.0)
        for task in tasks
        for _, name, _ in runs
    }
    tunable = [run_ for run_ in runs if uses_tau(run_[1], run_[2])]
    total = len(tasks) * (len(runs) + (len(tunable) * len(TUNE_GRID) if args.tune else 0))
    progress = tqdm(total=total, desc="pickgrad demo", unit="run", disable=args.no_progress)
    finished = 0
    try:
        if args.tune:
            for task in tasks:
                validation = TASKS[task.name](seed=args.seed, split="validation")
                validation.prepare()
                sign = 1.0 if task.higher_is_better else -1.0
                for label, name, options in tunable:
                    ranking = tuning.setdefault(task.name, {}).setdefault(label, {})
                    for tau in TUNE_GRID:
                        if str(tau) not in ranking:
                            progress.set_postfix_str(f"tune {task.name}: {label} tau={tau}")
                            r = train(validation, label, name, options, tau, **common)
                            # Final metric first; area under the learning curve breaks ties.
                            ranking[str(tau)] = [r.final, sum(r.curve_values) / len(r.curve_values)]
                            save(complete=False)
                        progress.update()
                    if name not in PINNED_TAU:
                        chosen = max(
                            ranking.items(), key=lambda kv: (sign * kv[1][0], sign * kv[1][1])
                        )
                        taus[task.name, name] = float(chosen[0])
        for task in tasks:
            task.prepare()
            for label, name, options in runs:
                reused = done.get((task.name, label))
                if reused is not None:
                    results.append(reused)
                else:
                    progress.set_postfix_str(f"{task.name}: {label}")
                    schedule = _tau_for(taus[task.name, name], args)
                    results.append(train(task, label, name, options, schedule, **common))
                    save(complete=False)
                finished += 1
                progress.update()
    except KeyboardInterrupt:
        progress.close()
        save(complete=False)
        print(
            f"interrupted: {finished} of {len(tasks) * len(runs)} runs finished and written to "
            f"{path}; rerun with --resume to continue",
            file=sys.stderr,
        )
        return 130
    progress.close()
    save(complete=True)

    print(format_table(results))
    for task in tasks:
        rows = [r for r in results if r.task == task.name]
        ranked = rank_results(rows, task.higher_is_better, allow_soft=args.allow_soft)
        kind = "" if args.allow_soft else " (hard forward pass)"
        if not ranked:
            print(f"best on {task.name}{kind}: none trained; see --allow-soft")
            continue
        best = ranked[0]
        line = f"best on {task.name}{kind}: {best.label} ({task.metric} {best.final:.4f})"
        overall = rank_results(rows, task.higher_is_better, allow_soft=True)[0]
        if (
            not args.allow_soft
            and overall is not best
            and training_key(overall, task.higher_is_better)
            < training_key(best, task.higher_is_better)
        ):
            line += f"; {overall.label}, whose forward pass is relaxed, did better"
        print(line)
    plot_curves(results, out / "learning_curves.png")
    print(f"wrote {path} and {out / 'learning_curves.png'}")
    return 0
