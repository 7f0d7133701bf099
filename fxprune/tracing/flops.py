"""FLOP counting with torch's own per-op formulas, without its module tracker.

`torch.utils.flop_counter.FlopCounterMode` counts FLOPs per op (matmuls, convolutions, attention) from a
registry of formulas, and always tracks which module each op runs in (`ModuleTracker`). fxprune needs
totals only. The tracker costs a large share of a trace's shape pass (it walks the modules on every call)
and fails outright on some models (timm's PiT and CaiT feed tuples holding parameters through
`nn.Sequential`; its autograd hooks then raise "Expected gradient function to be set"). `FlopCounter`
is the same dispatch mode with the same registry and decomposition rule, minus the tracker, so the
numbers are exactly FlopCounterMode's.

>>> import torch
>>> with FlopCounter() as fc:
...     _ = torch.nn.Linear(4, 3)(torch.randn(2, 4))
>>> fc.get_total_flops()
48
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

_aten = torch.ops.aten
# metadata queries: never counted, never decomposed (as in FlopCounterMode)
_QUERIES = {_aten.is_contiguous.default, _aten.is_contiguous.memory_format, _aten.is_strides_like_format.default,
            _aten.is_non_overlapping_and_dense.default, _aten.size.default, _aten.sym_size.default,
            _aten.stride.default, _aten.sym_stride.default, _aten.storage_offset.default,
            _aten.sym_storage_offset.default, _aten.numel.default, _aten.sym_numel.default, _aten.dim.default,
            torch.ops.prim.layout.default}


class FlopCounter(TorchDispatchMode):
    """Counts the FLOPs of every op run under it (2 per multiply-add), with torch's formulas."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def get_total_flops(self) -> int:
        return self.total

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _QUERIES:
            return NotImplemented
        packet = func._overloadpacket
        if packet not in flop_registry and func is not torch.ops.prim.device.default:
            with self:  # e.g. aten.linear -> addmm, counted by the registry's formula
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        if packet in flop_registry:
            self.total += int(flop_registry[packet](*args, **kwargs, out_val=out))
        return out
