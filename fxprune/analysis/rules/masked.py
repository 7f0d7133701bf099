"""Functions the masked model calls: the mask itself, and mask-aware versions of channel-counting ops.

A plain multiply by 0/1 is enough in front of ops that sum over channels (conv, linear, matmul). Ops
whose result depends on *how many* channels there are (layer_norm, group_norm) instead compute their
statistics over the kept channels only, so that the masked model computes what the slim model does.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from fxprune.analysis.context import NodeFacts


@fx.wrap
def apply_mask(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Multiply `x` by a 0/1 (or soft) `mask` laid along dimension `dim`."""
    shape = [1] * x.dim()
    shape[dim] = mask.numel()
    return x * mask.reshape(shape).to(x.dtype)


@fx.wrap
def masked_layer_norm(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """layer_norm over the last dim, with mean and variance taken over the kept positions only."""
    m = mask.to(x.dtype)
    n = m.sum().clamp_min(1)
    mean = (x * m).sum(-1, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / n
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


@fx.wrap
def masked_rms_norm(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None,
                    eps: float | None) -> torch.Tensor:
    """rms_norm over the last dim, with the mean square taken over the kept positions only."""
    m = mask.to(x.dtype)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    ms = (x * x * m).sum(-1, keepdim=True) / m.sum().clamp_min(1)
    y = x * torch.rsqrt(ms + eps)
    return (y * weight if weight is not None else y) * m


@fx.wrap
def masked_group_norm(x: torch.Tensor, mask: torch.Tensor, num_groups: int, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """group_norm whose per-group statistics use the kept channels of each group only."""
    n, c = x.shape[:2]
    xs = x.reshape(n, num_groups, c // num_groups, -1)
    m = mask.to(x.dtype).reshape(1, num_groups, c // num_groups, 1)
    cnt = (m.sum(2, keepdim=True) * xs.shape[-1]).clamp_min(1)
    mean = (xs * m).sum((2, 3), keepdim=True) / cnt
    var = (((xs - mean) * m) ** 2).sum((2, 3), keepdim=True) / cnt
    y = ((xs - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = [1, c] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y * mask.to(x.dtype).reshape(shape)


@fx.wrap
def masked_batch_norm(x: torch.Tensor, mask: torch.Tensor, dim: int, weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """batch_norm with statistics from the input (training mode, e.g. timm's weight standardisation),
    where the reduced dimension `dim` carries channels: mean and variance over its kept positions only."""
    shape = [1] * x.dim()
    shape[dim] = mask.numel()
    m = mask.to(x.dtype).reshape(shape)
    reduced = [d for d in range(x.dim()) if d != 1]
    cnt = (m.sum() * x.numel() / (x.shape[1] * x.shape[dim])).clamp_min(1)
    mean = (x * m).sum(reduced, keepdim=True) / cnt
    var = (((x - mean) * m) ** 2).sum(reduced, keepdim=True) / cnt
    y = (x - mean) / torch.sqrt(var + eps)
    affine = [1, x.shape[1]] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(affine)
    if bias is not None:
        y = y + bias.reshape(affine)
    return y * m


@fx.wrap
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int, dims: list[int] | None,
                keepdim: bool) -> torch.Tensor:
    """mean over `dims`, where `dim` (one of them) carries channels: the average over kept positions."""
    shape = [1] * x.dim()
    shape[dim] = mask.numel()
    m = mask.to(x.dtype).reshape(shape)
    dims = list(range(x.dim())) if dims is None else [d % x.dim() for d in dims]
    others = 1
    for d in dims:
        others *= x.shape[d] if d != dim else 1
    return (x * m).sum(dims, keepdim=keepdim) / (m.sum() * others).clamp_min(1)


def _param(graph: fx.Graph, node: fx.Node, module: torch.nn.Module, name: str) -> fx.Node | None:
    return graph.get_attr(f"{node.target}.{name}") if getattr(module, name, None) is not None else None


def build_masked_layer_norm_module(graph: fx.Graph, node: fx.Node, module: torch.nn.Module,
                                   mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Replacement node for `call_module(LayerNorm)` in the masked model."""
    w, b = _param(graph, node, module, "weight"), _param(graph, node, module, "bias")
    return graph.call_function(masked_layer_norm, (node.args[0], mask, w, b, module.eps))


def build_masked_group_norm_module(graph: fx.Graph, node: fx.Node, module: torch.nn.Module,
                                   mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    w, b = _param(graph, node, module, "weight"), _param(graph, node, module, "bias")
    return graph.call_function(masked_group_norm, (node.args[0], mask, module.num_groups, w, b, module.eps))


def build_masked_layer_norm_fn(graph: fx.Graph, node: fx.Node, module: None, mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Replacement for `F.layer_norm(x, shape, weight, bias, eps)` in the masked model."""
    args = list(node.args) + [None] * (5 - len(node.args))
    w = node.kwargs.get("weight", args[2])
    b = node.kwargs.get("bias", args[3])
    eps = node.kwargs.get("eps", args[4] if args[4] is not None else 1e-5)
    return graph.call_function(masked_layer_norm, (node.args[0], mask, w, b, eps))


def build_masked_rms_norm_module(graph: fx.Graph, node: fx.Node, module: torch.nn.Module,
                                 mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Replacement node for `call_module(RMSNorm)` in the masked model."""
    return graph.call_function(masked_rms_norm, (node.args[0], mask, _param(graph, node, module, "weight"),
                                                 module.eps))


def build_masked_rms_norm_fn(graph: fx.Graph, node: fx.Node, module: None, mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Replacement for `F.rms_norm(x, shape, weight, eps)` in the masked model."""
    args = list(node.args) + [None] * (4 - len(node.args))
    w = node.kwargs.get("weight", args[2])
    eps = node.kwargs.get("eps", args[3])
    return graph.call_function(masked_rms_norm, (node.args[0], mask, w, eps))


def build_masked_group_norm_fn(graph: fx.Graph, node: fx.Node, module: None, mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    args = list(node.args) + [None] * (5 - len(node.args))
    g = node.kwargs.get("num_groups", args[1])
    w = node.kwargs.get("weight", args[2])
    b = node.kwargs.get("bias", args[3])
    eps = node.kwargs.get("eps", args[4] if args[4] is not None else 1e-5)
    return graph.call_function(masked_group_norm, (node.args[0], mask, g, w, b, eps))


def build_masked_batch_norm_fn(graph: fx.Graph, node: fx.Node, module: None, mask: fx.Node,
                               make_mask=None, *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Replacement for `F.batch_norm(x, None, None, weight, bias, training=True, ...)` in the masked model."""
    args = list(node.args) + [None] * (8 - len(node.args))
    w = node.kwargs.get("weight", args[3])
    b = node.kwargs.get("bias", args[4])
    eps = node.kwargs.get("eps", args[7] if args[7] is not None else 1e-5)
    dim = 2 if dim is None else dim
    return graph.call_function(masked_batch_norm, (node.args[0], mask, dim, w, b, eps))


def build_masked_mean(graph: fx.Graph, node: fx.Node, module: None, mask: fx.Node, make_mask=None,
        *, dim: int | None = None, facts: NodeFacts | None = None) -> fx.Node:
    """Replacement for `torch.mean(x, dim, keepdim)` / `x.mean(dim, keepdim)` in the masked model."""
    args = list(node.args) + [None] * (3 - len(node.args))
    dims = node.kwargs.get("dim", args[1])
    dims = [dims] if isinstance(dims, int) else (list(dims) if dims is not None else None)
    keepdim = bool(node.kwargs.get("keepdim", args[2] or False))
    dim = 1 if dim is None else dim
    return graph.call_function(masked_mean, (node.args[0], mask, dim, dims, keepdim))


__all__ = ["apply_mask", "masked_batch_norm", "masked_group_norm", "masked_layer_norm", "masked_mean", "masked_rms_norm"]
