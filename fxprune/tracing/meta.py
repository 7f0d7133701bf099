"""Every key fxprune writes into torch.fx `meta`, with typed accessors: the contract between capture and the
later stages.

A capture front-end (the torch.fx tracer here; any other that produces a `torch.fx.GraphModule`) must record,
on every node, its output shape and FLOPs (`SHAPE`, `FLOPS`, `DTYPE`; `propagate_shapes` does this for any
GraphModule), and may list on the GraphModule the submodules it could not look into (`AUTO_LEAVES`). The
analysis, cost model and methods read a graph only through these keys.

>>> import torch, fxprune
>>> gm = fxprune.trace(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(3, 4))
>>> out = gm.graph.find_nodes(op="call_module")[0]
>>> shape_of(out), flops_of(out), dtype_of(out)
((3, 2), 48, torch.float32)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

# node.meta
SHAPE = "fxprune_shape"  # tuple[int, ...] for a tensor output; a list (or dict) of them for a structured output
FLOPS = "fxprune_flops"  # int: the node's FLOPs, torch.utils.flop_counter's formulas
DTYPE = "fxprune_dtype"  # torch.dtype of a tensor output, else None
TRACE_VALUE = "fxprune_trace_meta"  # the node's value on meta tensors while tracing (shape-specialised parts)
MASKED_ORIGINAL = "fxprune_original"  # on a masked replacement node: (op, target, args, kwargs) it replaced
# GraphModule.meta
AUTO_LEAVES = "fxprune_auto_leaves"  # {qualname: why torch.fx could not trace it}: opaque leaves
SPECIALISED = "fxprune_specialised"  # {qualname: why it was traced with concrete shapes}

ALL_KEYS = (SHAPE, FLOPS, DTYPE, TRACE_VALUE, MASKED_ORIGINAL, AUTO_LEAVES, SPECIALISED)


def shape_of(node: Any) -> Any:
    """The recorded output shape of `node` (None for a non-node or a node without one)."""
    return node.meta.get(SHAPE) if isinstance(node, fx.Node) else None


def flops_of(node: fx.Node) -> int:
    """The recorded FLOPs of `node` (0 when none were recorded)."""
    return int(node.meta.get(FLOPS, 0) or 0)


def dtype_of(node: fx.Node) -> torch.dtype | None:
    return node.meta.get(DTYPE)


def total_flops(gm: fx.GraphModule) -> int:
    """The FLOPs of the whole graph: the sum over its nodes."""
    return sum(flops_of(n) for n in gm.graph.nodes)


def record(node: fx.Node, shape: Any, flops: int, dtype: torch.dtype | None) -> None:
    """Write a node's shape, FLOPs and dtype (what a capture front-end must provide)."""
    node.meta.update({SHAPE: shape, FLOPS: flops, DTYPE: dtype})


def auto_leaves(gm: fx.GraphModule) -> dict[str, str]:
    """{submodule: why it is an opaque leaf} recorded by the tracer."""
    return dict(gm.meta.get(AUTO_LEAVES, {}))


def specialised(gm: fx.GraphModule) -> dict[str, str]:
    """{submodule: why it was traced with concrete shapes} recorded by the tracer."""
    return dict(gm.meta.get(SPECIALISED, {}))
