"""Residual blocks with identity shortcuts, found in the graph, and runs of them (the "stages" of a depth
search); removing a block from a graph.

A residual block is an addition ``add(s, t)`` where `s` (the shortcut) is the block's input itself -- no
projection -- and `t` is the output of a branch: every node the branch is made of descends from `s`, is
used only inside the branch or by the add, and has the shape of `s` at its output. Detection looks at the
graph only (data flow and shapes), never at class names. Removing the block replaces the add by `s`: the
block computes the identity, and the branch's nodes become dead code.

A block's *output point* is the add, followed through single-input, parameter-free, shape-preserving ops
with a single user (a ReLU after the add). Blocks form a *run* when each block's shortcut is the previous
block's output point; keeping the first d blocks of a run and removing the rest gives the run's depth d.

>>> import torch, torchvision, fxprune
>>> gm = fxprune.trace(torchvision.models.resnet18(weights=None), torch.randn(1, 3, 64, 64))
>>> [len(r.blocks) for r in find_runs(gm)]  # one identity block per stage (the first has a projection)
[2, 1, 1, 1]
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from fxprune.tracing.meta import shape_of

__all__ = ["BlockRun", "ResidualBlock", "find_runs", "remove_blocks"]

ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
ADD_METHODS = {"add", "add_"}


@dataclass(frozen=True)
class ResidualBlock:
    add: str  # the add node's name
    shortcut: str  # the add's shortcut argument (what replaces the add when the block is removed)
    branch: tuple[str, ...]  # the residual branch's nodes (graph order)
    root: str  # the block's input (the shortcut, or the input of an identity-like op producing it)


@dataclass(frozen=True)
class BlockRun:
    blocks: tuple[ResidualBlock, ...]
    points: tuple[str, ...]  # output point of each block: the model's value after keeping 1, 2, ... blocks


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in ADD_FUNCTIONS:
        return len(node.args) == 2 and not node.kwargs.get("alpha")
    return node.op == "call_method" and node.target in ADD_METHODS and len(node.args) == 2


def _branch(shortcut: fx.Node, out: fx.Node, add: fx.Node) -> tuple[fx.Node, ...] | None:
    """The nodes between `shortcut` and `out` (inclusive of `out`) when they form a closed branch."""
    branch, stack, reaches = {}, [out], False
    while stack:
        n = stack.pop()
        if n is shortcut:
            reaches = True
            continue
        if n.name in branch or n.op == "get_attr":
            continue
        if n.op in ("placeholder", "output"):
            return None  # depends on something other than the block input
        branch[n.name] = n
        stack.extend(n.all_input_nodes)
    escapes = (u for n in branch.values() for u in n.users if u is not add and u.name not in branch)
    if not reaches or any(u.users for u in escapes):  # unused extra outputs (attention weights) may escape
        return None
    return tuple(n for n in out.graph.nodes if n.name in branch)


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    sa, sb = shape_of(a), shape_of(b)
    return isinstance(sa, tuple) and sa == sb


def residual_blocks(gm: fx.GraphModule) -> list[ResidualBlock]:
    """Every add with an identity shortcut and a closed residual branch, in graph order."""
    modules = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        if not _is_add(node) or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        for s, t in (node.args, node.args[::-1]):
            if not (_same_shape(s, node) and _same_shape(t, node)):
                continue
            root = _shortcut_root(s, modules)
            branch = _branch(root, t, node)
            if branch:
                out.append(ResidualBlock(node.name, s.name, tuple(n.name for n in branch), root.name))
                break
    return out


def _shortcut_root(s: fx.Node, modules: dict) -> fx.Node:
    """The block input behind an identity-like shortcut (an `nn.Identity` module, a dropout)."""
    while len(s.users) == 1 and _passes_through(s, modules):
        s = s.all_input_nodes[0]
    return s


def _passes_through(node: fx.Node, modules: dict) -> bool:
    """Single tensor input, no parameters, same output shape (activations, dropout, identity)."""
    if len(node.all_input_nodes) != 1 or not _same_shape(node, node.all_input_nodes[0]):
        return False
    if node.op == "call_module":
        return not any(True for _ in modules[node.target].parameters())
    return node.op in ("call_function", "call_method")


def output_point(gm: fx.GraphModule, add: fx.Node) -> fx.Node:
    modules = dict(gm.named_modules())
    point = add
    while len(point.users) == 1:
        user = next(iter(point.users))
        if not _passes_through(user, modules):
            break
        point = user
    return point


def find_runs(gm: fx.GraphModule, min_blocks: int = 1) -> list[BlockRun]:
    """Runs of consecutive residual blocks (each block's shortcut is the previous block's output point)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    runs: list[list[tuple[ResidualBlock, str]]] = []
    for block in residual_blocks(gm):
        point = output_point(gm, nodes[block.add]).name
        if runs and runs[-1][-1][1] == block.root:
            runs[-1].append((block, point))
        else:
            runs.append([(block, point)])
    return [BlockRun(tuple(b for b, _ in r), tuple(p for _, p in r)) for r in runs if len(r) >= min_blocks]


INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.imul: operator.mul, operator.isub: operator.sub}


def _out_of_place(gm: fx.GraphModule, node: fx.Node) -> None:
    """Make `node` compute out of place (ReLU(inplace=True), F.relu(..., inplace=True), x.relu_(), x += y)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if getattr(module, "inplace", False):
            module.inplace = False  # shared call sites only lose the in-place saving
    elif node.op == "call_function":
        if node.kwargs.get("inplace"):
            node.kwargs = {**node.kwargs, "inplace": False}
        node.target = INPLACE_FUNCTIONS.get(node.target, node.target)
    elif node.op == "call_method" and node.target.endswith("_") and not node.target.startswith("_"):
        node.target = node.target[:-1]


def remove_blocks(gm: fx.GraphModule, skipped: list[list[str]]) -> fx.GraphModule:
    """Replace each [add, shortcut] pair's add by its shortcut, drop the dead branch and unused modules."""
    if not skipped:
        return gm
    nodes = {n.name: n for n in gm.graph.nodes}
    for add_name, shortcut_name in skipped:
        add, shortcut = nodes.get(add_name), nodes.get(shortcut_name)
        if add is None or shortcut is None or shortcut not in add.args:
            raise ValueError(f"cannot remove the residual block at '{add_name}' (shortcut '{shortcut_name}'): "
                             f"the graph has no such add of that input. The plan was made for another graph.")
        users = list(add.users)
        add.replace_all_uses_with(shortcut)
        gm.graph.erase_node(add)
        for user in users:  # an in-place op on the add's fresh output would now write into the shortcut
            _out_of_place(gm, user)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm
