"""Binarised images for the discrete VAE: Fashion-MNIST (Debian's package) or scikit-learn's digits.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) is read from the four gzipped IDX files of Debian's
``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``, as root), which
puts them under ``/usr/share/datasets/fashion-mnist``. IDX format (LeCun's MNIST format): a
big-endian header ``0x00 0x00 <type> <ndim>`` (type ``0x08``: unsigned bytes), then ``ndim``
big-endian 32-bit sizes, then the values in row-major order. Only the images are read (the
VAE needs no labels). Splits: ``train`` is the 60k training file less its last ``valid_size``
images, which are ``valid``; ``test`` is the first ``test_size`` images of the 10k test file.

scikit-learn's bundled 8 x 8 digits (1797 images, intensities 0-16) are the fallback and the CI
data set; a permutation seeded by ``binarization_seed`` orders them, then ``test_size`` are
the test split, ``valid_size`` the validation split and the rest the training split.

Binarisation (``binarization``): ``"threshold"`` (the default, as the hand-written baseline
and the Gumbel-Rao figures of issue 16): pixel = 1 iff intensity > max / 2 (127 of 255, 8 of
16); or ``"bernoulli"``: one fixed stochastic draw, pixel ~ Bernoulli(intensity / max), from a
generator seeded by ``seed`` (Salakhutdinov & Murray 2008). Either is computed once and cached
(with a SHA-256 checksum) by :func:`~pickgrad.experiments.data_cache.load_or_generate_tensors`,
so every run of every estimator sees the same bits. Images are stored flat, ``(N, P)`` uint8
0/1 (P = 784 or 64).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pickgrad.experiments.data_cache import load_or_generate_tensors, sklearn_digits

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "FASHION_MNIST_DIR",
    "INSTALL_HINT",
    "VaeData",
    "binarize",
    "check_dataset",
    "fashion_mnist_files",
    "load_or_binarize",
    "read_idx",
]

#: The data sets the experiment knows, with their image side (pixels = side ** 2).
DATASETS = {"fashion-mnist": 28, "digits": 8}
#: How grey levels become bits (see the module).
BINARIZATIONS = ("threshold", "bernoulli")
#: Where Debian's ``dataset-fashion-mnist`` installs the files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (as root; it puts the files under "
    f"{FASHION_MNIST_DIR}), point --set data_dir=FOLDER at a folder holding them, or use "
    "--set dataset=digits (scikit-learn's bundled 8 x 8 digits)"
)
_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
_IDX_TYPES = {0x08: (torch.uint8, 1)}
# Bump when the binarisation or the stored layout changes, so a stale cache is never read.
BINARIZATION_VERSION = 1


@dataclass(frozen=True)
class VaeData:
    """The splits as ``(N, P)`` uint8 0/1 tensors, the side of the square images, the checksum of
    the cached binarised images and where they are cached."""

    train: Tensor
    valid: Tensor
    test: Tensor
    side: int
    checksum: str
    path: Path


def read_idx(path: str | Path) -> Tensor:
    """The array stored in an IDX file (gzipped if its name ends in ``.gz``).

    Args:
        path: the file.

    Returns:
        uint8 tensor shaped as the header says, e.g. ``(60000, 28, 28)``.

    Raises:
        ValueError: the header is not an IDX header of unsigned bytes, or the file is shorter
            or longer than its header says.

    Example:
        >>> import gzip, struct, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "tiny-idx3-ubyte.gz"
        >>> body = struct.pack(">BBBBiii", 0, 0, 8, 3, 2, 1, 3) + bytes(range(6))
        >>> _ = path.write_bytes(gzip.compress(body))
        >>> read_idx(path).tolist()
        [[[0, 1, 2]], [[3, 4, 5]]]
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {str(path)!r}: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{str(path)!r} is not an IDX file of unsigned bytes: header {raw[:4].hex()!r}, "
            "expected 0000 08 followed by the number of dimensions"
        )
    dtype, width = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    start = 4 + 4 * ndim
    if ndim == 0 or len(raw) < start:
        raise ValueError(f"IDX file {str(path)!r}: header of {ndim} dimension(s) is incomplete")
    shape = struct.unpack(f">{ndim}i", raw[4:start])
    expected = width
    for size in shape:
        expected *= size
    if min(shape) < 0 or len(raw) - start != expected:
        raise ValueError(
            f"IDX file {str(path)!r}: header says shape {tuple(shape)} ({expected} bytes of "
            f"data), the file holds {len(raw) - start}"
        )
    values = torch.frombuffer(bytearray(raw[start:]), dtype=dtype)
    return values.reshape(shape)


def fashion_mnist_files(data_dir: str | Path) -> dict[str, Path]:
    """The two image files of Fashion-MNIST under ``data_dir`` (not checked)."""
    return {split: Path(data_dir) / name for split, name in _FILES.items()}


