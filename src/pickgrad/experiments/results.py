"""What a finished experiment leaves behind: ``results.json``, ``results.md`` and learning curves.

``results.json`` records the command, the commit, the versions, the config, the data checksum,
every run and a summary per method x estimator (mean, standard deviation, every seed's value
and the share of seeds below chance), so any figure can be traced and rerun.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pickgrad
from pickgrad.experiments.eval import summarise_runs

__all__ = [
    "MONITOR_PANELS",
    "environment",
    "markdown_table",
    "plot_learning_curves",
    "summarise",
    "write_results",
]


def environment(command: str | None = None) -> dict[str, Any]:
    """The command line, the git commit of the source (if any) and the versions that ran.

    ``command`` is the command as given (default: this process's ``sys.argv``).
    """
    root = Path(pickgrad.__file__).resolve().parents[2]
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root, capture_output=True, text=True, timeout=10,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": commit,
        "dirty": dirty,
        "versions": {
            "pickgrad": pickgrad.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "platform": platform.platform(),
    }


def summarise(
    runs: list[dict[str, Any]], metrics: tuple[str, ...], chance: float | None, headline: str
) -> list[dict[str, Any]]:
    """One entry per method x estimator: each test metric summarised over its seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["method"], run["estimator"]), []).append(run)
    out = []
    for (method, estimator), group in groups.items():
        entry: dict[str, Any] = {
            "method": method,
            "estimator": estimator,
            "seeds": [r["seed"] for r in group],
        }
        for metric in metrics:
            values = [r["test"][metric] for r in group]
            entry[metric] = summarise_runs(values, chance if metric == headline else None)
        out.append(entry)
    return out


def markdown_table(
    summary: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    metrics: tuple[str, ...],
    headline: str,
) -> str:
    """The summary table (mean ± std over seeds) and a table of every seed's values.

    The share of seeds below chance gets a column only where the experiment has a chance level
    for its headline metric (the digits set of l2x, a VAE's bound have none).
    """
    with_chance = any(entry[headline].get("below_chance") is not None for entry in summary)
    chance_head, chance_rule = (f" {headline} < chance |", "---|") if with_chance else ("", "")
    lines = [
        "| method | estimator | seeds | " + " | ".join(metrics) + " |" + chance_head,
        "|---|---|---|" + "---|" * len(metrics) + chance_rule,
    ]
    for entry in summary:
        cells = [f"{entry[m]['mean']:.4g} ± {entry[m]['std']:.2g}" for m in metrics]
        below = entry[headline].get("below_chance")
        chance_cell = (f" {'' if below is None else f'{below:.0%}'} |") if with_chance else ""
        lines.append(
            f"| {entry['method']} | {entry['estimator']} | {len(entry['seeds'])} | "
            + " | ".join(cells)
            + " |"
            + chance_cell
        )
    lines += ["", "| method | estimator | seed | best step | " + " | ".join(metrics) + " |"]
    lines.append("|---|---|---|---|" + "---|" * len(metrics))
    for run in runs:
        cells = [f"{run['test'][m]:.4g}" for m in metrics]
        lines.append(
            f"| {run['method']} | {run['estimator']} | {run['seed']} | {run['best_step']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


#: Monitor figures drawn beside the learning curves: record field -> axis label, log scale.
MONITOR_PANELS = {
    "snr": ("gradient SNR of one draw (monitor)", True),
    "cosine": ("cos(mean gradient, reference) (monitor)", False),
}


def _monitor_points(run: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in run.get("monitor") or [] if r.get(key) is not None]
    return [r["step"] for r in rows], [float(r[key]) for r in rows]


def plot_learning_curves(
    runs: list[dict[str, Any]], keys: tuple[str, ...], path: Path, *, title: str
) -> None:
    """Validation curves, one panel per key, one colour per method x estimator (thin: each seed).

    Runs measured by the gradient monitor (a ``"monitor"`` list in the run's result) get extra
    panels beside the curves, in the same colours: the monitored SNR (log scale; an infinite
    SNR, a deterministic gradient, is not drawn) and, where a reference gradient was measured,
    the cosine of the mean gradient with it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, bool]] = [(key, False) for key in keys]
    panels += [
        (key, True) for key in MONITOR_PANELS if any(_monitor_points(r, key)[0] for r in runs)
    ]
    labels = sorted({(r["method"], r["estimator"]) for r in runs})
    colours = plt.get_cmap("tab20")
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (key, monitored) in zip(axes[0], panels, strict=True):
        for index, label in enumerate(labels):
            colour = colours(index % 20)
            for n, run in enumerate(r for r in runs if (r["method"], r["estimator"]) == label):
                if monitored:
                    steps, values = _monitor_points(run, key)
                    style = {"marker": "o", "markersize": 3}
                else:
                    steps = [p["step"] for p in run["curve"]]
                    values = [p[key] for p in run["curve"]]
                    style = {}
                axis.plot(steps, values, color=colour, lw=1.2, alpha=0.8,
                          label=" / ".join(label) if n == 0 else None, **style)  # fmt: skip
        axis.set_xlabel("step")
        axis.set_ylabel(MONITOR_PANELS[key][0] if monitored else key)
        if monitored and MONITOR_PANELS[key][1] and axis.has_data():
            axis.set_yscale("symlog", linthresh=1e-3)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(folder: Path, results: dict[str, Any], table: str) -> None:
    """Write ``results.json`` and ``results.md`` into ``folder``."""
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    (folder / "results.md").write_text(table)
