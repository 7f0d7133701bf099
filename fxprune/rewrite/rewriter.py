"""Physically remove channels: slice parameters and buffers, fix module attributes, rewrite the graph's
constants, lint and recompile."""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.registry import rule_for_node
from fxprune.analysis.keep import Keep, Survivors
from fxprune.rewrite.fixers import fixer_for


def rewrite(gm: fx.GraphModule, ga: GraphAnalysis, keep: Keep) -> fx.GraphModule:
    """Slice `gm` (in place) so that only the kept channels remain; returns `gm`."""
    ctx = Survivors(ga, keep)
    ctx.root = gm
    _slice_tensors(gm, ga, ctx)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            fix = fixer_for(modules[node.target])
            if fix is not None:
                fix(ctx, node, modules[node.target])
        rule = rule_for_node(node, modules)
        if rule is not None and rule.rewrite is not None:
            rule.rewrite(ctx, node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _slice_tensors(gm: fx.GraphModule, ga: GraphAnalysis, ctx: Survivors) -> None:
    for qualname, per_dim in ga.analysis.params.items():
        tensor = _get(gm, qualname)
        if not isinstance(tensor, torch.Tensor):
            continue
        new = tensor.data
        for dim, arr in per_dim.items():
            if dim >= new.dim() or new.shape[dim] != len(arr):
                continue
            idx = ctx.keep_index(arr)
            if len(idx) < len(arr):
                new = new.index_select(dim, torch.as_tensor(idx, device=new.device))
        if new is not tensor.data:
            _set(gm, qualname, tensor, new.contiguous())


def _get(gm: nn.Module, qualname: str):
    owner, _, name = qualname.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    return getattr(mod, name, None)


def _set(gm: nn.Module, qualname: str, old: torch.Tensor, new: torch.Tensor) -> None:
    owner, _, name = qualname.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    if isinstance(old, nn.Parameter):
        setattr(mod, name, nn.Parameter(new, requires_grad=old.requires_grad))
    elif name in getattr(mod, "_buffers", {}):
        mod._buffers[name] = new
    else:
        setattr(mod, name, new)
