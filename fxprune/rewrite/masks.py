"""Write a plan's masks into the graph as nodes (no channel removed), and take them out again.

Masks sit at the consumers: the tensor entering every conv/linear/matmul/norm that reads a group's
channels is multiplied by the group's 0/1 mask (norms switch to mask-aware statistics). Then the masked
model computes exactly what the slim model computes. Learned methods put soft masks in the same places.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.analysis.context import NodeFacts
from fxprune.tracing.meta import MASKED_ORIGINAL
from fxprune.analysis.rules.masked import apply_mask
from fxprune.analysis.registry import rule_for_node
from fxprune.analysis.keep import Keep, Survivors

MASK_PREFIX = "fxprune_mask_"
ORIGINAL = MASKED_ORIGINAL


def insert_masks(gm: fx.GraphModule, ga: GraphAnalysis, keep: Keep,
                 soft: bool = False, arrays: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """Insert one mask per consumer input that loses channels; returns {buffer name: mask}.

    Masks live on the device of `gm`'s parameters. With `soft=True` every consumer input gets a mask (all ones where nothing is removed) registered as a
    parameter, so learned methods can train them. `arrays`, when given, is filled with each mask's label
    array (which channels each mask position carries: `ga.channel_positions(arr)`).
    """
    ctx = Survivors(ga, keep)
    modules = dict(gm.named_modules())
    device = next((t.device for t in (*gm.parameters(), *gm.buffers())), torch.device("cpu"))
    masks: dict[str, torch.Tensor] = {}
    replaced: set[str] = set()
    arrays = {} if arrays is None else arrays
    for i, (node, site, dim, arr, variant) in enumerate(_mask_plan(gm, ga, ctx, modules, soft)):
        if node.name in replaced:
            continue

        def make_mask(arr=arr, i=i) -> fx.Node:
            name = f"{MASK_PREFIX}{i}_{len(masks)}"
            value = torch.as_tensor(ctx.keep_mask(arr), dtype=torch.float32, device=device)
            _register(gm, name, value, soft)
            masks[name] = value
            arrays[name] = arr
            return gm.graph.get_attr(name)

        with gm.graph.inserting_before(node):
            mask_node = make_mask()
            if variant is not None:
                replaced.add(node.name)
                _replace_with_masked(gm, node, variant, modules, mask_node, make_mask, dim, ctx.extra(node))
            else:
                masked = gm.graph.call_function(apply_mask, (site.source(node), mask_node, dim))
                _replace_arg(node, site.arg, masked)
    gm.graph.lint()
    gm.recompile()
    return masks


def _mask_plan(gm: fx.GraphModule, ga: GraphAnalysis, ctx: Survivors, modules, soft: bool):
    """Every (node, site, dim, label array, masked variant) to write, read off before the graph changes."""
    nodes = {n.name: n for n in gm.graph.nodes}
    out = []
    for site in ga.analysis.mask_sites:
        node = nodes[site.node]
        lab = ctx.labels(site.source(node))
        arr = lab.get(site.dim) if lab else None
        if arr is None:
            continue
        keep_mask = ctx.keep_mask(arr)
        rule = rule_for_node(node, modules)
        variant = rule if rule is not None and rule.masked is not None else None
        if keep_mask.all() and not soft and variant is None:
            continue
        out.append((node, site, lab.norm(site.dim), arr, variant))
    return out


def _register(gm: fx.GraphModule, name: str, value: torch.Tensor, soft: bool) -> None:
    if soft:
        gm.register_parameter(name, torch.nn.Parameter(value))
    else:
        gm.register_buffer(name, value)


def _replace_arg(node: fx.Node, index: int | str, new: fx.Node) -> None:
    if isinstance(index, str):
        node.kwargs = {**node.kwargs, index: new}
        return
    args = list(node.args)
    args[index] = new
    node.args = tuple(args)


def _replace_with_masked(gm: fx.GraphModule, node: fx.Node, rule, modules, mask_node: fx.Node, make_mask,
                         dim: int, facts: NodeFacts) -> None:
    module = modules.get(node.target) if node.op == "call_module" else None
    new = rule.masked(gm.graph, node, module, mask_node, make_mask, dim=dim, facts=facts)  # dim: the reduced one
    names = fx.node.map_arg((node.args, node.kwargs), lambda n: _NodeRef(n.name))
    new.meta[ORIGINAL] = (node.op, node.target, names[0], names[1])
    new.meta.update({k: v for k, v in node.meta.items() if k.startswith("fxprune_") and k != ORIGINAL})
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


class _NodeRef:
    """A node named in a masked variant's record of the op it replaced (survives deep copies)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __deepcopy__(self, memo) -> _NodeRef:
        return self


def strip_masks(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove every mask node (and restore mask-aware norms to the original ops), in place."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is apply_mask:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif ORIGINAL in node.meta:
            op, target, args, kwargs = node.meta[ORIGINAL]
            by_name = {n.name: n for n in gm.graph.nodes}
            args, kwargs = fx.node.map_aggregate(
                (args, kwargs), lambda v: by_name[v.name] if isinstance(v, _NodeRef) else v)
            with gm.graph.inserting_before(node):
                orig = gm.graph.create_node(op, target, args, kwargs)
            node.replace_all_uses_with(orig)
            gm.graph.erase_node(node)
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and str(node.target).startswith(MASK_PREFIX) and not node.users:
            gm.graph.erase_node(node)
    for name in [n for n, _ in gm.named_buffers() if n.startswith(MASK_PREFIX)]:
        delattr(gm, name)
    for name in [n for n, _ in gm.named_parameters() if n.startswith(MASK_PREFIX)]:
        delattr(gm, name)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
