"""The picture of recovered graphs: a few test examples, the true tree beside each model's graph."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.base import ExperimentModel
from pickgrad.experiments.nri import pair_index

__all__ = ["draw_recovered_graphs"]


def draw_recovered_graphs(
    models: dict[str, ExperimentModel],
    split: tuple[Tensor, ...],
    path: Path,
    *,
    examples: int = 4,
) -> None:
    """One row per test example: its trajectory and true tree, then each model's argmax graph.

    Vertices are drawn at their last frame, with their trajectories faint; a recovered edge is
    green if it is in the true tree, red otherwise.

    Args:
        models: label -> trained model with ``argmax_edges(trajectories (B, n, T, 2)) -> (B, m)``.
        split: ``(trajectories (N, n, T, 2), edges (N, m))``.
        path: the PNG to write.
        examples: how many test examples (the first ones).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trajectories, truth = split[0][:examples].cpu(), split[1][:examples].cpu()
    n = trajectories.shape[1]
    rows, cols = pair_index(n)
    drawn = {}
    with torch.no_grad():
        for label, model in models.items():
            device = next(model.parameters()).device
            drawn[label] = model.argmax_edges(trajectories.to(device)).cpu()  # type: ignore[operator]
    panels = 1 + len(drawn)
    figure, axes = plt.subplots(
        len(trajectories), panels, figsize=(2.6 * panels, 2.6 * len(trajectories)), squeeze=False
    )
    for e, axis_row in enumerate(axes):
        last = trajectories[e, :, -1]
        graphs = [("true tree", truth[e])] + [(label, edges[e]) for label, edges in drawn.items()]
        for axis, (label, edges) in zip(axis_row, graphs, strict=True):
            for v in range(n):
                axis.plot(trajectories[e, v, :, 0], trajectories[e, v, :, 1], color="0.8", lw=0.8)
            for index in torch.nonzero(edges > 0.5).flatten().tolist():
                i, j = int(rows[index]), int(cols[index])
                right = label == "true tree" or bool(truth[e, index] > 0.5)
                axis.plot(
                    [last[i, 0], last[j, 0]], [last[i, 1], last[j, 1]],
                    color="black" if label == "true tree" else ("tab:green" if right else "tab:red"),
                    lw=1.5,
                )  # fmt: skip
            axis.scatter(last[:, 0], last[:, 1], s=14, color="tab:blue", zorder=3)
            hits = float((edges * truth[e]).sum())
            wrong = float(edges.sum()) - hits
            caption = (
                label
                if label == "true tree"
                else f"{label}\n{hits:.0f}/{n - 1} true edges found, {wrong:.0f} wrong"
            )
            axis.set_title(caption, fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_aspect("equal")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
