"""The data of the ``l2x`` experiment: L2X's four synthetic sets and a digits version.

Synthetic sets (Chen, Song, Wainwright & Jordan 2018, "Learning to Explain: An
Information-Theoretic Perspective on Model Interpretation", Sec. 4.1). Every input is
``X ~ N(0, I_10)`` (10 features, as published) and the label is drawn as
``P(Y = 1 | X) = 1 / (1 + exp(f(X)))``. The formulas are those of the authors' released
generator (github.com/Jianbo-Lab/L2X, ``synthetic/make_data.py``, commit 7a896d8; found with
pickgrad's search tool, the paper's own text could not be read offline), features numbered
from 0:

* ``xor`` (2-D XOR): ``f = X_0 X_1``; true features {0, 1}, k = 2;
* ``orange-skin``: ``f = X_0^2 + X_1^2 + X_2^2 + X_3^2 - 4``; true {0, 1, 2, 3}, k = 4;
* ``nonlinear-additive``: ``f = -100 sin(0.2 X_0) + |X_1| + X_2 + exp(-X_3) - 2.4``;
  true {0, 1, 2, 3}, k = 4;
* ``switch`` (feature switching): feature 9 is shifted by +3 for one half of the examples and
  by -3 for the other; the +3 half is labelled by the orange skin on features 0-3, the -3
  half by the nonlinear additive model on features 4-7 (its four inputs moved there); true
  features per example {0, 1, 2, 3, 9} or {4, 5, 6, 7, 9}, k = 5 (the released code's k).
  Departure: the released code moves the additive inputs with a NumPy tuple swap of two
  views, which copies columns 0-3 into 4-7 instead of swapping them (so its additive half
  carries two copies of the same four values); here the swap is done, as its comment and the
  paper describe, so every feature outside the true set is independent noise.

The label is drawn once per example (Bernoulli), and the exact ``P(Y = 1 | X)`` is kept as
``target``: training fits it by cross-entropy, as the released code fits the probabilities;
accuracy is counted against the drawn label (so even the Bayes classifier is below 1).

``digits``: scikit-learn's bundled 8 x 8 digits (``load_digits``, 1,797 images, pixel values
0-16 scaled to [0, 1]), the two look-alike classes 3 (label 0) and 8 (label 1): 357 images,
split 60 / 20 / 20 % by a seeded permutation. Features are the 64 pixels (not 2 x 2 patches),
k = 8 by default. It has no known true features: its ``relevant`` masks are all False, so its
precision and median rank are 0 by definition (see :func:`~pickgrad.experiments.l2x.selection_sums`).

Storage (cached with a SHA-256 checksum by :mod:`~pickgrad.experiments.data_cache`): per split,
``x (N, d)`` float32, ``target (N,)`` float32 (``P(Y = 1 | X)``; the label itself for
digits), ``label (N,)`` int64 and ``relevant (N, d)`` bool, the true features of each example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.data_cache import load_or_generate_tensors, sklearn_digits

__all__ = [
    "DATASETS",
    "L2XData",
    "default_k",
    "generate_synthetic",
    "load_or_generate",
    "logit_f",
]

# Bump when a generator changes, so a stale cache is never read as current data.
GENERATOR_VERSION = 1

#: Data set name -> (features, k chosen by default).
DATASETS: dict[str, tuple[int, int]] = {
    "xor": (10, 2),
    "orange-skin": (10, 4),
    "nonlinear-additive": (10, 4),
    "switch": (10, 5),
    "digits": (64, 8),
}
_TRUE = {
    "xor": (0, 1),
    "orange-skin": (0, 1, 2, 3),
    "nonlinear-additive": (0, 1, 2, 3),
}
SPLITS = ("train", "valid", "test")
FIELDS = ("x", "target", "label", "relevant")


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


def default_k(dataset: str) -> int:
    """The number of features chosen for ``dataset`` (the released L2X code's; 8 for digits).

    Example:
        >>> default_k("switch")
        5
    """
    _check_dataset(dataset)
    return DATASETS[dataset][1]


def logit_f(dataset: str, x: Tensor) -> Tensor:
    """``f(X)`` of a synthetic set, ``P(Y = 1 | X) = 1 / (1 + exp(f))`` (see the module docstring).

    Args:
        dataset: ``xor``, ``orange-skin`` or ``nonlinear-additive``.
        x: ``(..., 10)`` inputs (already in the set's feature order).

    Returns:
        ``(...)``.

    Example:
        >>> logit_f("xor", torch.tensor([2.0, 3.0, *[0.0] * 8]))
        tensor(6.)
    """
    if dataset == "xor":
        return x[..., 0] * x[..., 1]
    if dataset == "orange-skin":
        return (x[..., :4] ** 2).sum(-1) - 4.0
    if dataset == "nonlinear-additive":
        return (
            -100 * torch.sin(0.2 * x[..., 0])
            + x[..., 1].abs()
            + x[..., 2]
            + torch.exp(-x[..., 3])
            - 2.4
        )
    raise ValueError(
        f"dataset must be xor, orange-skin or nonlinear-additive for logit_f, got {dataset!r}"
    )


def generate_synthetic(dataset: str, count: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``count`` examples of a synthetic set: ``x``, ``target``, ``label``, ``relevant``.

    Example:
        >>> part = generate_synthetic("switch", 6, torch.Generator().manual_seed(0))
        >>> part["x"].shape, part["relevant"].sum(-1).tolist()
        (torch.Size([6, 10]), [5, 5, 5, 5, 5, 5])
    """
    _check_dataset(dataset)
    if dataset == "digits":
        raise ValueError("digits is not synthetic: use load_or_generate")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    x = torch.randn(count, 10, generator=generator, dtype=torch.float64)
    relevant = torch.zeros(count, 10, dtype=torch.bool)
    if dataset == "switch":
        orange = torch.rand(count, generator=generator) < 0.5
        x[:, 9] += torch.where(orange, 3.0, -3.0).to(x.dtype)
        f_orange = logit_f("orange-skin", x)
        # The additive half reads features 4-7 (the model's inputs 0-3 moved there).
        f_additive = logit_f("nonlinear-additive", x[:, 4:8])
        f = torch.where(orange, f_orange, f_additive)
        relevant[orange, :4] = True
        relevant[~orange, 4:8] = True
        relevant[:, 9] = True
    else:
        f = logit_f(dataset, x)
        relevant[:, list(_TRUE[dataset])] = True
    target = torch.sigmoid(-f)
    label = (torch.rand(count, generator=generator, dtype=torch.float64) < target).long()
    return {
        "x": x.float(),
        "target": target.float(),
        "label": label,
        "relevant": relevant,
    }


def _digits(seed: int) -> dict[str, Tensor]:
    pixels, digits = sklearn_digits()
    images = pixels.to(torch.float32) / 16.0
    keep = (digits == 3) | (digits == 8)
    x, label = images[keep], (digits[keep] == 8).long()
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    x, label = x[order], label[order]
    n = x.shape[0]
    cuts = (0, int(0.6 * n), int(0.8 * n), n)
    tensors: dict[str, Tensor] = {}
    for index, split in enumerate(SPLITS):
        part = slice(cuts[index], cuts[index + 1])
        tensors[f"{split}_x"] = x[part].contiguous()
        tensors[f"{split}_label"] = label[part].contiguous()
        tensors[f"{split}_target"] = label[part].float()
        tensors[f"{split}_relevant"] = torch.zeros(x[part].shape, dtype=torch.bool)
    return tensors


def _generate(dataset: str, sizes: tuple[int, int, int], seed: int) -> dict[str, Tensor]:
    if dataset == "digits":
        return _digits(seed)
    tensors: dict[str, Tensor] = {}
    for offset, (split, count) in enumerate(zip(SPLITS, sizes, strict=True)):
        # One generator per split: changing the training size leaves the test data alone.
        part = generate_synthetic(dataset, count, torch.Generator().manual_seed(seed * 3 + offset))
        tensors.update({f"{split}_{key}": value for key, value in part.items()})
    return tensors


@dataclass(frozen=True)
class L2XData:
    """The three splits, each ``(x, target, label, relevant)`` (see the module docstring)."""

    train: tuple[Tensor, Tensor, Tensor, Tensor]
    valid: tuple[Tensor, Tensor, Tensor, Tensor]
    test: tuple[Tensor, Tensor, Tensor, Tensor]
    checksum: str
    path: Path


def load_or_generate(
    cache_dir: str | Path, dataset: str, *, sizes: tuple[int, int, int], seed: int
) -> L2XData:
    """The data set ``dataset``: read from ``cache_dir`` if cached (checksum checked), else made.

    ``sizes`` are the synthetic split sizes (digits has its own fixed 60 / 20 / 20 % split, so
    they are ignored there and left out of its file name).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     data = load_or_generate(root, "xor", sizes=(8, 2, 2), seed=0)
        ...     again = load_or_generate(root, "xor", sizes=(8, 2, 2), seed=0)
        >>> data.train[0].shape, data.checksum == again.checksum
        (torch.Size([8, 10]), True)
    """
    _check_dataset(dataset)
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"sizes must be three split sizes >= 1, got {sizes}")
    shape = "" if dataset == "digits" else "_" + "-".join(map(str, sizes))
    stem = f"l2x_{dataset}_v{GENERATOR_VERSION}{shape}_seed{seed}"
    tensors, checksum, path = load_or_generate_tensors(
        cache_dir, stem, lambda: _generate(dataset, sizes, seed),
        what=f"L2X {dataset} data", version=GENERATOR_VERSION,
    )  # fmt: skip

    def split(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return tuple(tensors[f"{name}_{key}"] for key in FIELDS)  # type: ignore[return-value]

    return L2XData(split("train"), split("valid"), split("test"), checksum, path)
