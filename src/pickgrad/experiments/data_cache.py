"""Generated data sets cached on disk with a checksum, shared by every experiment.

Every run of an experiment must see the same data: the generator is seeded, and its output is
saved once as ``<stem>.pt`` beside ``<stem>.json`` holding the SHA-256 of the tensors. A later
load recomputes the checksum and refuses a file that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load_or_generate_tensors", "sklearn_digits", "tensor_checksum"]


def tensor_checksum(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``tensors`` (in sorted name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_or_generate_tensors(
    folder: str | Path,
    stem: str,
    generate: Callable[[], dict[str, Tensor]],
    *,
    what: str,
    version: int,
) -> tuple[dict[str, Tensor], str, Path]:
    """The tensors cached as ``folder/<stem>.pt``, generated and saved first if absent.

    Args:
        folder: the cache folder (created when needed).
        stem: the file name without suffix; it must name every setting of the generator.
        generate: makes the tensors (called only when nothing is cached).
        what: the data set's name, for error messages (e.g. ``"ListOps data"``).
        version: the generator's version, recorded beside the checksum.

    Returns:
        ``(tensors, checksum, path)``.

    Raises:
        ValueError: the cached file does not match its recorded checksum.
    """
    folder = Path(folder)
    path, meta_path = folder / f"{stem}.pt", folder / f"{stem}.json"
    if path.exists() and meta_path.exists():
        tensors = torch.load(path, weights_only=True)
        checksum = tensor_checksum(tensors)
        expected = json.loads(meta_path.read_text())["sha256"]
        if checksum != expected:
            raise ValueError(
                f"cached {what} {str(path)!r} does not match its checksum "
                f"({checksum[:12]} != {expected[:12]}); delete it and its .json to regenerate"
            )
        return tensors, checksum, path
    tensors = generate()
    checksum = tensor_checksum(tensors)
    folder.mkdir(parents=True, exist_ok=True)
    # Unique temporary names, renamed into place: processes generating the same data at once
    # (torchrun ranks, parallel runs) never read or leave a half-written file.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(tensors, partial)
    partial.replace(path)
    meta_partial = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.partial")
    meta_partial.write_text(json.dumps({"sha256": checksum, "version": version}))
    meta_partial.replace(meta_path)
    return tensors, checksum, path


def sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8 x 8 digits: pixels ``(1797, 64)`` (float64, values 0 to 16) and
    labels ``(1797,)`` (int64). Shipped with scikit-learn, so nothing is downloaded.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (the message says how to install it).
    """
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the digits data set comes with scikit-learn, which is not installed: "
            "pip install scikit-learn (or pip install 'pickgrad[experiments]')"
        ) from error
    bunch = load_digits()
    return torch.as_tensor(bunch.data), torch.as_tensor(bunch.target)
