"""Small runtime helpers: seeding, re-initialisation, devices, batches and autocast.

>>> import torch
>>> seed_everything(0); a = torch.rand(2)
>>> seed_everything(0); bool(torch.equal(a, torch.rand(2)))
True
>>> net = torch.nn.Linear(3, 2); before = net.weight.clone()
>>> reinitialise(net); bool(torch.equal(before, net.weight))
False
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
import torch.nn as nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and every CUDA device) with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def reinitialise(model: nn.Module) -> None:
    """Call ``reset_parameters()`` on every submodule that has it (conv, linear, norms, ...), in place."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """`device` as a torch.device; None means ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if device is None:
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


def to_device(t: object, device: torch.device, channels_last: bool = False) -> object:
    """Move a tensor (non-blocking) unless it is already there; 4-D inputs go channels-last when asked."""
    if not isinstance(t, torch.Tensor):
        return t
    if t.device != device:
        t = t.to(device, non_blocking=True)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def split_batch(batch: object, where: str) -> tuple[object, object]:
    """A batch as (x, y): any 2-item tuple/list (what DataLoader and TensorLoader yield)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"{where} yielded a batch of type {type(batch).__name__}"
                    f"{f' with {len(batch)} items' if isinstance(batch, (tuple, list)) else ''}; "
                    f"expected (inputs, targets) pairs. Wrap the data so that it yields (x, y).")


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """Autocast to the `amp` dtype on CUDA; a no-op on other devices or when `amp` is None."""
    if device.type != "cuda" or amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[amp])


def set_epoch(data: object, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on the loader, or on its sampler (a DistributedSampler), when present."""
    for obj in (data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        fn = getattr(obj, "set_epoch", None)
        if callable(fn):
            fn(epoch)
            return


def sized_len(data: object) -> int | None:
    """``len(data)`` when the object supports it, else None (e.g. iterable datasets)."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
