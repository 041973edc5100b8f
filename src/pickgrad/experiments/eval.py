"""Evaluation: per-example metric sums over a split, added over batches and processes."""

from __future__ import annotations

import torch
from torch import Tensor

from pickgrad.experiments.base import Batch, ExperimentModel
from pickgrad.experiments.torchrun import DistributedContext

__all__ = ["evaluate", "summarise_runs"]


def evaluate(
    model: ExperimentModel, split: Batch, context: DistributedContext, *, batch_size: int = 1000
) -> dict[str, float]:
    """Mean of every metric of ``model.evaluation_sums`` over ``split``.

    Each process evaluates a contiguous share of the split; the sums are all-reduced, so every
    process gets the same means, equal (to float rounding) to a one-process evaluation.
    """
    count = split[0].shape[0]
    share = -(-count // context.world_size)
    first, last = context.rank * share, min(count, (context.rank + 1) * share)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    with torch.no_grad():
        for start in range(first, last, batch_size):
            piece = tuple(t[start : min(last, start + batch_size)].to(device) for t in split)
            for key, value in model.evaluation_sums(piece).items():
                sums[key] = sums.get(key, 0.0) + value.detach().double().cpu()
    model.train(was_training)
    if not sums:  # this process got no examples; it still joins the all-reduce
        sums = {key: torch.zeros((), dtype=torch.float64) for key in _keys(model, split)}
    total = context.all_reduce_sum(sums)
    examples = float(total.pop("count"))
    return {key: float(value) / examples for key, value in sorted(total.items())}


def _keys(model: ExperimentModel, split: Batch) -> list[str]:
    with torch.no_grad():
        return list(model.evaluation_sums(tuple(t[:1] for t in split)))


def summarise_runs(values: list[float], chance: float | None) -> dict[str, float | list[float]]:
    """Mean, standard deviation (n - 1), every value and the share below ``chance``.

    Example:
        >>> summarise_runs([0.2, 0.4, 0.6], chance=0.3)["below_chance"]
        0.3333333333333333
    """
    tensor = torch.tensor(values, dtype=torch.float64)
    std = float(tensor.std()) if len(values) > 1 else 0.0
    summary: dict[str, float | list[float]] = {
        "mean": float(tensor.mean()),
        "std": std,
        "values": list(values),
    }
    if chance is not None:
        summary["below_chance"] = float((tensor < chance).double().mean())
    return summary
