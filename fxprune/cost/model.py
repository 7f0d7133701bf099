"""FLOPs and parameter counts as functions of a keep decision, for budget selection.

Dense FLOPs per node come from torch.utils.flop_counter (recorded by the tracer). A node's FLOPs after
pruning are its dense FLOPs times the kept fraction of each channel dimension of its iteration space:
the dims of its weight for convs and linears, otherwise its labelled output dims and the channels it
contracts. Fused attention nodes are split into their parts first (fxprune/cost/terms.py), each part
with the dims its own work iterates over. Parameters scale with the kept fraction of each labelled dim.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from fxprune.analysis.analyse import GraphAnalysis
from fxprune.cost.terms import split_terms
from fxprune.tracing.flops import FlopCounter
from fxprune.analysis.keep import Survivors
from fxprune.tracing.tracer import as_input_tuple
from fxprune.tracing.meta import flops_of


@dataclass
class CostModel:
    """Linear-in-fractions FLOPs and params model of one analysed graph."""

    flop_terms: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)
    param_terms: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)
    fixed_params: int = 0
    latency_model: Any = None  # fxprune.cost.LatencyModel, attached for latency budgets
    flop_nodes: list[str] = field(default_factory=list)  # the node of each flop term
    param_names: list[str] = field(default_factory=list)  # the parameter of each param term
    fixed_names: list[tuple[str, int]] = field(default_factory=list)  # unlabelled parameters and their sizes
    ga: GraphAnalysis | None = None  # the analysis it was built from (what `ratio` evaluates a Keep against)

    @classmethod
    def build(cls, gm: fx.GraphModule | GraphAnalysis, ga: GraphAnalysis | None = None) -> CostModel:
        """The cost model of an analysed graph: `build(ga)` (or `build(gm, ga)` for a copy of `ga.gm`)."""
        if ga is None:
            gm, ga = gm.gm, gm
        model = cls(ga=ga)
        a = ga.analysis
        sites: dict[str, list[np.ndarray]] = {}
        nodes = {n.name: n for n in gm.graph.nodes}
        for s in a.mask_sites:
            node = nodes[s.node]
            lab = a.labels(s.source(node))
            if lab and lab.get(s.dim) is not None:
                sites.setdefault(s.node, []).append(lab.get(s.dim))
        for node in gm.graph.nodes:
            flops = flops_of(node)
            if flops:
                terms = split_terms(a, gm, node, flops) or [(flops, _iteration_dims(a, node, sites))]
                model.flop_terms.extend(terms)
                model.flop_nodes.extend([node.name] * len(terms))
        labelled = set(a.params)
        for name, p in _all_tensors(gm):
            if name in labelled:
                model.param_terms.append((p.numel(), list(a.params[name].values())))
                model.param_names.append(name)
            elif isinstance(p, nn.Parameter):
                model.fixed_params += p.numel()
                model.fixed_names.append((name, p.numel()))
        return model

    def without(self, nodes: set[str], params: set[str]) -> CostModel:
        """The cost model of the graph with `nodes` and `params` gone (removed residual blocks)."""
        keep_f = [i for i, n in enumerate(self.flop_nodes) if n not in nodes]
        keep_p = [i for i, n in enumerate(self.param_names) if n not in params]
        fixed = [(n, size) for n, size in self.fixed_names if n not in params]
        return CostModel([self.flop_terms[i] for i in keep_f], [self.param_terms[i] for i in keep_p],
                         sum(size for _, size in fixed), self.latency_model, [self.flop_nodes[i] for i in keep_f],
                         [self.param_names[i] for i in keep_p], fixed, self.ga)

    def ratio(self, keep: Mapping[int, list[int]], kind: str = "flops") -> float:
        """The fraction of the dense model's `kind` ("flops", "params", "latency") that `keep` retains."""
        if self.ga is None:
            raise ValueError("this cost model was not built from a GraphAnalysis; use CostModel.build(ga).")
        measure = self.measure(kind)
        return measure(Survivors(self.ga, keep)) / max(measure(None), 1e-12)

    def flops_ratio(self, keep: Mapping[int, list[int]]) -> float:
        return self.ratio(keep, "flops")

    def params_ratio(self, keep: Mapping[int, list[int]]) -> float:
        return self.ratio(keep, "params")

    def flops(self, ctx: Survivors | None) -> float:
        return sum(f * _fraction(ctx, arrs) for f, arrs in self.flop_terms)

    def params(self, ctx: Survivors | None) -> float:
        terms = sum(n * _fraction(ctx, arrs) for n, arrs in self.param_terms if n)
        return self.fixed_params + terms

    def latency(self, ctx: Survivors | None) -> float:
        if self.latency_model is None:
            raise ValueError("a latency budget needs a latency model: prune(..., latency=0.5, target='cuda') "
                             "measures one on the target device (see fxprune.Target).")
        return self.latency_model.latency(ctx)

    def measure(self, kind: str) -> Callable[[Survivors | None], float]:
        """The cost function of a budget kind ("flops", "params" or "latency")."""
        measures = {"flops": self.flops, "params": self.params, "latency": self.latency}
        if kind not in measures:
            raise ValueError(f"no cost model for a '{kind}' budget; budgets are {sorted(measures)}.")
        return measures[kind]

    def terms(self, kind: str) -> tuple[list[tuple[float, list[np.ndarray]]], float]:
        """Terms (value, arrays whose kept fractions scale it) and constant part of a budget kind: exact for
        FLOPs and params, first order for latency."""
        if kind == "flops":
            return self.flop_terms, 0.0
        if kind == "params":
            return self.param_terms, float(self.fixed_params)
        self.latency(None)  # raises the clear error when there is no latency model
        return self.latency_model.linear_terms()


def _fraction(ctx: Survivors | None, arrs: list[np.ndarray]) -> float:
    if ctx is None:
        return 1.0
    out = 1.0
    for arr in arrs:
        out *= ctx.alive_fraction(arr)
    return out


def _iteration_dims(a, node: fx.Node, sites: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
    if node.op == "call_module" and f"{node.target}.weight" in a.params:
        return list(a.params[f"{node.target}.weight"].values())
    out = a.values.get(node.name)
    arrs = list(out.dims.values()) if hasattr(out, "dims") else []
    return arrs + sites.get(node.name, [])


def _all_tensors(gm: nn.Module):
    seen: set[int] = set()
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        if id(t) not in seen and isinstance(t, nn.Parameter):
            seen.add(id(t))
            yield name, t


def count_flops(module: nn.Module, example_inputs) -> int:
    """FLOPs of one forward pass as torch.utils.flop_counter counts them (2 per multiply-add).

    >>> import torch
    >>> count_flops(torch.nn.Linear(4, 3), torch.randn(2, 4))
    48
    """
    inputs = as_input_tuple(example_inputs)
    counter = FlopCounter()
    with counter, torch.no_grad():
        module(*inputs)
    return int(counter.get_total_flops())


def count_params(module: nn.Module) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters())