def check_dataset(dataset: str, data_dir: str | Path) -> None:
    """``ValueError`` (saying how to install it) when ``dataset`` cannot be read; cheap.

    Example:
        >>> check_dataset("digits", "/nonexistent")
        >>> check_dataset("mnist", "/nonexistent")
        Traceback (most recent call last):
        ...
        ValueError: dataset='mnist' is not known; expected one of fashion-mnist, digits
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not known; expected one of {', '.join(DATASETS)}")
    if dataset == "fashion-mnist":
        missing = [str(p) for p in fashion_mnist_files(data_dir).values() if not p.is_file()]
        if missing:
            raise ValueError(f"Fashion-MNIST not found ({', '.join(missing)}); {INSTALL_HINT}")


def binarize(intensities: Tensor, maximum: float, method: str, seed: int = 0) -> Tensor:
    """Bits of grey levels: ``intensity > maximum / 2`` (``"threshold"``), or one fixed draw
    ``b ~ Bernoulli(intensity / maximum)`` (``"bernoulli"``, seeded by ``seed``).

    Args:
        intensities: ``(N, ...)`` intensities in ``[0, maximum]`` (any real or integer dtype).
        maximum: the largest possible intensity (255 for Fashion-MNIST, 16 for digits).
        method: ``"threshold"`` or ``"bernoulli"``.
        seed: seed of the Bernoulli draw (the same seed gives the same bits).

    Returns:
        uint8 0/1 tensor of the input's shape.

    Example:
        >>> binarize(torch.tensor([[0, 127, 128, 255]]), 255.0, "threshold").tolist()
        [[0, 0, 1, 1]]
        >>> bits = binarize(torch.tensor([[0, 255, 128]]), 255.0, "bernoulli", seed=0)
        >>> bits[0, :2].tolist(), bool(bits.max() <= 1)
        ([0, 1], True)
    """
    if method not in BINARIZATIONS:
        raise ValueError(
            f"binarization={method!r} is not known; expected one of {', '.join(BINARIZATIONS)}"
        )
    probabilities = intensities.double() / maximum
    if probabilities.numel() and (probabilities.min() < 0 or probabilities.max() > 1):
        raise ValueError(f"intensities must lie in [0, {maximum}]")
    if method == "threshold":
        return (probabilities > 0.5).to(torch.uint8)
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(probabilities, generator=generator).to(torch.uint8)


def _generate(dataset: str, data_dir: str | Path, method: str, seed: int) -> dict[str, Tensor]:
    if dataset == "fashion-mnist":
        files = fashion_mnist_files(data_dir)
        out = {}
        for offset, split in enumerate(("train", "test")):
            images = read_idx(files[split])
            if images.dim() != 3 or images.shape[1:] != (28, 28):
                raise ValueError(
                    f"{str(files[split])!r} holds shape {tuple(images.shape)}, expected "
                    "(N, 28, 28) Fashion-MNIST images"
                )
            out[split] = binarize(images.flatten(1), 255.0, method, seed + offset)
        return out
    images, _ = sklearn_digits()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    return {"images": binarize(images[order], 16.0, method, seed)}


def load_or_binarize(
    dataset: str,
    cache_dir: str | Path,
    *,
    data_dir: str | Path = FASHION_MNIST_DIR,
    binarization: str = "threshold",
    seed: int = 0,
    valid_size: int,
    test_size: int,
) -> VaeData:
    """The binarised splits of ``dataset``, binarised once and cached under ``cache_dir``.

    Args:
        dataset: ``"fashion-mnist"`` or ``"digits"``.
        cache_dir: the data cache.
        data_dir: the folder of Fashion-MNIST's IDX files.
        binarization: ``"threshold"`` or ``"bernoulli"`` (see the module).
        seed: the Bernoulli binarisation's seed (and, for digits, the seed of their order).
        valid_size, test_size: sizes of the validation and test splits (see the module).

    Raises:
        ValueError: unknown or missing data set (saying how to install it), or split sizes that
            do not fit it.

    Example:
        >>> import tempfile
        >>> data = load_or_binarize("digits", tempfile.mkdtemp(), valid_size=100, test_size=200)
        >>> tuple(data.train.shape), tuple(data.test.shape), data.side
        ((1497, 64), (200, 64), 8)
    """
    check_dataset(dataset, data_dir)
    if binarization not in BINARIZATIONS:
        raise ValueError(
            f"binarization={binarization!r} is not known; expected one of "
            f"{', '.join(BINARIZATIONS)}"
        )
    stem = f"vae_{dataset}_{binarization}_seed{seed}"
    tensors, checksum, path = load_or_generate_tensors(
        cache_dir, stem, lambda: _generate(dataset, data_dir, binarization, seed),
        what=f"binarised {dataset}", version=BINARIZATION_VERSION,
    )  # fmt: skip
    if dataset == "fashion-mnist":
        train, test = tensors["train"], tensors["test"]
        available = (train.shape[0] - 1, test.shape[0])
    else:
        images = tensors["images"]
        available = (images.shape[0] - test_size - 1, images.shape[0])
    if not (0 < valid_size <= available[0] and 0 < test_size <= available[1]):
        raise ValueError(
            f"valid_size={valid_size} and test_size={test_size} do not fit {dataset} "
            f"(at most {available[0]} validation images with one left to train on and "
            f"{available[1]} test images)"
        )
    if dataset == "fashion-mnist":
        splits = train[:-valid_size], train[-valid_size:], test[:test_size]
    else:
        splits = (
            images[test_size + valid_size :],
            images[test_size : test_size + valid_size],
            images[:test_size],
        )
    return VaeData(*splits, side=DATASETS[dataset], checksum=checksum, path=path)
