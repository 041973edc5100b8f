"""The VAE's pictures: test images beside each model's reconstructions, and prior samples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pickgrad.experiments.vae import VaeModel

__all__ = ["draw_reconstructions", "draw_samples"]


def _grid(rows: list[tuple[str, Tensor]], path: Path, title: str) -> None:
    """One labelled row of images per entry: ``(label, images (n, P))`` with square images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(images.shape[0] for _, images in rows)
    side = math.isqrt(rows[0][1].shape[1])
    figure, axes = plt.subplots(
        len(rows), columns, figsize=(0.9 * columns + 2.2, 0.95 * len(rows) + 0.5), squeeze=False
    )
    for row, (label, images) in zip(axes, rows, strict=True):
        for column, axis in enumerate(row):
            axis.set_xticks([])
            axis.set_yticks([])
            if column < images.shape[0]:
                picture = images[column].reshape(side, side).float().cpu().numpy()
                axis.imshow(picture, cmap="gray_r", vmin=0.0, vmax=1.0)
            else:
                axis.axis("off")
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_reconstructions(
    models: dict[str, VaeModel], images: Tensor, path: Path, *, examples: int = 10
) -> None:
    """The first ``examples`` test images (top row), then each model's reconstruction: the
    pixel probabilities decoded from the posterior mode.

    Args:
        models: label -> trained model.
        images: ``(N, P)`` 0/1 test images.
        path: the PNG to write.
        examples: how many images.
    """
    if not models:
        return
    x = images[:examples]
    rows = [("test images", x.float())]
    for label, model in models.items():
        device = next(model.parameters()).device
        rows.append((label, model.reconstruct(x.to(device))))
    _grid(rows, path, "reconstructions from the posterior mode (pixel probabilities)")


def draw_samples(
    models: dict[str, VaeModel], path: Path, *, count: int = 10, seed: int = 0
) -> None:
    """``count`` images decoded from latents drawn from the uniform prior, one row per model
    (the same draws' generator seed for every model).

    Args:
        models: label -> trained model.
        path: the PNG to write.
        count: samples per model.
        seed: the prior draws' seed.
    """
    if not models:
        return
    rows = []
    for label, model in models.items():
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        rows.append((label, model.sample_prior(count, generator)))
    _grid(rows, path, "samples: z from the uniform prior, decoded (pixel probabilities)")
