"""Data for data-driven backends: the "needs data" error and the first calibration batches of `data`."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import torch

from .registry import ScoreInput


def require_data(inp: ScoreInput, method: str, why: str) -> Iterable:
    if inp.data is None:
        raise ValueError(f"method '{method}' needs training data ({why}): pass data=<iterable of (inputs, "
                         f"targets) batches>, e.g. fxprune.data.cifar10_loaders()[0].")
    return inp.data


def batches(data: Iterable, n: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n` (inputs, targets) batches of `data`, moved to `device`."""
    for x, y in islice(iter(data), n):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
