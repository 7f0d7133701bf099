"""DCP's auxiliary classifiers: where they go in the graph, what they are, and how they are trained.

Points are chosen from the traced graph, never from the model's class: a candidate is a node that every
path from the inputs to the output passes through (a residual block's output; inside a block the
shortcut edge bypasses every node) and whose output is a feature map (N, C, H, W) or a token tensor
(N, L, C). With `n` losses, the n - 1 auxiliary points are the candidates whose cumulative FLOPs (in
topological order) are nearest to k/n of the model's FLOPs, k = 1 .. n - 1; the n-th loss is the
network's own classifier. Heads live in a separate wrapper (`HeadedNet`) that runs a copy of the graph
with the point features as extra outputs and shares every module with the traced model: the graph that
is later rewritten never sees them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.tracing.meta import flops_of, shape_of
from fxprune.train.losses import logits_of

DEFAULT_HEADS = 3  # losses: 2 auxiliary heads + the final classifier (the official code's ResNet-56 setting)


def main_path(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes every input-to-output path passes through: no edge reaching past them starts before them."""
    nodes = list(gm.graph.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    live = {n for n in nodes if n.op == "placeholder"}
    for n in nodes:  # nodes downstream of an input (get_attr constants and parameters do not count)
        if n.op != "placeholder" and any(a in live for a in n.all_input_nodes):
            live.add(n)
    reach = {n: max((index[u] for u in n.users), default=index[n]) for n in live}
    out, furthest = [], -1
    for i, n in enumerate(nodes):
        if n not in live or n.op in ("placeholder", "output"):
            continue
        # every edge from an earlier live node ends at or before n: n cuts the graph
        if furthest <= i:
            out.append(n)
        furthest = max(furthest, reach[n])
    return out


def _feature_shape(n: fx.Node) -> tuple[int, ...] | None:
    shape = shape_of(n)
    if isinstance(shape, (tuple, torch.Size)) and len(shape) in (3, 4) and all(isinstance(s, int) for s in shape):
        return tuple(shape)
    return None


def head_points(gm: fx.GraphModule, losses: int = DEFAULT_HEADS) -> list[str]:
    """Names of the `losses - 1` auxiliary points, evenly spaced by cumulative FLOPs (see module doc)."""
    nodes = list(gm.graph.nodes)
    total, cum, at = 0, {}, 0
    for n in nodes:
        at += flops_of(n)
        cum[n.name] = at
    total = max(at, 1)
    on_path = {n.name for n in main_path(gm)}
    cands = [n for n in nodes if n.name in on_path and _feature_shape(n) is not None and cum[n.name] < total]
    chosen: list[str] = []
    for k in range(1, losses):
        left = [n for n in cands if n.name not in chosen
                and (not chosen or cum[n.name] > cum[chosen[-1]])]
        if not left:
            break
        # among equally close candidates the latest (a block's final activation rather than its add)
        best = min(reversed(left), key=lambda n: abs(cum[n.name] / total - k / losses))
        chosen.append(best.name)
    return chosen


class AuxHead(nn.Module):
    """BN + ReLU + global average pool + Linear (feature maps); LayerNorm + mean over tokens + Linear (tokens)."""

    def __init__(self, shape: tuple[int, ...], classes: int, norm: bool = True) -> None:
        super().__init__()
        self.tokens = len(shape) == 3
        c = shape[-1] if self.tokens else shape[1]
        self.norm = (nn.LayerNorm(c) if self.tokens else nn.BatchNorm2d(c)) if norm else nn.Identity()
        self.fc = nn.Linear(c, classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return self.fc(F.relu(self.norm(f)).mean(1))
        return self.fc(F.relu(self.norm(f)).mean((2, 3)))


def with_outputs(gm: fx.GraphModule, names: list[str], end: str | None = None) -> fx.GraphModule:
    """A GraphModule sharing `gm`'s modules and parameters that returns (output, [values at names]); with
    `end`, (value at end, [values at names]) and nothing after those nodes is computed."""
    graph = fx.Graph()
    vals: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, vals)
    by_name = {n.name: vals[n] for n in gm.graph.nodes if n in vals}
    missing = [n for n in names + ([end] if end else []) if n not in by_name]
    if missing:
        raise RuntimeError(f"dcp: node(s) {missing} are not in the graph (internal error).")
    graph.output((by_name[end] if end else out, [by_name[n] for n in names]))
    out_gm = fx.GraphModule(gm, graph)
    out_gm.graph.eliminate_dead_code()
    out_gm.recompile()
    return out_gm


class HeadedNet(nn.Module):
    """The traced model plus auxiliary heads; forward returns the model's output and keeps `aux` logits."""

    def __init__(self, gm: fx.GraphModule, points: list[str], heads: nn.ModuleList) -> None:
        super().__init__()
        self.net, self.heads, self.points = with_outputs(gm, points), heads, points
        self.aux: list[torch.Tensor] = []

    def forward(self, *args):
        out, feats = self.net(*args)
        self.aux = [h(f) for h, f in zip(self.heads, feats)]
        return out


def make_heads(gm: fx.GraphModule, points: list[str], classes: int, norm: bool = True) -> nn.ModuleList:
    nodes = {n.name: n for n in gm.graph.nodes}
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    return nn.ModuleList(AuxHead(_feature_shape(nodes[p]), classes, norm) for p in points).to(device)


def num_classes(gm: fx.GraphModule, example_inputs: tuple) -> int:
    device = next((p.device for p in gm.parameters()), torch.device("cpu"))
    args = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in example_inputs)
    was = gm.training
    gm.eval()
    with torch.no_grad():
        n = int(logits_of(gm(*args)).shape[-1])
    gm.train(was)
    return n


def train_with_heads(net: HeadedNet, data: Iterable, config) -> None:
    """Phase 1: fine-tune the network and its heads together on the sum of the cross entropies."""
    from fxprune.train import Trainer
    from fxprune.train.losses import cross_entropy

    ce = cross_entropy(config.label_smoothing)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ce(logits, y) + sum(ce(a.float(), y) for a in net.aux)

    Trainer(net, dataclasses.replace(config), data, loss_fn=loss).fit()
