"""Running on several processes under ``torchrun``: process group, shards, all-reduce, DDP.

``torchrun --nproc_per_node=N -m pickgrad experiment NAME ...`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`distributed_context` then joins the process group (gloo on CPU,
nccl on CUDA). Without them everything runs in one process and every collective is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistributedContext", "distributed_context"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its ``rank`` among ``world_size`` and its ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes results, checkpoints and progress."""
        return self.rank == 0

    def local_shards(self, shards: int) -> list[int]:
        """The shards this process owns: ``rank, rank + world_size, ...`` of ``shards``."""
        return list(range(self.rank, shards, self.world_size))

    def all_reduce_sum(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sum each tensor over the processes (one collective for the whole dict), in float64."""
        if not values or not self.distributed:
            return values
        names = sorted(values)
        flat = torch.stack([values[k].detach().double().reshape(()) for k in names])
        flat = flat.to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return {k: flat[i].cpu() for i, k in enumerate(names)}

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (used to stop all of them together)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (on every process)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def wrap(self, model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """``model`` in DistributedDataParallel when distributed, else itself.

        ``find_unused_parameters``: some steps leave some parameters without a gradient. DDP
        then leaves a parameter that no process used untouched (its gradient stays None, so the
        optimizer skips it, as in one process)."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        # The buffers are constant index tables: nothing to broadcast each step.
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )  # fmt: skip

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


@contextmanager
def distributed_context(device: str) -> Iterator[DistributedContext]:
    """Join the torchrun process group if there is one; leave it on exit.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:K``; under torchrun ``cuda`` becomes
            ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    where = torch.device(device)
    if where.type == "cuda" and world_size > 1 and where.index is None:
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if where.type == "cuda":
        torch.cuda.set_device(where)
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
        started = True
    try:
        yield DistributedContext(rank=rank, world_size=world_size, device=where)
        if started:
            # Leave together: a rank that tore down its group while rank 0 was still writing
            # results sometimes aborted at exit (std::terminate in gloo, about 1 run in 10).
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()
