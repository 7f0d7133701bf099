"""Multi-process training with torch.distributed (launch with ``torchrun``).

`init_from_env` joins the process group that torchrun describes in its environment variables
(nccl on CUDA, gloo otherwise); without them (or with WORLD_SIZE=1) it is a no-op, so the same script
runs on one device or many:

>>> info = init_from_env()          # no torchrun here: a single process
>>> (info.rank, info.world_size, info.is_main)
(0, 1, True)

`Trainer` does the rest when a process group is initialised: it wraps the model in
DistributedDataParallel, shards the data, all-reduces the metrics and saves checkpoints on rank 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from fxprune.train.runtime import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, number of processes, rank on this node, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; torchrun sets it to one. "
                         f"Unset it, or launch with torchrun.") from None


def init_from_env() -> DistInfo:
    """Join the torchrun process group (WORLD_SIZE > 1): nccl on CUDA, gloo otherwise; else a no-op."""
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(None, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current(device)


def current(device: torch.device | None = None) -> DistInfo:
    """The DistInfo of the initialised process group, or of a single process when there is none."""
    local_rank = _env_int("LOCAL_RANK", 0)
    device = device if device is not None else resolve_device(None, local_rank)
    if not dist.is_initialized():
        return DistInfo(0, 1, 0, device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown() -> None:
    """Leave the process group (call at the end of a torchrun script); a no-op without one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def can_shard(data: object) -> bool:
    """True when `data` has ``shard(rank, world_size)`` or a DistributedSampler."""
    return callable(getattr(data, "shard", None)) or isinstance(getattr(data, "sampler", None), DistributedSampler)


def shard(data: object, rank: int, world_size: int, what: str) -> object:
    """This rank's part of `data`: ``data.shard(rank, world_size)``, or `data` itself when its sampler
    is already a DistributedSampler; anything else cannot be split and raises ValueError."""
    if callable(getattr(data, "shard", None)):
        return data.shard(rank, world_size)
    if isinstance(getattr(data, "sampler", None), DistributedSampler):
        return data
    raise ValueError(
        f"{what} ({type(data).__name__}) cannot be split across the {world_size} processes of this "
        f"distributed run: it has no shard(rank, world_size) method and its sampler is not a "
        f"DistributedSampler. Pass a fxprune TensorLoader, or a DataLoader built with "
        f"sampler=DistributedSampler(dataset).")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over every process (in place) when distributed; return it."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, as DDP does before each forward."""
    if active():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    """Wait for every process when distributed."""
    if active():
        dist.barrier()
