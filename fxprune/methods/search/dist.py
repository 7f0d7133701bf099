"""Searches on several processes (launch the script with ``torchrun``): the learned methods' shared plumbing.

When a process group of more than one process is initialised (`fxprune.train.distributed.init_from_env`),
every searching backend (TAS, JST, MetaPruning, DCP) runs the same search on every rank:

- the training data is sharded (`search_data`: a fxprune TensorLoader, anything with ``shard(rank,
  world_size)``, or a DataLoader with a DistributedSampler), so each rank sees 1/world of every batch;
- gradients are averaged over the ranks before every optimiser step (`average_gradients`: one coalesced
  all-reduce, what DistributedDataParallel does without the overlap), so weights and architecture
  parameters stay identical everywhere -- equal shards give exactly the full batch's gradient;
- every random draw (architectures, noise, thresholds) comes from generators seeded alike on every rank, so
  all ranks sample the same sub-networks; losses, rewards and scores are averaged / summed over the ranks
  (`mean_over_ranks`, `sum_over_ranks`); recomputed BatchNorm statistics are averaged (`average_norm_stats`);
- checkpoints are written by rank 0 only (`fxprune.methods.search.checkpoint`), and read by every rank.

With one process every helper is a no-op, so the single-GPU path is the same code.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from fxprune.train.distributed import active, shard


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def search_data(data: Iterable | None, what: str) -> Iterable | None:
    """This rank's shard of `data` in a distributed search (else `data`)."""
    if data is None or not active():
        return data
    return shard(data, rank(), world_size(), what)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace every gradient by its mean over the ranks (parameters without one count as zero)."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_tensors([p.grad for p in params])


def average_tensors(tensors: list[torch.Tensor]) -> None:
    """Every tensor replaced (in place) by its mean over the ranks: one all-reduce per device and dtype."""
    if not active():
        return
    by_device: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault((t.device, t.dtype), []).append(t)
    for group in by_device.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
        for t, v in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(v)


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of `values` over the ranks (float64)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def mean_over_ranks(value: float) -> float:
    return sum_over_ranks([value])[0] / world_size()


def average_norm_stats(module: nn.Module) -> None:
    """Running means and variances of every norm (BatchNorm, MetaPruning's per-width norms) averaged over the
    ranks, each of which computed them on its shard."""
    if not active():
        return
    stats = [[getattr(m, k, None) for k in ("running_mean", "running_var")] for m in module.modules()]
    average_tensors([t for pair in stats if all(isinstance(t, torch.Tensor) for t in pair) for t in pair])


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (ends a search with one model everywhere)."""
    if active():
        for t in (*module.parameters(), *module.buffers()):
            dist.broadcast(t.data, src=0)


def _device() -> torch.device:
    """gloo reduces CPU tensors, nccl CUDA ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
