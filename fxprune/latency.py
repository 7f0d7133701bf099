"""Latency of a model on one input: warm-up, then the median of timed runs.

On CUDA the model runs as it would be deployed: bf16 autocast, channels_last memory format, timed with
CUDA events. On the CPU it runs in float32, timed with `time.perf_counter`. Always under
`torch.inference_mode`, on a copy of the model (the caller's model is not moved or changed).

>>> import torch
>>> from torch import nn
>>> measure_latency(nn.Linear(4, 2), torch.randn(1, 4), "cpu", repeats=3, warmup=1) > 0
True
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["check_device", "measure_latency", "time_callable"]


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


def measure_latency(model: nn.Module, example_inputs: Any, device: str | torch.device = "cpu", repeats: int = 20,
                    warmup: int = 5, dtype: torch.dtype | None = None) -> float:
    """Median latency in milliseconds of one forward pass of `model` on `example_inputs` (a tensor or a
    tuple of tensors, batch included), after `warmup` untimed passes.

    The model is prepared as `fxprune.optimize(..., mode="eager")` prepares it -- BatchNorm folded, weights
    cast to `dtype` (default bfloat16 on CUDA; float32 on the CPU whatever `dtype` says), channels_last on
    CUDA -- and its forward is timed alone (`Optimized.timing_step`): the same regime as `fxprune.Target`'s
    measurements and benchmarks/latency.py. The caller's model is not changed."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    from .deploy.optimize import optimize  # deploy imports the analysis stack: import on use

    dev = check_device(device)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    fast = optimize(model, inputs, dev, dtype if dev.type == "cuda" else None, mode="eager", check=False)
    return time_callable(fast.timing_step(*(t.to(dev) for t in inputs)), dev, repeats, warmup)


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
