"""Does the advisor's ranking predict training? ``diagnose`` against what training finds.

For every built-in task where training makes sense:

* the demo tasks *pick-the-five* and *critic-slots* (``pickgrad.tasks``): a ``SlotSelector``
  trained with Adam exactly as ``pickgrad demo`` trains it (same steps, batch, samples per step,
  tuned temperatures, options); outcome: the held-out metric, ties broken by the mean of the
  learning curve (how fast it got there);
* the diagnostics' toys *bernoulli*, *polynomial-1.5/2/3* and *categorical-quadratic*
  (``pickgrad.diagnostics.problems``): the logits themselves trained with Adam from the problem's
  scores; outcome: the exact ``E[loss]`` at the end (closed form or enumeration), ties broken by
  its mean along training;
* the same for the tasks the ranking rule was NOT designed on (``NEW_TASKS``, reported
  separately): *spanning-tree* (exact through the Kruskal / Plackett-Luce law),
  *subset-kmedian* (a Subset with a nonlinear loss, exact Plackett-Luce law) and
  *slot-coverage* (OneHot slots with a saturating coverage loss, exact by enumeration);

it runs ``pickgrad.diagnose`` once at the task's starting point (seed 0, every estimator at the
temperature it trains with) and trains every applicable estimator with ``--seeds`` seeds (each
seed: its own initial network, data and noise). It then compares the advisor's ranking of the
estimators it may recommend (hard forward pass; ``--allow-soft`` for all) with the ranking of
the seed-averaged training outcomes: Spearman's rank correlation, and whether the advisor's pick
is among the two best trained. The same measured rows are also ranked by the previous rule
(lowest MSE x time among acceptable estimators, soft ones included) for comparison.

    python benchmarks/bench_advisor.py            # several minutes on 2 CPU cores
    python benchmarks/bench_advisor.py --quick    # seconds-long smoke run (2 tasks, 20 steps)

Training outcomes of several runs (e.g. tasks split over two processes, or more seeds for one
task) are combined by ``--reuse-training A.json B.json``, which re-runs only ``diagnose``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from pickgrad import estimate
from pickgrad.diagnostics.problems import PROBLEMS, Problem
from pickgrad.diagnostics.report import (
    EstimatorStats,
    kept_estimator,
    rank,
    rank_along_training,
    rank_rows,
)
from pickgrad.estimators.base import Estimator
from pickgrad.tasks import TASKS
from pickgrad.tasks import demo as demo_module

DEMO_TASKS = ("pick-the-five", "critic-slots")
TOY_TASKS = ("bernoulli", "polynomial-1.5", "polynomial-2", "polynomial-3", "categorical-quadratic")
#: Toys added after the ranking rule was chosen: its validation on tasks it has not seen.
NEW_TASKS = ("spanning-tree", "subset-kmedian", "slot-coverage")
#: Adam on the logits of the toys: learning rate and temperature of every relaxing estimator.
TOY_LR, TOY_TAU = 0.05, 1.0

Setup = tuple[str, Callable[[], Estimator], float | None]  # label, fresh estimator, tau


def setups_for(task: str) -> list[Setup]:
    """Every estimator the demo trains on OneHot, with the options and tau it trains with."""
    result: list[Setup] = []
    for label, name, options in demo_module.estimator_runs(None):
        probe = kept_estimator(name, **options)
        if task in DEMO_TASKS:
            tau = demo_module.PINNED_TAU.get(name) or demo_module.DEFAULT_TAU[task].get(name, 1.0)
        else:
            tau = TOY_TAU
        result.append(
            (
                label,
                (lambda name=name, options=options: kept_estimator(name, **options)),
                tau if probe.uses_tau else None,
            )
        )
    return result


def advisor_rows(
    problem: Problem, setups: list[Setup], n_draws: int, reference: bool = True
) -> list[EstimatorStats]:
    """``diagnose`` rows of every setup at its own tau (one call per distinct tau)."""
    exact = problem.exact_gradient() if reference else None
    rows: list[EstimatorStats] = []
    for tau in sorted({1.0 if tau is None else tau for _, _, tau in setups}):
        group = [(label, make()) for label, make, t in setups if (1.0 if t is None else t) == tau]
        report = problem.diagnose(group, along=False, n_samples=n_draws, tau=tau, reference=exact)
        rows += report.rows
    order = [label for label, _, _ in setups]
    return sorted(rows, key=lambda row: order.index(row.label))


def advisor_ranking(
    problem: Problem, setups: list[Setup], n_draws: int, allow_soft: bool
) -> tuple[list[EstimatorStats], list[EstimatorStats], list[list[EstimatorStats]]]:
    """(rows at the start, the advisor's ranking, rows at the later points): along training
    (``rank_along_training``) for a problem with later points, else ``rank_rows``."""
    rows = advisor_rows(problem, setups, n_draws)
    if problem.later is None:
        return rows, rank_rows(rows, allow_soft=allow_soft), []
    later = [advisor_rows(point, setups, n_draws) for point in problem.later()]
    return rows, rank_along_training([rows, *later], allow_soft=allow_soft), later


def train_demo(task_name: str, setup: Setup, seed: int, steps: int) -> tuple[float, float]:
    """(final metric, mean of the learning curve), signed so that lower is better."""
    label, make, tau = setup
    estimator = make()
    task = TASKS[task_name](seed=seed)
    task.prepare()
    result = demo_module.train(
        task,
        label,
        estimator.name,
        demo_module.DEMO_OPTIONS.get(estimator.name, {})
        if not label.startswith("reinforce/")
        else {"baseline": label.partition("/")[2]},
        1.0 if tau is None else tau,
        steps=steps,
        batch_size=32,
        n_samples=4,
        lr=3e-3,
        seed=seed,
        eval_every=max(1, steps // 40),
    )
    return demo_module.training_key(result, task.higher_is_better)


def expected_loss(problem: Problem, scores: torch.Tensor) -> float:
    if problem.expected_loss is not None:
        with torch.no_grad():
            return float(problem.expected_loss(scores))
    shifted = Problem(problem.name, problem.loss_fn, scores, problem.structure)
    return float(shifted.exact_gradient().value)


def train_toy(problem_name: str, setup: Setup, seed: int, steps: int) -> tuple[float, float]:
    """Adam on the logits from the problem's scores; (final E[loss], its mean along training)."""
    _, make, tau = setup
    problem = PROBLEMS[problem_name](0)
    estimator = make()
    logits = problem.scores.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=TOY_LR)
    generator = torch.Generator().manual_seed(1_000 + seed)
    curve = []
    every = max(1, steps // 20)
    for step in range(steps):
        surrogate = estimate(
            problem.loss_fn,
            logits,
            problem.structure,
            estimator,
            n_samples=4,
            tau=1.0 if tau is None else tau,
            generator=generator,
        )
        optimizer.zero_grad()
        surrogate.backward()
        optimizer.step()
        if (step + 1) % every == 0:
            curve.append(expected_loss(problem, logits.detach()))
    return (curve[-1], statistics.fmean(curve))


def positions(keys: dict[str, Any], labels: list[str]) -> list[float]:
    """Rank position of each label (1 = best, ties get their average position)."""
    values = [keys[label] for label in labels]
    result = []
    for value in values:
        better = sum(other < value for other in values)
        equal = sum(other == value for other in values)
        result.append(better + (equal + 1) / 2)
    return result


def old_rule(rows: list[EstimatorStats]) -> list[EstimatorStats]:
    """The rule before this benchmark: bias acceptable by the 20% / 3-noise-floor test alone
    first, by MSE x time, soft ones included."""
    usable = [row for row in rows if row.error is None and math.isfinite(row.mse)]

    def old_acceptable(row: EstimatorStats) -> bool:
        return row.relative_bias <= 0.2 or row.bias <= 3 * row.noise_floor

    return sorted(usable, key=lambda row: (not old_acceptable(row), row.efficiency, row.mse))


def compare(
    ranked: list[EstimatorStats], trained: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    labels = [row.label for row in ranked if row.label in trained]
    advisor_position = {label: index + 1 for index, label in enumerate(labels)}
    training_position = dict(zip(labels, positions(trained, labels), strict=True))
    rho = float(
        spearmanr([advisor_position[x] for x in labels], [training_position[x] for x in labels])[0]
    )
    pick = labels[0]
    return {
        "pick": pick,
        "pick_trained_position": training_position[pick],
        # Tied for second place counts as in the top two.
        "pick_in_top_two": sum(trained[x] < trained[pick] for x in labels) < 2,
        "spearman": rho,
        "advisor_order": labels,
        "training_position": training_position,
    }


def outcome_text(trained: dict[str, tuple[float, float]], label: str) -> str:
    """``final (curve mean)`` of a trained label, '-' if it was not trained (--only-ranked)."""
    if label not in trained:
        return "-"
    return f"{trained[label][0]:.4g} ({trained[label][1]:.4g})"


def start_text(entry: dict[str, Any]) -> str:
    """The start-only ranking's pick, top two and Spearman where it differs in kind (later
    points measured), else '-'."""
    if not entry.get("later_rows"):
        return "-"
    start = entry["start_only"]
    top = "yes" if start["pick_in_top_two"] else "no"
    return f"{start['pick']}, {top}, {start['spearman']:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per estimator")
    parser.add_argument("--demo-steps", type=int, default=1000, help="steps on the demo tasks")
    parser.add_argument("--toy-steps", type=int, default=200, help="steps on the toys")
    parser.add_argument("--n-draws", type=int, default=200, help="diagnose draws per estimator")
    parser.add_argument("--allow-soft", action="store_true", help="rank soft-forward ones too")
    parser.add_argument(
        "--only-ranked",
        action="store_true",
        help="train only the estimators the advisor may recommend (hard forward unless "
        "--allow-soft): the soft ones' rows then show no training outcome",
    )
    parser.add_argument("--tasks", nargs="+", default=[*DEMO_TASKS, *TOY_TASKS, *NEW_TASKS])
    parser.add_argument("--out", default="pickgrad-out/bench-advisor.json")
    parser.add_argument(
        "--reuse-training",
        metavar="JSON",
        nargs="+",
        default=None,
        help="take the trained outcomes from these earlier --out files (a task in several: "
        "the last one) and re-run only diagnose: for changes to the advisor, which training "
        "never calls",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks = ["pick-the-five", "bernoulli"]
        args.demo_steps, args.toy_steps, args.n_draws = 20, 20, 20
    torch.set_num_threads(1)
    print(
        f"seeds {args.seeds}, demo steps {args.demo_steps}, toy steps {args.toy_steps}, "
        f"diagnose draws {args.n_draws}, allow_soft {args.allow_soft}, 1 torch thread"
    )
    start = time.perf_counter()
    summary = []
    previous = {}
    if args.reuse_training is not None:
        for path in args.reuse_training:
            previous.update({entry["task"]: entry for entry in json.loads(Path(path).read_text())})
        print(f"trained outcomes reused from {', '.join(args.reuse_training)}")
        args.tasks = [task for task in args.tasks if task in previous]
    for task in args.tasks:
        setups = setups_for(task)
        rows, ranked, later = advisor_ranking(
            PROBLEMS[task](0), setups, args.n_draws, args.allow_soft
        )
        trained: dict[str, tuple[float, float]] = {}
        spread: dict[str, float] = {}
        if task in previous:
            trained = {label: tuple(value) for label, value in previous[task]["trained"].items()}  # type: ignore[misc]
            spread = dict(previous[task]["spread"])
        hard_labels = {row.label for row in rows if row.hard or args.allow_soft}
        for setup in setups if task not in previous else []:
            if args.only_ranked and setup[0] not in hard_labels:
                continue
            outcomes = [
                train_demo(task, setup, seed, args.demo_steps)
                if task in DEMO_TASKS
                else train_toy(task, setup, seed, args.toy_steps)
                for seed in range(args.seeds)
            ]
            trained[setup[0]] = (
                statistics.fmean(o[0] for o in outcomes),
                statistics.fmean(o[1] for o in outcomes),
            )
            spread[setup[0]] = statistics.stdev(o[0] for o in outcomes) if len(outcomes) > 1 else 0
        new = compare(ranked, trained)
        start_only = compare(rank_rows(rows, allow_soft=args.allow_soft), trained)
        old = compare(old_rule(rows), trained)
        forward = {row.label: row.hard for row in rows}
        hard_trained = rank(
            list(trained),
            key=trained.__getitem__,
            hard=forward.__getitem__,
            allow_soft=args.allow_soft,
        )
        print(f"\n### {task}\n")
        print(
            "| estimator | forward | bias ok | MSE | cos(draw) | advisor rank | trained rank "
            "| outcome (lower is better, mean over seeds) | std over seeds |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            position = (
                new["advisor_order"].index(row.label) + 1
                if row.label in new["advisor_order"]
                else "-"
            )
            trained_position = new["training_position"].get(row.label, "-")
            print(
                f"| {row.label} | {'hard' if row.hard else 'soft'} "
                f"| {'yes' if row.acceptable_bias else 'no'} | {row.mse:.3g} "
                f"| {row.cosine_draw:.3f} | {position} | {trained_position} "
                f"| {outcome_text(trained, row.label)} | {spread.get(row.label, math.nan):.3g} |"
            )
        print(
            f"\nadvisor pick: {new['pick']} (trained position {new['pick_trained_position']:g}); "
            f"best trained: {hard_trained[0]}; Spearman {new['spearman']:.2f}; "
            f"previous rule: pick {old['pick']}, Spearman {old['spearman']:.2f}"
        )
        if later:
            print(
                "ranked along training (the start and "
                f"{len(later)} later point(s)); at the start alone: pick {start_only['pick']} "
                f"(trained position {start_only['pick_trained_position']:g}), Spearman "
                f"{start_only['spearman']:.2f}"
            )
        summary.append(
            {
                "task": task,
                "new": new,
                "old": old,
                "start_only": start_only,
                "rows": [r.__dict__ for r in rows],
                "later_rows": [[r.__dict__ for r in point] for point in later],
                "trained": trained,
                "spread": spread,
                "seeds": previous[task].get("seeds", args.seeds)
                if task in previous
                else args.seeds,
            }
        )
    print("\n### Summary\n")
    print(
        "| task | rule designed on it | seeds | advisor pick | its trained position | in top two "
        "| Spearman | start only (demo tasks): pick, in top two, Spearman "
        "| previous rule: pick, in top two, Spearman |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in summary:
        new, old = entry["new"], entry["old"]
        print(
            f"| {entry['task']} | {'no' if entry['task'] in NEW_TASKS else 'yes'} "
            f"| {entry['seeds']} | {new['pick']} | {new['pick_trained_position']:g} "
            f"| {'yes' if new['pick_in_top_two'] else 'no'} | {new['spearman']:.2f} "
            f"| {start_text(entry)} "
            f"| {old['pick']}, {'yes' if old['pick_in_top_two'] else 'no'}, "
            f"{old['spearman']:.2f} |"
        )
    groups = {
        "tasks the rule was designed on": [e for e in summary if e["task"] not in NEW_TASKS],
        "new tasks (not seen by the rule)": [e for e in summary if e["task"] in NEW_TASKS],
        "all tasks": summary,
    }
    print()
    for title, group in groups.items():
        if not group:
            continue
        mean_new = statistics.fmean(e["new"]["spearman"] for e in group)
        mean_old = statistics.fmean(e["old"]["spearman"] for e in group)
        top_two = sum(e["new"]["pick_in_top_two"] for e in group)
        old_top_two = sum(e["old"]["pick_in_top_two"] for e in group)
        print(
            f"{title}: mean Spearman {mean_new:.2f} (previous rule {mean_old:.2f}); pick in the "
            f"top two on {top_two} of {len(group)} (previous rule {old_top_two}); ratio of mean "
            f"Spearman new/old {mean_new / mean_old if mean_old else math.nan:.2f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str))
    print(f"total wall time: {time.perf_counter() - start:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
