"""The frozen configuration every experiment's own config extends, and its digest.

A config is a frozen dataclass: the runner never mutates it, saves it as ``config.json`` beside
the results, and identifies each run's checkpoints by a digest of the fields that change what a
run computes (not the device, the thread count or the grid of runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pickgrad.diagnostics.monitor import DEFAULT_EVERY

__all__ = ["TrainingConfig", "config_digest", "config_to_dict"]

# Fields that do not change what one run computes: the grid of runs, where it runs, how often it
# reports. Two configs equal on every other field give the same run.
_NOT_IN_DIGEST = frozenset(
    {
        "seeds",
        "methods",
        "estimators",
        "device",
        "threads",
        "progress",
        "checkpoint_every",
        "monitor_every",
        "monitor_examples",
    }
)


@dataclass(frozen=True)
class TrainingConfig:
    """Settings shared by every experiment's training loop.

    Attributes:
        steps: optimiser steps per run.
        batch_size: global batch (over every process and shard).
        seeds: one run per seed for each method x estimator.
        methods: latent-structure methods to compare (the experiment's names).
        estimators: estimator names (pickgrad's registry, plus the experiment's own such as
            ``nvil``).
        tau: temperature of the relaxations.
        lr: Adam learning rate.
        n_samples: samples per example for estimators that need the loss (``reinforce``, ``nvil``).
        eval_every: steps between validation passes (the best one is kept).
        checkpoint_every: steps between checkpoints.
        shards: data-parallel shards of each batch; each has its own data slice and generator
            seeded from (seed, shard). A torchrun run gives each process ``shards / world_size``
            of them, so one process emulates N exactly. 0 means one per process.
        device: ``cpu``, ``cuda`` or ``cuda:K``.
        threads: torch intra-op threads (0 keeps torch's default).
        progress: show a progress bar.
        monitor_every: steps between gradient measurements of
            :class:`~pickgrad.diagnostics.GradientMonitor` (also at step 1; 0: off). It only
            observes: the run computes the same with it on or off.
        monitor_examples: the monitor measures on the first this many examples of the batch
            (its SNR does not grow with the batch size; see the monitor's docstring).
    """

    steps: int = 1000
    batch_size: int = 128
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = ()
    estimators: tuple[str, ...] = ()
    tau: float = 1.0
    lr: float = 1e-3
    n_samples: int = 4
    eval_every: int = 250
    checkpoint_every: int = 250
    shards: int = 0
    device: str = "cpu"
    threads: int = 1
    progress: bool = True
    monitor_every: int = DEFAULT_EVERY
    monitor_examples: int = 8


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict (tuples become lists).

    Example:
        >>> config_to_dict(TrainingConfig(steps=3))["steps"]
        3
    """
    data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    return data


def config_digest(config: Any, **run: Any) -> str:
    """SHA-256 of the config fields that change a run's computation, and of ``run`` (its identity).

    Example:
        >>> a = config_digest(TrainingConfig(), method="tree", seed=0)
        >>> a == config_digest(TrainingConfig(device="cuda"), method="tree", seed=0)
        True
        >>> a == config_digest(TrainingConfig(lr=0.1), method="tree", seed=0)
        False
    """
    fields = {k: v for k, v in config_to_dict(config).items() if k not in _NOT_IN_DIGEST}
    fields["__class__"] = type(config).__name__
    fields["__run__"] = run
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
