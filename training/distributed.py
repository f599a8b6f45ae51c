"""Process-group setup for ``torchrun`` (DDP: NCCL on GPUs, gloo on the CPU) and the iteration-indexed sampler.

A single process (no ``WORLD_SIZE`` in the environment) needs no process group; every helper here then works
as the identity, so the trainer has one code path.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mfuser_model.errors import ConfigError

__all__ = ["DistContext", "IterationBatchSampler", "all_gather_objects", "all_reduce_mean", "barrier",
           "setup_distributed", "teardown_distributed"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size, its device and the backend (None when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.backend is not None and self.world_size > 1


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            msg = f"device {device!r} requested but CUDA is not available (use device: cpu or auto)"
            raise ConfigError(msg)
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and start the process group if there are several.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``cuda`` means ``cuda:<LOCAL_RANK>``.
        timeout_s: collective timeout.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group this process started (no-op when single-process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a new tensor; the input is left alone)."""
    if not ctx.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class IterationBatchSampler(Sampler[list[int]]):
    """Batches of *stream positions* for iterations ``start .. end-1``, disjoint across ranks.

    Iteration ``i`` on rank ``r`` gets positions ``(i * world + r) * batch + [0, batch)``. The dataset maps a
    position to a sample deterministically (see ``training.trainer.ShuffledStream`` and
    ``training.rare_class_sampling.RareClassDataset``), so ranks draw different samples, and resuming at
    iteration ``i`` needs nothing but ``i``: the sampler state is the iteration counter.
    """

    def __init__(self, batch_size: int, start_iter: int, end_iter: int, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            msg = f"bad sampler arguments: batch_size={batch_size}, rank={rank}, world_size={world_size}"
            raise ValueError(msg)
        self.batch_size = batch_size
        self.start_iter = start_iter
        self.end_iter = end_iter
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return max(self.end_iter - self.start_iter, 0)

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start_iter, self.end_iter):
            first = (it * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
