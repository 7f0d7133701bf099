"""Latency of a whole model on one input, prepared as it would be deployed (see `measure_latency`).

>>> import torch
>>> from torch import nn
>>> measure_latency(nn.Linear(4, 2), torch.randn(1, 4), "cpu", repeats=3, warmup=1) > 0
True
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fxprune.deploy.optimize import optimize
from fxprune.deploy.timing import check_device, time_callable

__all__ = ["measure_latency"]


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
    dev = check_device(device)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    fast = optimize(model, inputs, dev, dtype if dev.type == "cuda" else None, mode="eager", check=False)
    return time_callable(fast.timing_step(*(t.to(dev) for t in inputs)), dev, repeats, warmup)
