"""Timing a callable on a device: warm-up, then the median of timed runs.

On CUDA the model runs as it would be deployed: bf16 autocast, channels_last memory format, timed with
CUDA events. On the CPU it runs in float32, timed with `time.perf_counter`. Always under
`torch.inference_mode`, on a copy of the model (the caller's model is not moved or changed).

>>> import torch
>>> from torch import nn
>>> time_callable(lambda: nn.Linear(4, 2)(torch.randn(1, 4)), "cpu", repeats=3, warmup=1) > 0
True
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["check_device", "time_callable"]


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device; ValueError when it names CUDA and CUDA is not available.

    >>> check_device("cpu")
    device(type='cpu')
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for, but CUDA is not available here "
                         f"(torch.cuda.is_available() is False; torch {torch.__version__}). Use --device cpu, "
                         f"or run on a machine with an NVIDIA GPU and a CUDA build of torch.")
    return dev


def time_callable(step: Callable[[], Any], device: str | torch.device = "cpu", repeats: int = 50,
                  warmup: int = 10) -> float:
    """Median milliseconds of `step()` (already set up to run on `device`): `warmup` untimed calls, then
    `repeats` timed ones, each with CUDA events on CUDA, `time.perf_counter` on the CPU, under inference mode.

    >>> time_callable(lambda: sum(range(100)), "cpu", repeats=3, warmup=1) > 0
    True
    """
    dev = check_device(device)
    with torch.inference_mode():
        for _ in range(warmup):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        timer = _cuda_timer if dev.type == "cuda" else _cpu_timer
        return statistics.median(timer(step) for _ in range(repeats))


def _cpu_timer(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def _cuda_timer(step: Callable[[], Any]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
