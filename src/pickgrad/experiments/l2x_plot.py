"""The l2x picture: how often each feature is chosen on the test split, beside the true features.

Synthetic sets: a heat map, one row per model (its hard top-k selections), one column per
feature, the colour the share of test examples choosing it; a top row shows the share of
examples for which each feature is a true feature (1 or 0, except under feature switching).
Digits: for each model the share of test images choosing each pixel, drawn as an 8 x 8 image,
and the mean test image of each class with that model's most chosen pixels outlined.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.base import ExperimentModel
from pickgrad.experiments.l2x import L2XModel

__all__ = ["draw_selections", "selection_frequency"]


def selection_frequency(model: L2XModel, x: Tensor, *, batch_size: int = 1000) -> Tensor:
    """Share of the rows of ``x (N, d)`` whose hard top-k selection includes each feature, ``(d,)``.

    Example:
        >>> from pickgrad.experiments import get_experiment
        >>> from pickgrad.experiments.estimators import resolve_estimator
        >>> experiment = get_experiment("l2x")
        >>> config = experiment.default_config(quick=True)
        >>> choice = resolve_estimator("gumbel-relaxed", experiment.structure(config, "subset"))
        >>> model = experiment.build_model(config, "subset", choice)
        >>> round(float(selection_frequency(model, torch.randn(50, 10)).sum()), 5)  # k = 2 per row
        2.0
    """
    with torch.no_grad():
        parts = [model.hard_mask(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts).mean(0)


def draw_selections(
    models: dict[str, ExperimentModel], split: tuple[Tensor, ...], path: Path
) -> None:
    """Write the picture described in the module docstring to ``path`` (PNG).

    Args:
        models: label -> trained :class:`L2XModel` (others are left out).
        split: ``(x, target, label, relevant)`` of the test split.
        path: the PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, _, label, relevant = (t.cpu() for t in split[:4])
    drawn = {k: m for k, m in models.items() if isinstance(m, L2XModel)}
    frequencies = {k: selection_frequency(m, x) for k, m in drawn.items()}
    d = x.shape[1]
    if d == 64 and not bool(relevant.any()):
        _draw_digits(plt, frequencies, x, label, path)
        return
    rows = torch.stack([relevant.double().mean(0), *frequencies.values()]).numpy()
    labels = ["true features", *frequencies]
    figure, axis = plt.subplots(figsize=(1.5 + 0.55 * d, 1.2 + 0.4 * len(labels)))
    image = axis.imshow(rows, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(d), [str(i) for i in range(d)])
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_xlabel("feature")
    axis.axhline(0.5, color="white", linewidth=2)
    for row in range(len(labels)):
        for column in range(d):
            value = rows[row, column]
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6,
                      color="black" if value > 0.6 else "white")  # fmt: skip
    figure.colorbar(image, ax=axis, label="share chosen")
    axis.set_title("hard top-k selections on the test split")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _draw_digits(plt: object, frequencies: dict[str, Tensor], x: Tensor, label: Tensor,
                 path: Path) -> None:  # fmt: skip
    means = [x[label == c].mean(0).reshape(8, 8) for c in (0, 1)]
    columns = max(1, len(frequencies))
    figure, axes = plt.subplots(3, columns, figsize=(2.4 * columns, 7.2), squeeze=False)  # type: ignore[attr-defined]
    for column, (name, frequency) in enumerate(frequencies.items()):
        grid = frequency.reshape(8, 8)
        axes[0][column].imshow(grid.numpy(), cmap="magma", vmin=0, vmax=1)
        axes[0][column].set_title(name, fontsize=7)
        k = round(float(frequency.sum()))
        top = torch.topk(frequency, k).indices
        for row, (digit, mean) in enumerate(zip((3, 8), means, strict=True), start=1):
            axis = axes[row][column]
            axis.imshow(mean.numpy(), cmap="gray_r", vmin=0, vmax=1)
            for pixel in top.tolist():
                r, c = divmod(pixel, 8)
                axis.add_patch(
                    plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="tab:red",  # type: ignore[attr-defined]
                                  linewidth=1.5)
                )  # fmt: skip
            axis.set_title(f"mean {digit}, top-{k} pixels", fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("digits 3 vs 8: share of test images choosing each pixel", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)  # type: ignore[attr-defined]
