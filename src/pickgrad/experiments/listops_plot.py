"""The picture of drawn parses: a few test expressions, the true parse beside each model's."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.base import ExperimentModel
from pickgrad.experiments.listops import ListOpsModel
from pickgrad.experiments.listops_data import VOCABULARY, heads_to_arcs

__all__ = ["draw_parses"]


def draw_parses(
    models: dict[str, ExperimentModel],
    split: tuple[Tensor, ...],
    path: Path,
    *,
    examples: int = 3,
) -> None:
    """One row per test expression: the true parse, then each model's ``argmax`` parse.

    Arc diagrams over the tokens: an arc from parent to child is drawn above the tokens, green if
    it is in the true parse (either direction for undirected methods), red otherwise. Models
    without a latent graph (``lstm``) are left out.

    Args:
        models: label -> trained ``ListOpsModel`` (with ``argmax_arcs``).
        split: ``(tokens, lengths, values, heads)`` of the test split.
        path: the PNG to write.
        examples: how many expressions (the first ones of at most 16 tokens, for legibility).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens, lengths, values, heads = (t.cpu() for t in split[:4])
    chosen = torch.nonzero(lengths <= 16).flatten()[:examples]
    if chosen.numel() == 0:
        chosen = torch.arange(min(examples, tokens.shape[0]))
    drawn = {k: m for k, m in models.items() if isinstance(m, ListOpsModel) and m.method != "lstm"}
    columns = 1 + len(drawn)
    figure, axes = plt.subplots(
        len(chosen), columns, figsize=(4.5 * columns, 1.8 * len(chosen)), squeeze=False
    )
    for row, index in enumerate(chosen.tolist()):
        n = int(lengths[index])
        batch = tuple(t[index : index + 1] for t in (tokens, lengths, values, heads))
        truth = heads_to_arcs(heads[index], n)
        graphs = {"true parse": truth}
        for label, model in drawn.items():
            with torch.no_grad():
                states = model.network.encode(batch[0][:, :n].long(), batch[1])
                arcs = model.argmax_arcs(states, batch[1])
            assert arcs is not None  # lstm was left out
            graphs[label] = arcs[0].cpu()
        names = [VOCABULARY[int(t)] for t in tokens[index, :n]]
        undirected_truth = (truth + truth.T).clamp(max=1)
        for column, (label, graph) in enumerate(graphs.items()):
            axis = axes[row][column]
            for position, name in enumerate(names):
                axis.text(position, 0, name, ha="center", va="top", fontsize=7)
            for parent, child in graph.nonzero().tolist():
                directed = label not in drawn or drawn[label].method != "tree"
                right = truth[parent, child] if directed else undirected_truth[parent, child]
                middle, half = (parent + child) / 2, abs(child - parent) / 2
                angles = torch.linspace(0, torch.pi, 20)
                axis.plot(
                    middle + half * torch.cos(angles), 0.15 + half * torch.sin(angles) * 0.5,
                    color="tab:green" if bool(right) else "tab:red", linewidth=1,
                )  # fmt: skip
            axis.set_xlim(-1, n)
            axis.set_ylim(-0.6, 0.3 + n * 0.25)
            axis.axis("off")
            if row == 0:
                axis.set_title(label, fontsize=9)
        axes[row][0].text(-1, -0.5, f"value {int(values[index])}", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
