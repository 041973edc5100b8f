"""Checkpoint files: a header, a SHA-256 of the payload, and the payload (``torch.save``).

Written atomically (a temporary file renamed over the old one), so a kill mid-write leaves the
previous checkpoint intact. Read back with ``weights_only=True``; a file that is not a pickgrad
checkpoint, is damaged, or belongs to another run or config is refused with
:class:`CheckpointError` saying which.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

_MAGIC = b"PICKGRAD-EXPERIMENT-CHECKPOINT v1\n"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: foreign, corrupt, or of another run."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors, numbers, strings, lists and dicts of them) to ``path``."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(_MAGIC)
        handle.write(hashlib.sha256(data).hexdigest().encode() + b"\n")
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def load_checkpoint(path: Path, *, digest: str, run: str) -> dict[str, Any]:
    """Read the checkpoint at ``path`` and check it is one of run ``run`` with config ``digest``.

    Raises:
        CheckpointError: naming the file and what is wrong with it.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as root:
        ...     path = Path(root) / "c.pt"
        ...     save_checkpoint(path, {"digest": "abc", "run": "r", "step": 3})
        ...     load_checkpoint(path, digest="abc", run="r")["step"]
        3
    """
    raw = path.read_bytes()
    if not raw.startswith(_MAGIC):
        raise CheckpointError(f"{str(path)!r} is not a pickgrad experiment checkpoint")
    rest = raw[len(_MAGIC) :]
    expected, _, data = rest.partition(b"\n")
    if hashlib.sha256(data).hexdigest().encode() != expected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt (its SHA-256 does not match its contents); "
            "delete it to start that run afresh"
        )
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # a payload that passed its checksum but does not unpickle
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {error}") from None
    if not isinstance(payload, dict) or payload.get("run") != run:
        found = payload.get("run") if isinstance(payload, dict) else None
        raise CheckpointError(f"checkpoint {str(path)!r} belongs to run {found!r}, not to {run!r}")
    if payload.get("digest") != digest:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written with another configuration "
            f"(digest {str(payload.get('digest'))[:12]}, this run's {digest[:12]}); "
            "rerun with the same flags, or without --resume, or with another --out"
        )
    return payload
