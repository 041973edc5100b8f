"""Train every applicable estimator on the built-in slot-selection tasks and compare them.

Tasks: *pick-the-five* (pick the item worth 5 out of 8; metric: held-out accuracy) and
*critic slots* (fill 4 slots from 16 items to maximise a fixed critic with slot interactions;
metric: mean reward gap to the exact optimum). Every estimator trains the same network from the
same initialisation, on the same batches, for the same number of steps and loss evaluations,
each at its tuned temperature (``st-relaxed`` at 0.6, the setting users report). Prints a
table, writes results.json and learning_curves.png.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pickgrad.estimators.base import available_estimators, get_estimator
from pickgrad.estimators.reinforce import BASELINES
from pickgrad.schedules import Constant, ExponentialDecay, Schedule
from pickgrad.select import estimate
from pickgrad.structures.onehot import OneHot
from pickgrad.tasks import TASKS
from pickgrad.tasks.base import Task

__all__ = ["DEFAULT_TAU", "RunResult", "add_arguments", "estimator_runs", "run", "train"]

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
    curve_steps: list[int] = field(default_factory=list)
    curve_values: list[float] = field(default_factory=list)


def uses_tau(name: str, options: dict[str, Any] | None = None) -> bool:
    return get_estimator(name, **(options or {})).uses_tau


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
    estimator = get_estimator(name, **options)
    generator = torch.Generator().manual_seed(seed)
    structure = OneHot()
    result = RunResult(
        task.name, label, name, float(tau) if estimator.uses_tau else None, task.metric, 0.0, 0.0
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
    palette = plt.get_cmap("tab20").colors
    colour = {label: palette[i % len(palette)] for i, label in enumerate(labels)}

    def line_style(r: RunResult) -> str:
        estimator = get_estimator(r.estimator)
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
    parser.add_argument("--steps", type=int, default=1000, help="training steps per estimator")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step")
    parser.add_argument(
        "--n-samples",
        type=int,
        default=4,
        help="samples per example per step, the same for every estimator (rloo needs >= 2)",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the network, data and noise")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between evaluations")
    parser.add_argument(
        "--tau", type=float, default=None, help="one temperature for all (default: tuned)"
    )
    parser.add_argument(
        "--schedule",
        choices=("constant", "exponential"),
        default="constant",
        help="temperature schedule; exponential anneals max(1, tau) down to tau (Jang et al. 2017)",
    )
    parser.add_argument(
        "--anneal-rate", type=float, default=5e-3, help="rate r of the exponential schedule"
    )
    parser.add_argument(
        "--tune", action="store_true", help=f"grid-search tau over {TUNE_GRID} per estimator first"
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long run (for tests)")
    parser.add_argument("--out", type=Path, default=Path("pickgrad-out/demo"), help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed arguments; returns the exit code."""
    from tqdm.auto import tqdm

    if args.quick:
        args.steps, args.eval_every = min(args.steps, 20), min(args.eval_every, 10)
    for option in ("steps", "batch_size", "n_samples", "eval_every"):
        if getattr(args, option) < 1:
            raise SystemExit(
                f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}"
            )
    known = available_estimators(OneHot())
    unknown = [name for name in args.estimators or [] if name not in known]
    if unknown:
        raise SystemExit(f"unknown estimator(s) {unknown}; known for OneHot: {', '.join(known)}")
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
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
    taus = {
        (task.name, name): args.tau or PINNED_TAU.get(name) or DEFAULT_TAU[task.name].get(name, 1.0)
        for task in tasks
        for _, name, _ in runs
    }
    tuning: dict[str, dict[str, dict[str, float]]] = {}
    tunable = [run_ for run_ in runs if uses_tau(run_[1], run_[2])]
    total = len(tasks) * (len(runs) + (len(tunable) * len(TUNE_GRID) if args.tune else 0))
    progress = tqdm(total=total, desc="pickgrad demo", unit="run", disable=args.no_progress)
    if args.tune:
        for task in tasks:
            validation = TASKS[task.name](seed=args.seed, split="validation")
            validation.prepare()
            sign = 1.0 if task.higher_is_better else -1.0
            for label, name, options in tunable:
                ranking = {}
                for tau in TUNE_GRID:
                    progress.set_postfix_str(f"tune {task.name}: {label} tau={tau}")
                    r = train(validation, label, name, options, tau, **common)
                    # Final metric first; area under the learning curve breaks ties.
                    ranking[tau] = (
                        sign * r.final,
                        sign * sum(r.curve_values) / len(r.curve_values),
                    )
                    progress.update()
                if name not in PINNED_TAU:
                    taus[task.name, name] = max(ranking, key=ranking.__getitem__)
                tuning.setdefault(task.name, {})[label] = {
                    str(k): v[0] * sign for k, v in ranking.items()
                }
    results = []
    for task in tasks:
        task.prepare()
        for label, name, options in runs:
            progress.set_postfix_str(f"{task.name}: {label}")
            tau = _tau_for(taus[task.name, name], args)
            results.append(train(task, label, name, options, tau, **common))
            progress.update()
    progress.close()

    print(format_table(results))
    for task in tasks:
        rows = [r for r in results if r.task == task.name]
        best = (max if task.higher_is_better else min)(rows, key=lambda r: r.final)
        print(f"best on {task.name}: {best.label} ({task.metric} {best.final:.4f})")
    args.out.mkdir(parents=True, exist_ok=True)
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key != "run"
    }
    payload = {"config": config, "tuning": tuning, "results": [asdict(r) for r in results]}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2))
    plot_curves(results, args.out / "learning_curves.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'learning_curves.png'}")
    return 0
